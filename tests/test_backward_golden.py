"""Backward Range BN without RTL: the float64 reference against finite differences, the golden
model against the float64 reference, and proof that dropping the argmax/argmin correction is caught.

Run (prints the error table of docs/backward.md)::

    PYTHONPATH=. pytest -s tests/test_backward_golden.py

Figures tested here on fp10, centred data (docs/backward.md); the bound for every accepted input,
per output, is ``sim.verify.error_bounds.BOUNDS`` (docs/numerics.md, tests/test_error_bounds.py):

* finite differences: ``|FD - analytic| <= FD_TOL * max(1, max |analytic|)`` per case, FD_TOL = 1e-6;
* golden dx: ``<= DX_BOUND_ULPS`` ulps of its output BFP block (the ulp of the block's shared
  exponent), every element;
* golden dbeta: ``<= 0.5`` ulp of the internal float (one rounding of an exact sum);
* golden dgamma: ``<= DGAMMA_BOUND_ULPS`` ulps of the internal float plus the cancellation term
  ``s |sum g| ulp(mu) / 2`` that the rounded mean brings in (``s = 1 / sigma_hat``).
"""

import math

import numpy as np
import pytest

from hw.formats import BFPFormat, float_format
from sim.model import golden_bn as gb
from sim.model.golden import encode_array
from sim.model.reference import range_bn_backward, range_bn_backward_no_correction, range_bn_forward

WIDTHS = (4, 6, 8, 10, 12, 16)
FD_TOL = 1e-6
FD_STEP = 1e-6
DX_BOUND_ULPS = 1.25
DBETA_BOUND_ULPS = 0.5
DGAMMA_BOUND_ULPS = 2.5


# --- float64 reference against central finite differences -------------------------------------

def _fd_case(seed, k):
    """Random continuous data with well separated chunk extrema (no ties, stable argmax/argmin
    under a step of FD_STEP)."""
    rng = np.random.default_rng(seed)
    m = int(rng.choice([4, 8, 16]))
    n, ch = m * k, int(rng.integers(1, 4))
    while True:
        x = rng.standard_normal((n, ch)) * rng.uniform(0.2, 3.0, ch) + rng.uniform(-2, 2, ch)
        chunks = np.sort(x.reshape(k, m, ch), axis=1)
        gaps = np.minimum(chunks[:, -1] - chunks[:, -2], chunks[:, 1] - chunks[:, 0])
        if gaps.min() > 1e3 * FD_STEP:
            break
    gamma = rng.uniform(0.5, 2.0, ch) * rng.choice([-1.0, 1.0], ch)
    beta = rng.uniform(-1, 1, ch)
    w = rng.standard_normal((n, ch))        # loss = sum(w * y): dy = w
    c = 1.0 / math.sqrt(2 * math.log(m)) * rng.uniform(0.5, 1.0)
    eps = 2.0 ** -16
    return x, gamma, beta, w, k, c, eps


def _loss(x, gamma, beta, w, k, c, eps):
    return float((range_bn_forward(x, gamma, beta, k, c, eps)[0] * w).sum())


def _finite_differences(x, gamma, beta, w, k, c, eps):
    h = FD_STEP

    def central(f, v):
        out = np.zeros_like(v)
        for idx in np.ndindex(v.shape):
            plus, minus = v.copy(), v.copy()
            plus[idx] += h
            minus[idx] -= h
            out[idx] = (f(plus) - f(minus)) / (2 * h)
        return out
    dx = central(lambda v: _loss(v, gamma, beta, w, k, c, eps), x)
    dgamma = central(lambda v: _loss(x, v, beta, w, k, c, eps), gamma)
    dbeta = central(lambda v: _loss(x, gamma, v, w, k, c, eps), beta)
    return dx, dgamma, dbeta


def _corrected_positions(x, k):
    """Mask of the argmax and argmin of every chunk whose max != min."""
    n, ch = x.shape
    m = n // k
    mask = np.zeros((n, ch), dtype=bool)
    for kk in range(k):
        part = x[kk * m:(kk + 1) * m]
        for c in range(ch):
            if part[:, c].max() != part[:, c].min():
                mask[kk * m + part[:, c].argmax(), c] = True
                mask[kk * m + part[:, c].argmin(), c] = True
    return mask


FD_CASES = [(seed, k) for k in (1, 2, 8) for seed in range(20)]


