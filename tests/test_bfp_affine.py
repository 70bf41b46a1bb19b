# amaranth: UnusedElaboratable=no
"""BFPAffine against the golden model (``sim.model.golden_bn._fma_block``), bit for bit, with random
input gaps and output back-pressure; plus the sustained one-block-per-cycle check."""

import random
from fractions import Fraction

import pytest

from hw.bfp_affine import BFPAffine, affine_window
from hw.formats import BFPFormat, internal_format
from sim.bench.amaranth_sim import run_stream
from sim.model.golden import Block
from sim.model import golden_bn as gbn


# --- reference -----------------------------------------------------------------------------------

def golden_affine(bfp, f, case):
    """``case = (E, codes, a_bits, b_bits)`` -> golden ``Block`` (via ``golden_bn._fma_block``)."""
    E, codes, a, b = case
    cfg = gbn.BNConfig(bfp, channels=bfp.block, internal_frac_bits=f.frac_bits)
    blk = Block(E, codes, {"sat": False, "special": False, "flush": False})
    return gbn._fma_block(cfg, [blk], lambda j, p, c: (a[c], b[c]))[0]


# --- case generators -----------------------------------------------------------------------------

def _rand_float(f, rng, lo=1, hi=None):
    hi = f.exp_max if hi is None else hi
    return f.pack(rng.randrange(2), rng.randint(lo, hi), rng.randrange(1 << f.frac_bits))


def _code(bfp, rng):
    return rng.randint(-bfp.code_max, bfp.code_max)


def random_case(bfp, f, rng):
    """A mix of every regime: uniform bit patterns, near exponents, cancellation, zeros."""
    B = bfp.block
    E = rng.randrange(bfp.exp_max + 1)
    codes = [_code(bfp, rng) for _ in range(B)]
    kind = rng.randrange(6)
    a, b = [], []
    # Exponent of x's LSB relative to the internal float's exponent field.
    x_lsb = bfp.lsb_exponent(E)
    for l in range(B):
        if kind == 0:                       # anything (mostly one operand dominates)
            al, bl = rng.randrange(1 << f.width), rng.randrange(1 << f.width)
        elif kind in (1, 2):                # a*x and b of similar size
            ea = rng.randint(max(1, 127 - 20 - x_lsb - bfp.width), min(254, 127 + 20 - x_lsb - bfp.width))
            al = f.pack(rng.randrange(2), ea, rng.randrange(1 << f.frac_bits))
            target = f.decode(al) * bfp.code_value(E, _code(bfp, rng) or 1)
            bl = f.encode(target * Fraction(rng.randint(-4, 4) or 1, 1 << rng.randrange(4)))
        elif kind == 3:                     # cancellation: b ~ -a x (y = a (x - mu))
            al = _rand_float(f, rng, max(1, 127 - 30 - x_lsb), min(254, 127 + 10 - x_lsb))
            mu = bfp.code_value(E, _code(bfp, rng))
            mu *= 1 + Fraction(rng.randint(-8, 8), 1 << rng.randrange(1, 3 * f.frac_bits))
            bl = f.encode(-f.decode(al) * mu)
        elif kind == 4:                     # zeros here and there
            al = rng.choice([0, f.pack(1, 0, 0), f.pack(0, 0, 5), _rand_float(f, rng)])
            bl = rng.choice([0, f.pack(1, 0, 0), _rand_float(f, rng)])
            if rng.random() < 0.3:
                codes[l] = 0
        else:                               # far-apart exponents
            if rng.random() < 0.5:
                al = _rand_float(f, rng, 1, 20)
                bl = _rand_float(f, rng, 230, 255)
            else:
                al = _rand_float(f, rng, 230, 255)
                bl = _rand_float(f, rng, 1, 20)
        a.append(al)
        b.append(bl)
    return E, codes, a, b


