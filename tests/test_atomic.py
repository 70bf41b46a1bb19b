"""``gen.atomic``: the one atomic-output helper. A finished ``with`` block replaces the target whole;
an exception or a bad path leaves the target as it was and nothing beside it (no temporary
directories left behind)."""

import os
import re
from pathlib import Path

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from gen.atomic import atomic_dir, atomic_file, check_output_dir
from gen.errors import ParamError
from gen.units import Params, generate

REPO = Path(__file__).resolve().parent.parent


def _tree(path):
    """``{relative path: bytes}`` of every file under ``path`` (and the directories as ``None``)."""
    path = Path(path)
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}


def _old_out(tmp_path):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "a.txt").write_text("old a")
    (out / "sub" / "b.txt").write_text("old b")
    return out


def test_dir_success_replaces_whole(tmp_path):
    out = _old_out(tmp_path)
    with atomic_dir(out) as tmp:
        assert tmp.parent == out.resolve().parent and tmp != out.resolve()
        assert not (out / "new.txt").exists()
        (tmp / "new.txt").write_text("new")
        assert (out / "a.txt").read_text() == "old a"      # nothing visible before the end
    assert _tree(out) == {"new.txt": b"new"}
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert (out.stat().st_mode & 0o777) == 0o755


def test_dir_success_creates(tmp_path):
    with atomic_dir(tmp_path / "fresh") as tmp:
        (tmp / "x").write_text("1")
    assert _tree(tmp_path) == {"fresh": None, "fresh/x": b"1"}


def test_dir_exception_leaves_old_output_and_nothing_beside(tmp_path):
    out = _old_out(tmp_path)
    before = _tree(tmp_path)
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("new a")
            raise RuntimeError("half way")
    assert _tree(tmp_path) == before


def test_dir_exception_without_old_output_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "a").write_text("x")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("setup, target, message", [
    (lambda d: (d / "out").write_text("a file"), "out", r"output path '.*out' exists and is not a directory"),
    (lambda d: None, "missing/out", r"output directory parent '.*missing' does not exist"),
])
def test_dir_bad_paths_one_line_nothing_written(tmp_path, setup, target, message):
    setup(tmp_path)
    before = _tree(tmp_path)
    entered = []
    with pytest.raises(ParamError, match=message) as info:
        with atomic_dir(tmp_path / target):
            entered.append(1)
    assert "\n" not in str(info.value)
    assert not entered and _tree(tmp_path) == before


def test_dir_refuses_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "inner").mkdir()
    monkeypatch.chdir(tmp_path / "inner")
    for target in (".", "..", str(tmp_path)):
        with pytest.raises(ParamError, match="is \\(or contains\\) the current directory"):
            check_output_dir(target)
    assert check_output_dir("out") == Path("out")


def test_dir_make_parents(tmp_path):
    with atomic_dir(tmp_path / "a" / "b" / "out", make_parents=True) as tmp:
        (tmp / "f").write_text("1")
    assert (tmp_path / "a" / "b" / "out" / "f").read_text() == "1"
    assert os.listdir(tmp_path / "a" / "b") == ["out"]


def test_file_success_and_exception(tmp_path):
    path = tmp_path / "doc.md"
    path.write_text("old")
    with pytest.raises(ValueError, match="boom"):
        with atomic_file(path) as tmp:
            tmp.write_text("half")
            raise ValueError("boom")
    assert _tree(tmp_path) == {"doc.md": b"old"}
    with atomic_file(path) as tmp:
        tmp.write_text("new")
        assert path.read_text() == "old"
    assert _tree(tmp_path) == {"doc.md": b"new"}
    assert (path.stat().st_mode & 0o777) == 0o644


def test_file_nothing_written_is_an_error(tmp_path):
    path = tmp_path / "doc.md"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="nothing was written"):
        with atomic_file(path):
            pass
    assert _tree(tmp_path) == {"doc.md": b"old"}


@pytest.mark.parametrize("target, message", [
    ("missing/doc.md", r"directory of '.*doc.md' does not exist"),
    ("adir", r"output file '.*adir' is a directory"),
])
def test_file_bad_paths(tmp_path, target, message):
    (tmp_path / "adir").mkdir()
    before = _tree(tmp_path)
    with pytest.raises(ParamError, match=message):
        with atomic_file(tmp_path / target) as tmp:
            tmp.write_text("x")
    assert _tree(tmp_path) == before


class _Tiny(wiring.Component):
    a: In(2)
    y: Out(2)

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.y.eq(self.a)
        return m


def _broken(params):
    raise RuntimeError("unit factory failed")


def test_generate_failing_unit_leaves_old_output(tmp_path):
    out = _old_out(tmp_path)
    before = _tree(tmp_path)
    with pytest.raises(RuntimeError, match="unit factory failed"):
        generate(Params(), out, units=[("ln_tiny", lambda p: _Tiny()), ("ln_broken", _broken)])
    assert _tree(tmp_path) == before
    generate(Params(), out, units=[("ln_tiny", lambda p: _Tiny())])
    assert sorted(_tree(out)) == ["ln_tiny.v", "manifest.json"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


MOVE = re.compile(r"\bos\.(rename|replace)\(")


def test_only_gen_atomic_moves_outputs_into_place():
    """One mechanism: no other module of gen/ renames or replaces files into place."""
    assert MOVE.search("    os.replace(tmp, path)") and MOVE.search("os.rename(out_dir, old / 'd')")
    offenders = []
    for path in sorted((REPO / "gen").glob("*.py")):
        if path.name != "atomic.py":
            offenders += [f"{path.name}:{i}: {line.strip()}"
                          for i, line in enumerate(path.read_text().splitlines(), 1) if MOVE.search(line)]
    assert not offenders, "\n".join(offenders)
