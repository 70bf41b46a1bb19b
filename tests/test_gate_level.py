"""The netlists the board flows build from (``synth_ice40`` with the iCEBreaker's options,
``synth_ecp5``), simulated cell by cell against the golden model (``sim.verify.gate_level``) at the
UP5K size (block RAM) and at a size with multipliers (DSP blocks). About 3 minutes each: behind
``--long``."""

import pytest


@pytest.mark.long
@pytest.mark.parametrize("size, cell", [("UP5K_PARAMS", "SB_RAM40_4K"), ("DSP_PARAMS", "SB_MAC16")])
def test_ice40_netlist_matches_golden_model(size, cell):
    """The iCEBreaker's ``bn`` preset (its per-channel stores are SB_RAM40_4K blocks) and a size
    whose multipliers map to SB_MAC16."""
    from gen.units import Params
    from sim.verify import gate_level
    ok, rep = gate_level.check(Params(**getattr(gate_level, size)), "ice40")
    assert rep["cells"].get(cell, 0) > 0, rep["cells"]             # the mapping is exercised
    assert rep["elements"]["forward"] > 0 and rep["elements"]["backward"] > 0
    assert ok, rep


@pytest.mark.long
def test_ecp5_netlist_matches_golden_model():
    from gen.units import Params
    from sim.verify.gate_level import DSP_PARAMS, check
    ok, rep = check(Params(**DSP_PARAMS), "ecp5")
    assert rep["cells"].get("MULT18X18D", 0) > 0, rep["cells"]     # the DSP model is exercised
    assert ok, rep
