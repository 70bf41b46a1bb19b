"""sim/model/fast_bn.py against sim/model/golden_bn.py, bit for bit: BFP codes, shared exponents, block flags,
statistics, every internal float (packed bits) and its flags, running statistics, dgamma, dbeta,
dx. Random configurations, including odd ones, and targeted edge cases. No torch here."""

import math
import random
from fractions import Fraction

import numpy as np
import pytest

from hw.formats import BFPFormat, float_format, internal_format
from sim.model import fast_bn as fb
from sim.model import golden_bn as gb
from sim.model.golden import float_to_bfp, quantize_block

FORMATS = ["fp10", "fp16", "fp15", "e4m3", "e5m2", "e3m2", "e6m3", "e2m1", "e5m7", "e6m10"]


# --- helpers ---------------------------------------------------------------------------------

def golden_stream(cfg, fmt, words):
    """Golden BFP stream of packed words ``words[p][c]`` (LightNorm grouping, zero padding)."""
    B, G = cfg.bfp.block, cfg.groups
    out = []
    for row in words:
        for g in range(G):
            lanes = [row[g * B + l] if g * B + l < cfg.channels else 0 for l in range(B)]
            out.append(float_to_bfp(fmt, cfg.bfp, lanes))
    return out


def encode_words(fmt, x):
    return [[fmt.encode(float(v)) for v in row] for row in np.asarray(x)]


def random_tensor(rng, fmt, n, C):
    """Values that hit the interesting cases of ``fmt``: a per-channel scale spread across the
    format's range (some saturate, some flush), exact input-format ties, zeros, repeated values
    (max/min ties), flat channels, exactly representable values."""
    lo = 1 - fmt.bias
    hi = fmt.exp_max - fmt.bias
    x = np.zeros((n, C))
    for c in range(C):
        kind = rng.random()
        scale = 2.0 ** rng.integers(max(lo - 2, -60), min(hi + 2, 60) + 1)
        if kind < 0.08:                                   # flat channel
            x[:, c] = rng.normal() * scale
        elif kind < 0.16:                                 # input-format ties
            mant = rng.integers(1 << fmt.frac_bits, 1 << (fmt.frac_bits + 1), size=n) + 0.5
            e = rng.integers(max(lo, -60), min(hi, 60) + 1, size=n)
            x[:, c] = np.ldexp(mant, e - fmt.frac_bits) * rng.choice([-1, 1], size=n)
        elif kind < 0.24:                                 # few distinct values: max/min ties
            x[:, c] = rng.choice(rng.normal(size=3) * scale, size=n)
        else:
            x[:, c] = rng.normal(size=n) * scale
            if kind < 0.35:
                x[rng.random(n) < 0.3, c] = 0.0
            if kind > 0.9:                                # a wide spread inside one channel
                x[:, c] *= 2.0 ** rng.integers(-20, 21, size=n)
    return x


def random_config(rng, fmt=None, **over):
    fmt = float_format(fmt or FORMATS[rng.integers(len(FORMATS))])
    K = int(over.pop("chunks", 2 ** rng.integers(0, 4)))
    kw = dict(
        bfp=BFPFormat.for_float(fmt, int(over.pop("width", rng.integers(2, 17))),
                                int(over.pop("block", rng.choice([1, 2, 3, 4, 5, 7, 8, 16])))),
        channels=int(over.pop("channels", rng.integers(1, 14))),
        chunks=K,
        internal_frac_bits=int(over.pop("internal_frac_bits", rng.integers(4, 24))),
        eps_log2=int(over.pop("eps_log2", rng.integers(-30, 3))),
        momentum_shift=int(over.pop("momentum_shift", rng.integers(0, 6))),
    )
    m = int(over.pop("m", rng.integers(2, 7)))
    if rng.random() < 0.6:
        kw["c_scale"] = gb.range_scale(m, float(rng.uniform(0.2, 3.5)))
    kw.update(over)
    return gb.BNConfig(**kw), fmt, K * m


def random_internal(rng, cfg, size, spread=8):
    """Random internal-float values; with a large ``spread`` half of them sit near the ends of the
    exponent range, so that products and sums overflow (flags) or become tiny."""
    f = cfg.internal
    e = rng.integers(-spread, spread + 1, size=size)
    if spread > 100:
        far = rng.random(size) < 0.5
        e = np.where(far, rng.choice([-1, 1], size=size) * rng.integers(100, 128, size=size), e)
    v = rng.normal(size=size) * 2.0 ** e
    v[rng.random(size) < 0.1] = 0.0
    return fb.round_float(f, v)[0]


