"""``python -m sim.verify.tradeoff``: the forward + backward pair's area against its accuracy, for
each statistics precision (``--stats exact|low``) and width.

Three measurements, each from the tool that owns it:

* **area**: ``area.json`` files written by ``python -m gen area --units
  ln_forward_core,ln_backward_core --targets ecp5`` (one run per width and statistics mode; the
  run's parameters say which); the pair is the sum of the two cores' ECP5 LUT sites, DSPs and
  flip-flops;
* **float64 error**: :func:`sim.verify.error_bounds.summarize` on the same width, block, channels,
  M and statistics mode (fp10 inputs, K = 1, n = 256), worst ulps of y and dx over ``--seeds``
  seeds of Gaussian data and over every distribution of that module;
* **training accuracy**: ``results.json`` files written by ``python -m sim.apps.study``; method
  ``lightnorm_w<W>`` is the exact mode, ``lightnorm_w<W>_low`` the low one.

Writes a PNG (pair area against dx error on Gaussian data, and against test accuracy, one point
per width and mode) and prints a markdown table of every number. A configuration missing from
one of the inputs is shown with what is known ("-" in the table, no point in that panel).

Example (the figures of ``docs/area.md``)::

    python -m gen area --units ln_forward_core,ln_backward_core --targets ecp5 --no-pnr --width 8 --block 16 --channels 16 --out build/cores-exact
    python -m gen area --units ln_forward_core,ln_backward_core --targets ecp5 --no-pnr --width 8 --block 16 --channels 16 --stats low --out build/cores-low
    python -m sim.apps.study --methods fp32_bn,lightnorm_w4,lightnorm_w6,lightnorm_w8 --jobs 1 --out build/study-exact
    python -m sim.apps.study --methods fp32_bn,lightnorm_w4_low,lightnorm_w6_low,lightnorm_w8_low --jobs 1 --out build/study-low
    python -m sim.verify.tradeoff --area build/cores-exact/area.json build/cores-low/area.json \\
        --study build/study-exact/results.json build/study-low/results.json --plot docs/area_vs_accuracy.png
"""

import argparse
import json
from pathlib import Path

CORES = ("ln_forward_core", "ln_backward_core")


def load_area(paths):
    """``{(width, stats, guard): {"lut_sites", "dsp", "ffs", "block", "channels"}}`` of the pair."""
    out = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        p = data["parameters"]
        units = data["units"]
        missing = [u for u in CORES if u not in units or "ecp5" not in units[u]["targets"]]
        if missing:
            raise SystemExit(f"tradeoff: error: {path} has no ECP5 area of {', '.join(missing)}")
        pair = {"block": p["block"], "channels": p["channels"]}
        for key in ("lut_sites", "dsp", "ffs"):
            pair[key] = sum(units[u]["targets"]["ecp5"][key] for u in CORES)
        out[(p["width"], p.get("stats", "exact"), p.get("stats_guard", 4))] = pair
    return out


def load_study(paths):
    """``{method: (mean, std, seeds)}`` over the study result files (later files win)."""
    out = {}
    for path in paths:
        for row in json.loads(Path(path).read_text())["summary"]:
            out[row["method"]] = (row["final_mean"], row["final_std"], row["seeds"])
    return out


def measure_error(width, stats, guard, block, channels, seeds):
    """Worst ulps of y and dx: on Gaussian data, and over every distribution."""
    from sim.verify import error_bounds as eb
    frac_bits = min(23, width + 4)
    cfg = eb.Config("fp10", width, block, 1, 256, channels, frac_bits, stats, guard)
    gauss, _, _ = eb.summarize([cfg], ["gauss"], seeds)
    worst, _, _ = eb.summarize([cfg], list(eb.DISTRIBUTIONS), seeds)
    return {"y_gauss": gauss["y"].ulps, "dx_gauss": gauss["dx"].ulps,
            "y_worst": worst["y"].ulps, "dx_worst": worst["dx"].ulps}


