"""The low statistics mode's definition (docs/numerics.md, "Low-precision statistics"), checked
independently of the implementation: hand-derived (A, L) of short streams, the exactness while
F <= G, the round-half-up ties, the step-by-step rescales, the accumulator width bound
|A| <= n vmax 2**G (the hardware's width), the error bound |A 2**L - S| <= n 2**L, and what the
mode does and does not change in the golden model. fast_bn against golden_bn in low mode is in
tests/test_fast_bn.py."""

import random
from fractions import Fraction

import numpy as np
import pytest

from hw.formats import STATS_GUARD, STATS_GUARD_DEFAULT, BFPFormat, float_format
from sim.model import fast_bn as fb
from sim.model import golden_bn as gb


def hw_width(max_count, vmax, guard):
    """The hardware's accumulator width (issue 15): signed, ``(max_count vmax << G).bit_length() + 1``."""
    return (max_count * vmax << guard).bit_length() + 1


# --- hand-derived streams ----------------------------------------------------------------------

def test_rhu_is_round_half_up():
    assert [gb.rhu(Fraction(k, 2)) for k in range(-5, 6)] == [-2, -2, -1, -1, 0, 0, 1, 1, 2, 2, 3]
    assert gb.rhu(Fraction(-1, 4)) == 0 and gb.rhu(Fraction(3, 4)) == 1 and gb.rhu(-7) == -7


def test_stream_within_the_guard_is_the_exact_sum():
    """G = 4, exponents 0..4: F never exceeds G, L stays 0, no rounding:
    3 + 5*4 - 7*16 + 1*2 = -87."""
    assert gb.windowed_sum([(3, 0), (5, 2), (-7, 4), (1, 1)], 4) == (-87, 0)
    rng = random.Random(1)
    for _ in range(200):
        G = rng.randint(0, 16)
        pairs = [(rng.randint(-(1 << 30), 1 << 30), rng.randint(0, G)) for _ in range(rng.randint(1, 30))]
        assert gb.windowed_sum(pairs, G) == (sum(v << e for v, e in pairs), 0)


def test_one_big_exponent_jump():
    """G = 2: 5*1 + 3*2 = 11 at L = 0; then E = 10 makes F = 10, L = 8: A = rhu(11 / 256) + rhu(1 * 2**2)
    = 0 + 4, the value 4 * 256 = 1024 against the exact 1035 (error 11 <= n 2**L = 768). A later
    small element, -1 * 2**2, adds rhu(-4 / 256) = 0."""
    assert gb.windowed_sum([(5, 0), (3, 1), (1, 10)], 2) == (4, 8)
    assert gb.windowed_sum([(5, 0), (3, 1), (1, 10), (-1, 2)], 2) == (4, 8)
    # the jump element's own bits below the window are dropped too: E = 10, L' = 8 keeps v << 2
    assert gb.windowed_sum([(7, 10)], 2) == (28, 8)
    assert gb.windowed_sum([(7, 10)], 12) == (7 << 10, 0)


@pytest.mark.parametrize("pairs,want", [
    ([(1, 0), (0, 1)], (1, 1)),      # rescale of A = 1 by 1/2: rhu(+0.5) = 1
    ([(-1, 0), (0, 1)], (0, 1)),     # rhu(-0.5) = 0
    ([(3, 0), (0, 1)], (2, 1)),      # rhu(1.5) = 2
    ([(-3, 0), (0, 1)], (-1, 1)),    # rhu(-1.5) = -1
    ([(0, 1), (1, 0)], (1, 1)),      # addend 1 * 2**-1: rhu(+0.5) = 1
    ([(0, 1), (-1, 0)], (0, 1)),     # addend -0.5 -> 0
    ([(0, 1), (-3, 0)], (-1, 1)),    # addend -1.5 -> -1
    ([(1, 1), (-1, 0)], (1, 1)),     # 1 + rhu(-0.5) = 1: value 2 for the exact 1
])
def test_ties_round_half_up(pairs, want):
    """G = 0, so L = F: ties of the rescale and of the addend go up (towards +inf)."""
    assert gb.windowed_sum(pairs, 0) == want


def test_rescales_happen_step_by_step():
    """G = 0: A = 1 at L = 0, then F rises to 1 and to 2 on two elements: two rescales,
    rhu(1/2) = 1 and rhu(1/2) = 1, so A = 1 at L = 2 (value 4). One rescale by 1/4 would give
    rhu(1/4) = 0: the recurrence is per element, not a single rounding at the end."""
    assert gb.windowed_sum([(1, 0), (0, 1), (0, 2)], 0) == (1, 2)
    assert gb.windowed_sum([(1, 0), (0, 2)], 0) == (0, 2)
    v = np.array([[1], [0], [0]])
    e = np.array([[0], [1], [2]])
    assert fb._windowed_sums(v, e, 0) == ([1], [2]) == fb._windowed_sums_exact(v, e, 0)


