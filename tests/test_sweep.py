"""Every advertised parameter works: a sweep over the whole parameter range of the generator, bit
for bit against the golden model (issue 16).

Points (:data:`FORWARD`, :data:`BACKWARD`, :data:`SHIFTER`): every width W = 2..16 once per unit,
block sizes 1, 2, 3, 63 and 64, one channel and ``channels = B + 1``, K = 1 and the largest K (64),
``max_count`` at its lower limit 2 K, every named input format, custom formats with 2-, 3-, 5- and
6-bit exponents, and internal fraction bits at both ends (4 and 23). The points of W = 4, 8 and 12
are entries of the per-unit default matrices (``tests/test_forward_core.py``,
``tests/test_backward_core.py``), so their Verilator builds are shared with those tests.

Default run: the directed plan of each point (every ``Planner`` / ``BackwardPlan`` step, which
depends on the configuration only) plus a few random commands (:data:`ELEMENTS`), and for the
shifter its directed blocks plus :data:`SHIFTER_BLOCKS` random ones. ``--long``: the full element
counts of the per-unit regressions (10**5 per core point, 1000 random shifter blocks) and the
points kept out of the default run for their build time (:data:`LONG_FORWARD`,
:data:`LONG_BACKWARD`: the forward core's second large block size, both of the backward core's).

The plan builders are also run without a simulator for every point
(``test_plans_fit_the_configuration``): every directed block must be a block of the configuration
and every good command's count a count the hardware accepts (``sim.bench.common.check_blocks``,
``check_count``); that check is how the width-3 failure of the issue was traced to the bench (a
literal code 4 in a 3-bit lane packs as -4).
"""

import pytest

from tests.test_backward_core import _label, _params, run_backward
from tests.test_forward_core import DEFAULT_MATRIX as FORWARD_MATRIX, _check, _report, run_forward_bench
from tests.test_backward_core import DEFAULT_MATRIX as BACKWARD_MATRIX

#: y lanes (forward) or n * channels (backward) of random commands after the directed plan.
ELEMENTS = 2000
LONG_ELEMENTS = 100_000
SHIFTER_BLOCKS = 200
LONG_SHIFTER_BLOCKS = 1000


def _pt(width, block, chunks, channels, in_format, frac=None, max_count=None):
    d = {"width": width, "block": block, "chunks": chunks, "channels": channels, "in_format": in_format}
    if frac is not None:
        d["internal_frac_bits"] = frac
    if max_count is not None:
        d["max_count"] = max_count
    return d


def _main(matrix, width, block=4, chunks=None):
    """The entry of a per-unit default matrix with this width and block size (and K): its build is
    shared with that test, and B = 4 keeps the directed plan short."""
    return dict(next(e for e in matrix if e["width"] == width and e["block"] == block
                     and chunks in (None, e["chunks"])))


#: Forward core points: one per width; the comment names the edges a point takes.
FORWARD = [
    _pt(2, 64, 1, 1, "e5m2"),                       # W min, B max, one channel, K = 1
    _pt(3, 3, 64, 4, "e4m3", max_count=128),        # K max with max_count = 2 K, C = B + 1
    _main(FORWARD_MATRIX, 4),
    _pt(5, 1, 2, 2, "fp16", frac=23),               # B = 1, C = B + 1, frac max
    _pt(6, 2, 8, 3, "fp15", frac=4),                # frac min, C = B + 1
    _pt(7, 3, 1, 1, "e6m3"),                        # custom 6-bit exponent
    _main(FORWARD_MATRIX, 8),
    _pt(9, 2, 64, 1, "e5m7", max_count=256),        # custom 5-bit exponent, K max
    _pt(10, 1, 1, 2, "e4m3", frac=23),
    _pt(11, 3, 4, 4, "e3m4", frac=4),               # 3-bit exponent field
    _main(FORWARD_MATRIX, 12, chunks=1),
    _pt(13, 2, 16, 3, "fp16"),
    _pt(14, 1, 64, 1, "fp15", frac=23, max_count=128),
    _pt(15, 3, 2, 4, "e2m3", frac=4),               # 2-bit exponent field (exp_max = 3)
    _pt(16, 2, 1, 3, "fp10", frac=23),              # W max
]
#: Backward core points: the same edges, the large block on another width.
BACKWARD = [
    _pt(2, 2, 64, 3, "e2m1", max_count=128),
    _pt(3, 3, 1, 1, "e5m2"),                        # one channel (B = 63 at W = 3: LONG_BACKWARD)
    _main(BACKWARD_MATRIX, 4),
    _pt(5, 3, 1, 4, "e6m3", frac=23),
    _pt(6, 1, 64, 1, "fp15", max_count=128),
    _pt(7, 2, 2, 3, "fp16", frac=4),
    _main(BACKWARD_MATRIX, 8),
    _pt(9, 1, 1, 2, "e4m3", frac=4),
    _pt(10, 3, 8, 4, "e5m7"),
    _pt(11, 2, 64, 1, "e3m4", max_count=128),
    _main(BACKWARD_MATRIX, 12),
    _pt(13, 1, 4, 2, "fp10", frac=23),
    _pt(14, 3, 1, 1, "e4m3", frac=4),
    _pt(15, 2, 16, 3, "e2m3", frac=23),
    _pt(16, 3, 2, 4, "fp16", frac=4),
]
#: Kept for --long (their Verilator builds take minutes): the forward core's second large block
#: size, both of the backward core's (its W3 B63 point alone cost about 90 CPU s of the default run).
LONG_FORWARD = [_pt(3, 63, 64, 64, "fp10", max_count=128)]
LONG_BACKWARD = [_pt(3, 63, 1, 1, "e5m2"), _pt(2, 64, 64, 65, "e5m2", max_count=128)]

