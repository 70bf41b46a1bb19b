"""``sim.verify.tradeoff`` adds the two cores of each ``gen area`` run into the pair, matches runs to
study methods by width and statistics mode, and refuses a run without both cores."""

import json

import pytest

from sim.verify import tradeoff


def _area(tmp_path, name, width, stats, fwd, bwd):
    units = {u: {"targets": {"ecp5": {"lut_sites": v[0], "dsp": v[1], "ffs": v[2]}}}
             for u, v in (("ln_forward_core", fwd), ("ln_backward_core", bwd)) if v is not None}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"parameters": {"width": width, "stats": stats, "stats_guard": 4,
                                               "block": 16, "channels": 16}, "units": units}))
    return path


def test_pair_and_table(tmp_path, monkeypatch):
    a = _area(tmp_path, "e", 8, "exact", (100, 1, 10), (200, 2, 20))
    b = _area(tmp_path, "l", 8, "low", (150, 1, 5), (170, 2, 7))
    study = tmp_path / "s.json"
    study.write_text(json.dumps({"summary": [
        {"method": "fp32_bn", "final_mean": 98.0, "final_std": 0.1, "seeds": 3},
        {"method": "lightnorm_w8_low", "final_mean": 97.5, "final_std": 0.2, "seeds": 3}]}))
    area = tradeoff.load_area([a, b])
    assert area[(8, "exact", 4)]["lut_sites"] == 300 and area[(8, "low", 4)]["ffs"] == 12
    monkeypatch.setattr(tradeoff, "measure_error",
                        lambda *a, **k: {"y_gauss": 1.0, "dx_gauss": 2.0, "y_worst": 3.0, "dx_worst": 4.0})
    st = tradeoff.load_study([study])
    rs = tradeoff.rows(area, st, 1)
    text = tradeoff.table(rs, st)
    assert "| 8 | exact | 300 | 3 | 30 |" in text and "| - | - |" in text       # no exact study row
    assert "| 8 | low, G = 4 | 320 | 3 | 12 |" in text and "-0.50 pp" in text


def test_missing_core(tmp_path):
    a = _area(tmp_path, "e", 8, "exact", (100, 1, 10), None)
    with pytest.raises(SystemExit, match="no ECP5 area of ln_backward_core"):
        tradeoff.load_area([a])
