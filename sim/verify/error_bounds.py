"""Error bounds of the golden model against float64 Range BN: one bound per output, and the script
that measures how close every configuration and distribution comes to it.

    python -m sim.verify.error_bounds                 # the table of docs/numerics.md ("Error bounds")
    python -m sim.verify.error_bounds --quick         # the subset tests/test_error_bounds.py enforces
    python -m sim.verify.error_bounds --config fp16,8,16,8,2,16,12 --dist offset_strong --seeds 3
    python -m sim.verify.error_bounds --config fp10,8,16,8,32,24,12,low,4   # low statistics, G = 4
    python -m sim.verify.error_bounds --stats low     # only the low-mode configurations

The golden model's bits come from ``sim.model.fast_bn`` (its vectorized twin, bit-identical:
tests/test_fast_bn.py; tests/test_error_bounds.py also reruns one case through ``sim.model.golden_bn``
itself); the reference is ``sim.model.reference`` (float64 Range BN with the same C = c_scale / 2**16, K
and eps) on the same decoded inputs.

The bounds (``BOUNDS``, keyed by output) are per element (y, dx) or per channel (dgamma, dbeta) and
are written in terms of the *inputs* (the decoded x and g, gamma, beta) and the exact reference
quantities mu* = S/n, s* = 1/(C R + eps), a* = gamma s*, b* = beta - mu* a*, gbar* = sum g / n,
dgamma*, so they hold whatever cancellation the exact result suffers. Notation: M internal
fraction bits, u = 2**-(M+1), gamma_k = k u / (1 - k u), lam = 2**-126 (the internal float's
smallest normal; it has no subnormals, so each rounding errs by at most u |v| + lam / 2). Every
internal value is one rounding of an exact expression of rounded values (docs/numerics.md), and
each bound below is that chain of roundings carried through, term by term (``docs/numerics.md``,
"Error bounds against float64 Range BN", has the derivation).

Results the hardware flags are outside the bounds and counted separately: a channel with an
internal-float overflow flag, a block that saturates at the largest shared exponent (``sat`` with
E = exp_max: the value may lie beyond the format), a flat channel (``flat``) in dx for every K and
in y for K > 1 (the two departures of docs/numerics.md).

Low statistics mode (``Config(..., stats="low", guard=G)``): the channel sums are windowed
(``sim.model.golden_bn.windowed_sum``) and err by at most ``n 2**L`` units, ``L = max(0, F - G)``
with F the largest exponent of the summed elements in the channel's group (block exponent for
sum x and sum g, ``E_g + E_x`` for sum g x). The same bounds carry those errors through mu,
dbeta, dgamma and gbar (the ``e_*`` quantities of :func:`measure`, all 0 in exact mode).
"""

import argparse
import math
import sys
from dataclasses import dataclass

import numpy as np

from hw.formats import STATS_GUARD_DEFAULT, BFPFormat, float_format
from sim.model import fast_bn as fb
from sim.model import golden_bn as gb
from sim.model.reference import range_bn_backward, range_bn_forward

__all__ = ["Config", "CONFIGS", "QUICK", "DISTRIBUTIONS", "BOUNDS", "OUTPUTS", "case", "measure",
           "summarize", "main"]

LAM = 2.0 ** -126          # smallest normal of the internal float (e8m<M>)
REF = 2.0 ** -40           # slack for the float64 reference's own rounding (see ``_ref_slack``)

OUTPUTS = ("y", "dx", "dgamma", "dbeta")


@dataclass(frozen=True)
class Config:
    """One configuration: input format, W, B, K, m (n = K m), channels, M, statistics mode and
    guard G (low mode only)."""
    fmt: str
    width: int
    block: int
    chunks: int
    m: int
    channels: int
    frac_bits: int
    stats: str = "exact"
    guard: int = STATS_GUARD_DEFAULT

    @property
    def n(self):
        return self.chunks * self.m

    def label(self):
        low = f" low G{self.guard}" if self.stats == "low" else ""
        return (f"{self.fmt} W{self.width} B{self.block} K{self.chunks} m{self.m} "
                f"C{self.channels} M{self.frac_bits}{low}")

    @classmethod
    def parse(cls, text):
        """``fmt,W,B,K,m,channels,M[,stats[,G]]``."""
        f, *rest = text.split(",")
        nums, extra = rest[:6], rest[6:]
        kw = {}
        if extra:
            kw["stats"] = extra[0]
        if len(extra) > 1:
            kw["guard"] = int(extra[1])
        return cls(f, *(int(v) for v in nums), **kw)


