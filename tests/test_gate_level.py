"""The iCE40 netlist the iCEBreaker flow builds from (``synth_ice40`` with the board's options),
simulated cell by cell against the golden model (``sim.verify.gate_level``). About 3 minutes:
behind ``--long``."""

import pytest


@pytest.mark.long
def test_ice40_board_netlist_matches_golden_model():
    from gen.units import Params
    from sim.verify.gate_level import UP5K_PARAMS, check
    ok, rep = check(Params(**UP5K_PARAMS), "ice40")
    assert "SB_MAC16" not in rep["cells"], rep["cells"]
    assert rep["elements"]["forward"] > 0 and rep["elements"]["backward"] > 0
    assert ok, rep