def directed_cases(bfp, f, rng):
    """Exact cancellation, half-ulp ties, saturation, zero blocks, far-apart exponents."""
    B, W, M = bfp.block, bfp.width, f.frac_bits
    cases = []
    # All-zero block (codes 0, b 0) and a zero block with nonzero a.
    cases.append((0, [0] * B, [0] * B, [0] * B))
    cases.append((bfp.exp_max, [0] * B, [_rand_float(f, rng) for _ in range(B)], [0] * B))
    # Exact cancellation: b = -a x exactly (x's code has few bits so a*x is representable).
    for _ in range(4):
        E = rng.randrange(bfp.exp_max + 1)
        codes, a, b = [], [], []
        for _l in range(B):
            q = rng.choice([1, -1, 2, -3, bfp.code_max, -bfp.code_max]) if W > 2 else rng.choice([1, -1])
            al = _rand_float(f, rng, 40, 200)
            y = f.decode(al) * bfp.code_value(E, q)
            bl = f.encode(-y)
            if f.decode(bl) != -y:
                bl = f.encode(-f.decode(al) * bfp.code_value(E, 1))
                q = 1
            codes.append(q)
            a.append(al)
            b.append(bl)
        cases.append((E, codes, a, b))
    # Half-ulp ties of the output grid at every shift amount: lane 0 fixes the shared exponent, the
    # other lanes sit exactly half way between two codes (a = 2**j, b adjusts).
    for _ in range(12):
        E = rng.randrange(1, bfp.exp_max + 1)
        lead = bfp.lsb_exponent(E) + W - 2 + rng.randint(-3, 3)      # floor(log2) of lane 0
        shared = min(max(lead + bfp.bias, 1), bfp.exp_max)
        lsb = shared - bfp.bias - (W - 2)
        codes, a, b = [], [], []
        for l in range(B):
            q = _code(bfp, rng)
            ea = rng.randint(120, 134)
            al = f.pack(rng.randrange(2), ea, 0)
            if l == 0:
                y = Fraction(2) ** lead * (1 + Fraction(rng.randrange(1 << (W - 1)), 1 << (W - 1)))
            else:
                shift = rng.randint(0, W + 2)
                y = (Fraction(rng.randrange(1 << max(W - 1 - shift, 0))) + Fraction(1, 2)) * Fraction(2) ** (lsb + shift)
            y = -y if rng.random() < 0.5 else y
            bv = y - f.decode(al) * bfp.code_value(E, q)
            bl = f.encode(bv)
            if f.decode(bl) != bv:          # not representable: put the whole tie into b
                al, bl, q = 0, f.encode(y), q
            codes.append(q)
            a.append(al)
            b.append(bl)
        cases.append((E, codes, a, b))
    # Saturation: huge a*x + b (shared exponent clamps at exp_max, codes saturate, sat flag).
    for _ in range(3):
        E = rng.randrange(bfp.exp_max + 1)
        codes = [rng.choice([bfp.code_max, -bfp.code_max, 1]) for _ in range(B)]
        a = [_rand_float(f, rng, 200, 255) for _ in range(B)]
        b = [_rand_float(f, rng, 200, 255) for _ in range(B)]
        cases.append((E, codes, a, b))
    # Tiny results (shared exponent clamps at 1, codes round to 0 or 1).
    for _ in range(3):
        E = rng.randrange(bfp.exp_max + 1)
        codes = [_code(bfp, rng) for _ in range(B)]
        a = [_rand_float(f, rng, 1, 60) for _ in range(B)]
        b = [_rand_float(f, rng, 1, 60) for _ in range(B)]
        cases.append((E, codes, a, b))
    # Far-apart exponents in both directions, with the most negative code.
    for _ in range(4):
        E = rng.randrange(bfp.exp_max + 1)
        codes = [rng.choice([-(1 << (W - 1)), _code(bfp, rng)]) for _ in range(B)]
        a, b = [], []
        for _l in range(B):
            if rng.random() < 0.5:
                a.append(_rand_float(f, rng, 1, 10))
                b.append(_rand_float(f, rng, 120, 140))
            else:
                a.append(_rand_float(f, rng, 120, 140))
                b.append(_rand_float(f, rng, 1, 10))
        cases.append((E, codes, a, b))
    return cases


# --- simulation ----------------------------------------------------------------------------------

