"""Golden model of LightNorm Range BN, forward and backward, bit for bit as the hardware does it.

Plain Python integers and ``Fraction``s; no Amaranth. Every intermediate that the hardware holds is
defined here as an exact value followed by *one* round-to-nearest-even into a named format. The
hardware may compute differently (round-to-odd intermediates, sequential dividers) as long as it
produces the same bits; ``docs/numerics.md`` is the prose version of this file.

Data layout (LightNorm's grouping)
----------------------------------
A tensor is ``n`` positions (the N*H*W of a conv output) by ``channels``. Channels are split into
``groups = ceil(channels / B)`` groups of ``B`` lanes. The stream carries, for position ``p = 0..n-1``
and group ``g = 0..groups-1`` in that order (group fastest), one BFP block whose lane ``l`` holds
channel ``g*B + l``. Lanes past the last channel are padding: their codes are ignored on input and
emitted as 0 on output. Channel ``c`` sees one element per position, so its count is ``n``.

Units
-----
``u = 2**(-bias - (W-2))`` is the LSB of a code in a block with shared exponent 0. The exact sum of a
channel is an integer ``S`` in units of ``u``: each code ``q`` of a block with exponent ``E``
contributes ``q * 2**E``. Maxima and minima are kept the same way. Products of two codes are in units
of ``u**2``.

Chunks
------
Positions ``[k*m, (k+1)*m)`` form chunk ``k`` (``m = n / K``). Per chunk the exact max and min and the
position of the first occurrence of each are kept (ties go to the lowest position).

Low-precision statistics (``BNConfig.stats = "low"``)
---------------------------------------------------
In ``"exact"`` mode (the default) the three channel sums (``sum x``, ``sum g``, ``sum g x``) are
exact integers. In ``"low"`` mode each is a *windowed* accumulator (:func:`windowed_sum`) over the
channel's elements in stream order, each given as an integer ``v`` with exponent ``E >= 0`` (weight
``v * 2**E``): ``sum x``: ``v = q``, ``E`` = the block exponent; ``sum g``: ``v = q_g``, ``E = E_g``;
``sum g x``: ``v = q_g * q_x``, ``E = E_g + E_x``. With ``F = A = 0`` at the start, per element::

    F' = max(F, E);  L = max(0, F - G);  L' = max(0, F' - G)
    A' = rhu(A * 2**(L - L')) + rhu(v * 2**(E - L'))        # rhu(z) = floor(z + 1/2)

and the sum's value is ``A * 2**L`` with ``L = max(0, F - G)`` after the last element (``G`` =
``BNConfig.stats_guard``). The stats keep ``A`` (``sum``, ``sum_g``, ``sum_gx``) and ``L``
(``sum_lsb``, ``sum_g_lsb``, ``sum_gx_lsb``; 0 in exact mode); every use of a sum uses its value.
``|A| <= n vmax 2**G`` and ``|A 2**L - S| <= n 2**L`` (``docs/numerics.md``, "Low-precision
statistics"); with ``F <= G`` throughout the windowed sum is the exact sum.
"""

import math
from dataclasses import dataclass, field
from fractions import Fraction

from hw.formats import (C_FRAC_BITS, STATS_GUARD_DEFAULT, BFPFormat, FloatFormat, check_bn_format, check_stats,
                        internal_format, running_reset_bits)
from sim.model.golden import Block, quantize_block

__all__ = [
    "C_FRAC_BITS", "range_scale", "BNConfig", "ChannelStats", "ChannelParams",
    "check_count", "block_count", "rhu", "windowed_sum", "tensor_to_blocks", "blocks_to_values",
    "forward_stats", "finalize", "normalize", "forward", "running_reset", "update_running",
    "backward_stats", "backward_finalize", "backward_dx", "backward",
]

def range_scale(m, cfix=1.0):
    """The Range-BN constant ``C(m) = cfix / sqrt(2 ln m)`` as an unsigned fixed-point integer with
    ``C_FRAC_BITS`` fraction bits (round half even). Shared by the golden model, the generator (reset
    value of the register) and the drivers that program the hardware."""
    if not isinstance(m, int) or m < 2:
        raise ValueError(f"chunk length m must be an integer >= 2 for C(m) to exist, not {m!r}")
    if not 0 < cfix < 4:
        raise ValueError(f"CFIX must be in (0, 4), not {cfix!r}")
    exact = Fraction(cfix / math.sqrt(2 * math.log(m))) * (1 << C_FRAC_BITS)
    return round(exact)  # Fraction.__round__ rounds half to even


