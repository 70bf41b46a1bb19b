"""The netlists the board flows build from (``synth_ice40`` with the iCEBreaker's options,
``synth_ecp5``), simulated cell by cell against the golden model (``sim.verify.gate_level``) at the
UP5K size (block RAM) and at a size with multipliers (DSP blocks). About 3 minutes each: behind
``--long``."""

import pytest


@pytest.mark.long
def test_ice40_board_netlist_matches_golden_model():
    """The iCEBreaker's ``bn`` preset: its per-channel stores are SB_RAM40_4K blocks."""
    from gen.units import Params
    from sim.verify.gate_level import UP5K_PARAMS, check
    ok, rep = check(Params(**UP5K_PARAMS), "ice40")
    assert rep["cells"].get("SB_RAM40_4K", 0) > 0, rep["cells"]     # the block RAM mapping is exercised
    assert rep["elements"]["forward"] > 0 and rep["elements"]["backward"] > 0
    assert ok, rep


@pytest.mark.long
def test_ice40_dsp_netlist_matches_golden_model():
    from gen.units import Params
    from sim.verify.gate_level import DSP_PARAMS, check
    ok, rep = check(Params(**DSP_PARAMS), "ice40")
    assert rep["cells"].get("SB_MAC16", 0) > 0, rep["cells"]        # the DSP mapping is exercised
    assert rep["elements"]["forward"] > 0 and rep["elements"]["backward"] > 0
    assert ok, rep


@pytest.mark.long
def test_ecp5_netlist_matches_golden_model():
    from gen.units import Params
    from sim.verify.gate_level import DSP_PARAMS, check
    ok, rep = check(Params(**DSP_PARAMS), "ecp5")
    assert rep["cells"].get("MULT18X18D", 0) > 0, rep["cells"]     # the DSP model is exercised
    assert ok, rep