#: The measured configurations: the default, every named format, the extremes of W and M,
#: B = 1 and 3, a lone lane in a block of 16, m = 2 (every element an argmax or argmin).
CONFIGS = [
    Config("fp10", 8, 16, 8, 32, 24, 12),     # generator default
    Config("fp10", 4, 4, 1, 64, 6, 8),
    Config("fp16", 8, 16, 8, 16, 16, 12),
    Config("fp15", 8, 16, 8, 16, 16, 12),
    Config("fp16", 12, 3, 2, 32, 7, 16),
    Config("fp15", 16, 1, 1, 64, 3, 20),
    Config("e4m3", 6, 5, 4, 8, 9, 10),
    Config("e5m2", 3, 2, 2, 16, 5, 7),
    Config("fp10", 8, 16, 1, 128, 1, 12),     # one lane of a block of 16
    Config("fp16", 10, 3, 1, 128, 2, 14),
    Config("fp10", 2, 4, 1, 32, 4, 4),        # W = 2, M = 4
    Config("e6m10", 16, 8, 8, 8, 8, 23),
    Config("fp10", 8, 16, 8, 2, 24, 12),      # m = 2
    Config("fp16", 8, 4, 4, 2, 8, 12),        # m = 2
]
#: The same in the low statistics mode: the default configuration at G = 4 (the default), 0 and
#: 16, W = 4, fp16 and fp15 inputs (wide exponent ranges), B = 1 and 3, a lone lane, W = 2, m = 2.
LOW_CONFIGS = [
    Config("fp10", 8, 16, 8, 32, 24, 12, "low", 4),
    Config("fp10", 8, 16, 8, 32, 24, 12, "low", 0),
    Config("fp10", 8, 16, 8, 32, 24, 12, "low", 16),
    Config("fp10", 4, 4, 1, 64, 6, 8, "low", 4),
    Config("fp16", 8, 16, 8, 16, 16, 12, "low", 4),
    Config("fp15", 8, 16, 8, 16, 16, 12, "low", 4),
    Config("fp15", 16, 1, 1, 64, 3, 20, "low", 4),
    Config("fp10", 8, 16, 1, 128, 1, 12, "low", 4),
    Config("fp16", 10, 3, 1, 128, 2, 14, "low", 0),
    Config("fp10", 2, 4, 1, 32, 4, 4, "low", 4),
    Config("e6m10", 16, 8, 8, 8, 8, 23, "low", 4),
    Config("fp16", 8, 4, 4, 2, 8, 12, "low", 4),
]
CONFIGS = CONFIGS + LOW_CONFIGS
#: The subset the tests enforce (cheap): the fp16 / fp15 / m = 2 / B = 1 and 3 / lone-lane cases,
#: exact and low.
QUICK = [CONFIGS[i] for i in (0, 2, 3, 5, 8, 9, 10, 12, 13)] + [LOW_CONFIGS[i] for i in (0, 1, 4, 6, 8, 9, 11)]

DISTRIBUTIONS = ("gauss", "relu", "laplace", "student", "offset", "offset_strong", "near_constant",
                 "two_valued", "wide", "flat")