def bits(cfg, values):
    return fb.to_bits(cfg.internal, values)


def check_case(cfg, fmt, x, g, rng, inference=True):
    """Run the whole forward/backward on golden and fast and compare every output."""
    f = cfg.internal
    C = cfg.channels
    words = encode_words(fmt, x)
    gs = golden_stream(cfg, fmt, words)
    xb = fb.quantize_input(cfg, fmt, x)
    assert xb.to_golden() == gs
    spread = 120 if rng.random() < 0.2 else 8      # sometimes far enough to overflow a, b, corr
    gamma = random_internal(rng, cfg, C, spread)
    beta = random_internal(rng, cfg, C, spread)
    rm = random_internal(rng, cfg, C)
    rs = np.abs(random_internal(rng, cfg, C))

    gy, gst, gpar, grm, grs = gb.forward(cfg, gs, bits(cfg, gamma), bits(cfg, beta), True, bits(cfg, rm), bits(cfg, rs))
    yb, st, par, frm, frs = fb.forward(cfg, xb, gamma, beta, True, rm, rs)
    assert st.to_golden() == gst
    assert par.to_golden(cfg) == gpar
    assert yb.to_golden() == gy
    assert bits(cfg, frm) == grm and bits(cfg, frs) == grs

    gw = encode_words(fmt, g)
    ggs = golden_stream(cfg, fmt, gw)
    gbk = fb.quantize_input(cfg, fmt, g)
    assert gbk.to_golden() == ggs
    gdx, ggp = gb.backward(cfg, gs, ggs, gst, gpar)
    fdx, fgp = fb.backward(cfg, xb, gbk, st, par)
    assert fgp.to_golden(cfg) == ggp
    assert fdx.to_golden() == gdx
    none, fgp2 = fb.backward(cfg, xb, gbk, st, par, params_only=True)
    assert none is None and fgp2.to_golden(cfg) == ggp

    if inference:
        if rng.random() < 0.15:
            rs[rng.integers(C)] = -rs[rng.integers(C)] if rng.random() < 0.5 else 0.0
        iy, _, ipar, _, _ = gb.forward(cfg, gs, bits(cfg, gamma), bits(cfg, beta), False, bits(cfg, rm), bits(cfg, rs))
        fy, fst, fpar, frm2, frs2 = fb.forward(cfg, xb, gamma, beta, False, rm, rs)
        assert fst is None and fpar.to_golden(cfg) == ipar
        assert fy.to_golden() == iy
    return st, par, fgp


# --- random configurations ---------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(60))
def test_random_configurations(seed):
    rng = np.random.default_rng(1000 + seed)
    for _ in range(2):
        cfg, fmt, n = random_config(rng)
        x = random_tensor(rng, fmt, n, cfg.channels)
        g = random_tensor(rng, fmt, n, cfg.channels)
        check_case(cfg, fmt, x, g, rng)


ODD = [
    dict(fmt="fp10", width=5, block=3, channels=7, chunks=2, m=3),
    dict(fmt="fp10", width=8, block=16, channels=1, chunks=1, m=9),
    dict(fmt="fp16", width=6, block=4, channels=10, chunks=8, m=2),
    dict(fmt="fp15", width=16, block=5, channels=11, chunks=8, m=3, internal_frac_bits=23),
    dict(fmt="e4m3", width=2, block=7, channels=3, chunks=4, m=2, internal_frac_bits=4),
    dict(fmt="e5m2", width=3, block=1, channels=4, chunks=1, m=5),
    dict(fmt="fp10", width=8, block=16, channels=33, chunks=8, m=4),
]


@pytest.mark.parametrize("case", range(len(ODD)))
def test_odd_configurations(case):
    rng = np.random.default_rng(77 + case)
    spec = dict(ODD[case])
    fmt = spec.pop("fmt")
    for _ in range(3):
        cfg, fmt_, n = random_config(rng, fmt=fmt, **spec)
        x = random_tensor(rng, fmt_, n, cfg.channels)
        g = random_tensor(rng, fmt_, n, cfg.channels)
        check_case(cfg, fmt_, x, g, rng)


def test_training_sized_tensor():
    """One tensor of the size the study uses per BN call (n = 1024, 24 channels, B = 16)."""
    rng = np.random.default_rng(5)
    cfg = gb.BNConfig(bfp=BFPFormat.for_float(float_format("fp10"), 8, 16), channels=24, chunks=8,
                      internal_frac_bits=12)
    x = rng.normal(size=(1024, 24)) * 3
    g = rng.normal(size=(1024, 24)) * 2.0 ** 6
    check_case(cfg, float_format("fp10"), x, g, rng, inference=False)


