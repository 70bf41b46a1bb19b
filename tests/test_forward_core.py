"""ForwardCore (Verilator + cocotb) bit for bit against ``sim.model.golden_bn.forward``.

Default run: widths {4, 8, 12} x B {4, 16} x K {1, 8}, channels varying per configuration (partial
last groups, a single channel, whole groups), >= 100k checked y elements per configuration, random
input gaps and output back-pressure. ``--long``: >= 10**6 elements per configuration.
A single configuration: ``pytest tests/test_forward_core.py --width 6 --block 5 --chunks 2 --channels 7``
(also ``--in-format``). The plan of every configuration (bad counts, n = 2K, edge data, overflow,
saturation, permuted order, running-statistics loads, training and inference over Gaussian, ReLU,
Laplace, Student-t, offset and random BFP data) is ``sim.bench.forward_core.Planner``.
"""

import time

import pytest

from sim.bench.common import SIM_BUILD_ROOT

WIDTHS = (4, 8, 12)
BLOCKS = (4, 16)
CHUNKS = (1, 8)
ELEMENTS = 100_000
LONG_ELEMENTS = 1_000_000


def _channels(width, block, chunks):
    """Channel counts of the default matrix: partial last groups, one channel, whole groups."""
    choices = (block + block // 2, 1, 2 * block, block // 2 + 1, 3 * block - 1, block)
    return choices[WIDTHS.index(width) * 2 + CHUNKS.index(chunks)]


DEFAULT_MATRIX = [dict(width=w, block=b, chunks=k, channels=_channels(w, b, k), in_format="fp10")
                  for w in WIDTHS for b in BLOCKS for k in CHUNKS]
# Interleaved so that a partial run already covers every width, block size and K.
DEFAULT_MATRIX = [DEFAULT_MATRIX[i] for i in (0, 11, 5, 6, 3, 8, 1, 10, 4, 7, 2, 9)]
#: The low statistics (windowed sums, docs/numerics.md): the default width, odd sizes with G = 0
#: (the LSB at the largest exponent), and G = 16 beyond e4m3's exponent range (equal to exact).
DEFAULT_MATRIX += [
    dict(width=8, block=16, chunks=1, channels=16, in_format="fp10", stats="low", stats_guard=4),
    dict(width=5, block=3, chunks=4, channels=7, in_format="fp10", stats="low", stats_guard=0),
    dict(width=4, block=4, chunks=8, channels=5, in_format="e4m3", stats="low", stats_guard=16),
]


def run_forward_bench(params_kw, elements, seed=1, gap=0.2, backpressure=0.2):
    """Emit the core's Verilog, run ``sim.bench.forward_core`` on it (Verilator, build cached per
    Verilog text) and return the bench's summary dict."""
    from gen.units import Params
    from gen.verilog import emit
    from hw.forward_core import ForwardCore

    p = Params(**params_kw)
    name = "forward_core-" + "-".join(f"{k}{v}" for k, v in sorted(params_kw.items()))
    t0 = time.time()
    text = emit(ForwardCore.from_params(p), "ln_forward_core")
    conf = {"params": p.as_dict(), "seed": seed, "elements": elements,
            "gap": gap, "backpressure": backpressure}
    from sim.bench.common import run_summary_bench
    from sim.bench.backward_core import MODEL_OPT
    res = run_summary_bench(text, "ln_forward_core", "sim.bench.forward_core", name=name,
                            stem=f"{name}-s{seed}-e{elements}", config=conf, make_vars=MODEL_OPT)
    res["wall_seconds"] = round(time.time() - t0, 1)
    return res


def _report(params_kw, res):
    line = (f"forward core {params_kw}: {res['elements']} elements checked, {res['y_blocks']} y blocks, "
            f"{res['stats_records']} stats records, {res['commands']} commands ({res['bad_commands']} "
            f"bad), {res['cycles']} cycles, mismatches {res['mismatches']}; plan {res['plan_seconds']} s "
            f"({res['plan_cpu_seconds']} s CPU), sim {res['sim_seconds']} s ({res['sim_cpu_seconds']} s CPU), "
            f"wall {res['wall_seconds']} s")
    print(line)
    with open(SIM_BUILD_ROOT / "results" / "forward_core_report.txt", "a") as fh:
        fh.write(line + "\n")


def _check(res, elements):
    assert not res["failed_cocotb_tests"], res["failed_cocotb_tests"]
    assert res["elements"] >= elements
    assert not res["errors"], res["errors"]
    assert not any(res["mismatches"].values()), (res["mismatches"], res["notes"])


def test_forward_core(unit_config):
    res = run_forward_bench(unit_config, ELEMENTS)
    _report(unit_config, res)
    _check(res, ELEMENTS)


@pytest.mark.long
def test_forward_core_long(unit_config):
    res = run_forward_bench(unit_config, LONG_ELEMENTS, seed=2)
    _report(unit_config, res)
    _check(res, LONG_ELEMENTS)
