"""Formal checks of the emitted Verilog (``sim/verify/formal.py``): the BFP shifter proved equal to an
independent specification for all inputs at small sizes, stream protocol properties of every unit.

Default run: the suite in ``sim.verify.formal.DEFAULT_SUITE`` (a minute or two on two cores). Bigger
proofs: ``pytest --long tests/test_formal.py``.
"""

import itertools
import random
import re

import pytest

from hw.formats import BFPFormat, float_format
from sim.verify import formal
from sim.model.golden import float_to_bfp



@pytest.fixture(autouse=True)
def _sby_installed():
    """The proofs are part of the default regression: a missing tool is a failure, not a skip."""
    if not formal.sby_available():
        pytest.fail("yowasp-sby not found: install the test extra (pip install -e '.[test]')")


def _blocks(fmt, block, limit, seed=1):
    n = 1 << (fmt.width * block)
    if n <= limit:
        mask = (1 << fmt.width) - 1
        return [[(x >> (k * fmt.width)) & mask for k in range(block)] for x in range(n)]
    rnd = random.Random(seed)
    words = list(range(1 << fmt.width))
    edge = [w for w in words if fmt.unpack(w)[1] in (0, 1, fmt.exp_max)]
    return [[rnd.choice(edge if rnd.random() < 0.3 else words) for _ in range(block)]
            for _ in range(limit)]


@pytest.mark.parametrize("fmt_name,width,block", [
    ("e2m2", 3, 2), ("e2m2", 2, 2), ("e3m2", 4, 2), ("e2m2", 4, 3), ("e3m2", 3, 3),
    ("e2m1", 5, 3), ("fp10", 4, 2), ("fp10", 8, 2), ("e3m2", 16, 2), ("e4m3", 6, 1),
])
def test_specification_matches_golden(fmt_name, width, block):
    """The formal specification is itself checked against ``sim.model.golden.float_to_bfp``:
    exhaustively up to 4096 blocks, else on 3000 random blocks biased to edge exponents."""
    fmt = float_format(fmt_name)
    bfp = BFPFormat.for_float(fmt, width, block)
    blocks = _blocks(fmt, block, 4096)
    got = formal.spec_eval(fmt, bfp, blocks)
    for words, g in zip(blocks, got):
        ref = float_to_bfp(fmt, bfp, words)
        want = (ref.exponent, list(ref.codes), {k: int(v) for k, v in ref.flags.items()})
        assert g == want, f"{fmt_name} W={width} B={block} words={words}: spec {g} golden {want}"


def _suite_params(entries, long):
    marks = [pytest.mark.long] if long else []
    return [pytest.param(*e, id=f"{e[0]}-{e[4]}-W{e[1]}-B{e[2]}-{e[3]}", marks=marks) for e in entries]


@pytest.mark.parametrize("unit,width,block,in_format,check,depth",
                         _suite_params(formal.DEFAULT_SUITE, False) + _suite_params(formal.LONG_SUITE, True))
def test_formal(unit, width, block, in_format, check, depth):
    result = formal.run_check(unit, formal.suite_params(unit, width, block, in_format), check, depth=depth)
    assert result.passed, f"{result.name}: {result.status}\n{result.log_tail}\nwork directory: {result.workdir}"


def _break_rounding(text):
    """Turn the first addition of the emitted Verilog into a subtraction (a rounding or exponent
    adder): the equivalence proof must fail."""
    from sim.verify.fault_inject import apply, mutants
    adds = [m for m in mutants(text) if m.description == "binary + -> -"]
    assert adds, "no addition found in the emitted Verilog"
    return apply(text, adds[0])


def _break_hold(text):
    """Make the output payload register load on every cycle, stalled or not: breaks 'payload
    holds while valid & ~ready' (the formal protocol check must fail)."""
    new, n = re.subn(r"(always @\(posedge clk\)\s+)o__payload <= [^;]*;",
                     r"\1o__payload <= i__payload ^ o__payload;", text, count=1)
    assert n == 1, "sanity mutation target (o__payload register) not found in the emitted Verilog"
    return new


def test_harness_is_not_vacuous():
    """A wrong rounding must make the equivalence proof fail, and a corrupted load enable must make
    the protocol proof fail (guards against assumptions that exclude every behaviour)."""
    params = formal._params(3, 2, "e2m2")
    r = formal.run_check("ln_bfp_shifter", params, "equiv", patch=_break_rounding)
    assert r.status == "FAIL", r.log_tail
    r = formal.run_check("ln_bfp_shifter", params, "protocol", patch=_break_hold)
    assert r.status == "FAIL", r.log_tail


def test_fault_injection_machinery(tmp_path):
    """sim/verify/fault_inject.py on the shifter (no simulation): every kind of fault is generated, a
    mutant changes exactly one line, and a schema of 30 sampled mutants passes Verilator lint
    with the original design selected by default."""
    import random as _random
    from sim.verify.fault_inject import UNIT_BENCHES, apply, emit, lint, mutants, schema
    text, _comp = emit(UNIT_BENCHES["ln_bfp_shifter"])
    ms = mutants(text)
    assert {m.kind for m in ms} >= {"op-swap", "const-bit", "drop-term", "invert-select", "reduce-swap",
                                     "drop-unary", "shift-off-by-one"}
    for m in ms[:50]:
        a, b = text.split("\n"), apply(text, m).split("\n")
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1
    chosen = sorted(_random.Random(3).sample(ms, 30), key=lambda m: (m.line, m.start))
    ok, err = lint(schema(text, chosen), "ln_bfp_shifter", tmp_path)
    assert ok, err