def _x(kind, n, ch, rng, prec=8):
    """x[n, ch] before scaling. ``prec`` = min(input fraction bits, W - 2): the relative resolution
    the data keeps through the input format and the BFP codes. ``offset`` is 10..100 sigma off 0;
    ``offset_strong`` 2**(prec-2)..2**prec sigma (as far off as the resolution allows before the
    channel rounds to a constant); ``near_constant`` a constant with one element in ten moved by
    1..3 steps of 2**-prec; ``two_valued`` two values only (max/min ties); ``wide`` magnitudes
    spread over 2**-8..2**8 inside every block; ``flat`` one channel in three constant and the rest
    Gaussian."""
    if kind == "gauss":
        return rng.normal(size=(n, ch)) + rng.uniform(-3, 3, size=ch)
    if kind == "relu":
        return np.maximum(rng.normal(size=(n, ch)) + rng.uniform(-1.5, 1.5, size=ch), 0.0)
    if kind == "laplace":
        return rng.laplace(size=(n, ch)) + rng.uniform(-3, 3, size=ch)
    if kind == "student":
        return rng.standard_t(3, size=(n, ch)) + rng.uniform(-3, 3, size=ch)
    if kind == "offset":
        return rng.normal(size=(n, ch)) + rng.choice([-1, 1], size=ch) * rng.uniform(10, 100, size=ch)
    if kind == "offset_strong":
        off = rng.uniform(0.25, 1.0, size=ch) * 2.0 ** prec
        return rng.normal(size=(n, ch)) + rng.choice([-1, 1], size=ch) * off
    if kind == "near_constant":
        x = np.ones((n, ch)) * rng.choice([-1, 1], size=ch)
        bump = rng.random((n, ch)) < 0.1
        return x + bump * rng.integers(-3, 4, size=(n, ch)) * 2.0 ** -prec
    if kind == "two_valued":
        lo, hi = rng.normal(size=ch), rng.normal(size=ch)
        return np.where(rng.random((n, ch)) < 0.5, lo, hi)
    if kind == "wide":
        return rng.normal(size=(n, ch)) * 2.0 ** rng.integers(-8, 9, size=(n, ch))
    if kind == "flat":
        x = rng.normal(size=(n, ch)) + rng.uniform(-3, 3, size=ch)
        x[:, ::3] = rng.normal(size=(1, len(range(0, ch, 3))))
        return x
    raise ValueError(f"unknown distribution {kind!r}; known: {', '.join(DISTRIBUTIONS)}")


def _scales(fmt, size, rng, span=6):
    """Per-channel power-of-two scales around the middle of the format's normal range."""
    lo, hi = 1 - fmt.bias, fmt.exp_max - fmt.bias
    mid = (lo + hi) / 2
    half = max(0.0, min(span, (hi - lo) / 2 - 3))
    return 2.0 ** np.round(rng.uniform(mid - half, mid + half, size=size))


def case(cfg_: Config, kind, seed):
    """Inputs of one case: ``(bn_config, fmt, x_blocks, g_blocks, gamma, beta)`` (twin types)."""
    fmt = float_format(cfg_.fmt)
    bfp = BFPFormat.for_float(fmt, cfg_.width, cfg_.block)
    cfg = gb.BNConfig(bfp=bfp, channels=cfg_.channels, chunks=cfg_.chunks,
                      internal_frac_bits=cfg_.frac_bits, c_scale=gb.range_scale(cfg_.m),
                      stats=cfg_.stats, stats_guard=cfg_.guard)
    rng = np.random.default_rng([seed, DISTRIBUTIONS.index(kind), cfg_.width, cfg_.block, cfg_.m,
                                 cfg_.frac_bits, cfg_.chunks])
    n, ch = cfg_.n, cfg_.channels
    x = _x(kind, n, ch, rng, prec=min(fmt.frac_bits, cfg_.width - 2)) * _scales(fmt, ch, rng, span=3)
    g = (rng.normal(size=(n, ch)) + rng.uniform(-1, 1, size=ch)) * _scales(fmt, ch, rng, span=3)
    f = cfg.internal
    gamma = fb.round_float(f, 2.0 ** rng.uniform(-2, 2, size=ch) * rng.choice([1, 1, 1, -1], size=ch))[0]
    beta = fb.round_float(f, rng.normal(size=ch))[0]
    return cfg, fmt, fb.quantize_input(cfg, fmt, x), fb.quantize_input(cfg, fmt, g), gamma, beta


# --- the bounds ------------------------------------------------------------------------------

def _gam(k, u):
    return k * u / (1 - k * u)


