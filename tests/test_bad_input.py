"""Bad input to the public Python API and the CLI: out-of-range, wrong-type and boundary values.

Contract checked here (from ``gen/__main__.py``, ``gen/units.py`` and the style guide):

* constructors of ``hw.formats`` and ``gen.units.Params`` raise ``ValueError`` (``ParamError``
  for ``Params``) whose message names the bad value (its ``repr``) and the allowed range;
* ``python -m gen`` with a bad argument exits with status 2 and prints exactly one line on stderr
  (``gen: error: ...``) naming the value and the allowed range, and writes nothing: the ``--out``
  directory is not created (or, if it exists, not modified) and no temporary directory is left
  beside it;
* ``gen.units.generate`` leaves nothing half-written when a unit fails part-way;
* boundary values that must work (width 2 and 16, block 1 and 64, one channel, K = 1, the
  smallest count) produce Verilog.

Property-based parts use hypothesis with a small example budget (the whole file runs in well
under a minute apart from the CLI generation runs).
"""

import json
import math
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gen.units import LIMITS, BN_MAX_EXP_BITS, ParamError, Params, generate
from hw.formats import (BFPFormat, FLOAT_FORMATS, FloatFormat, MAX_BLOCK, MAX_WIDTH, MIN_WIDTH,
                        float_format, internal_format)

REPO = Path(__file__).resolve().parent.parent
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

#: Values of the wrong type for an integer parameter.
WRONG_TYPES = [8.0, "8", None, [8], True, False, 2 ** 0.5, Fraction(8, 1)]


def _range_text(lo, hi):
    return f"{lo}..{hi}"


# --------------------------------------------------------------------------------------------
# hw.formats
# --------------------------------------------------------------------------------------------

@FAST
@given(exp=st.integers(-3, 14), frac=st.integers(-3, 56))
def test_float_format_range(exp, frac):
    ok = 2 <= exp <= 11 and 1 <= frac <= 52
    if ok:
        f = FloatFormat("x", exp, frac)
        assert f.width == 1 + exp + frac
        return
    with pytest.raises(ValueError) as info:
        FloatFormat("x", exp, frac)
    msg = str(info.value)
    bad, rng = (exp, "2..11") if not 2 <= exp <= 11 else (frac, "1..52")
    assert repr(bad) in msg and rng in msg, msg


@pytest.mark.parametrize("value", WRONG_TYPES, ids=repr)
def test_float_format_wrong_type(value):
    """An exponent or fraction width that is not a plain int (bool included) is rejected."""
    for args in ((value, 4), (5, value)):
        with pytest.raises(ValueError) as info:
            FloatFormat("x", *args)
        assert repr(value) in str(info.value)


@FAST
@given(width=st.integers(-2, MAX_WIDTH + 3), exp=st.integers(0, 13), block=st.integers(-2, MAX_BLOCK + 3))
def test_bfp_format_range(width, exp, block):
    checks = [(width, MIN_WIDTH, MAX_WIDTH), (exp, 2, 11), (block, 1, MAX_BLOCK)]
    bad = next(((v, lo, hi) for v, lo, hi in checks if not lo <= v <= hi), None)
    if bad is None:
        b = BFPFormat(width, exp, block)
        assert b.code_max == (1 << (width - 1)) - 1
        return
    with pytest.raises(ValueError) as info:
        BFPFormat(width, exp, block)
    assert repr(bad[0]) in str(info.value) and _range_text(bad[1], bad[2]) in str(info.value)


@pytest.mark.parametrize("value", WRONG_TYPES, ids=repr)
def test_bfp_format_wrong_type(value):
    for args in ((value, 5, 4), (8, value, 4), (8, 5, value)):
        with pytest.raises(ValueError) as info:
            BFPFormat(*args)
        assert repr(value) in str(info.value)


@pytest.mark.parametrize("value", [3, 24, -1, 0, 100] + WRONG_TYPES, ids=repr)
def test_internal_format_bad(value):
    with pytest.raises(ValueError) as info:
        internal_format(value)
    assert repr(value) in str(info.value) and "4..23" in str(info.value)


def test_internal_format_boundaries():
    assert internal_format(4).frac_bits == 4
    assert internal_format(23).frac_bits == 23