def simulate(dut, cases, *, seed=0, gap=0.0, stall=0.0, sustained=False):
    """Feed ``cases`` through ``dut``; returns the output blocks as ``(E, codes, flags)``.
    ``gap``: probability of an idle cycle before an input; ``stall``: probability of ``o.ready``
    low in a cycle. ``sustained``: also check one transfer per cycle in and out."""
    bfp = dut.bfp
    layout = dut.input_layout

    def payload(case):
        E, codes, a, b = case
        return layout.const({
            "block": {"exponent": E, "codes": [bfp.to_bits(q) for q in codes]},
            "a": list(a), "b": list(b),
        })

    def block(value):
        return (value.exponent, [bfp.to_signed(value.codes[l]) for l in range(bfp.block)],
                {"sat": bool(value.flags.sat), "special": bool(value.flags.special),
                 "flush": bool(value.flags.flush)})

    outputs, in_cycles, out_cycles = run_stream(dut, [payload(c) for c in cases], block,
                                                seed=seed, gap=gap, stall=stall)
    if sustained:
        assert in_cycles == list(range(1, len(cases) + 1)), "input did not accept one block per cycle"
        first = out_cycles[0]
        assert first == dut.latency + 1
        assert out_cycles == list(range(first, first + len(cases))), "output not one block per cycle"
    return outputs


def check(bfp, f, cases, **kw):
    dut = BFPAffine(bfp, f)
    got = simulate(dut, cases, **kw)
    bad = []
    for case, out in zip(cases, got):
        exp = golden_affine(bfp, f, case)
        if (out[0], tuple(out[1]), out[2]) != (exp.exponent, tuple(exp.codes), exp.flags):
            bad.append((case, out, exp))
    assert not bad, f"{len(bad)} of {len(cases)} mismatches; first: {bad[0]}"
    return len(cases)


# (width, exp bits, block, internal fraction bits)
CONFIGS = [
    (8, 5, 4, 12),      # fp10-like default
    (4, 5, 3, 8),
    (5, 6, 3, 8),       # odd sizes, fp15 exponent
    (12, 5, 2, 23),     # fp16
    (16, 5, 2, 12),
    (16, 6, 2, 8),      # W > M + 2
    (2, 5, 2, 4),
]


@pytest.mark.parametrize("width,exp_bits,block,frac", CONFIGS)
def test_random_and_directed(width, exp_bits, block, frac):
    bfp, f = BFPFormat(width, exp_bits, block), internal_format(frac)
    rng = random.Random(hash((width, exp_bits, block, frac)) & 0xffff)
    cases = directed_cases(bfp, f, rng) + [random_case(bfp, f, rng) for _ in range(250)]
    check(bfp, f, cases, seed=width, gap=0.3, stall=0.3)


def test_sustained_one_block_per_cycle():
    bfp, f = BFPFormat(8, 5, 16), internal_format(12)
    rng = random.Random(5)
    cases = [random_case(bfp, f, rng) for _ in range(60)]
    check(bfp, f, cases, sustained=True)


@pytest.mark.long
@pytest.mark.parametrize("width", [3, 4, 6, 8, 10, 12, 16])
@pytest.mark.parametrize("frac", [4, 8, 12, 23])
@pytest.mark.parametrize("exp_bits", [5, 6])
def test_long_sweep(width, frac, exp_bits):
    bfp, f = BFPFormat(width, exp_bits, 4), internal_format(frac)
    rng = random.Random(width * 100 + frac * 7 + exp_bits)
    cases = directed_cases(bfp, f, rng) + [random_case(bfp, f, rng) for _ in range(1500)]
    check(bfp, f, cases, seed=frac, gap=0.2, stall=0.2)


def test_window_width():
    assert affine_window(BFPFormat(8, 5, 4), internal_format(12)) == 22
    assert affine_window(BFPFormat(16, 5, 4), internal_format(8)) == 34


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_bad_arguments():
    with pytest.raises(ValueError, match="bfp must be a hw.formats.BFPFormat"):
        BFPAffine(8, internal_format(8))
    with pytest.raises(ValueError, match="internal must be a hw.formats.FloatFormat"):
        BFPAffine(BFPFormat(8, 5, 4), 8)


def verilator_lint(dut, name, tmp_path):
    """``verilator --lint-only -Wall`` on ``gen.verilog.emit``'s Verilog: no warning at all, none
    waived (``test_lint.verilator_lint``)."""
    from gen.verilog import emit
    from test_lint import verilator_lint as lint
    real, waived = lint(emit(dut, name), name, tmp_path)
    assert not real and not waived, "\n".join((real + waived)[:20])


@pytest.mark.parametrize("width,exp_bits,block,frac", [(8, 5, 4, 12), (5, 6, 3, 8), (16, 5, 16, 23)])
def test_lint(width, exp_bits, block, frac, tmp_path):
    verilator_lint(BFPAffine(BFPFormat(width, exp_bits, block), internal_format(frac)), "ln_bfp_affine", tmp_path)