def _dmu(q):
    """|mu - mu*| <= u |mu*| + (1 + u) e_mu + lam/2: mu = rnd(S' u / n) with the sum's value S'
    within n 2**L_x units of S (low mode; e_mu = 2**L_x u_code, 0 in exact mode)."""
    return q["u"] * np.abs(q["mu"]) + (1 + q["u"]) * q["e_mu"] + LAM / 2


def _dgbar(q):
    """|gbar - gbar*| <= u |gbar*| + (1 + u) e_gbar + lam/2 (e_gbar = 2**L_g u_code in low mode)."""
    return q["u"] * np.abs(q["gbar"]) + (1 + q["u"]) * q["e_gbar"] + LAM / 2


def bound_y(q):
    """|y - y*| <= r ulp + Da |x - mu*| + |a| Dmu + u (|b*| + |a| Dmu + |mu*| Da) + lam/2.
    Da = gamma_3 |a*| + lam (sigma_hat, 1/sigma_hat, a: three roundings), Dmu = u |mu*| +
    (1 + u) e_mu + lam/2 (:func:`_dmu`; e_mu = 0 in exact mode)."""
    u = q["u"]
    da = _gam(3, u) * np.abs(q["a"]) + LAM
    a_abs = np.abs(q["a"]) + da
    dmu = _dmu(q)
    pre = (da * np.abs(q["x"] - q["mu"]) + a_abs * dmu
           + u * (np.abs(q["b"]) + a_abs * dmu + np.abs(q["mu"]) * da) + LAM / 2)
    return q["r_y"] * q["ulp_y"] + pre


def bound_dbeta(q):
    """|dbeta - dbeta*| <= u (|dbeta*| + e_sg) + e_sg + lam/2: one rounding of the sum (0.5 ulp),
    whose value is within e_sg = n 2**L_g u_code of the exact sum g (0 in exact mode)."""
    return q["u"] * (np.abs(q["db"]) + q["e_sg"]) + q["e_sg"] + LAM / 2


def bound_dgamma(q):
    """|dgamma - dgamma*| <= gamma_3 |dgamma*| + (1 + gamma_3) s* D + lam/2 with
    D = Dmu (|sum g| + e_sg) + |mu*| e_sg + e_gx, the error of sum g x - mu sum g: two roundings
    in 1/sigma_hat and the final one, plus the rounded mean: dgamma = inv (sum g x - mu sum g)
    moves by s* (mu - mu*) sum g, which is (|mu*| / sigma_hat) u |sum g| and is not bounded by
    any multiple of |dgamma*| (dgamma* = s* sum g (x - mu*) may be ~0); in low mode also the
    windowed sums' errors e_sg (sum g) and e_gx = n 2**L_gx u_code**2 (sum g x)."""
    u = q["u"]
    d = _dmu(q) * (np.abs(q["db"]) + q["e_sg"]) + np.abs(q["mu"]) * q["e_sg"] + q["e_gx"]
    return _gam(3, u) * np.abs(q["dg"]) + (1 + _gam(3, u)) * q["s"] * d + LAM / 2


def bound_dx(q):
    """dx = Q(a g + b_sel). Everywhere: Da |g - gbar*| + |a| Dgbar + u |a| (|gbar*| + Dgbar)
    (a, gbar = rnd(sum g / n) with :func:`_dgbar`, b_mid = rnd(-a gbar)); at a chunk's argmax / argmin also Dcorr +
    u (|b_mid| + |corr|) (corr = rnd(a rnd(C dgamma) / K), b_sel = rnd(b_mid -+ corr)), where
    Dcorr carries the dgamma bound through C / K |a*|: the rounded-mean term reaches dx there as
    (C / K) |a*| s* u |mu*| |sum g|. Plus r ulp for the final rounding."""
    u = q["u"]
    a = np.abs(q["a"])
    da = _gam(3, u) * a + LAM
    a_abs = a + da
    gbar = np.abs(q["gbar"])
    dgbar = _dgbar(q)
    pre = da * np.abs(q["g"] - q["gbar"]) + a_abs * dgbar + u * a_abs * (gbar + dgbar) + LAM / 2
    c, k = q["c"], q["k"]
    dg = np.abs(q["dg"])
    ddg = bound_dgamma(q)
    dt = c * (u * dg + (1 + u) * ddg) + LAM / 2
    t_abs = c * dg + dt
    dcorr = (da * t_abs + a * dt + u * a_abs * t_abs) / k + LAM / 2
    bmid = a_abs * (gbar + dgbar) * (1 + u) + LAM / 2
    corr = a * c * dg / k + dcorr
    extra = dcorr + u * (bmid + corr) + LAM / 2
    return q["r_dx"] * q["ulp_dx"] + pre + q["corrected"] * extra


