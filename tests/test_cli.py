"""The generator CLI: outputs, determinism, and the one-line error contract."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_gen(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "gen", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def test_width8_writes_verilog_and_manifest(tmp_path):
    result = run_gen("--width", "8", "--out", "d", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "d"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["width"] == 8
    assert manifest["modules"], "no modules emitted"
    for name, entry in manifest["modules"].items():
        text = (out / entry["verilog"]).read_text()
        assert f"module {entry['top']}(" in text
        declared = {p["name"] for p in entry["ports"]}
        assert {"clk", "rst"} <= declared
        for port in entry["ports"]:
            assert port["name"] in text and port["width"] >= 1 and port["role"]
        assert "/" + "home" not in text and "/work" not in text and "/tmp" not in text
    # nothing but the outputs, no temporary directories left beside them
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_same_arguments_give_identical_bytes(tmp_path):
    for d in ("a", "b"):
        assert run_gen("--width", "5", "--block", "3", "--out", d, cwd=tmp_path).returncode == 0
    files_a = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files_a == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files_a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


@pytest.mark.parametrize("args, needle", [
    (["--width", "1"], "width must be an integer in 2..16, not 1"),
    (["--width", "17"], "width must be an integer in 2..16, not 17"),
    (["--block", "0"], "block must be an integer in 1..64, not 0"),
    (["--in-format", "fp99"], "unknown float format 'fp99'"),
    (["--in-format", "bf16"], "in-format 'bf16' has 8 exponent bits"),
    (["--chunks", "3"], "chunks must be a power of two"),
    (["--width", "eight"], "width must be an integer in 2..16, not 'eight'"),
])
def test_bad_values_one_line_exit_2_nothing_written(tmp_path, args, needle):
    result = run_gen(*args, "--out", "d", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            # running as root: a path under a regular file is unwritable for everyone
            target = tmp_path / "file"
            target.write_text("x")
            out = target / "d"
        else:
            out = locked / "d"
        result = run_gen("--out", str(out), cwd=tmp_path)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(out.parent.name) in lines[0], result.stderr
        assert not out.exists()
    finally:
        locked.chmod(0o700)


def test_existing_output_is_replaced_whole(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "stale.v").write_text("old")
    assert run_gen("--out", "d", cwd=tmp_path).returncode == 0
    assert not (out / "stale.v").exists()
    assert (out / "manifest.json").exists()
