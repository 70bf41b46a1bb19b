"""Reset in the middle of a stream, back-to-back passes and configuration changes between passes
(cocotb benches in ``sim/test_reset.py``): no stale state survives a reset, and a fresh pass
after a reset matches the golden model of that pass alone.

Default: the BFP shifter at two sizes, the forward core at one small configuration.
``--long``: more trials and a bigger forward configuration.
"""

import json

import pytest

from gen.units import Params
from sim.bench import run_cocotb
from sim.formal import emit_unit


def _run(unit, module_unit, params, trials, seed, tmp_path):
    text, _ports, _comp = emit_unit(unit, Params(**params))
    summary = tmp_path / "summary.json"
    cfg = {"unit": module_unit, "params": params, "trials": trials, "seed": seed, "summary": str(summary)}
    try:
        run_cocotb(text, unit, "sim.test_reset", name=f"reset-{unit}", config=cfg)
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
    s = _run("ln_bfp_shifter", "shifter", params, 40, 1, tmp_path)
    assert s["stats"]["resets_with_blocks_in_flight"] > 5
    assert s["stats"]["resets_while_output_stalled"] > 2


FORWARD = dict(width=4, block=4, in_format="fp10", chunks=2, channels=5, max_count=32, internal_frac_bits=8)


def test_forward_reset(tmp_path):
    s = _run("ln_forward_core", "forward", FORWARD, 1, 1, tmp_path)
    for where in ("stats pass", "finalize", "normalize pass", "right after the command"):
        assert s["stats"].get(f"reset: {where}") == 1


@pytest.mark.long
def test_forward_reset_long(tmp_path):
    params = dict(width=8, block=4, in_format="fp10", chunks=8, channels=6, max_count=256)
    s = _run("ln_forward_core", "forward", params, 4, 2, tmp_path)
    assert s["stats"].get("reset: normalize pass") == 4
