"""gen.area: the area flow on a tiny configuration, generic target only (fast), plus its argument
errors. The full runs (iCE40/ECP5, place and route, baselines) are opt-in: ``--long``."""

import json
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