#: One bound per output; each takes the quantities of :func:`measure` and returns an array shaped
#: like the output (n x channels for y and dx, channels for dgamma and dbeta).
BOUNDS = {"y": bound_y, "dx": bound_dx, "dgamma": bound_dgamma, "dbeta": bound_dbeta}


def _ref_slack(q):
    """The float64 reference's own error (pairwise sums of n terms, a few products): far below
    2**-40 of the magnitudes involved for n < 2**20. Added to every bound; below 1e-4 of each
    bound's value wherever the bound is not ~0."""
    ax = np.abs(q["a"])
    slack = {
        "y": REF * (ax * (np.abs(q["x"]) + q["mean_abs_x"]) + np.abs(q["b"]) + np.abs(q["beta"])),
        "dbeta": REF * q["sum_abs_g"],
        "dgamma": REF * q["s"] * q["sum_abs_g"] * (q["max_abs_x"] + q["mean_abs_x"]),
    }
    slack["dx"] = REF * ax * (np.abs(q["g"]) + q["sum_abs_g"] / q["n"]
                              + q["c"] / q["k"] * (np.abs(q["dg"]) + slack["dgamma"] / REF))
    return slack


# --- measurement -----------------------------------------------------------------------------

def _window_errors(cfg, xb, gb_):
    """Per channel, from the inputs alone: the windowed sums' LSB exponents L = max(0, F - G)
    (F = the largest exponent in the channel's group: E_x for sum x, E_g for sum g, E_g + E_x
    for sum g x) and the error terms of the bounds, e_mu = 2**L_x u_c (the mean's),
    e_sg = n 2**L_g u_c, e_gbar = 2**L_g u_c, e_gx = n 2**L_gx u_c**2 (u_c = 2**unit_exp, the
    code unit). All 0 in exact mode."""
    C, n = cfg.channels, xb.n
    if cfg.stats != "low":
        z = np.zeros(C)
        return {"e_mu": z, "e_sg": z, "e_gbar": z, "e_gx": z, "L_x": z, "L_g": z, "L_gx": z}
    B, G = cfg.bfp.block, cfg.stats_guard
    per_ch = lambda a: np.repeat(a, B)[:C]          # noqa: E731  (groups -> channels)
    Lx = per_ch(np.maximum(xb.exps.max(axis=0) - G, 0))
    Lg = per_ch(np.maximum(gb_.exps.max(axis=0) - G, 0))
    Lgx = per_ch(np.maximum((xb.exps + gb_.exps).max(axis=0) - G, 0))
    uc = 2.0 ** cfg.unit_exp
    return {"e_mu": np.ldexp(uc, Lx), "e_sg": n * np.ldexp(uc, Lg), "e_gbar": np.ldexp(uc, Lg),
            "e_gx": n * np.ldexp(uc * uc, Lgx), "L_x": Lx, "L_g": Lg, "L_gx": Lgx}


def _block_ulp(cfg, blocks):
    """Per element: the ulp of its block, 2**lsb_exponent(E), and whether the block saturated,
    and whether it saturated at the largest shared exponent (possibly beyond the format)."""
    B, ch = cfg.bfp.block, cfg.channels
    lanes = lambda a: np.repeat(a, B, axis=1)[:, :ch]
    ulp = np.ldexp(1.0, lanes(blocks.exps) - cfg.bfp.bias - (cfg.bfp.width - 2))
    sat = lanes(blocks.sat)
    top = sat & (lanes(blocks.exps) == cfg.bfp.exp_max)
    return ulp, sat, top