def rows(area, study, seeds):
    out = []
    for (width, stats, guard), pair in sorted(area.items()):
        method = f"lightnorm_w{width}" + ("_low" if stats == "low" else "")
        err = measure_error(width, stats, guard, pair["block"], pair["channels"], seeds)
        out.append(dict(width=width, stats=stats, guard=guard, method=method, **pair, **err,
                        accuracy=study.get(method)))
    return out


def table(rs, study):
    ref = study.get("fp32_bn")
    lines = [
        "| W | statistics | pair ECP5 LUT sites | DSP | flip-flops | y ulps, gauss / worst | "
        "dx ulps, gauss / worst | test accuracy | vs FP32 BN |",
        "|---:|---|---:|---:|---:|---|---|---|---|",
    ]
    for r in rs:
        mode = "exact" if r["stats"] == "exact" else f"low, G = {r['guard']}"
        acc = r["accuracy"]
        acc_s = "-" if acc is None else f"{acc[0]:.2f} +- {acc[1]:.2f} % ({acc[2]} seeds)"
        vs = "-" if acc is None or ref is None else f"{acc[0] - ref[0]:+.2f} pp"
        lines.append(f"| {r['width']} | {mode} | {r['lut_sites']} | {r['dsp']} | {r['ffs']} | "
                     f"{r['y_gauss']:.3g} / {r['y_worst']:.3g} | {r['dx_gauss']:.3g} / {r['dx_worst']:.3g} | "
                     f"{acc_s} | {vs} |")
    if ref is not None:
        lines.append(f"\nFP32 BN (nn.BatchNorm2d): {ref[0]:.2f} +- {ref[1]:.2f} % ({ref[2]} seeds).")
    return "\n".join(lines)


def plot(rs, study, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    styles = {"exact": ("o", "tab:blue"), "low": ("s", "tab:orange")}
    for mode, (marker, color) in styles.items():
        pts = [r for r in rs if r["stats"] == mode]
        if not pts:
            continue
        label = "exact statistics" if mode == "exact" else "low statistics"
        ax1.plot([r["dx_gauss"] for r in pts], [r["lut_sites"] for r in pts], marker, color=color, label=label)
        for r in pts:
            ax1.annotate(f"W{r['width']}", (r["dx_gauss"], r["lut_sites"]), textcoords="offset points", xytext=(4, 4))
        acc = [r for r in pts if r["accuracy"] is not None]
        ax2.plot([r["accuracy"][0] for r in acc], [r["lut_sites"] for r in acc], marker, color=color, label=label)
        for r in acc:
            ax2.annotate(f"W{r['width']}", (r["accuracy"][0], r["lut_sites"]), textcoords="offset points",
                         xytext=(4, 4))
    if "fp32_bn" in study:
        ax2.axvline(study["fp32_bn"][0], color="gray", linestyle="--", label="FP32 BN accuracy")
    ax1.set_xscale("log")
    ax1.set_xlabel("dx error vs float64 Range BN, worst ulps (Gaussian data)")
    ax2.set_xlabel("test accuracy, % (sim.apps.study, mean over seeds)")
    for ax in (ax1, ax2):
        ax.set_ylabel("forward + backward ECP5 LUT sites")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("LightNorm pair: area against accuracy, by width and statistics precision")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    tmp.replace(path)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sim.verify.tradeoff", description=__doc__.split("\n\n")[0])
    ap.add_argument("--area", nargs="+", required=True, help="area.json files of gen area runs of both cores")
    ap.add_argument("--study", nargs="*", default=[], help="results.json files of sim.apps.study runs")
    ap.add_argument("--seeds", type=int, default=5, help="seeds per distribution of the error measurement (default 5)")
    ap.add_argument("--plot", default=None, help="PNG to write")
    ap.add_argument("--json", default=None, help="write every number as JSON here")
    args = ap.parse_args(argv)
    for path in args.area + args.study:
        if not Path(path).is_file():
            raise SystemExit(f"tradeoff: error: {path} does not exist")
    area, study = load_area(args.area), load_study(args.study)
    rs = rows(area, study, args.seeds)
    print(table(rs, study))
    if args.json:
        Path(args.json).write_text(json.dumps(rs, indent=1) + "\n")
    if args.plot:
        plot(rs, study, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
