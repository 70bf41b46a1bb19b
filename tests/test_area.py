"""gen.area: the area flow on a tiny configuration, generic target only (fast), plus its argument
errors. The full runs (iCE40/ECP5, place and route, baselines) are opt-in: ``--long``."""

import json
from pathlib import Path
import subprocess
import sys

import pytest

from gen.area import main, run_area
from gen.units import Params, all_units

TINY = ["--width", "4", "--block", "2", "--channels", "2", "--max-count", "16", "--chunks", "1"]


def test_generic_tiny(tmp_path):
    out = tmp_path / "area"
    assert main(TINY + ["--targets", "generic", "--no-baselines", "-q", "--out", str(out)]) == 0
    result = json.loads((out / "area.json").read_text())
    assert (out / "area.md").read_text().startswith("# Area and timing")
    assert result["parameters"]["width"] == 4
    assert set(result["units"]) == {name for name, _ in all_units()}
    for name, unit in result["units"].items():
        r = unit["targets"]["generic"]
        assert r["status"] == "ok", (name, r)
        for key in ("cells", "logic", "ffs", "synth_seconds"):
            assert key in r
        assert r["cells"] > 0 and r["logic"] > 0, name
        assert r["breakdown"] and all(p["cells"] >= 0 for p in r["breakdown"])
        assert unit["port_bits"] > 0
    assert not list(tmp_path.glob(".area.tmp-*"))


def test_core_parts_generic(tmp_path):
    """The cores' parts are measurable alone (named only), and are the cores' own submodules."""
    from gen.area import PARTS
    from hw.backward_core import unit as backward_unit
    from hw.forward_core import ForwardCore
    p = Params(width=4, block=2, channels=2, max_count=16, chunks=1)
    kinds = {"ln_part_forward_stats": "StatsUnit", "ln_part_forward_finalize": "ForwardFinalize",
             "ln_part_forward_affine": "BFPAffine", "ln_part_backward_reduce": "GradReduce",
             "ln_part_backward_finalize": "BackwardFinalize", "ln_part_backward_affine": "BFPAffine"}
    assert {n: type(f(p)).__name__ for n, f in PARTS} == kinds
    fwd, bwd = ForwardCore.from_params(p), backward_unit(p)
    assert type(fwd._finalize).__name__ == "ForwardFinalize" and fwd._finalize.latency == \
        dict(PARTS)["ln_part_forward_finalize"](p).latency
    assert bwd._finalize.latency == dict(PARTS)["ln_part_backward_finalize"](p).latency
    out = tmp_path / "area"
    names = "ln_part_backward_finalize,ln_part_forward_affine"
    assert main(TINY + ["--targets", "generic", "--units", names, "-q", "--out", str(out)]) == 0
    result = json.loads((out / "area.json").read_text())
    assert set(result["units"]) == set(names.split(","))
    for unit in result["units"].values():
        assert unit["kind"] == "part" and unit["targets"]["generic"]["cells"] > 0


def test_synth_failure_location():
    from gen.area import synth_failure
    log = ("2.44.16.3. Executing XAIGER2 backend.\n"
           "Extracted 35 AND gates and 0 wires from module `ln_backward_core.reduce' to a netlist.\n"
           "2.44.16.5. Executing ABC9.\nRunning ABC command: ...\n")
    assert synth_failure(log) == "2.44.16.5. Executing ABC9 (module ln_backward_core.reduce)"
    assert synth_failure(log + "ERROR: Can't open input file `x.v' for reading\n").startswith("ERROR: Can't open")
    assert synth_failure("") == "no log"