#: Shifter points: every width, every block edge, every named format and custom ones, BFP
#: exponents narrower than the input's.
SHIFTER = [
    {"width": 2, "block": 64, "in_format": "e5m2"},
    {"width": 3, "block": 1, "in_format": "e4m3"},
    {"width": 4, "block": 63, "in_format": "e4m3"},
    {"width": 5, "block": 2, "in_format": "e2m1"},
    {"width": 6, "block": 3, "in_format": "e6m3"},
    {"width": 7, "block": 64, "in_format": "fp10"},
    {"width": 8, "block": 1, "in_format": "bf16", "exp_bits": 6},
    {"width": 9, "block": 2, "in_format": "fp16"},
    {"width": 10, "block": 3, "in_format": "e5m7"},
    {"width": 11, "block": 63, "in_format": "e3m4"},
    {"width": 12, "block": 1, "in_format": "fp32"},
    {"width": 13, "block": 2, "in_format": "e2m52"},    # widest fraction field
    {"width": 14, "block": 3, "in_format": "fp16", "exp_bits": 4},
    {"width": 15, "block": 2, "in_format": "e6m9"},
    {"width": 16, "block": 64, "in_format": "fp15"},
]


def _id(e):
    return "-".join(f"{k[:5]}{v}" if k != "in_format" else str(v) for k, v in e.items())


def _long(entries):
    return [pytest.param(e, marks=pytest.mark.long, id=_id(e)) for e in entries]


def test_sweep_covers_every_parameter():
    """The points above do visit what the issue asks for (so an edit cannot drop one silently)."""
    from gen.units import LIMITS, Params
    from hw.formats import FLOAT_FORMATS
    lo_w, hi_w = LIMITS["width"]
    lo_f, hi_f = LIMITS["internal_frac_bits"]
    for name, points in (("forward", FORWARD + LONG_FORWARD), ("backward", BACKWARD + LONG_BACKWARD)):
        ps = [Params(**e) for e in points]
        assert sorted(p.width for p in ps[:15]) == list(range(lo_w, hi_w + 1)), name
        assert {1, 2, 3, 63, 64} <= {p.block for p in ps}, name
        assert {1, 64} <= {p.chunks for p in ps}, name
        assert 1 in {p.channels for p in ps} and any(p.channels == p.block + 1 for p in ps), name
        assert any(p.max_count == 2 * p.chunks for p in ps), name
        assert {lo_f, hi_f} <= {p.frac_bits for p in ps}, name
        assert {2, 3, 4, 5, 6} <= {p.bfp.exp_bits for p in ps}, name
    named = {n for n, f in FLOAT_FORMATS.items() if f.exp_bits <= 6}
    assert named <= {e["in_format"] for e in FORWARD} | {e["in_format"] for e in BACKWARD}
    assert any(e["in_format"] not in FLOAT_FORMATS and Params(**e).bfp.exp_bits >= 5 for e in FORWARD)
    assert sorted(e["width"] for e in SHIFTER) == list(range(lo_w, hi_w + 1))
    assert {1, 2, 3, 63, 64} <= {e["block"] for e in SHIFTER}
    assert set(FLOAT_FORMATS) <= {e["in_format"] for e in SHIFTER}