def _iulp(v, frac_bits):
    v = np.abs(v)
    return np.where(v > 0, np.ldexp(1.0, np.frexp(np.where(v > 0, v, 1.0))[1] - 1 - frac_bits), np.nan)


def measure(cfg, fmt, xb, gb_, gamma, beta, bounds=None):
    """Golden outputs, float64 reference, bounds. Returns ``{output: dict(err, bound, ulps, ok)}``
    where ``ok`` masks the results the bound covers (not flagged) and ``ulps`` is the error in
    ulps (of the output block for y and dx, of the exact value in the internal float otherwise).
    ``bounds`` replaces entries of ``BOUNDS`` (the tests check that dropped terms are caught)."""
    bounds = dict(BOUNDS, **(bounds or {}))
    n, K, M = xb.n, cfg.chunks, cfg.internal_frac_bits
    yb, st, par, _, _ = fb.forward(cfg, xb, gamma, beta)
    dxb, gp = fb.backward(cfg, xb, gb_, st, par)
    xv, gv = fb.block_values(cfg, xb), fb.block_values(cfg, gb_)
    yv, dxv = fb.block_values(cfg, yb), fb.block_values(cfg, dxb)
    c = float(cfg.c(n))
    y_ref, cache = range_bn_forward(xv, gamma, beta, K, c, float(cfg.eps))
    dx_ref, dg_ref, db_ref = range_bn_backward(gv, cache)

    mask = np.zeros((n, cfg.channels))
    nonflat = st.nonflat_chunk
    m = n // K
    for ch in range(cfg.channels):
        for k in range(K):
            if nonflat[ch, k]:
                mask[st.argmax[ch, k], ch] = mask[st.argmin[ch, k], ch] = 1.0
    ulp_y, sat_y, top_y = _block_ulp(cfg, yb)
    ulp_dx, sat_dx, top_dx = _block_ulp(cfg, dxb)
    e = _window_errors(cfg, xb, gb_)
    q = {
        **e,
        "u": 2.0 ** -(M + 1), "n": n, "k": K, "c": c, "x": xv, "g": gv, "beta": beta,
        "mu": cache["mu"], "s": cache["s"], "a": gamma * cache["s"],
        "b": beta - cache["mu"] * gamma * cache["s"], "gbar": db_ref / n, "dg": dg_ref, "db": db_ref,
        "corrected": mask, "ulp_y": ulp_y, "ulp_dx": ulp_dx,
        "r_y": np.where(sat_y, 1.0, 0.5), "r_dx": np.where(sat_dx, 1.0, 0.5),
        "mean_abs_x": np.abs(xv).mean(axis=0), "max_abs_x": np.abs(xv).max(axis=0),
        "sum_abs_g": np.abs(gv).sum(axis=0),
    }
    slack = _ref_slack(q)
    overflow = np.array([bool(par.flags[ch]) or bool(gp.flags[ch]) for ch in range(cfg.channels)])
    flat = np.asarray(par.flat, dtype=bool)
    dg = np.asarray(gp.dgamma)
    db = np.asarray(gp.dbeta)
    out = {
        "y": (yv, y_ref, ulp_y, ~overflow[None, :] & ~top_y & ~(flat[None, :] & (K > 1))),
        "dx": (dxv, dx_ref, ulp_dx, ~overflow[None, :] & ~top_dx & ~flat[None, :]),
        "dgamma": (dg, dg_ref, _iulp(dg_ref, M), ~overflow),
        "dbeta": (db, db_ref, _iulp(db_ref, M), ~overflow),
    }
    res = {}
    for name, (got, ref, ulp, ok) in out.items():
        err = np.abs(got - ref)
        bound = bounds[name](q) + slack[name]
        with np.errstate(invalid="ignore", divide="ignore"):
            ulps = np.where(err == 0, 0.0, err / ulp)
        ok = np.broadcast_to(ok, err.shape)
        # the part of the error beyond the final rounding, against the part of the bound beyond it
        final = q[f"r_{name}"] * q[f"ulp_{name}"] if name in ("y", "dx") else 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            excess = np.where(err > final, (err - final) / (bound - final), 0.0)
        res[name] = {"err": err, "bound": bound, "ulps": np.nan_to_num(ulps, nan=np.inf), "ok": ok,
                     "excess": excess, "excluded": int((~ok).sum()), "count": int(err.size)}
    res["dx"]["corrected"] = mask.astype(bool)
    return res