def test_edge_tensors():
    """All zeros, all equal, saturating blocks, exact max/min ties in every chunk, huge gamma
    (internal overflow flags), tiny eps (sigma rounds to zero)."""
    rng = np.random.default_rng(9)
    fmt = float_format("fp10")
    n, C = 16, 5
    cases = [np.zeros((n, C)), np.full((n, C), 3.25), np.full((n, C), 1e9),
             np.tile([[1.0, -1.0, 0.5, 2.0, -7.0]], (n, 1)),
             np.repeat(np.array([[4.0], [-4.0]]), n // 2, axis=0) * np.ones((1, C))]
    for x in cases:
        for K in (1, 2, 8):
            cfg = gb.BNConfig(bfp=BFPFormat.for_float(fmt, 6, 3), channels=C, chunks=K, internal_frac_bits=7,
                              eps_log2=-16 if rng.random() < 0.5 else -200)
            check_case(cfg, fmt, x, random_tensor(rng, fmt, n, C), rng)
    # huge gamma and beta: a and b overflow the internal float
    cfg = gb.BNConfig(bfp=BFPFormat.for_float(fmt, 8, 4), channels=3, chunks=1, internal_frac_bits=5, eps_log2=-30)
    f = cfg.internal
    xb = fb.quantize_input(cfg, fmt, rng.normal(size=(8, 3)) * 1e-4)
    gamma = np.array([float(f.max_value()), -float(f.max_value()), 1.0])
    beta = np.array([float(f.max_value()), 2.0 ** -126, -float(f.max_value())])
    gy, gst, gpar, _, _ = gb.forward(cfg, xb.to_golden(), bits(cfg, gamma), bits(cfg, beta))
    yb, st, par, _, _ = fb.forward(cfg, xb, gamma, beta)
    assert par.to_golden(cfg) == gpar and yb.to_golden() == gy
    assert any(p.flags for p in gpar) and yb.sat.any()


# --- building blocks ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", FORMATS + ["e11m4", "e8m23", "e11m52", "e10m51", "e3m30"])
def test_encode_fields(name):
    fmt = float_format(name)
    rng = np.random.default_rng(len(name))
    lo, hi = 1 - fmt.bias, fmt.exp_max - fmt.bias
    e = rng.integers(max(lo - 3, -1070), min(hi + 3, 1020) + 1, size=400)
    v = np.ldexp(rng.random(400) + 1, e) * rng.choice([-1, 1], 400)
    mant = rng.integers(1 << min(fmt.frac_bits, 50), 1 << (min(fmt.frac_bits, 50) + 1), size=100) + 0.5
    ties = np.ldexp(mant, rng.integers(max(lo, -1000), min(hi, 1000), 100) - min(fmt.frac_bits, 50))
    half_min = np.array([2.0 ** (1 - fmt.bias) / 2 * s for s in (1, 1.0000001, 0.999999, -1)]) \
        if 1 - fmt.bias > -1070 else np.zeros(0)
    v = np.concatenate([v, ties, half_min, [0.0, -0.0, 5e-324, -1e300, 1e300]])
    sign, expo, frac = fb.encode_fields(fmt, v)
    assert [fmt.pack(int(s), int(e_), int(f_)) for s, e_, f_ in zip(sign, expo, frac)] == \
        [fmt.encode(float(t)) for t in v]
    want = [fmt.decode(fmt.encode(float(t))) for t in v]
    vals = fb.encode_values(fmt, v)
    assert [Fraction(float(t)) for t in vals] == want
    if fmt.exp_bits <= 10 and fmt.frac_bits < 52:        # the bit-pattern rounding of the fast path
        fast, special = fb._encode_values_fast(fmt, v)
        assert [Fraction(float(t)) for t in fast] == want
        assert special.tolist() == [fmt.unpack(fmt.encode(float(t)))[1] == fmt.exp_max for t in v]


def test_words_path_flags():
    """Packed words including subnormal patterns (flush) and all-ones exponents (special)."""
    rng = random.Random(3)
    for name in ("fp10", "e4m3", "fp15", "e2m1"):
        fmt = float_format(name)
        for W, B, C in ((8, 4, 6), (3, 5, 5), (16, 1, 2)):
            cfg = gb.BNConfig(bfp=BFPFormat.for_float(fmt, W, B), channels=C)
            words = [[rng.getrandbits(fmt.width) if rng.random() < 0.8 else
                      rng.choice([0, 1, fmt.pack(1, 0, 0), fmt.pack(0, fmt.exp_max, 0)]) for _ in range(C)]
                     for _ in range(12)]
            assert fb.words_to_blocks(cfg, fmt, words).to_golden() == golden_stream(cfg, fmt, words)


def test_round_ratio_and_round_float():
    rng = random.Random(4)
    for M in (4, 7, 10, 23):
        f = internal_format(M)
        for _ in range(600):
            num = rng.getrandbits(rng.randint(1, 90)) * rng.choice([-1, 1])
            den = rng.getrandbits(rng.randint(1, 40)) or 1
            exp2 = rng.randint(-260, 200)
            value = Fraction(num, den) * Fraction(2) ** exp2
            v, over = fb._round_ratio(f, num, den, exp2)
            assert fb.to_bits(f, v) == f.encode(value) and over == f.overflows(value)
        # around half the smallest normal (ties to zero) and around the largest value
        top = f.max_value() + Fraction(2) ** (f.exp_max - f.bias - M) / 2
        for value in (Fraction(2) ** -127, Fraction(3, 2) * Fraction(2) ** -128, Fraction(2) ** -128,
                      -(Fraction(2) ** -127), Fraction(2) ** -127 * Fraction(1001, 1000), top, top - Fraction(2) ** -200,
                      -top, top * 4, Fraction(1, 3), Fraction(-7, 5) * Fraction(2) ** -126):
            v, over = fb._round_ratio(f, value.numerator, value.denominator)
            assert fb.to_bits(f, v) == f.encode(value) and over == f.overflows(value)
        # ties on the internal grid, float path
        mant = np.array([rng.randint(1 << M, (1 << (M + 1)) - 1) for _ in range(300)]) + 0.5
        e = np.array([rng.randint(-140, 130) for _ in range(300)])
        vals = np.ldexp(mant, e - M) * np.array([rng.choice([-1, 1]) for _ in range(300)])
        r, over = fb.round_float(f, vals)
        assert fb.to_bits(f, r) == [f.encode(float(t)) for t in vals]
        assert over.tolist() == [f.overflows(float(t)) for t in vals]


def test_fma_extreme_spans():
    """y = a x + b with a and b far apart in magnitude (the sum is not exact in float64; the
    TwoSum round-to-odd path must still give the golden bits), including ties on the block grid."""
    rng = np.random.default_rng(11)
    fmt = float_format("fp10")
    for trial in range(40):
        W = int(rng.integers(2, 17))
        cfg = gb.BNConfig(bfp=BFPFormat.for_float(fmt, W, int(rng.choice([1, 3, 8]))), channels=6,
                          internal_frac_bits=int(rng.integers(4, 24)))
        f = cfg.internal
        x = random_tensor(rng, fmt, 8, 6)
        xb = fb.quantize_input(cfg, fmt, x)
        ea = rng.integers(-120, 120, size=6)
        eb = ea + rng.integers(-80, 80, size=6)
        a = fb.round_float(f, rng.normal(size=6) * 2.0 ** ea)[0]
        b = fb.round_float(f, rng.normal(size=(8, 6)) * 2.0 ** np.clip(eb, -125, 125))[0]
        if trial % 4 == 0:      # b exactly half a block LSB away from a grid point
            b = np.full((8, 6), 2.0 ** -20)
            a = np.full(6, 2.0 ** -60)
        got = fb._fma_blocks(cfg, xb, a, b)
        want = gb._fma_block(cfg, xb.to_golden(),
                             lambda j, p, c: (fb.to_bits(f, a[c]), fb.to_bits(f, b[p, c])))
        assert got.to_golden() == want


def test_quantize_values_matches_quantize_block():
    rng = np.random.default_rng(12)
    for W in range(2, 17):
        cfg = gb.BNConfig(bfp=BFPFormat.for_float(float_format("fp16"), W, 4), channels=7)
        e = rng.integers(-40, 40, size=(10, 7))
        r = np.ldexp(rng.integers(-(1 << 20), 1 << 20, size=(10, 7)).astype(float), e)
        r[rng.random((10, 7)) < 0.2] = 0
        blocks = fb.quantize_values(cfg, r).to_golden()
        j = 0
        for p in range(10):
            for g in range(cfg.groups):
                elements = []
                for lane in range(4):
                    c = g * 4 + lane
                    v = Fraction(float(r[p, c])) if c < 7 else Fraction(0)
                    elements.append(gb._exact_element(v))
                shared, codes, sat = quantize_block(cfg.bfp, elements)
                assert blocks[j] == (shared, tuple(codes), {"sat": sat, "special": False, "flush": False})
                j += 1


def test_shift_sums_both_paths():
    rng = np.random.default_rng(13)
    for smax, vb in ((10, 2 ** 15), (60, 2 ** 15), (126, 2 ** 30)):
        vals = rng.integers(-vb, vb + 1, size=(300, 5))
        shifts = rng.integers(0, smax + 1, size=(300, 5))
        want = [sum(int(v) << int(s) for v, s in zip(vals[:, c], shifts[:, c])) for c in range(5)]
        assert fb._shift_sums(vals, shifts, vb) == want


def test_exact_fallback_paths(monkeypatch):
    """The slow exact paths (used outside the float64-proven ranges) give the same bits."""
    monkeypatch.setattr(fb, "force_exact_path", True)
    rng = np.random.default_rng(14)
    for _ in range(4):
        cfg, fmt, n = random_config(rng)
        check_case(cfg, fmt, random_tensor(rng, fmt, n, cfg.channels),
                   random_tensor(rng, fmt, n, cfg.channels), rng)


def test_wide_exponent_format_refused():
    """An input format with more exponent bits than the generator accepts (e11m4, bf16) is refused
    by the twin as by the golden model, with the generator's message (``hw.formats.check_bn_format``;
    tests/test_bn_format_limit.py checks the message everywhere)."""
    with pytest.raises(ValueError, match="has 11 exponent bits; the Range-BN units accept 2..6"):
        gb.BNConfig(bfp=BFPFormat.for_float(float_format("e11m4"), 6, 3), channels=4, chunks=2)
    cfg = gb.BNConfig(bfp=BFPFormat.for_float(float_format("fp10"), 6, 3), channels=4, chunks=2)
    with pytest.raises(ValueError, match="in-format 'bf16' has 8 exponent bits"):
        fb.quantize_input(cfg, "bf16", np.ones((4, 4)))


def test_stream_roundtrip_and_values():
    rng = np.random.default_rng(16)
    cfg, fmt, n = random_config(rng, fmt="fp10", channels=9, block=4)
    xb = fb.quantize_input(cfg, fmt, random_tensor(rng, fmt, n, 9))
    again = fb.Blocks.from_golden(cfg, xb.to_golden())
    assert again.to_golden() == xb.to_golden()
    vals = fb.block_values(cfg, xb)
    want = gb.blocks_to_values(cfg, xb.to_golden())
    assert [[Fraction(float(v)) for v in row] for row in vals] == want


# --- low statistics mode (windowed sums) ------------------------------------------------------------

def low_config(rng, **over):
    """A random configuration in low mode; G is 0, 16 or random."""
    G = int(over.pop("stats_guard", rng.choice([0, 16, int(rng.integers(0, 17))])))
    return random_config(rng, stats="low", stats_guard=G, **over)


@pytest.mark.parametrize("seed", range(30))
def test_low_random_configurations(seed):
    rng = np.random.default_rng(5000 + seed)
    for _ in range(2):
        cfg, fmt, n = low_config(rng)
        x = random_tensor(rng, fmt, n, cfg.channels)
        g = random_tensor(rng, fmt, n, cfg.channels)
        st, _, gp = check_case(cfg, fmt, x, g, rng)
        assert st.to_golden()[0].sum_lsb == st.sum_lsb[0]


LOW_ODD = [
    dict(fmt="fp10", width=5, block=3, channels=7, chunks=2, m=3, stats_guard=0),
    dict(fmt="fp10", width=8, block=16, channels=1, chunks=1, m=9, stats_guard=16),
    dict(fmt="fp16", width=2, block=4, channels=10, chunks=8, m=2, stats_guard=0),
    dict(fmt="fp15", width=16, block=5, channels=11, chunks=8, m=3, stats_guard=16),
    dict(fmt="e6m10", width=16, block=3, channels=4, chunks=1, m=12, stats_guard=16),
    dict(fmt="e6m3", width=3, block=1, channels=4, chunks=1, m=7, stats_guard=1),
    dict(fmt="fp10", width=8, block=16, channels=33, chunks=8, m=4, stats_guard=4),
]


@pytest.mark.parametrize("case", range(len(LOW_ODD)))
def test_low_odd_configurations(case):
    rng = np.random.default_rng(700 + case)
    spec = dict(LOW_ODD[case])
    fmt = spec.pop("fmt")
    for _ in range(3):
        cfg, fmt_, n = low_config(rng, fmt=fmt, **spec)
        x = random_tensor(rng, fmt_, n, cfg.channels)
        g = random_tensor(rng, fmt_, n, cfg.channels)
        check_case(cfg, fmt_, x, g, rng)


def test_low_large_exponent_spans():
    """Exponents rising in many steps across the stream (many segments of L, rescales by 1 and by
    large amounts, ties), 1 channel and B not dividing the channels, G = 0 and 16."""
    rng = np.random.default_rng(31)
    fmt = float_format("e6m10")
    for G in (0, 1, 4, 16):
        for C, B in ((1, 1), (5, 3), (6, 4)):
            cfg = gb.BNConfig(bfp=BFPFormat.for_float(fmt, int(rng.integers(2, 17)), B), channels=C,
                              chunks=2, internal_frac_bits=int(rng.integers(4, 24)), stats="low",
                              stats_guard=G)
            n = 64
            ramp = 2.0 ** (np.arange(n) - 31.0)[:, None] * rng.choice([1, 3, 0.75], size=(n, 1))
            x = rng.normal(size=(n, C)) * ramp
            x[rng.random((n, C)) < 0.2] *= 2.0 ** -25
            g = rng.normal(size=(n, C)) * ramp[::-1] * 2.0 ** rng.integers(-20, 20, size=(n, 1))
            st, _, _ = check_case(cfg, fmt, x, g, rng, inference=False)
            assert max(st.sum_lsb) > 0


def test_low_training_sized_tensor():
    rng = np.random.default_rng(6)
    cfg = gb.BNConfig(bfp=BFPFormat.for_float(float_format("fp10"), 8, 16), channels=24, chunks=8,
                      internal_frac_bits=12, stats="low")
    x = rng.normal(size=(1024, 24)) * 3
    g = rng.normal(size=(1024, 24)) * 2.0 ** 6
    check_case(cfg, float_format("fp10"), x, g, rng, inference=False)


def test_low_exact_fallback_paths(monkeypatch):
    """The Python-integer windowed sums (``force_exact_path``) give the golden bits too."""
    monkeypatch.setattr(fb, "force_exact_path", True)
    rng = np.random.default_rng(15)
    for _ in range(4):
        cfg, fmt, n = low_config(rng)
        check_case(cfg, fmt, random_tensor(rng, fmt, n, cfg.channels),
                   random_tensor(rng, fmt, n, cfg.channels), rng)


def test_windowed_sums_both_paths():
    """fast_bn's vectorized and integer windowed sums against ``golden_bn.windowed_sum`` on raw
    (v, E) streams: values up to 2**30 (products at W = 16), exponents up to 127, every G."""
    rng = np.random.default_rng(17)
    for trial in range(200):
        n, C, G = int(rng.integers(1, 50)), int(rng.integers(1, 5)), int(rng.integers(0, 17))
        v = rng.integers(-(1 << int(rng.integers(1, 31))), 1 << 30, size=(n, C))
        e = rng.integers(0, int(rng.integers(1, 128)), size=(n, C))
        if trial % 3 == 0:
            e = np.sort(e, axis=0)
        want = [gb.windowed_sum(list(zip(v[:, c].tolist(), e[:, c].tolist())), G) for c in range(C)]
        for fn in (fb._windowed_sums, fb._windowed_sums_exact):
            A, L = fn(v, e, G)
            assert list(zip(A, L)) == want


def test_stats_mode_refused_with_check_stats_message():
    bfp = BFPFormat.for_float(float_format("fp10"), 8, 4)
    with pytest.raises(ValueError, match="stats must be one of exact, low, not 'lo'"):
        gb.BNConfig(bfp=bfp, channels=2, stats="lo")
    with pytest.raises(ValueError, match="stats_guard"):
        gb.BNConfig(bfp=bfp, channels=2, stats="low", stats_guard=17)


def test_rejects_bad_counts_and_nonfinite():
    cfg = gb.BNConfig(bfp=BFPFormat.for_float(float_format("fp10"), 8, 4), channels=2, chunks=4)
    with pytest.raises(ValueError):
        fb.forward_stats(cfg, fb.quantize_input(cfg, "fp10", np.ones((6, 2))))
    with pytest.raises(ValueError):
        fb.quantize_input(cfg, "fp10", np.array([[1.0, math.inf]]))