def _plan_points():
    out = []
    for unit, short, long in (("forward", FORWARD, LONG_FORWARD), ("backward", BACKWARD, LONG_BACKWARD)):
        out += [pytest.param(unit, e, id=f"{unit}-{_id(e)}") for e in short]
        out += [pytest.param(unit, e, id=f"{unit}-{_id(e)}", marks=pytest.mark.long) for e in long]
    return out


@pytest.mark.parametrize("unit,entry", _plan_points())
def test_plans_fit_the_configuration(unit, entry):
    """Without a simulator (about a second per point): the plan of the point builds, and every
    block and count in it is valid for its configuration (the builders raise a ValueError naming
    the step otherwise)."""
    from gen.units import Params
    from sim.bench.backward_core import BackwardPlan
    from sim.bench.forward_core import Planner
    steps = (Planner if unit == "forward" else BackwardPlan)(Params(**entry), 1).build(0)
    assert sum(not s["bad"] for s in steps) > 10


@pytest.mark.parametrize("entry", [pytest.param(e, id=_id(e)) for e in FORWARD] + _long(LONG_FORWARD))
def test_sweep_forward_core(entry, request):
    long = request.config.getoption("ln_long")
    elements = LONG_ELEMENTS if long else ELEMENTS
    res = run_forward_bench(entry, elements, seed=3)
    _report(entry, res)
    _check(res, elements)


@pytest.mark.parametrize("entry", [pytest.param(e, id=_id(e)) for e in BACKWARD] + _long(LONG_BACKWARD))
def test_sweep_backward_core(entry, request):
    long = request.config.getoption("ln_long")
    elements = LONG_ELEMENTS if long else ELEMENTS
    p = _params(entry, max_count=entry.get("max_count", 4096))
    if "internal_frac_bits" in entry:
        from dataclasses import replace
        p = replace(p, internal_frac_bits=entry["internal_frac_bits"])
    result = run_backward(p, elements, seed=sum(ord(ch) for ch in _label(p)) + 3)
    assert result is not None
    assert result["elements"] >= elements
    assert result["grads_mismatches"] == 0 and result["dx_mismatches"] == 0


@pytest.mark.parametrize("entry", [pytest.param(e, id=_id(e)) for e in SHIFTER])
def test_sweep_bfp_shifter(entry, request):
    from tests.test_bfp_shifter import _check as shifter_check, _run
    from hw.bfp_shifter import BFPShifter
    from hw.formats import BFPFormat, float_format
    long = request.config.getoption("ln_long")
    fmt = float_format(entry["in_format"])
    bfp = BFPFormat(entry["width"], entry.get("exp_bits", fmt.exp_bits), entry["block"])
    dut = BFPShifter(fmt, bfp)
    blocks = LONG_SHIFTER_BLOCKS if long else SHIFTER_BLOCKS
    cfg = {"unit": "shifter", "in_format": fmt.name, "width": bfp.width, "block": bfp.block,
           "exp_bits": bfp.exp_bits, "random_blocks": blocks, "seed": 4, "summary": "summary.json"}
    name = f"bfp_shifter_w{bfp.width}_b{bfp.block}_{fmt.name}_e{bfp.exp_bits}"
    shifter_check(_run(cfg, dut, name), dut, random_blocks=blocks)


# --- what cannot work is refused, with one line naming the value and the range ----------------

#: Just outside each edge the sweep visits: (Params keywords, text the one-line message must hold).
OUTSIDE = [
    ({"width": 1}, "width must be an integer in 2..16, not 1"),
    ({"width": 17}, "width must be an integer in 2..16, not 17"),
    ({"block": 0}, "block must be an integer in 1..64, not 0"),
    ({"block": 65}, "block must be an integer in 1..64, not 65"),
    ({"channels": 0}, "channels must be an integer in 1..4096, not 0"),
    ({"chunks": 128, "max_count": 256}, "chunks must be an integer in 1..64, not 128"),
    ({"chunks": 48, "max_count": 96}, "chunks must be a power of two in 1..64, not 48"),
    ({"chunks": 64, "max_count": 127}, "max-count must be at least 2 * chunks = 128, not 127"),
    ({"internal_frac_bits": 3}, "internal-frac-bits must be an integer in 4..23, not 3"),
    ({"internal_frac_bits": 24}, "internal-frac-bits must be an integer in 4..23, not 24"),
    ({"in_format": "e7m2"}, "in-format 'e7m2' has 7 exponent bits; the Range-BN units accept 2..6"),
    ({"in_format": "e1m2"}, "in-format 'e1m2' has 1 exponent bits; the Range-BN units accept 2..6"),
    ({"in_format": "bf16"}, "in-format 'bf16' has 8 exponent bits; the Range-BN units accept 2..6"),
    ({"in_format": "e5m0"}, "in-format 'e5m0': float fraction bits must be an integer in 1..52, not 0"),
    ({"in_format": "e5m53"}, "in-format 'e5m53': float fraction bits must be an integer in 1..52, not 53"),
]