def test_ecp5_abc_fallback(tmp_path, monkeypatch):
    """When ``synth_ecp5`` (ABC9) fails on a unit, the unit is mapped again with the classic ABC,
    its counts are real, and the report says which mapper and why."""
    import gen.area as area
    real = area._yosys_script

    def failing_abc9(target, name, vfile, net, stat, mapper="abc9", liberty=None):
        if target == "ecp5" and mapper == "abc9":
            return "read_verilog no_such_file.v"
        return real(target, name, vfile, net, stat, mapper, liberty)

    monkeypatch.setattr(area, "_yosys_script", failing_abc9)
    out = tmp_path / "area"
    result = run_area(Params(width=4, block=2, channels=2, max_count=16, chunks=1), out,
                      targets=("ecp5",), units=["ln_bfp_shifter"], include_baselines=False,
                      jobs=1, pnr=False, quiet=True)
    r = result["units"]["ln_bfp_shifter"]["targets"]["ecp5"]
    assert r["status"] == "ok" and r["mapper"] == "abc", r
    assert r["abc9_failure"].startswith("exit 1: ERROR: File `no_such_file.v' not found"), r["abc9_failure"]
    assert r["luts"] > 0 and r["lut_sites"] >= r["luts"] and r["ffs"] > 0
    md = (out / "area.md").read_text()
    assert "instead of `synth_ecp5`'s `abc9`" in md and "ln_bfp_shifter (exit 1" in md