@dataclass(frozen=True)
class BNConfig:
    """Everything the golden model needs: formats, geometry and run-time settings.

    ``bfp``: the BFP format of x, y, g and dx; its exponent field is at most
    ``hw.formats.BN_MAX_EXP_BITS`` bits (``check_bn_format``: bf16 or fp32 data is refused, as the
    generator refuses it). ``internal``: the per-channel float (mu, sigma_hat,
    1/sigma_hat, a, b, gamma, beta, gradients). ``chunks``: K (a power of two). ``c_scale``: C as
    returned by :func:`range_scale`. ``eps_log2``: eps = 2**eps_log2. ``momentum_shift``: running
    statistics move by ``2**-momentum_shift`` of the difference per batch. ``stats``: ``"exact"``
    (exact channel sums) or ``"low"`` (windowed sums, :func:`windowed_sum`, with ``stats_guard`` =
    G guard bits); checked by ``hw.formats.check_stats``.
    """
    bfp: BFPFormat
    channels: int
    chunks: int = 1
    internal_frac_bits: int = 10
    c_scale: int = None
    eps_log2: int = -16
    momentum_shift: int = 3
    stats: str = "exact"
    stats_guard: int = STATS_GUARD_DEFAULT

    def __post_init__(self):
        if not isinstance(self.bfp, BFPFormat):
            raise TypeError(f"bfp must be a hw.formats.BFPFormat, not {self.bfp!r}")
        check_bn_format(self.bfp)       # what the generator refuses (BN_MAX_EXP_BITS), same message
        if not isinstance(self.channels, int) or self.channels < 1:
            raise ValueError(f"channels must be a positive integer, not {self.channels!r}")
        k = self.chunks
        if not isinstance(k, int) or k < 1 or k & (k - 1):
            raise ValueError(f"chunks K must be a power of two >= 1, not {k!r}")
        check_stats(self.stats, self.stats_guard)

    @property
    def internal(self):
        return internal_format(self.internal_frac_bits)

    @property
    def groups(self):
        return -(-self.channels // self.bfp.block)

    @property
    def unit_exp(self):
        """log2 of ``u``, the LSB of a code at shared exponent 0."""
        return self.bfp.lsb_exponent(0)

    @property
    def eps(self):
        return Fraction(2) ** self.eps_log2

    def c(self, n):
        """C as an exact Fraction for count ``n`` (uses ``c_scale`` when given, else CFIX = 1)."""
        scale = self.c_scale if self.c_scale is not None else range_scale(n // self.chunks)
        return Fraction(scale, 1 << C_FRAC_BITS)


def check_count(cfg, n):
    """Run-time count check: K must divide n and each chunk needs m = n / K >= 2 elements.
    The hardware raises its ``count_error`` status bit and ignores ``start`` in these cases."""
    if not isinstance(n, int) or n < 2 * cfg.chunks or n % cfg.chunks:
        raise ValueError(
            f"count per channel n={n!r} is not usable with K={cfg.chunks}: "
            f"n must be a multiple of K and n/K >= 2")


def block_count(cfg, n):
    return n * cfg.groups


# --- internal float helpers -------------------------------------------------------------------

def _round(fmt: FloatFormat, value, flags=None, name=""):
    """One RNE rounding of an exact value into ``fmt`` (packed bits); records saturation."""
    if flags is not None and fmt.overflows(value):
        flags.add(f"overflow_{name}" if name else "overflow")
    return fmt.encode(value)


def _val(fmt, bits):
    return fmt.decode(bits)


# --- windowed sums (the "low" statistics mode) ---------------------------------------------------

def rhu(z):
    """Round half up: ``floor(z + 1/2)`` of a Fraction or integer, exactly (-1/2 -> 0, 1/2 -> 1)."""
    return math.floor(Fraction(z) + Fraction(1, 2))


def windowed_sum(pairs, guard):
    """The windowed accumulator of the ``"low"`` statistics mode over ``(v, E)`` pairs in stream
    order (integers, ``E >= 0``; element weight ``v * 2**E``). Returns ``(A, L)``: the sum's value
    is ``A * 2**L``. Per element: ``F' = max(F, E)``, ``L = max(0, F - G)``,
    ``L' = max(0, F' - G)``, ``A' = rhu(A 2**(L - L')) + rhu(v 2**(E - L'))``; ``F = A = 0`` at
    the start."""
    F = A = 0
    for v, E in pairs:
        F_new = max(F, E)
        L, L_new = max(0, F - guard), max(0, F_new - guard)
        A = rhu(Fraction(A) * Fraction(2) ** (L - L_new)) + rhu(Fraction(v) * Fraction(2) ** (E - L_new))
        F = F_new
    return A, max(0, F - guard)


# --- tensors <-> blocks -----------------------------------------------------------------------

def tensor_to_blocks(cfg, codes, exponents):
    """Build the stream from per-block data already in BFP: ``codes[p][c]`` signed codes and
    ``exponents[p][g]`` shared exponents. Returns a list of ``Block`` (flags clear)."""
    B = cfg.bfp.block
    blocks = []
    for p in range(len(codes)):
        for g in range(cfg.groups):
            lane_codes = [codes[p][g * B + l] if g * B + l < cfg.channels else 0 for l in range(B)]
            blocks.append(Block(exponents[p][g], lane_codes, {"sat": False, "special": False, "flush": False}))
    return blocks


def _lanes(cfg, blocks):
    """Yield ``(position, channel, q, E)`` for every real (non-padding) lane of the stream."""
    B = cfg.bfp.block
    for j, block in enumerate(blocks):
        p, g = divmod(j, cfg.groups)
        for l in range(B):
            c = g * B + l
            if c < cfg.channels:
                yield p, c, block[1][l], block[0]


def blocks_to_values(cfg, blocks):
    """Exact values as a list of rows ``[position][channel]`` of Fractions."""
    n = len(blocks) // cfg.groups
    rows = [[None] * cfg.channels for _ in range(n)]
    for p, c, q, e in _lanes(cfg, blocks):
        rows[p][c] = cfg.bfp.code_value(e, q)
    return rows


# --- forward ----------------------------------------------------------------------------------

@dataclass
class ChannelStats:
    """Statistics of one channel after the statistics pass (integers in units of ``u``). The sum's
    value is ``sum * 2**sum_lsb`` (``sum_lsb`` = 0 in exact mode, L of the windowed sum in low
    mode)."""
    sum: int = 0
    count: int = 0
    max: list = field(default_factory=list)     # per chunk
    min: list = field(default_factory=list)
    argmax: list = field(default_factory=list)  # position of first occurrence
    argmin: list = field(default_factory=list)
    sum_lsb: int = 0

    @property
    def sum_value(self):
        """The sum in units of u: ``sum * 2**sum_lsb``."""
        return self.sum << self.sum_lsb


def forward_stats(cfg, blocks):
    """The statistics unit: the sum (exact, or windowed in low mode), count, and per-chunk max/min
    with first-occurrence positions."""
    n = len(blocks) // cfg.groups
    if len(blocks) % cfg.groups:
        raise ValueError("the stream must hold whole positions (a multiple of `groups` blocks)")
    check_count(cfg, n)
    m = n // cfg.chunks
    stats = [ChannelStats(max=[None] * cfg.chunks, min=[None] * cfg.chunks,
                          argmax=[0] * cfg.chunks, argmin=[0] * cfg.chunks)
             for _ in range(cfg.channels)]
    pairs = [[] for _ in range(cfg.channels)]
    for p, c, q, e in _lanes(cfg, blocks):
        v = q << e
        s = stats[c]
        s.sum += v
        pairs[c].append((q, e))
        s.count += 1
        k = p // m
        if s.max[k] is None or v > s.max[k]:
            s.max[k], s.argmax[k] = v, p
        if s.min[k] is None or v < s.min[k]:
            s.min[k], s.argmin[k] = v, p
    if cfg.stats == "low":
        for c in range(cfg.channels):
            stats[c].sum, stats[c].sum_lsb = windowed_sum(pairs[c], cfg.stats_guard)
    return stats


@dataclass
class ChannelParams:
    """Per-channel results of finalize, as packed internal-float bits, plus flags."""
    mu: int
    sigma: int          # sigma_hat = C R + eps
    inv: int            # 1 / sigma_hat
    a: int              # gamma * inv        (0 for a flat channel)
    b: int              # beta - mu * a      (beta for a flat channel)
    flat: bool          # R == 0: every element of the channel was equal
    flags: set = field(default_factory=set)


def finalize(cfg, stat, gamma, beta, training=True, running_mean=None, running_sigma=None):
    """Per-channel finalize. Training: from ``stat``; inference: from the running statistics
    (packed internal-float bits). gamma, beta, running_* are packed internal-float bits.

    mu = rnd(S u / n) with S the sum's value (``sum * 2**sum_lsb``); R = (sum max - sum min) u / K; sigma_hat = rnd(C R + eps);
    inv = rnd(1 / sigma_hat) (correctly rounded); a = rnd(gamma inv); b = rnd(beta - mu a).
    A flat channel (R == 0, training only) gets a = 0, b = beta so that y == beta exactly.
    """
    f = cfg.internal
    flags = set()
    u = Fraction(2) ** cfg.unit_exp
    if training:
        n = stat.count
        mu = _round(f, Fraction(stat.sum_value) * u / n, flags, "mu")
        r = Fraction(sum(stat.max) - sum(stat.min)) * u / cfg.chunks
        flat = r == 0
        sigma = _round(f, cfg.c(n) * r + cfg.eps, flags, "sigma")
    else:
        mu, sigma, flat = running_mean, running_sigma, False
    sigma_v = _val(f, sigma)
    if sigma_v <= 0:
        flags.add("sigma_not_positive")
        inv = f.pack(0, f.exp_max, (1 << f.frac_bits) - 1)
    else:
        inv = _round(f, 1 / sigma_v, flags, "inv")
    if flat:
        a, b = 0, beta
    else:
        a = _round(f, _val(f, gamma) * _val(f, inv), flags, "a")
        b = _round(f, _val(f, beta) - _val(f, mu) * _val(f, a), flags, "b")
    return ChannelParams(mu=mu, sigma=sigma, inv=inv, a=a, b=b, flat=flat, flags=flags)


def running_reset(cfg):
    """Running statistics after reset: mean 0, sigma_hat 1 (as PyTorch's running_var = 1); the values
    are the hardware's (``hw.formats.RUNNING_MEAN_RESET`` / ``RUNNING_SIGMA_RESET``)."""
    return running_reset_bits(cfg.internal)


def update_running(cfg, running, batch):
    """running' = rnd(running + (batch - running) * 2**-momentum_shift), one rounding."""
    f = cfg.internal
    r, x = _val(f, running), _val(f, batch)
    return _round(f, r + (x - r) / (1 << cfg.momentum_shift))


def _fma_block(cfg, blocks_in, coeffs):
    """y = a x + b per lane, exact, then one rounding into a BFP block per input block.
    ``coeffs(j, p, channel) -> (a_bits, b_bits)``. Padding lanes give 0."""
    f, bfp, B = cfg.internal, cfg.bfp, cfg.bfp.block
    out = []
    for j, block in enumerate(blocks_in):
        p, g = divmod(j, cfg.groups)
        elements = []
        for l in range(B):
            c = g * B + l
            if c >= cfg.channels:
                elements.append((0, 0, 0))
                continue
            a, b = coeffs(j, p, c)
            y = _val(f, a) * bfp.code_value(block[0], block[1][l]) + _val(f, b)
            elements.append(_exact_element(y))
        shared, codes, sat = quantize_block(bfp, elements)
        out.append(Block(shared, codes, {"sat": sat, "special": False, "flush": False}))
    return out


def _exact_element(value):
    """Fraction with a power-of-two denominator -> (sign, mag, exp)."""
    value = Fraction(value)
    sign = int(value < 0)
    mag = abs(value)
    den = mag.denominator
    exp = -(den.bit_length() - 1)
    assert den == 1 << -exp, "exact element must be dyadic"
    return sign, mag.numerator, exp


def normalize(cfg, params, blocks):
    """The normalize pipeline: y = a x + b per element, rounded once into the output block."""
    return _fma_block(cfg, blocks, lambda j, p, c: (params[c].a, params[c].b))


def forward(cfg, blocks, gamma, beta, training=True, running_mean=None, running_sigma=None):
    """The forward core. Returns ``(y_blocks, stats, params, new_running_mean, new_running_sigma)``.
    In inference mode ``stats`` is None and the running statistics are returned unchanged."""
    if training:
        stats = forward_stats(cfg, blocks)
        params = [finalize(cfg, stats[c], gamma[c], beta[c]) for c in range(cfg.channels)]
        if running_mean is not None:
            running_mean = [update_running(cfg, running_mean[c], params[c].mu) for c in range(cfg.channels)]
            running_sigma = [update_running(cfg, running_sigma[c], params[c].sigma) for c in range(cfg.channels)]
    else:
        stats = None
        params = [finalize(cfg, None, gamma[c], beta[c], training=False,
                           running_mean=running_mean[c], running_sigma=running_sigma[c])
                  for c in range(cfg.channels)]
    return normalize(cfg, params, blocks), stats, params, running_mean, running_sigma


# --- backward ---------------------------------------------------------------------------------

@dataclass
class GradStats:
    """Per-channel gradient reductions: sum g (units u) and sum g x (units u**2); their values are
    ``sum_g * 2**sum_g_lsb`` and ``sum_gx * 2**sum_gx_lsb`` (the lsb fields are 0 in exact mode)."""
    sum_g: int = 0
    sum_gx: int = 0
    sum_g_lsb: int = 0
    sum_gx_lsb: int = 0

    @property
    def sum_g_value(self):
        return self.sum_g << self.sum_g_lsb

    @property
    def sum_gx_value(self):
        return self.sum_gx << self.sum_gx_lsb


def backward_stats(cfg, x_blocks, g_blocks):
    """Integer reductions over paired x and g blocks (same positions, same order): exact, or
    windowed (:func:`windowed_sum`) in low mode."""
    if len(x_blocks) != len(g_blocks):
        raise ValueError("x and g streams must have the same number of blocks")
    out = [GradStats() for _ in range(cfg.channels)]
    x_lanes = _lanes(cfg, x_blocks)
    pg = [[] for _ in range(cfg.channels)]
    pgx = [[] for _ in range(cfg.channels)]
    for (p, c, qg, eg), (_, _, qx, ex) in zip(_lanes(cfg, g_blocks), x_lanes):
        out[c].sum_g += qg << eg
        out[c].sum_gx += (qg * qx) << (eg + ex)
        pg[c].append((qg, eg))
        pgx[c].append((qg * qx, eg + ex))
    if cfg.stats == "low":
        for c in range(cfg.channels):
            out[c].sum_g, out[c].sum_g_lsb = windowed_sum(pg[c], cfg.stats_guard)
            out[c].sum_gx, out[c].sum_gx_lsb = windowed_sum(pgx[c], cfg.stats_guard)
    return out


@dataclass
class GradParams:
    dgamma: int
    dbeta: int
    b_mid: int     # b_g = rnd(-a * rnd(dbeta / n))
    b_max: int     # rnd(b_g - corr): used at each chunk's argmax
    b_min: int     # rnd(b_g + corr): used at each chunk's argmin
    flags: set = field(default_factory=set)


def backward_finalize(cfg, n, gstat, params):
    """With the sums' values (``sum_g * 2**sum_g_lsb``, ``sum_gx * 2**sum_gx_lsb``):
    dbeta = rnd(sum g); dgamma = rnd(inv (sum g x - mu sum g));
    gbar = rnd(sum g / n); b_g = rnd(-a gbar); t = rnd(C dgamma); corr = rnd(a t / K);
    b_max = rnd(b_g - corr); b_min = rnd(b_g + corr)."""
    f = cfg.internal
    flags = set()
    u = Fraction(2) ** cfg.unit_exp
    sum_g = Fraction(gstat.sum_g_value) * u
    sum_gx = Fraction(gstat.sum_gx_value) * u * u
    mu, inv, a = _val(f, params.mu), _val(f, params.inv), _val(f, params.a)
    dbeta = _round(f, sum_g, flags, "dbeta")
    dgamma = _round(f, inv * (sum_gx - mu * sum_g), flags, "dgamma")
    gbar = _round(f, sum_g / n, flags, "gbar")
    b_mid = _round(f, -a * _val(f, gbar), flags, "b_mid")
    t = _round(f, cfg.c(n) * _val(f, dgamma), flags, "t")
    corr = _val(f, _round(f, a * _val(f, t) / cfg.chunks, flags, "corr"))
    b_max = _round(f, _val(f, b_mid) - corr, flags, "b_max")
    b_min = _round(f, _val(f, b_mid) + corr, flags, "b_min")
    return GradParams(dgamma=dgamma, dbeta=dbeta, b_mid=b_mid, b_max=b_max, b_min=b_min, flags=flags)


def backward_dx(cfg, stats, params, gparams, g_blocks):
    """dx = a g + b_sel per element: b_sel is b_max at the argmax of the element's chunk, b_min at
    its argmin, b_mid elsewhere and everywhere in a chunk whose max equals its min."""
    n = len(g_blocks) // cfg.groups
    m = n // cfg.chunks

    def coeffs(j, p, c):
        s, k = stats[c], p // m
        b = gparams[c].b_mid
        if s.max[k] != s.min[k]:
            if p == s.argmax[k]:
                b = gparams[c].b_max
            elif p == s.argmin[k]:
                b = gparams[c].b_min
        return params[c].a, b
    return _fma_block(cfg, g_blocks, coeffs)


def backward(cfg, x_blocks, g_blocks, stats, params, params_only=False):
    """The backward core. Returns ``(dx_blocks or None, gparams)``; ``params_only`` skips the dx
    pass (what BN-parameter-only fine-tuning needs)."""
    n = len(x_blocks) // cfg.groups
    gstats = backward_stats(cfg, x_blocks, g_blocks)
    gparams = [backward_finalize(cfg, n, gstats[c], params[c]) for c in range(cfg.channels)]
    dx = None if params_only else backward_dx(cfg, stats, params, gparams, g_blocks)
    return dx, gparams