@FAST
@given(name=st.one_of(st.text(max_size=8), st.sampled_from(["e1m2", "e12m3", "e5m0", "e5m53", "fp8", "FP10", "e5m2 "])))
def test_float_format_names(name):
    """Any name gives a format or a ValueError naming it, never another exception."""
    try:
        fmt = float_format(name)
    except ValueError as exc:
        assert repr(name) in str(exc) or any(ch.isdigit() for ch in name), str(exc)
    else:
        assert isinstance(fmt, FloatFormat)


@pytest.mark.parametrize("fmt_name", ["fp10", "e4m3", "fp16", "e2m2"])
@FAST
@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_encode_any_finite_float(fmt_name, value):
    """encode() accepts every finite float (huge, tiny, subnormal, -0.0): the result fits the
    format, keeps the sign of non-zero values and never exceeds the largest magnitude."""
    fmt = float_format(fmt_name)
    bits = fmt.encode(value)
    assert isinstance(bits, int) and 0 <= bits < (1 << fmt.width)
    decoded = fmt.decode(bits)
    assert abs(decoded) <= fmt.max_value()
    if decoded != 0:
        assert (decoded < 0) == (value < 0)
    if abs(Fraction(value)) >= fmt.max_value():
        assert abs(decoded) == fmt.max_value()


@pytest.mark.parametrize("fmt_name", ["fp10", "e4m3"])
def test_encode_nan_is_a_clear_error(fmt_name):
    with pytest.raises(ValueError):
        float_format(fmt_name).encode(math.nan)


@pytest.mark.parametrize("fmt_name", ["fp10", "e4m3"])
@pytest.mark.parametrize("sign", [1, -1])
def test_encode_infinity(fmt_name, sign):
    """encode() documents saturation to the largest magnitude; an infinity must saturate (or be
    refused with a ValueError), not escape as an OverflowError from ``Fraction``."""
    fmt = float_format(fmt_name)
    try:
        bits = fmt.encode(sign * math.inf)
    except ValueError:
        return
    assert fmt.decode(bits) == sign * fmt.max_value()


@pytest.mark.parametrize("value", [None, object(), [1.0]], ids=["None", "object", "list"])
def test_encode_wrong_type(value):
    with pytest.raises((TypeError, ValueError)):
        float_format("fp10").encode(value)


# --------------------------------------------------------------------------------------------
# gen.units.Params
# --------------------------------------------------------------------------------------------