@dataclass
class Worst:
    ratio: float = 0.0
    ulps: float = 0.0
    where: str = ""
    excess: float = 0.0
    excess_where: str = ""
    count: int = 0
    excluded: int = 0


def summarize(configs, dists, seeds):
    """``{output: Worst}`` over everything, ``{(config label, output): Worst}`` per configuration
    and ``{(dist, output): Worst}`` per distribution."""
    total = {k: Worst() for k in OUTPUTS}
    per_cfg, per_dist = {}, {}
    for cf in configs:
        for kind in dists:
            for seed in range(seeds):
                res = measure(*case(cf, kind, seed))
                for name, r in res.items():
                    ok = r["ok"]
                    ratio = float(np.max(r["err"][ok] / r["bound"][ok], initial=0.0))
                    ulps = float(np.max(r["ulps"][ok], initial=0.0))
                    excess = float(np.max(r["excess"][ok], initial=0.0))
                    where = f"{cf.label()} {kind} seed {seed}"
                    for table, key in ((total, name), (per_cfg, (cf.label(), name)), (per_dist, (kind, name))):
                        w = table.setdefault(key, Worst())
                        w.count += r["count"]
                        w.excluded += r["excluded"]
                        w.ulps = max(w.ulps, ulps)
                        if ratio >= w.ratio:
                            w.ratio, w.where = ratio, where
                        if excess >= w.excess:
                            w.excess, w.excess_where = excess, where
    return total, per_cfg, per_dist


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the configurations the tests enforce")
    parser.add_argument("--config", action="append", default=None,
                        help="fmt,W,B,K,m,channels,M (repeatable; default: all of CONFIGS)")
    parser.add_argument("--dist", action="append", default=None, choices=DISTRIBUTIONS)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--stats", choices=("exact", "low"), default=None,
                        help="only the configurations of this statistics mode")
    args = parser.parse_args(argv)
    configs = ([Config.parse(c) for c in args.config] if args.config else QUICK if args.quick else CONFIGS)
    if args.stats:
        configs = [cf for cf in configs if cf.stats == args.stats]
    dists = args.dist or list(DISTRIBUTIONS)
    total, per_cfg, per_dist = summarize(configs, dists, args.seeds)
    elements = sum(cf.n * cf.channels for cf in configs) * len(dists) * args.seeds
    print(f"{len(configs)} configurations x {len(dists)} distributions x {args.seeds} seeds, "
          f"{elements} elements")
    print("\n| output | worst error / bound | closest case | worst error beyond the final rounding / "
          "bound beyond it | closest case | worst error, ulp | checked | flagged (excluded) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in OUTPUTS:
        w = total[name]
        print(f"| {name} | {w.ratio:.3f} | {w.where} | {w.excess:.3f} | {w.excess_where} | {w.ulps:.3g} "
              f"| {w.count} | {w.excluded} |")
    print("\nPer configuration, worst error in ulp (error / bound):\n")
    print("| configuration | " + " | ".join(OUTPUTS) + " |")
    print("|---|" + "---|" * len(OUTPUTS))
    for cf in configs:
        cells = [f"{per_cfg[(cf.label(), k)].ulps:.3g} ({per_cfg[(cf.label(), k)].ratio:.2f})" for k in OUTPUTS]
        print(f"| {cf.label()} | " + " | ".join(cells) + " |")
    print("\nPer distribution, worst error in ulp (error / bound):\n")
    print("| distribution | " + " | ".join(OUTPUTS) + " |")
    print("|---|" + "---|" * len(OUTPUTS))
    for kind in dists:
        cells = [f"{per_dist[(kind, k)].ulps:.3g} ({per_dist[(kind, k)].ratio:.2f})" for k in OUTPUTS]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    worst = max(total[k].ratio for k in OUTPUTS)
    return 0 if worst <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
