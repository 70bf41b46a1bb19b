"""``python -m gen bitstream``: error paths (fast) and real builds for both boards (``--long``)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gen.bitstream import critical_path, parse_nextpnr_log

REPO = Path(__file__).resolve().parent.parent


def _run(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "gen", "bitstream", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _one_line_error(run):
    assert run.returncode == 2, (run.returncode, run.stderr)
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("gen: error: ")
    return lines[0]


@pytest.mark.parametrize("args, message", [
    (["--board", "arty"], "argument --board: invalid choice: 'arty'"),
    (["--board", "ICEBREAKER"], "argument --board: invalid choice: 'ICEBREAKER'"),
    ([], "the following arguments are required: --board"),
    (["--board", "icebreaker", "--unit", "gpu"], "argument --unit: invalid choice: 'gpu'"),
    (["--board", "icebreaker", "--width", "1"], "width must be an integer in 2..16, not 1"),
    (["--board", "ulx3s", "--baud", "5000000"], "baud must be an integer in 1200..3000000, not 5000000"),
    (["--board", "icebreaker", "--baud", "2900000"], "baud 2900000 is not reachable from the 12 MHz clock"),
    (["--board", "icebreaker", "--rx-fifo-depth", "100"], "receive FIFO depth must be a power of two in 16..65536, not 100"),
    (["--board", "icebreaker", "--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_errors_one_line_nothing_written(args, message, tmp_path):
    run = _run([*args, "--out", "out"], tmp_path)
    assert message in _one_line_error(run)
    assert list(tmp_path.iterdir()) == []


def test_unknown_board_default_out_nothing_written(tmp_path):
    run = _run(["--board", "de10nano"], tmp_path)
    _one_line_error(run)
    assert list(tmp_path.iterdir()) == []          # no build/ either


def test_out_is_a_file(tmp_path):
    (tmp_path / "out").write_text("x")
    run = _run(["--board", "icebreaker", "--out", "out"], tmp_path)
    assert "exists and is not a directory" in _one_line_error(run)
    assert (tmp_path / "out").read_text() == "x"


def test_help_lists_boards(tmp_path):
    run = _run(["--help"], tmp_path)
    assert run.returncode == 0
    assert "icebreaker" in run.stdout and "ulx3s" in run.stdout


def test_parse_nextpnr_log():
    log = "\n".join([
        "Info: Device utilisation:",
        "Info: \t         ICESTORM_LC:  1338/ 5280    25%",
        "Info: \t        ICESTORM_RAM:     1/   30     3%",
        "Info: ",
        "Info: Max frequency for clock 'cd_sync.clk': 20.01 MHz (PASS at 12.00 MHz)",
        "Info: Max frequency for clock 'cd_sync.clk': 31.55 MHz (PASS at 12.00 MHz)",
        "ERROR: Max frequency for clock 'x': 9.00 MHz (FAIL at 12.00 MHz)",
    ])
    util, clocks, errors = parse_nextpnr_log(log)
    assert util == {"ICESTORM_LC": (1338, 5280), "ICESTORM_RAM": (1, 30)}
    assert clocks == {"cd_sync.clk": (31.55, 12.0, True), "x": (9.0, 12.0, False)}
    assert errors == ["ERROR: Max frequency for clock 'x': 9.00 MHz (FAIL at 12.00 MHz)"]


@pytest.mark.long
def test_does_not_fit_fails_cleanly(tmp_path):
    """A shifter far too large for the UP5K: exit 1, a clear message, nothing in --out."""
    run = _run(["--board", "icebreaker", "--block", "64", "--width", "16", "--in-format", "fp16",
                "--out", "out", "-q"], tmp_path)
    assert run.returncode == 1, run.stderr
    assert run.stderr.startswith("gen bitstream: error: design does not fit icebreaker"), run.stderr
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.long
@pytest.mark.parametrize("board, unit, bitstream", [("icebreaker", None, "top.bin"), ("ulx3s", None, "top.bit"),
                                                    ("icebreaker", "bn", "top.bin")])
def test_build(board, unit, bitstream, tmp_path):
    """The real build with the board's preset (of its default unit, or of ``unit``: the training
    unit on the UP5K): bitstream, logs and a report with Fmax >= clock."""
    run = _run(["--board", board, "--out", "out"] + (["--unit", unit] if unit else []), tmp_path)
    assert run.returncode == 0, run.stderr
    out = tmp_path / "out"
    assert (out / bitstream).stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    assert report["board"] == board
    assert all(c["fmax_mhz"] >= report["clock_mhz"] for c in report["clocks"].values())
    assert report["utilization"]
    assert {p.name for p in tmp_path.iterdir()} == {"out"}        # no temporary directory left


def test_critical_path_from_log():
    """The limiting path named in a failed build's report: first source, last sink, logic levels."""
    log = "\n".join([
        "Info: Critical path report for clock 'clk' (posedge -> posedge):",
        "Info: stale report",
        "Info: Critical path report for clock 'clk' (posedge -> posedge):",
        "Info:       type curr  total name",
        "Info:   clk-to-q  0.52  0.52 Source fin.acc_TRELLIS_FF_Q.Q",
        "Info:    routing  0.88  1.41 Net fin.acc[9] (38,14) -> (38,13)",
        "Info:                          Sink fin.x_LUT4_C.B",
        "Info:      logic  0.24  1.64 Source fin.x_LUT4_C.F",
        "Info:    routing  0.82  2.46 Net fin.y (38,13) -> (39,13)",
        "Info:                          Sink fin.y_CCU2C.A",
        "Info:      logic  0.45  2.91 Source fin.y_CCU2C.FCO",
        "Info:                          Sink fin.acc_TRELLIS_FF_Q.DI",
        "Info: 3.52 ns logic, 5.27 ns routing",
    ])
    assert critical_path(log) == {"from": "fin.acc_TRELLIS_FF_Q.Q", "to": "fin.acc_TRELLIS_FF_Q.DI",
                                  "logic_levels": 2, "logic_ns": 3.52, "routing_ns": 5.27}
    assert critical_path("Info: no timing here") is None