@pytest.mark.parametrize("seed,k", FD_CASES)
def test_reference_matches_finite_differences(seed, k):
    x, gamma, beta, w, k, c, eps = _fd_case(seed, k)
    _, cache = range_bn_forward(x, gamma, beta, k, c, eps)
    dx, dgamma, dbeta = range_bn_backward(w, cache)
    fdx, fdgamma, fdbeta = _finite_differences(x, gamma, beta, w, k, c, eps)
    for name, a, f in (("dx", dx, fdx), ("dgamma", dgamma, fdgamma), ("dbeta", dbeta, fdbeta)):
        scale = max(1.0, float(np.abs(a).max()))
        err = float(np.abs(a - f).max()) / scale
        assert err <= FD_TOL, f"{name}: relative error {err:.2e} > {FD_TOL:.0e} (seed {seed}, K={k})"


@pytest.mark.parametrize("seed,k", FD_CASES)
def test_dropping_the_correction_is_caught_by_finite_differences(seed, k):
    """Without the max/min term dx is off by exactly gamma s (C/K) |dgamma| at every chunk's
    argmax and argmin, and right everywhere else."""
    x, gamma, beta, w, k, c, eps = _fd_case(seed, k)
    _, cache = range_bn_forward(x, gamma, beta, k, c, eps)
    dx_nc, dgamma, _ = range_bn_backward_no_correction(w, cache)
    fdx, _, _ = _finite_differences(x, gamma, beta, w, k, c, eps)
    mask = _corrected_positions(x, k)
    scale = max(1.0, float(np.abs(fdx).max()))
    err = np.abs(dx_nc - fdx)
    assert err[~mask].max(initial=0.0) <= FD_TOL * scale
    expected = np.broadcast_to(np.abs(gamma * cache["s"] * (c / k) * dgamma), x.shape)[mask]
    np.testing.assert_allclose(err[mask], expected, rtol=1e-5, atol=FD_TOL * scale)
    # O(1): relative to the typical size of dx, the error at those positions is large.
    rms = float(np.sqrt((fdx ** 2).mean()))
    assert (err[mask] > FD_TOL * scale * 1e3).mean() > 0.9
    assert float(err[mask].mean()) > 0.05 * rms


def test_no_correction_error_is_order_one_overall():
    ratios = []
    for seed, k in FD_CASES:
        x, gamma, beta, w, k, c, eps = _fd_case(seed, k)
        _, cache = range_bn_forward(x, gamma, beta, k, c, eps)
        dx, _, _ = range_bn_backward(w, cache)
        dx_nc, _, _ = range_bn_backward_no_correction(w, cache)
        mask = _corrected_positions(x, k)
        ratios.append(float(np.abs(dx - dx_nc)[mask].mean() / np.abs(dx).mean()))
    assert np.median(ratios) > 0.3, ratios   # measured: median 0.64, min 0.08, max 2.0


# --- golden model against float64 --------------------------------------------------------------

