"""Reset in the middle of a stream, back-to-back passes and configuration changes between passes
(cocotb benches in ``sim/bench/reset.py``): no stale state survives a reset, and a fresh pass
after a reset matches the golden model of that pass alone.

Default: the BFP shifter at two sizes, the forward and backward cores at one small configuration.
``--long``: more trials and a bigger forward configuration.
"""

import json

import pytest

from gen import registry
from gen.units import Params
from sim.bench.common import run_cocotb
from sim.verify.formal import emit_unit


def _run(unit, params, trials, seed, tmp_path):
    """Run ``sim.bench.reset`` on the emitted ``unit``; the bench's unit is the registry's short name."""
    text, _ports, _comp = emit_unit(unit, Params(**params))
    summary = tmp_path / "summary.json"
    cfg = {"unit": registry.unit(unit).short, "params": params, "trials": trials, "seed": seed, "summary": str(summary)}
    try:
        run_cocotb(text, unit, "sim.bench.reset", name=f"reset-{unit}", config=cfg)
    finally:
        if summary.exists():
            print(json.loads(summary.read_text()))
    return json.loads(summary.read_text())


SHIFTER = [
    dict(width=4, block=2, in_format="e3m2", chunks=1, channels=1, max_count=2),
    dict(width=8, block=5, in_format="fp10", chunks=1, channels=1, max_count=2),
]


@pytest.mark.parametrize("params", SHIFTER, ids=lambda p: f"W{p['width']}-B{p['block']}-{p['in_format']}")
def test_shifter_reset(params, tmp_path):
    s = _run("ln_bfp_shifter", params, 40, 1, tmp_path)
    assert s["stats"]["resets_with_blocks_in_flight"] > 5
    assert s["stats"]["resets_while_output_stalled"] > 2


FORWARD = dict(width=4, block=4, in_format="fp10", chunks=2, channels=5, max_count=32, internal_frac_bits=8)


def test_forward_reset(tmp_path):
    s = _run("ln_forward_core", FORWARD, 1, 1, tmp_path)
    for where in ("stats pass", "finalize", "normalize pass", "right after the command"):
        assert s["stats"].get(f"reset: {where}") == 1


def test_backward_reset(tmp_path):
    s = _run("ln_backward_core", FORWARD, 1, 1, tmp_path)
    for where in ("reduction pass", "finalize", "dx pass", "right after the command"):
        assert s["stats"].get(f"reset: {where}") == 1


@pytest.mark.long
def test_forward_reset_long(tmp_path):
    params = dict(width=8, block=4, in_format="fp10", chunks=8, channels=6, max_count=256)
    s = _run("ln_forward_core", params, 4, 2, tmp_path)
    assert s["stats"].get("reset: normalize pass") == 4


# --------------------------------------------------------------------------------------------
# The opt-in long regression (sim/verify/long_regression.py) lives here too: pytest --long
# --------------------------------------------------------------------------------------------

def test_long_regression_stimulus_and_classes():
    """Fast check (no simulator) of the long regression's stimulus and edge-class bookkeeping:
    every possible class is hit by a few thousand blocks of every configuration, and the tie
    classes agree with the golden model (a tie rounded up gives an odd truncated value + 1)."""
    import numpy as np
    from hw.formats import BFPFormat, float_format
    from sim.model.golden import float_to_bfp
    from sim.verify.long_regression import CONFIGS, classify, generate, possible_classes
    for fmt_name, width, block in CONFIGS:
        fmt = float_format(fmt_name)
        bfp = BFPFormat.for_float(fmt, width, block)
        words = generate(fmt, bfp, 1500, np.random.default_rng(7))
        counts = {}
        classify(fmt, bfp, words, counts)
        assert set(counts) == possible_classes(fmt, bfp)
        never = [k for k, v in counts.items() if v == 0]
        assert not never, f"{fmt_name} W={width} B={block}: never hit {never}"
        # cross-check two classes lane by lane against the golden model on a sample
        for row in words[:100]:
            blk = float_to_bfp(fmt, bfp, [int(w) for w in row])
            single = {}
            classify(fmt, bfp, row[None, :], single)
            sat_lanes = sum(abs(q) == bfp.code_max for q in blk.codes)
            assert bool(single.get("sat_block", 0)) == blk.flags["sat"]
            assert single.get("saturated", 0) <= sat_lanes
            if single["zero_block"]:
                assert blk.exponent == 0 and not any(blk.codes)


@pytest.mark.long
def test_long_regression(tmp_path):
    """>= 10**7 random elements through the emitted shifter over sim.verify.long_regression.CONFIGS."""
    from sim.verify.long_regression import OUT, run
    rec = run(10 ** 7, out=OUT)
    assert rec["elements"] >= 10 ** 7
    assert rec["mismatches"] == 0, [c.get("notes") for c in rec["configurations"]]
    assert not rec["classes_never_hit"], rec["classes_never_hit"]