@pytest.mark.parametrize("kwargs,message", OUTSIDE, ids=[_id(k) for k, _ in OUTSIDE])
def test_params_reject_outside_the_sweep(kwargs, message):
    from gen.units import ParamError, Params
    with pytest.raises(ParamError) as info:
        Params(**kwargs)
    assert str(info.value).startswith(message) and "\n" not in str(info.value), str(info.value)


@pytest.mark.parametrize("args,message", [
    (["--in-format", "e1m2"], "in-format 'e1m2' has 1 exponent bits; the Range-BN units accept 2..6"),
    (["--in-format", "e5m0"], "in-format 'e5m0': float fraction bits must be an integer in 1..52, not 0"),
    (["--chunks", "64", "--max-count", "127"], "max-count must be at least 2 * chunks = 128, not 127"),
])
def test_cli_rejects_outside_the_sweep(args, message, tmp_path):
    """``python -m gen``: exit status 2, one ``gen: error:`` line, nothing written."""
    from tests.test_cli import run_gen
    result = run_gen(*args, "--out", "d", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gen: error: {message}"), result.stderr
    assert list(tmp_path.iterdir()) == []


def _core_args(**change):
    from hw.formats import BFPFormat, internal_format
    args = {"bfp": BFPFormat(8, 5, 4), "internal": internal_format(12), "channels": 4,
            "max_count": 64, "max_chunks": 4}
    args.update(change)
    return args


@pytest.mark.parametrize("core", ["forward", "backward"])
@pytest.mark.parametrize("change,message", [
    ({"bfp": "bfp"}, "bfp must be a hw.formats.BFPFormat, not 'bfp'"),
    ({"bfp": ("BFP", 8, 8, 4)}, "in-format of the BFP format (W=8, B=4) has 8 exponent bits; the Range-BN "
                                "units accept 2..6 (fp10, fp16, fp15, e4m3, e5m2, e<E>m<M>)"),
    ({"internal": ("FLOAT", 5, 10)}, "internal float must be e8m<M> with M in 4..23 (hw.formats.internal_format), not 'e5m10'"),
    ({"internal": ("FLOAT", 8, 30)}, "internal float must be e8m<M> with M in 4..23 (hw.formats.internal_format), not 'e8m30'"),
    ({"channels": 0}, "channels must be a positive integer, not 0"),
    ({"channels": 4097}, "channels must be an integer in 1..4096, not 4097"),
    ({"channels": True}, "channels must be a positive integer, not True"),
    ({"max_chunks": 128, "max_count": 256}, "max_chunks must be a power of two in 1..64, not 128"),
    ({"max_chunks": 3}, "max_chunks must be a power of two in 1..64, not 3"),
    ({"max_count": 7}, "max_count must be an integer >= 2 * max_chunks = 8, not 7"),
    ({"max_count": (1 << 24) + 1}, "max_count must be an integer in 8..16777216, not 16777217"),
], ids=lambda v: str(v)[:40])
def test_cores_reject_outside_the_sweep(core, change, message):
    """The constructors refuse what the CLI refuses (a BFP exponent field of 7..11 bits, which
    ``BFPFormat`` allows, an internal float other than ``internal_format(4..23)``, sizes beyond
    the generator's limits), with one line, before elaborating anything."""
    from hw.backward_core import BackwardCore
    from hw.formats import BFPFormat, FloatFormat
    from hw.forward_core import ForwardCore
    for key, value in list(change.items()):
        if isinstance(value, tuple) and value[0] == "BFP":
            change[key] = BFPFormat(*value[1:])
        elif isinstance(value, tuple) and value[0] == "FLOAT":
            change[key] = FloatFormat(f"e{value[1]}m{value[2]}", *value[1:])
    cls = ForwardCore if core == "forward" else BackwardCore
    with pytest.raises(ValueError) as info:
        cls(**_core_args(**change))
    assert str(info.value) == message