@pytest.mark.parametrize("args,message", [
    (["--targets", "generic,vivado"], "--targets must be a comma-separated subset"),
    (["--jobs", "0"], "--jobs must be an integer in 1..16"),
    (["--width", "1"], "width must be an integer in 2..16"),
    (["--units", "nope"], "unknown unit 'nope'"),
    (["--ecp5-goal", "0"], "--ecp5-goal must be positive"),
])
def test_bad_arguments(tmp_path, args, message):
    out = tmp_path / "area"
    proc = subprocess.run([sys.executable, "-m", "gen", "area", "--out", str(out)] + args,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.long
def test_all_targets_with_baselines(tmp_path):
    """Every unit and baseline on every target with place and route (tens of minutes)."""
    result = run_area(Params(), tmp_path / "area", quiet=True)
    for name, unit in result["units"].items():
        for target in ("generic", "ice40", "ecp5"):
            r = unit["targets"][target]
            assert r["status"] in ("ok", "does not fit"), (name, target, r)
            if target != "generic" and r["status"] == "ok" and r.get("pnr") == "ok":
                assert r["fmax_mhz"] > 0


def _fake_result(units, width, targets=("generic", "ecp5")):
    from gen.area import DEVICES
    res = {"parameters": dict(Params(width=width).as_dict()), "seconds": 1.0,
           "targets": {t: ({} if t == "generic" else {"library": "lib", "liberty": "x.lib"} if t == "asic"
                           else dict(DEVICES[t], goal_mhz=100.0, pnr=True)) for t in targets},
           "units": {}}
    for i, name in enumerate(units):
        tg = {}
        for t in targets:
            if t == "generic":
                tg[t] = {"target": t, "status": "ok", "cells": 100 * (i + 1) * width, "logic": 90, "ffs": 10,
                         "breakdown": [{"part": "mul#", "share": 0.5, "cells": 50}]}
            elif t == "asic":
                tg[t] = {"target": t, "status": "ok", "area_um2": 1000.0 * (i + 1) * width, "logic_um2": 600.0,
                         "seq_um2": 400.0, "cells": 10, "ffs": 4, "unmapped": 0, "breakdown": []}
            else:
                tg[t] = {"target": t, "status": "ok", "luts": 50, "lut_sites": 60 * (i + 1) * width, "ffs": 5,
                         "carry": 5, "lutram": 0, "dsp": 1, "bram": 0, "fits": True, "goal_mhz": 100.0,
                         "breakdown": [], "pnr": "timeout" if i else "ok", "fmax_mhz": 90.0, "meets_goal": False,
                         "critical_path": {"from": "a", "to": "b", "delay_ns": 11.1, "logic_levels": 7}}
        res["units"][name] = {"kind": "x", "targets": tg}
    return res


def test_benchmark_report_and_splice(tmp_path):
    """The benchmark's summary, plot and docs section from made-up tool results (no tools run);
    hand-written text outside the markers survives a rewrite."""
    from gen import benchmark
    from gen.baselines import baseline_names
    names = [n for n, _ in all_units()]
    cores, _ = benchmark.core_units(names)
    base = _fake_result(baseline_names(), 8)
    sweep = {w: _fake_result(names, w) for w in (4, 8)}
    summary = benchmark._summarize(base, sweep, cores, [4, 8], 8)
    summary.update({"command": "python -m gen.benchmark --widths 4,8", "seconds": 12.0, "block": 16,
                    "channels": 16, "cores_description": "cores", "pnr_width": 8})
    assert summary["goals"]["area_vs_fp32"]["ratio"] is not None
    plot = tmp_path / "plot.png"
    benchmark._plot(summary, plot)
    assert plot.stat().st_size > 0
    text = benchmark._markdown(summary, base, sweep[8], plot, tmp_path / "area.md")
    assert "python -m gen.benchmark --widths 4,8" in text and "place and route timeout" in text
    first = benchmark.splice(None, text)
    assert first.startswith(benchmark.TITLE) and benchmark.BEGIN in first and benchmark.END in first
    edited = first.replace(benchmark.END, benchmark.END + "\n\n## Analysis\n\nhand text\n")
    again = benchmark.splice(edited, text.replace("12 s", "13 s"))
    assert "hand text" in again and "13 s" in again and "12 s" not in again
    assert again.count(benchmark.BEGIN) == 1


# -- asic target ----------------------------------------------------------------------------------------

TINY_LIB = Path(__file__).parent / "data" / "tiny.lib"
#: The areas written by hand into tests/data/tiny.lib.
TINY_AREAS = {"TBUF": 4, "TINV": 3, "TNAND2": 5, "TNOR2": 7, "TDFF": 20}

_TWO_REGS = """\
module inv_reg(input clk, input [3:0] d, output reg [3:0] q);
  always @(posedge clk) q <= ~d;
endmodule
module two_regs(input clk, input [3:0] a, input [3:0] b, output [3:0] x, output [3:0] y, output z);
  inv_reg u0(.clk(clk), .d(a), .q(x));
  inv_reg u1(.clk(clk), .d(b), .q(y));
  assign z = ~(a[0] & b[0]);
endmodule
"""


def test_liberty_cells_tiny():
    from gen.area import liberty_cells
    cells = liberty_cells(TINY_LIB)
    assert {n: a for n, (a, _) in cells.items()} == TINY_AREAS
    assert {n for n, (_, seq) in cells.items() if seq} == {"TDFF"}


def test_asic_known_netlist(tmp_path):
    """A netlist whose cells are known: two instances of a 4-bit inverting register (4 flip-flops
    and 4 inverters each) and one NAND2 in the top: 2 x 4 x (20 + 3) + 5 = 189 in tiny.lib's units,
    160 of it sequential; Yosys' own ``stat -liberty`` figure agrees."""
    from gen.area import _unit_target
    d = tmp_path / "two_regs"
    d.mkdir()
    (d / "two_regs.v").write_text(_TWO_REGS)
    res = _unit_target({"target": "asic", "name": "two_regs", "dir": str(d), "goal": None, "pnr": False,
                        "synth_timeout": 300, "pnr_timeout": 1, "quiet": True, "liberty": str(TINY_LIB)})
    assert res["status"] == "ok", res
    a = TINY_AREAS
    assert res["area_um2"] == 2 * 4 * (a["TDFF"] + a["TINV"]) + a["TNAND2"] == 189
    assert res["seq_um2"] == 2 * 4 * a["TDFF"] and res["logic_um2"] == 189 - 160
    assert res["ffs"] == 8 and res["cells"] == 17 and res["unmapped"] == 0
    assert res["yosys_area_um2"] == 189
    parts = {p["part"]: p for p in res["breakdown"]}
    assert parts["inv_reg"]["instances"] == 2 and parts["inv_reg"]["area_um2"] == 184
    assert parts["(top glue)"]["area_um2"] == 5


def test_asic_unit_tiny_liberty(tmp_path):
    """``python -m gen area --targets asic --liberty FILE`` on a real unit: every cell is a
    liberty cell, our sum agrees with Yosys' ``stat -liberty``, and area.md has the table."""
    out = tmp_path / "area"
    assert main(TINY + ["--targets", "asic", "--units", "ln_bfp_shifter", "--liberty", str(TINY_LIB),
                        "-q", "--out", str(out)]) == 0
    result = json.loads((out / "area.json").read_text())
    assert result["targets"]["asic"]["library"] == "tiny_test_cells"
    r = result["units"]["ln_bfp_shifter"]["targets"]["asic"]
    assert r["status"] == "ok" and r["unmapped"] == 0, r
    assert r["area_um2"] == r["yosys_area_um2"] > 0
    assert r["seq_um2"] == TINY_AREAS["TDFF"] * r["ffs"] and r["ffs"] > 0
    assert r["area_um2"] == round(r["logic_um2"] + r["seq_um2"], 1)
    assert "## asic: standard cells `tiny_test_cells`" in (out / "area.md").read_text()


def test_asic_missing_liberty(tmp_path, monkeypatch, capsys):
    """No liberty: one line naming the package and the option, exit 2, nothing written; the
    default targets never need it."""
    import gen.area as area
    monkeypatch.setattr(area, "DEFAULT_LIBERTY", str(tmp_path / "no_such.lib"))
    monkeypatch.delenv("LIGHTNORM_LIBERTY", raising=False)
    assert "asic" not in area.DEFAULT_TARGETS
    out = tmp_path / "area"
    with pytest.raises(SystemExit) as exc:
        main(TINY + ["--targets", "asic", "-q", "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1, err
    assert "apt-get install qflow-tech-osu018" in err and "--liberty FILE" in err
    with pytest.raises(SystemExit):
        main(TINY + ["--targets", "asic", "--liberty", str(tmp_path / "x.lib"), "-q", "--out", str(out)])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "x.lib" in err and "--liberty" in err, err
    assert not out.exists() and not list(tmp_path.glob(".area.tmp-*"))


def test_benchmark_pair_table(tmp_path):
    """The side-by-side table of the pair against every baseline (the mixed-precision one too):
    each metric and its ratio, from made-up results whose sums are known; and the note when the
    ASIC area was not measured."""
    from gen import benchmark
    from gen.area import DSP_LUT_EQUIV
    from gen.baselines import baseline_names
    names = [n for n, _ in all_units()]
    cores, _ = benchmark.core_units(names)
    assert "float_bn_fwd_bf16_fp32" in baseline_names() and "float_bn_bwd_bf16_fp32" in baseline_names()
    base = _fake_result(baseline_names(), 8, targets=("generic", "ecp5", "asic"))
    sweep = {8: _fake_result(names, 8, targets=("generic", "ecp5", "asic"))}
    summary = benchmark._summarize(base, sweep, cores, [8], 8)
    summary.update({"command": "c", "seconds": 1.0, "block": 16, "channels": 16, "cores_description": "cores",
                    "pnr_width": 8, "asic": "measured", "dsp_lut_equiv": DSP_LUT_EQUIV})
    row = summary["rows"][0]
    # _fake_result: unit i has lut_sites 60 (i + 1) W, one DSP, area 1000 (i + 1) W.
    idx = {n: i for i, n in enumerate(names)}
    ln_sites = sum(60 * (idx[c] + 1) * 8 for c in cores)
    bidx = {n: i for i, n in enumerate(baseline_names())}
    mix = [bidx["float_bn_fwd_bf16_fp32"], bidx["float_bn_bwd_bf16_fp32"]]
    mix_sites = sum(60 * (i + 1) * 8 for i in mix)
    assert row["lightnorm_ecp5_lut_dsp_equiv"] == ln_sites + DSP_LUT_EQUIV * len(cores)
    assert row["ratio_bf16_fp32_ecp5_lut_sites"] == round(ln_sites / mix_sites, 4)
    assert row["ratio_bf16_fp32_asic_area_um2"] == round(sum(1000 * (idx[c] + 1) * 8 for c in cores)
                                                         / sum(1000 * (i + 1) * 8 for i in mix), 4)
    text = benchmark._markdown(summary, base, sweep[8], tmp_path / "p.png", tmp_path / "area.md")
    assert f"| ECP5 LUT sites | DSP | flip-flops | LUT sites + DSP x {DSP_LUT_EQUIV} | ASIC um^2 |" in text
    assert "| float BN bf16 I/O + fp32 compute |" in text and "| LightNorm / bf16 I/O + fp32 compute |" in text
    summary["asic"] = "not measured: asic target: liberty file x not found"
    for r in summary["rows"]:
        for k in [k for k in r if "asic" in k]:
            r[k] = None
    text = benchmark._markdown(summary, base, sweep[8], tmp_path / "p.png", tmp_path / "area.md")
    assert "not measured: asic target: liberty file x not found" in text


def test_benchmark_asic_yes_without_liberty(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gen.benchmark", "--asic", "yes", "--liberty",
                           str(tmp_path / "none.lib"), "--docs", str(tmp_path / "a.md"),
                           "--plot", str(tmp_path / "a.png")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "none.lib" in proc.stderr and "--liberty" in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.long
def test_dsp_lut_equiv_measured():
    """k of the "LUT sites + DSP x k" columns is what ``python -m gen.dsp_equiv`` measures (about
    a minute), no more than the mapping without Booth encoding, and the same multiplier with
    DSPs allowed is one MULT18X18D."""
    from gen import dsp_equiv
    from gen.area import DSP_LUT_EQUIV
    area, _ = dsp_equiv.measure()
    assert area["lut_sites"] == DSP_LUT_EQUIV and area["dsp"] == 0
    plain, _ = dsp_equiv.measure(booth=False)
    assert plain["lut_sites"] >= DSP_LUT_EQUIV and plain["dsp"] == 0
    with_dsp, cells = dsp_equiv.measure(nodsp=False, booth=False)
    assert with_dsp["dsp"] == 1 and cells.get("MULT18X18D") == 1


def test_benchmark_main_fills_missing_baselines(tmp_path, monkeypatch):
    """``python -m gen.benchmark --baselines-from`` with an older area.json (no mixed-precision
    baseline, no asic target): only what it lacks is run (tools replaced by made-up results),
    and the report has every baseline and the ASIC column."""
    from gen import benchmark
    from gen.baselines import baseline_names
    calls = []

    def fake_run_area(params, out_dir, targets=("generic", "ice40", "ecp5"), units=None, include_baselines=True,
                      liberty=None, **kw):
        names = units or [n for n, _ in all_units()]
        calls.append((tuple(names), tuple(targets), liberty))
        res = _fake_result(names, params.width, targets=tuple(t for t in targets if t != "ice40"))
        res["parameters"] = params.as_dict()
        return res

    monkeypatch.setattr(benchmark, "run_area", fake_run_area)
    old = _fake_result([n for n in baseline_names() if "bf16_fp32" not in n], 8)
    old["parameters"] = dict(old["parameters"], block=16, channels=16)
    (tmp_path / "old.json").write_text(json.dumps(old))
    docs, plot = tmp_path / "area.md", tmp_path / "plot.png"
    assert benchmark.main(["--widths", "8", "--baselines-from", str(tmp_path / "old.json"), "--liberty", str(TINY_LIB),
                           "--docs", str(docs), "--plot", str(plot)]) == 0
    mixed = ("float_bn_fwd_bf16_fp32", "float_bn_bwd_bf16_fp32")
    assert calls[0][0] == mixed and "asic" not in calls[0][1]                  # the missing baselines
    assert set(calls[1][0]) == set(baseline_names()) and calls[1][1] == ("asic",)  # asic for all of them
    assert calls[2][1] == ("generic", "ice40", "ecp5", "asic") and calls[2][2] == str(TINY_LIB.resolve())
    text = docs.read_text()
    assert "| float BN bf16 I/O + fp32 compute |" in text and "ASIC um^2" in text
    pair = [ln for ln in text.splitlines() if ln.startswith("| LightNorm / bf16 I/O + fp32 compute |")][0]
    assert "| - |" not in pair and pair.count("|") == 7, pair   # all five ratios measured