def _expect_param_error(kwargs, bad_value, *fragments):
    with pytest.raises(ParamError) as info:
        Params(**kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    assert repr(bad_value) in msg, msg
    for f in fragments:
        assert f in msg, msg
    return msg


@pytest.mark.parametrize("name", sorted(LIMITS))
@FAST
@given(data=st.data())
def test_params_integer_fields(name, data):
    lo, hi = LIMITS[name]
    value = data.draw(st.one_of(st.integers(lo - 5, lo + 5), st.integers(hi - 5, hi + 5),
                                st.integers(-10 ** 9, 10 ** 9)))
    kwargs = {name: value}
    if name == "chunks":
        kwargs["max_count"] = max(2 * abs(value), 2) if lo <= value <= hi else 4096
    if name == "max_count":
        kwargs["chunks"] = 1
    in_range = lo <= value <= hi
    if name == "chunks" and in_range and value & (value - 1):
        _expect_param_error(kwargs, value, "power of two", "1..64")
    elif in_range:
        p = Params(**kwargs)
        assert getattr(p, name) == value
    else:
        _expect_param_error(kwargs, value, name.replace("_", "-"), _range_text(lo, hi))


@pytest.mark.parametrize("name", sorted(LIMITS))
@pytest.mark.parametrize("value", WRONG_TYPES, ids=repr)
def test_params_wrong_types(name, value):
    lo, hi = LIMITS[name]
    if name == "internal_frac_bits" and value is None:
        assert Params(internal_frac_bits=None).frac_bits == min(23, Params().width + 4)   # the default
        return
    _expect_param_error({name: value}, value, name.replace("_", "-"), _range_text(lo, hi))


def test_params_max_count_vs_chunks():
    msg = _expect_param_error({"chunks": 64, "max_count": 127}, 127, "128")
    assert "max-count" in msg
    assert Params(chunks=64, max_count=128).max_count == 128


@pytest.mark.parametrize("name", ["fp32", "bf16", "e7m2", "e8m0", "nope", "", None, 10, "e1m1"])
def test_params_in_format_rejected(name):
    with pytest.raises(ParamError) as info:
        Params(in_format=name)
    msg = str(info.value)
    # names the format, or (e<E>m<M> with an impossible field) the bad field and its range
    assert repr(name) in msg or str(name) in msg or ".." in msg, msg


@pytest.mark.parametrize("name", sorted(n for n, f in FLOAT_FORMATS.items() if f.exp_bits <= BN_MAX_EXP_BITS)
                         + ["e2m1", "e6m10", "E4M3"])
def test_params_in_format_accepted(name):
    assert Params(in_format=name).float_format.exp_bits <= BN_MAX_EXP_BITS


# --------------------------------------------------------------------------------------------
# gen.units.generate: nothing half-written
# --------------------------------------------------------------------------------------------

SMALL = dict(width=4, block=2, in_format="e3m2", chunks=1, channels=1, max_count=2)


def _shifter_only():
    from gen.units import all_units
    return [u for u in all_units() if u[0] == "ln_bfp_shifter"]


class _Boom(Exception):
    pass


def _failing_units(exc=_Boom):
    def factory(_p):
        raise exc("unit failed on purpose")
    return _shifter_only() + [("ln_broken", factory)]


def _listing(path):
    return sorted((str(p.relative_to(path)), p.is_dir() or p.read_bytes()) for p in Path(path).rglob("*"))


@pytest.mark.parametrize("exc", [_Boom, KeyboardInterrupt])
def test_generate_failure_leaves_nothing(tmp_path, exc):
    before = _listing(tmp_path)
    with pytest.raises(exc):
        generate(Params(**SMALL), tmp_path / "out", units=_failing_units(exc))
    assert _listing(tmp_path) == before


def test_generate_failure_keeps_existing_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.v").write_text("module old; endmodule\n")
    before = _listing(tmp_path)
    with pytest.raises(_Boom):
        generate(Params(**SMALL), out, units=_failing_units())
    assert _listing(tmp_path) == before


def test_generate_bad_destinations(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    before = _listing(tmp_path)
    for out in (f, tmp_path / "missing" / "out"):
        with pytest.raises(ParamError) as info:
            generate(Params(**SMALL), out, units=_shifter_only())
        assert str(out.parent if out.name == "out" else out) in str(info.value)
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("out", [".", ""])
def test_generate_into_current_directory(tmp_path, monkeypatch, out):
    """``--out .`` (or an empty path) cannot be replaced atomically: it must be refused with a
    ParamError before anything is written, and leave no temporary directory behind."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("keep")
    monkeypatch.chdir(work)
    before = _listing(tmp_path)
    try:
        generate(Params(**SMALL), out, units=_shifter_only())
    except ParamError:
        pass
    else:
        pytest.fail(f"generate(params, {out!r}) replaced the current directory")
    finally:
        assert _listing(tmp_path) == before


@pytest.mark.parametrize("params", [{"width": 8}, None, "fp10"], ids=repr)
def test_generate_wrong_params_type(tmp_path, params):
    with pytest.raises((TypeError, ParamError)) as info:
        generate(params, tmp_path / "out", units=_shifter_only())
    assert "Params" in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs", [
    dict(width=2, block=1),
    dict(width=16, block=1),
    dict(width=16, block=64, in_format="fp16"),
    dict(width=3, block=5, in_format="e2m1"),
], ids=lambda k: "-".join(f"{a}{b}" for a, b in k.items()))
def test_generate_shifter_boundaries(tmp_path, kwargs):
    p = Params(**dict(dict(chunks=1, channels=1, max_count=2), **kwargs))
    manifest = generate(p, tmp_path / "out", units=_shifter_only())
    text = (tmp_path / "out" / "ln_bfp_shifter.v").read_text()
    assert "module ln_bfp_shifter" in text
    assert manifest["modules"]["ln_bfp_shifter"]["ports"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


# --------------------------------------------------------------------------------------------
# The CLI
# --------------------------------------------------------------------------------------------

def _cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "gen", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


#: (arguments, the bad value as it must appear, the allowed range as it must appear)
CLI_RANGE_ERRORS = [
    (["--width", "1"], "1", "2..16"),
    (["--width", "17"], "17", "2..16"),
    (["--width", "-3"], "-3", "2..16"),
    (["--block", "0"], "0", "1..64"),
    (["--block", "65"], "65", "1..64"),
    (["--chunks", "3"], "3", "1..64"),
    (["--chunks", "128"], "128", "1..64"),
    (["--channels", "0"], "0", "1..4096"),
    (["--channels", "4097"], "4097", "1..4096"),
    (["--max-count", "1"], "1", "2.."),
    (["--chunks", "8", "--max-count", "15"], "15", "16"),
    (["--internal-frac-bits", "3"], "3", "4..23"),
    (["--internal-frac-bits", "24"], "24", "4..23"),
    (["--in-format", "fp32"], "fp32", "2..6"),
    (["--in-format", "bogus"], "bogus", "e<E>m<M>"),
]
#: Values argparse itself rejects (not integers): they must still name the allowed range.
CLI_TYPE_ERRORS = [
    (["--width", "abc"], "abc", "2..16"),
    (["--block", "8.5"], "8.5", "1..64"),
    (["--channels", ""], "''", "1..4096"),
]


def _check_cli_error(tmp_path, args, value, rng):
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "a.v").write_text("keep")
    before = _listing(tmp_path)
    for out in ("new_out", "existing"):
        r = _cli([*args, "--out", out], tmp_path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (r.returncode, r.stderr)
        assert len(lines) == 1, r.stderr
        assert lines[0].startswith("gen: error:"), lines[0]
        assert value in lines[0] and rng in lines[0], lines[0]
        assert r.stdout == ""
        assert _listing(tmp_path) == before


@pytest.mark.parametrize("args,value,rng", CLI_RANGE_ERRORS, ids=lambda a: " ".join(a) if isinstance(a, list) else None)
def test_cli_range_errors(tmp_path, args, value, rng):
    _check_cli_error(tmp_path, args, value, rng)


@pytest.mark.parametrize("args,value,rng", CLI_TYPE_ERRORS, ids=lambda a: " ".join(a) if isinstance(a, list) else None)
def test_cli_type_errors(tmp_path, args, value, rng):
    _check_cli_error(tmp_path, args, value, rng)


@pytest.mark.parametrize("args", [["--bogus"], ["--width"], ["positional"], ["--width", "4", "--width"]])
def test_cli_usage_errors(tmp_path, args):
    r = _cli(args, tmp_path)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("gen: error:"), r.stderr
    assert os.listdir(tmp_path) == []


def test_cli_bad_out(tmp_path):
    (tmp_path / "file").write_text("x")
    before = _listing(tmp_path)
    for out in ("file", "missing/out"):
        r = _cli(["--out", out, "--width", "4", "--block", "2"], tmp_path)
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and out.split("/")[0] in r.stderr, r.stderr
        assert _listing(tmp_path) == before


def test_cli_help_names_ranges(tmp_path):
    r = _cli(["--help"], tmp_path)
    assert r.returncode == 0
    for name, (lo, hi) in LIMITS.items():
        assert f"{lo}..{hi}" in r.stdout, name


def test_cli_smallest_configuration(tmp_path):
    """Every unit at the smallest sizes: width 2, block 1, one channel, K = 1, n <= 2."""
    r = _cli(["--out", "out", "-q", "--width", "2", "--block", "1", "--channels", "1", "--chunks", "1",
              "--max-count", "2", "--internal-frac-bits", "4", "--in-format", "e2m1"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "" and r.stdout == ""
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    for name in manifest["modules"]:
        assert f"module {name}" in (tmp_path / "out" / f"{name}.v").read_text()
    assert sorted(os.listdir(tmp_path)) == ["out"]


@pytest.mark.long
def test_cli_largest_configuration(tmp_path):
    """Every unit at the largest element width and block (slow: the cores at B = 64)."""
    r = _cli(["--out", "out", "-q", "--width", "16", "--block", "64", "--channels", "64",
              "--in-format", "fp16", "--internal-frac-bits", "23"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["out"]