def golden_case(width, block, channels, n, k, seed, in_format="fp10", g_scale=2.0 ** -6):
    """Random x and g in ``in_format`` converted to BFP, gamma and beta in the internal float.
    x per channel: (N(0, 1) + offset) * scale with offset in [-1, 1] and scale in [0.5, 4]."""
    rng = np.random.default_rng(seed)
    fp = float_format(in_format)
    bfp = BFPFormat.for_float(fp, width, block)
    cfg = gb.BNConfig(bfp=bfp, channels=channels, chunks=k, internal_frac_bits=min(23, width + 4),
                      c_scale=gb.range_scale(n // k))

    def tensor(scale):
        v = (rng.standard_normal((n, channels)) + rng.uniform(-1, 1, channels)) * scale
        pad = [0] * (cfg.groups * block - channels)
        words = [w for p in range(n) for w in [fp.encode(float(t)) for t in v[p]] + pad]
        return encode_array(fp, bfp, words)
    x = tensor(rng.uniform(0.5, 4.0, channels))
    g = tensor(g_scale)
    f = cfg.internal
    gamma = [f.encode(float(rng.uniform(0.5, 2) * rng.choice([-1, 1]))) for _ in range(channels)]
    beta = [f.encode(float(rng.uniform(-1, 1))) for _ in range(channels)]
    return cfg, x, g, gamma, beta


def _as_float(cfg, blocks):
    return np.array([[float(v) for v in row] for row in gb.blocks_to_values(cfg, blocks)])


def golden_errors(cfg, x, g, gamma, beta):
    """Errors of golden dx / dgamma / dbeta against float64 Range BN on the same (exact) inputs."""
    f, B, n = cfg.internal, cfg.bfp.block, len(x) // cfg.groups
    _, stats, params, _, _ = gb.forward(cfg, x, gamma, beta)
    dx, gparams = gb.backward(cfg, x, g, stats, params)
    xv, gv, dxv = _as_float(cfg, x), _as_float(cfg, g), _as_float(cfg, dx)
    gam = np.array([float(f.decode(v)) for v in gamma])
    bet = np.array([float(f.decode(v)) for v in beta])
    _, cache = range_bn_forward(xv, gam, bet, cfg.chunks, float(cfg.c(n)), float(cfg.eps))
    rdx, rdgamma, rdbeta = range_bn_backward(gv, cache)
    rdx_nc, _, _ = range_bn_backward_no_correction(gv, cache)
    ulp = np.zeros_like(dxv)
    for j, blk in enumerate(dx):
        p, grp = divmod(j, cfg.groups)
        for lane in range(B):
            if grp * B + lane < cfg.channels:
                ulp[p, grp * B + lane] = 2.0 ** cfg.bfp.lsb_exponent(blk[0])

    def iulp(v):
        v = np.abs(np.asarray(v, dtype=np.float64))
        return np.where(v > 0, 2.0 ** (np.floor(np.log2(np.where(v > 0, v, 1))) - f.frac_bits), 0.0)
    dgamma = np.array([float(f.decode(p.dgamma)) for p in gparams])
    dbeta = np.array([float(f.decode(p.dbeta)) for p in gparams])
    mu = np.array([float(f.decode(p.mu)) for p in params])
    cancel = cache["s"] * np.abs(gv.sum(axis=0)) * iulp(mu) / 2
    dg_err = np.abs(dgamma - rdgamma)
    return {
        "dx": np.abs(dxv - rdx) / ulp,
        "dx_nc": np.abs(dxv - rdx_nc) / ulp,
        "correction": np.abs(rdx - rdx_nc) / ulp,
        "mask": _corrected_positions(xv, cfg.chunks),
        "dgamma_raw": dg_err / iulp(rdgamma),
        "dgamma": (dg_err - cancel) / iulp(rdgamma),
        "dbeta": np.abs(dbeta - rdbeta) / iulp(rdbeta),
    }


def _table_row(width, seeds=range(4)):
    worst = {"dx": 0.0, "dgamma": -math.inf, "dgamma_raw": 0.0, "dbeta": 0.0}
    elements = 0
    for k in (1, 2, 8):
        for seed in seeds:
            e = golden_errors(*golden_case(width, 8, 10, 256, k, 1000 * width + 10 * k + seed))
            elements += e["dx"].size
            for key in worst:
                worst[key] = max(worst[key], float(np.max(e[key])))
    return worst, elements


@pytest.mark.parametrize("width", WIDTHS)
def test_golden_against_float64(width):
    worst, elements = _table_row(width)
    print(f"\nW={width:2d} M={min(23, width + 4):2d}: dx {worst['dx']:.3f} ulp(block), "
          f"dgamma {worst['dgamma']:.3f} ulp (+cancellation; raw {worst['dgamma_raw']:.1f}), "
          f"dbeta {worst['dbeta']:.3f} ulp over {elements} elements")
    assert worst["dx"] <= DX_BOUND_ULPS
    assert worst["dgamma"] <= DGAMMA_BOUND_ULPS
    assert worst["dbeta"] <= DBETA_BOUND_ULPS


@pytest.mark.parametrize("width", (4, 8, 12))
def test_golden_dx_disagrees_with_no_correction_reference(width):
    """Away from the argmax/argmin positions the corrected and uncorrected references agree; at
    them, wherever the correction exceeds twice the dx bound, the golden dx (within the bound of
    the corrected reference) is more than the bound away from the uncorrected one."""
    caught = corrected = 0
    for k in (1, 8):
        e = golden_errors(*golden_case(width, 8, 10, 256, k, 77 + width + k))
        mask = e["mask"]
        assert e["dx"].max() <= DX_BOUND_ULPS
        np.testing.assert_allclose(e["dx_nc"][~mask], e["dx"][~mask], atol=1e-9)
        assert (e["correction"][~mask] == 0).all()
        large = e["correction"][mask] > 2 * DX_BOUND_ULPS
        assert (e["dx_nc"][mask][large] > DX_BOUND_ULPS).all()
        caught += int(large.sum())
        corrected += int(mask.sum())
    print(f"\nW={width}: golden dx disagrees with the uncorrected reference at {caught} of "
          f"{corrected} argmax/argmin positions (the others' correction is below 2 * {DX_BOUND_ULPS} ulp)")
    assert caught > 0