def _fraction_recurrence(pairs, guard):
    """The definition once more, with the accumulator kept as its *value* (a Fraction): each step
    rounds the value half up to a multiple of 2**L' and adds the addend rounded half up to a
    multiple of 2**L'."""
    F, value = 0, Fraction(0)
    for v, E in pairs:
        F = max(F, E)
        step = Fraction(2) ** max(0, F - guard)
        value = gb.rhu(value / step) * step + gb.rhu(Fraction(v) * Fraction(2) ** E / step) * step
    L = max(0, F - guard)
    return value, L


def test_value_form_of_the_recurrence():
    rng = random.Random(2)
    for _ in range(300):
        G = rng.randint(0, 16)
        pairs = [(rng.randint(-(1 << rng.randint(1, 30)), 1 << 30), rng.randint(0, 126))
                 for _ in range(rng.randint(1, 25))]
        A, L = gb.windowed_sum(pairs, G)
        assert (Fraction(A) * 2 ** L, L) == _fraction_recurrence(pairs, G)


# --- the width and error bounds ------------------------------------------------------------------

def _streams(rng, W, product, count=150):
    """Random and adversarial (v, E) streams of codes (|q| < 2**(W-1)) or products of two codes,
    with exponents up to 63 (codes) or 126 (products)."""
    qmax = (1 << (W - 1)) - 1
    vtop = qmax * qmax if product else qmax
    emax = 126 if product else 63
    for k in range(count):
        n = rng.randint(1, 60)
        kind = k % 4
        if kind == 0:       # random
            pairs = [(rng.randint(-vtop, vtop), rng.randint(0, emax)) for _ in range(n)]
        elif kind == 1:     # largest values of one sign, exponents rising by one (rounding up)
            s = rng.choice([-1, 1])
            pairs = [(s * vtop, min(emax, i)) for i in range(n)]
        elif kind == 2:     # exponents rising slowly with ties below the window
            pairs = [(rng.choice([vtop, -vtop, 1, -1, vtop // 2 + 1]), min(emax, i // 2 + rng.randint(0, 2)))
                     for i in range(n)]
        else:               # a big jump then small elements
            pairs = [(vtop, rng.randint(0, 20))] * (n // 2) + [(vtop, emax)] + \
                    [(rng.randint(-vtop, vtop), rng.randint(0, emax)) for _ in range(n - n // 2)]
        yield pairs


@pytest.mark.parametrize("W", [2, 3, 8, 16])
@pytest.mark.parametrize("product", [False, True], ids=["codes", "products"])
def test_width_and_error_bounds(W, product):
    """|A| <= n vmax 2**G (vmax = 2**(W-1) for codes, 2**(2W-2) for products), so A fits the
    hardware's (max_count vmax << G).bit_length() + 1 signed bits for n <= max_count; and
    |A 2**L - S| <= n 2**L against the exact sum S."""
    rng = random.Random(W * 2 + product)
    vmax = 1 << (2 * W - 2 if product else W - 1)
    worst_err = 0.0
    for G in sorted({STATS_GUARD[0], 1, STATS_GUARD_DEFAULT, 9, STATS_GUARD[1]}):
        for pairs in _streams(rng, W, product):
            n = len(pairs)
            A, L = gb.windowed_sum(pairs, G)
            assert abs(A) <= n * vmax << G
            w = hw_width(n, vmax, G)
            assert -(1 << (w - 1)) <= A < 1 << (w - 1)
            S = sum(v << e for v, e in pairs)
            err = abs((A << L) - S)
            assert err <= n << L
            worst_err = max(worst_err, err / (n << L))
    assert worst_err > 0.1        # the bound is approached, not vacuous


def test_error_bound_is_per_element():
    """Each element can err by up to 2**L (two half-unit roundings): a stream that rounds up
    twice per element (G = 0, exponents rising by one, ties) comes close to n 2**L."""
    pairs = [(1, 0)] + [(1, e - 1) if e % 2 else (3, e - 1) for e in range(1, 9)]
    A, L = gb.windowed_sum(pairs, 0)
    S = sum(v << e for v, e in pairs)
    assert abs((A << L) - S) <= len(pairs) << L
    assert (A << L) - S > 0             # every tie went up


# --- what the mode changes in the golden model -------------------------------------------------

def _run(cfg, fmt, x, g, gamma, beta):
    xb, gbk = fb.quantize_input(cfg, fmt, x), fb.quantize_input(cfg, fmt, g)
    f = cfg.internal
    gamma, beta = fb.round_float(f, gamma)[0], fb.round_float(f, beta)[0]
    bits = lambda v: fb.to_bits(f, v)          # noqa: E731
    xs, gs = xb.to_golden(), gbk.to_golden()
    y, st, par, _, _ = gb.forward(cfg, xs, bits(gamma), bits(beta))
    dx, gp = gb.backward(cfg, xs, gs, st, par)
    gst = gb.backward_stats(cfg, xs, gs)
    return y, st, par, dx, gp, gst


def test_low_mode_changes_only_the_sums():
    """Same data in exact and low mode: max, min, argmax/argmin, count identical; the sums'
    values within n 2**L of the exact sums, with L = max(0, F - G) (F = the largest exponent of
    the stream); finalize uses the value (mu = rnd(value u / n))."""
    rng = np.random.default_rng(3)
    fmt = float_format("fp10")
    bfp = BFPFormat.for_float(fmt, 6, 4)
    C, n = 6, 32
    x = rng.normal(size=(n, C)) * 2.0 ** rng.integers(-6, 7, size=C)
    g = rng.normal(size=(n, C)) * 2.0 ** 4
    gamma, beta = rng.normal(size=C), rng.normal(size=C)
    ex = gb.BNConfig(bfp=bfp, channels=C, chunks=2, internal_frac_bits=10)
    lo = gb.BNConfig(bfp=bfp, channels=C, chunks=2, internal_frac_bits=10, stats="low", stats_guard=2)
    _, st_e, par_e, _, _, gst_e = _run(ex, fmt, x, g, gamma, beta)
    _, st_l, par_l, _, _, gst_l = _run(lo, fmt, x, g, gamma, beta)
    xb, gbk = fb.quantize_input(ex, fmt, x), fb.quantize_input(ex, fmt, g)
    for c in range(C):
        a, b = st_e[c], st_l[c]
        assert (a.count, a.max, a.min, a.argmax, a.argmin) == (b.count, b.max, b.min, b.argmax, b.argmin)
        assert a.sum_lsb == 0
        F = int(xb.exps[:, c // 4].max())
        assert b.sum_lsb == max(0, F - 2) > 0
        assert abs(b.sum_value - a.sum) <= n << b.sum_lsb
        Fg = int(gbk.exps[:, c // 4].max())
        Fgx = int((gbk.exps[:, c // 4] + xb.exps[:, c // 4]).max())
        assert gst_l[c].sum_g_lsb == max(0, Fg - 2) and gst_l[c].sum_gx_lsb == max(0, Fgx - 2)
        assert abs(gst_l[c].sum_g_value - gst_e[c].sum_g) <= n << gst_l[c].sum_g_lsb
        assert abs(gst_l[c].sum_gx_value - gst_e[c].sum_gx) <= n << gst_l[c].sum_gx_lsb
        # finalize on the low stats is finalize on an exact-mode record holding the value
        f = ex.internal
        gm, bt = f.encode(float(gamma[c])), f.encode(float(beta[c]))
        as_exact = gb.ChannelStats(sum=b.sum_value, count=b.count, max=b.max, min=b.min,
                                   argmax=b.argmax, argmin=b.argmin)
        assert gb.finalize(lo, b, gm, bt) == gb.finalize(ex, as_exact, gm, bt) == par_l[c]
    assert any(st_l[c].sum_value != st_e[c].sum for c in range(C))


def test_low_mode_is_exact_while_exponents_stay_within_the_guard():
    """e4m3 has block exponents <= 15, so with G = 16 the forward sums and sum g are exact and
    the forward outputs identical to exact mode; sum g x (exponents up to 30) still windows."""
    rng = np.random.default_rng(4)
    fmt = float_format("e4m3")
    bfp = BFPFormat.for_float(fmt, 8, 3)
    C, n = 5, 16
    x = rng.normal(size=(n, C)) * 16
    g = rng.normal(size=(n, C)) * 64
    gamma, beta = rng.normal(size=C), rng.normal(size=C)
    ex = gb.BNConfig(bfp=bfp, channels=C, internal_frac_bits=12)
    lo = gb.BNConfig(bfp=bfp, channels=C, internal_frac_bits=12, stats="low", stats_guard=16)
    y_e, st_e, par_e, _, _, gst_e = _run(ex, fmt, x, g, gamma, beta)
    y_l, st_l, par_l, _, _, gst_l = _run(lo, fmt, x, g, gamma, beta)
    assert y_e == y_l and st_e == st_l and par_e == par_l
    assert [s.sum_g for s in gst_e] == [s.sum_g for s in gst_l] and all(s.sum_g_lsb == 0 for s in gst_l)
    assert any(s.sum_gx_lsb > 0 for s in gst_l)


def test_exact_is_the_default():
    cfg = gb.BNConfig(bfp=BFPFormat.for_float(float_format("fp10"), 8, 16), channels=3)
    assert (cfg.stats, cfg.stats_guard) == ("exact", STATS_GUARD_DEFAULT)
