"""Vectorized NumPy twin of :mod:`sim.model.golden_bn`: the same arithmetic, bit for bit, fast enough to
train a small CNN on a CPU.

``sim/model/golden_bn.py`` is the specification (plain Python integers and ``Fraction``); this module
computes every output bit it computes -- BFP codes, shared exponents, block flags, per-channel
statistics, every internal float and its overflow flags, dgamma, dbeta, dx -- with NumPy arrays.
``tests/test_fast_bn.py`` checks it against the golden model over random configurations.

Data layout
-----------
Tensors are ``x[n, channels]`` (positions by channels, ``n = N*H*W`` in N, H, W order), as in
``sim/model/reference.py``. A :class:`Blocks` holds the BFP stream of such a tensor in LightNorm's
grouping: ``codes[p, g, l]`` is lane ``l`` of the block of group ``g`` at position ``p`` (channel
``g*B + l``; lanes past the last channel are padding and hold 0), ``exps[p, g]`` its shared exponent
and ``sat/special/flush[p, g]`` its flags. ``Blocks.to_golden()`` gives the golden stream (position
major, group fastest).

Internal floats (mu, sigma_hat, inv, a, b, gamma, beta, gradients, running statistics) are carried
as float64 *values*: every number of ``internal_format(M)`` (8 exponent bits, bias 127, M <= 23) is
exactly a float64. A zero keeps the sign bit of its encoding (``-0.0`` for the bits of a negative
value that rounded to zero), so :func:`to_bits` gives the golden model's packed bits.

Why each step is exact
----------------------
* **Input rounding** (``FloatFormat.encode``, RNE, saturate, no subnormals): for a float64 ``x``,
  ``frexp`` gives ``|x| = m 2^e`` exactly; ``m 2^(M+1)`` is exact (M <= 52) and ``np.rint`` rounds
  it to nearest even exactly; below the smallest normal, ``|x| 2^(bias-1)`` is exact and rounds to
  0 or 1 the same way.
* **Alignment shifter**: integer guard/sticky shifts on int64 (significands have <= 53 bits; shift
  amounts are clamped where the result no longer depends on them).
* **Sums** ``S = sum q 2^E``, ``SG``, ``SGX = sum q_g q_x 2^(E_g+E_x)``: integer. When all shifted
  terms fit int64 they are summed in int64; otherwise the terms are binned by exponent with
  ``np.bincount`` on float64 weights (each bin is a sum of integers whose magnitude stays below
  2^53, so exact) and the bins are combined as Python integers.
* **Windowed sums** (``stats="low"``, ``golden_bn.windowed_sum``): ``L' = max(0, F' - G)`` is a
  running maximum, so per channel it is constant on segments of positions (at most one per value
  of ``F``). Each element's addend ``rhu(v 2^(E - L'))`` is an int64 shift (right shifts floor;
  a shift of 62 or more gives the same 0 as the exact value, |v| < 2^31), ``|addend| <= vmax 2^G
  < 2^47``. Per segment the addends are summed exactly (split into 26-bit halves, each half
  summed in float64 bins that stay below 2^53), and the segments are folded in order as Python
  integers: ``A = rhu(A 2^(L_prev - L)) + T``. Within a segment the rescale is the identity, so
  this is the per-element recurrence.
* **Max / min / first-occurrence argmax / argmin per chunk**: ``q 2^(E - Eref)`` is an exact float64
  (|q| < 2^15, exponent span checked), so comparisons and ``np.argmax`` (first occurrence) are exact.
* **Per-channel finalize** (O(channels) work): exact rational arithmetic on Python integers and one
  correctly rounded RNE into the internal float (:func:`_round_ratio`), the same definition as
  ``FloatFormat.encode``. No float shortcut is taken there.
* **Per-element ``a x + b`` (normalize and dx)**: ``a`` has <= 24 significant bits and ``x = q 2^k``
  with |q| < 2^15, so ``p = a x`` is exact in float64 (39 bits, exponents checked to stay far from
  float64's limits). ``s = fl(p + b)`` with the TwoSum error term ``e`` gives ``p + b = s + e``
  exactly; moving ``s`` one ulp towards ``e`` when ``e != 0`` and ``s`` is even gives
  ``round_to_odd_53(a x + b)``. Rounding that to nearest even on the block grid gives the same
  result as rounding the exact value whenever the float64 grid at the value is at least 4x finer
  than the block grid (round-to-odd theorem, Boldo & Melquiond 2008): every lane that does not
  saturate has at most W-1 <= 15 significant bits above the block LSB, far below 53 - 2. Lanes
  that saturate stay saturated because round-to-odd is monotonic and never crosses a power of two,
  which also keeps ``floor(log2 |v|)`` (hence the shared exponent) unchanged.

Input formats with more than ``hw.formats.BN_MAX_EXP_BITS`` exponent bits are refused, as the
generator and the golden model refuse them (``check_bn_format``: the ``BNConfig`` and the
functions that take an input format). Outside the ranges where the float64 paths are proven exact
(extreme values) the functions fall back to an exact Python-integer path, slower but the same bits;
``force_exact_path`` forces it (used by the tests). The format helpers (``encode_fields``,
``encode_values``, ``round_float``, ``to_bits``) take any format.
"""

import math
from dataclasses import dataclass, field

import numpy as np

from hw.formats import RUNNING_MEAN_RESET, RUNNING_SIGMA_RESET, FloatFormat, check_bn_format, float_format
from sim.model.golden import Block, quantize_block
from sim.model import golden_bn
from sim.model.golden_bn import BNConfig, C_FRAC_BITS, range_scale, check_count

__all__ = [
    "BNConfig", "Blocks", "Stats", "Params", "GradParams",
    "encode_fields", "encode_values", "fields_to_blocks", "words_to_blocks", "quantize_input",
    "quantize_values", "block_values", "round_float", "to_bits", "from_bits",
    "forward_stats", "finalize", "update_running", "running_reset", "normalize", "forward",
    "backward_stats", "backward_finalize", "backward_dx", "backward", "c_scale_for",
    "force_exact_path",
]

#: Set to True to take the exact Python-integer fallbacks everywhere (tests compare both paths).
force_exact_path = False

_FLAG_KEYS = ("sat", "special", "flush")


# --- packed bits <-> float64 values ----------------------------------------------------------

def to_bits(fmt, values):
    """Packed bits (Python ints, nested lists for arrays) of float64 values that are exactly
    representable in ``fmt``. A zero gives sign bit = ``signbit(value)``."""
    fmt = float_format(fmt)

    def one(v):
        v = float(v)
        sign = int(math.copysign(1.0, v) < 0)
        if v == 0:
            return fmt.pack(sign, 0, 0)
        m, e = math.frexp(abs(v))
        biased = e - 1 + fmt.bias
        mant = int(m * (1 << (fmt.frac_bits + 1)))
        assert 1 <= biased <= fmt.exp_max and mant == m * (1 << (fmt.frac_bits + 1)), v
        return fmt.pack(sign, biased, mant - (1 << fmt.frac_bits))
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 0:
        return one(arr)
    return [to_bits(fmt, v) for v in arr]


def from_bits(fmt, bits):
    """float64 values of packed bits (``FloatFormat.decode``; a zero keeps its sign bit)."""
    fmt = float_format(fmt)

    def one(b):
        sign, exponent, fraction = fmt.unpack(int(b))
        if exponent == 0:
            return -0.0 if sign else 0.0
        v = math.ldexp((1 << fmt.frac_bits) | fraction, exponent - fmt.bias - fmt.frac_bits)
        return -v if sign else v
    if isinstance(bits, (list, tuple, np.ndarray)):
        return np.array([one(b) for b in bits], dtype=np.float64)
    return one(bits)


def round_float(fmt, values):
    """``FloatFormat.encode`` of float64 values taken as exact (or as round-to-odd at 53 bits of the
    exact value, which rounds the same way into <= 51 fraction bits). Returns ``(rounded values,
    overflow)``; ``overflow`` is ``FloatFormat.overflows``. Exact zero gives +0.0; a non-zero value
    that rounds to zero keeps its sign (as the packed bits do)."""
    fmt = float_format(fmt)
    x = np.asarray(values, dtype=np.float64)
    M, bias = fmt.frac_bits, fmt.bias
    mag = np.abs(x)
    m, e = np.frexp(mag)
    biased = e.astype(np.int64) - 1 + bias
    mant = np.rint(np.ldexp(m, M + 1))
    carry = mant >= 2.0 ** (M + 1)
    mant = np.where(carry, 2.0 ** M, mant)
    biased = biased + carry
    over = (biased > fmt.exp_max) & (mag > 0)
    maxv = float(fmt.max_value())
    normal = np.ldexp(mant, np.clip(biased - bias - M, -1100, 1100))
    normal = np.where(over, maxv, normal)
    small = (e.astype(np.int64) - 1 + bias) < 1
    with np.errstate(over="ignore"):
        tiny = np.where(np.rint(np.ldexp(mag, bias - 1)) >= 1, 2.0 ** (1 - bias), 0.0)
    out = np.where(small, tiny, normal)
    out = np.where(mag == 0, 0.0, np.copysign(out, x))
    return out, over


def _dyadic(v):
    """float64 -> (int mantissa, exponent) with ``v == mant * 2**exp`` exactly."""
    m, e = math.frexp(float(v))
    return int(m * (1 << 53)), e - 53


def _round_ratio(fmt, num, den=1, exp2=0):
    """One RNE rounding of the exact rational ``num / den * 2**exp2`` (Python ints, den > 0) into
    ``fmt``: ``FloatFormat.encode`` semantics. Returns ``(value, overflow)`` with ``overflow`` as
    ``FloatFormat.overflows``."""
    if num == 0:
        return 0.0, False
    neg = num < 0
    mag = -num if neg else num
    M, bias = fmt.frac_bits, fmt.bias
    e = mag.bit_length() - den.bit_length()          # floor(log2(mag/den)) is e or e-1
    if (mag << -e if e < 0 else mag) < (den << e if e > 0 else den):
        e -= 1
    E = e + exp2                                      # floor(log2 |value|)
    over = False
    if E + bias < 1:
        # grid of the smallest binade, step 2**(1-bias): result 0 or the smallest normal
        k = exp2 - 1 + bias + 1                       # compare 2 * value / step with 1
        lhs, rhs = (mag << k, den) if k >= 0 else (mag, den << -k)
        value = math.ldexp(1.0, 1 - bias) if lhs > rhs else 0.0
    else:
        sh = M - e                                    # mant = RNE(mag / den * 2**sh)
        n, d = (mag << sh, den) if sh >= 0 else (mag, den << -sh)
        q, rem = divmod(n, d)
        if 2 * rem > d or (2 * rem == d and q & 1):
            q += 1
        if q >> (M + 1):
            q >>= 1
            E += 1
        if E + bias > fmt.exp_max:
            over = True
            value = float(fmt.max_value())
        else:
            value = math.ldexp(q, E - M)
    return (-value if neg else value), over


def _round_dyadic_terms(fmt, terms):
    """RNE of ``sum(m * 2**e for m, e in terms)`` (exact Python ints)."""
    terms = [(m, e) for m, e in terms if m]
    if not terms:
        return 0.0, False
    lo = min(e for _, e in terms)
    return _round_ratio(fmt, sum(m << (e - lo) for m, e in terms), 1, lo)


# --- float -> input format -> BFP blocks ----------------------------------------------------

def encode_fields(fmt, x):
    """``FloatFormat.encode`` on every element of a float array: ``(sign, exponent, fraction)`` int64
    arrays (the fields of the packed words). Non-finite inputs raise ``ValueError`` (the golden model
    cannot encode them either)."""
    fmt = float_format(fmt)
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError("non-finite value in the tensor to encode")
    M, bias = fmt.frac_bits, fmt.bias
    sign = (x < 0).astype(np.int64)
    mag = np.abs(x)
    m, e = np.frexp(mag)
    e = e.astype(np.int64)
    biased = e - 1 + bias
    mant = np.rint(np.ldexp(m, M + 1)).astype(np.int64)
    carry = (mant >> (M + 1)) != 0
    mant = np.where(carry, mant >> 1, mant)
    biased_c = biased + carry
    over = biased_c > fmt.exp_max
    expo = np.where(over, fmt.exp_max, biased_c)
    frac = np.where(over, (1 << M) - 1, mant - (1 << M))
    small = biased < 1
    with np.errstate(over="ignore"):
        up = np.rint(np.ldexp(mag, bias - 1)) >= 1
    expo = np.where(small, np.where(up, 1, 0), expo)
    frac = np.where(small, 0, frac)
    zero = mag == 0
    expo = np.where(zero, 0, expo)
    frac = np.where(zero, 0, frac)
    return sign, expo.astype(np.int64), frac.astype(np.int64)


def encode_values(fmt, x):
    """float64 values after ``FloatFormat.encode`` (what the input converter holds)."""
    fmt = float_format(fmt)
    if not force_exact_path and fmt.exp_bits <= 10 and fmt.frac_bits < 52:
        return _encode_values_fast(fmt, x)[0]
    sign, expo, frac = encode_fields(fmt, x)
    v = np.ldexp(((1 << fmt.frac_bits) | frac).astype(np.float64), expo - fmt.bias - fmt.frac_bits)
    v = np.where(expo == 0, 0.0, v)
    return np.where(sign == 1, -v, v)


@dataclass
class Blocks:
    """A BFP stream in LightNorm's grouping (see the module docstring)."""
    codes: np.ndarray      # (n, groups, B) int64
    exps: np.ndarray       # (n, groups) int64
    sat: np.ndarray        # (n, groups) bool
    special: np.ndarray
    flush: np.ndarray

    @property
    def n(self):
        return self.codes.shape[0]

    def lanes(self, cfg):
        """``(q, E)``: codes and block exponents per element, shape (n, channels)."""
        n, G, B = self.codes.shape
        q = self.codes.reshape(n, G * B)[:, :cfg.channels]
        E = np.repeat(self.exps, B, axis=1)[:, :cfg.channels]
        return q, E

    def to_golden(self):
        """The golden stream: a list of ``Block`` (position major, group fastest)."""
        n, G, B = self.codes.shape
        codes = self.codes.tolist()
        exps = self.exps.tolist()
        flags = [a.tolist() for a in (self.sat, self.special, self.flush)]
        return [Block(exps[p][g], codes[p][g],
                      {k: bool(flags[i][p][g]) for i, k in enumerate(_FLAG_KEYS)})
                for p in range(n) for g in range(G)]

    @classmethod
    def from_golden(cls, cfg, blocks):
        G, B = cfg.groups, cfg.bfp.block
        n = len(blocks) // G
        codes = np.array([list(b[1]) for b in blocks], dtype=np.int64).reshape(n, G, B)
        exps = np.array([b[0] for b in blocks], dtype=np.int64).reshape(n, G)
        fl = {k: np.array([bool(b[2][k]) for b in blocks]).reshape(n, G) for k in _FLAG_KEYS}
        return cls(codes, exps, fl["sat"], fl["special"], fl["flush"])

    def flags_any(self):
        return {k: bool(getattr(self, k).any()) for k in _FLAG_KEYS}


def _pad_lanes(cfg, a, fill=0):
    """(n, channels) -> (n, groups, B), padding lanes filled with ``fill``."""
    n = a.shape[0]
    G, B = cfg.groups, cfg.bfp.block
    pad = G * B - cfg.channels
    if pad:
        a = np.concatenate([a, np.full((n, pad), fill, dtype=a.dtype)], axis=1)
    return a.reshape(n, G, B)


def _rne_shift(mag, shift):
    """Vectorized ``sim.model.golden.rne_shift`` on int64 (mag < 2^53), result saturation-safe: a left
    shift is clamped so the result stays above any code maximum but fits int64."""
    sr = np.clip(shift, 1, 62)
    q = mag >> sr
    guard = (mag >> (sr - 1)) & 1
    sticky = (mag & ((np.int64(1) << (sr - 1)) - 1)) != 0
    right = q + (guard & (sticky | (q & 1)))
    sl = np.clip(-shift, 0, 17)
    left = np.minimum(mag, 1 << 17) << sl
    return np.where(shift > 0, right, left)


def fields_to_blocks(cfg, fmt, sign, expo, frac):
    """The BFP alignment shifter (``sim.model.golden.float_to_bfp``) on field arrays of shape
    (n, channels): one block per position and group."""
    fmt = check_bn_format(fmt)
    bfp = cfg.bfp
    W, M = bfp.width, fmt.frac_bits
    if M > 52:
        raise ValueError("input formats with more than 52 fraction bits are not supported")
    sign, expo, frac = (_pad_lanes(cfg, np.asarray(a, dtype=np.int64)) for a in (sign, expo, frac))
    nz = expo != 0
    lead = np.where(nz, expo - fmt.bias, np.iinfo(np.int64).min // 2)
    any_nz = nz.any(axis=2)
    shared = np.where(any_nz, np.clip(lead.max(axis=2) + bfp.bias, 1, bfp.exp_max), 0)
    lsb = shared - bfp.bias - (W - 2)
    mag = np.where(nz, (np.int64(1) << M) | frac, 0)
    shift = lsb[..., None] - (expo - fmt.bias - M)
    q = _rne_shift(mag, shift)
    sat_lane = q > bfp.code_max
    q = np.minimum(q, bfp.code_max)
    codes = np.where(sign != 0, -q, q)
    return Blocks(codes=codes, exps=shared.astype(np.int64), sat=sat_lane.any(axis=2),
                  special=(expo == fmt.exp_max).any(axis=2),
                  flush=((expo == 0) & (frac != 0)).any(axis=2))


def words_to_blocks(cfg, fmt, words):
    """Packed float words ``words[n][channels]`` (Python ints) -> :class:`Blocks`."""
    fmt = check_bn_format(fmt)
    w = np.array(words, dtype=object)
    sign = np.vectorize(lambda b: fmt.unpack(int(b))[0], otypes=[np.int64])(w)
    expo = np.vectorize(lambda b: fmt.unpack(int(b))[1], otypes=[np.int64])(w)
    frac = np.vectorize(lambda b: fmt.unpack(int(b))[2], otypes=[np.int64])(w)
    return fields_to_blocks(cfg, fmt, sign, expo, frac)


def _fast_ok(cfg, fmt=None):
    """The float64 shortcuts below are proven for exponent fields up to 10 bits (every value, block
    scale and product stays far inside float64's normal range) and fractions below 52 bits."""
    if force_exact_path or cfg.bfp.exp_bits > 10:
        return False
    return fmt is None or (fmt.exp_bits <= 10 and fmt.frac_bits < 52)


def _encode_values_fast(fmt, x):
    """``FloatFormat.encode`` values of float64 ``x`` by integer rounding of the float64 bits:
    adding ``2^(s-1) - 1 + lsb`` to the bit pattern and clearing the low ``s = 52 - M`` bits is RNE to
    M fraction bits (a carry moves into the exponent field as it should). Below the smallest normal
    2^(1-bias) the result is 2^(1-bias) if |x| > 2^-bias else 0 (RNE on that grid, tie to zero);
    above the largest value it saturates. Returns ``(signed values, special lane mask)``."""
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError("non-finite value in the tensor to encode")
    M, bias = fmt.frac_bits, fmt.bias
    sh = 52 - M
    mag = np.abs(x)
    b = mag.view(np.int64)
    r = ((b + ((1 << (sh - 1)) - 1) + ((b >> sh) & 1)) >> sh) << sh
    v = r.view(np.float64)
    smallest = 2.0 ** (1 - bias)
    v = np.where(mag < smallest, np.where(mag > 2.0 ** -bias, smallest, 0.0), v)
    v = np.minimum(v, float(fmt.max_value()))
    special = v >= 2.0 ** (fmt.exp_max - bias)
    return np.copysign(v, x), special


def quantize_input(cfg, fmt, x):
    """A float tensor ``x[n, channels]`` -> input float format (RNE, saturate, flush) -> BFP blocks,
    exactly as the golden ``float_to_bfp`` on the ``FloatFormat.encode`` words."""
    fmt = check_bn_format(fmt)
    if _fast_ok(cfg, fmt):
        # the encoded value is exact in float64; the alignment shifter is quantize_block on it
        v, special = _encode_values_fast(fmt, x)
        blocks = quantize_values(cfg, v)
        blocks.special = _pad_lanes(cfg, special, False).any(axis=2)
        return blocks
    return fields_to_blocks(cfg, fmt, *encode_fields(fmt, x))


def block_values(cfg, blocks, dtype=np.float64):
    """Values of the real lanes, shape (n, channels): ``q * 2**(E - bias - (W-2))`` (exact in float64
    for every format the generator accepts)."""
    if _fast_ok(cfg):
        n, G, B = blocks.codes.shape
        scale = np.ldexp(1.0, blocks.exps - cfg.bfp.bias - (cfg.bfp.width - 2))
        v = (blocks.codes * scale[..., None]).reshape(n, G * B)[:, :cfg.channels]
        return v.astype(dtype, copy=False)
    q, E = blocks.lanes(cfg)
    return np.ldexp(q.astype(np.float64), E - cfg.bfp.bias - (cfg.bfp.width - 2)).astype(dtype)


def quantize_values(cfg, r):
    """Round float64 values ``r[n, channels]`` into BFP blocks with ``quantize_block`` semantics.
    ``r`` must be exact values or their round-to-odd images at 53 bits (see module docstring)."""
    bfp = cfg.bfp
    W = bfp.width
    if _fast_ok(cfg):
        r = _pad_lanes(cfg, np.asarray(r, dtype=np.float64), 0.0)
        mag = np.abs(r)
        mx = mag.max(axis=2)
        _, e = np.frexp(mx)                      # the block's largest floor(log2|v|) is that of its max
        shared = np.where(mx > 0, np.clip(e.astype(np.int64) - 1 + bfp.bias, 1, bfp.exp_max), 0)
        scale = np.ldexp(1.0, (bfp.bias + W - 2) - shared)        # 2**-lsb, exact
        with np.errstate(over="ignore", under="ignore"):
            q = np.rint(mag * scale[..., None])  # exact scaling by a power of two, then RNE
        sat = (q > bfp.code_max).any(axis=2)
        codes = np.copysign(np.minimum(q, bfp.code_max), r).astype(np.int64)
        false = np.zeros(shared.shape, dtype=bool)
        return Blocks(codes=codes, exps=shared, sat=sat, special=false, flush=false.copy())
    W = bfp.width
    r = _pad_lanes(cfg, np.asarray(r, dtype=np.float64), 0.0)
    mag = np.abs(r)
    nz = mag != 0
    _, e = np.frexp(mag)
    lead = np.where(nz, e.astype(np.int64) - 1, np.iinfo(np.int64).min // 2)
    any_nz = nz.any(axis=2)
    shared = np.where(any_nz, np.clip(lead.max(axis=2) + bfp.bias, 1, bfp.exp_max), 0)
    lsb = shared - bfp.bias - (W - 2)
    with np.errstate(over="ignore", under="ignore"):
        t = np.ldexp(mag, np.clip(-lsb, -1100, 1100)[..., None])
    q = np.rint(t)
    sat_lane = q > bfp.code_max
    q = np.minimum(q, bfp.code_max).astype(np.int64)
    codes = np.where(r < 0, -q, q)
    false = np.zeros(shared.shape, dtype=bool)
    return Blocks(codes=codes, exps=shared.astype(np.int64), sat=sat_lane.any(axis=2),
                  special=false, flush=false.copy())


def _round_to_odd_sum(p, b):
    """``round_to_odd_53(p + b)`` for float64 arrays, exact via TwoSum (no overflow assumed)."""
    s = p + b
    bp = s - p
    ap = s - bp
    err = (p - ap) + (b - bp)
    even = (s.view(np.int64) & 1) == 0
    fix = (err != 0) & even
    if fix.any():
        s = np.where(fix, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s


def _fma_blocks(cfg, blocks, a, b):
    """``y = a x + b`` per real lane exactly, rounded once into one block per input block.
    ``a``: (channels,) float64; ``b``: (channels,) or (n, channels) float64 (internal floats)."""
    bfp = cfg.bfp
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if _fast_ok(cfg):
        # |a|, |b| in [2^-126, 2^130) or 0; x = q 2^k exact with |k| <= 530: a x is exact (<= 39
        # significant bits, far from float64's limits), TwoSum is exact, round-to-odd as documented
        return quantize_values(cfg, _round_to_odd_sum(a * block_values(cfg, blocks), b))
    q, E = blocks.lanes(cfg)
    b = np.broadcast_to(b, q.shape)
    lsbx = E - bfp.bias - (bfp.width - 2)
    nzq = q != 0
    ok = not force_exact_path
    if ok and nzq.any():
        lo, hi = lsbx[nzq].min(), lsbx[nzq].max()
        ok = -700 <= lo and hi <= 700
    if ok:
        nza = np.abs(a[a != 0])
        nzb = np.abs(b[b != 0])
        ok = all(v.size == 0 or (v.min() >= 2.0 ** -200 and v.max() <= 2.0 ** 200) for v in (nza, nzb))
    if not ok:
        return _fma_blocks_exact(cfg, q, E, a, b)
    p = np.ldexp(a[None, :] * q, lsbx)
    return quantize_values(cfg, _round_to_odd_sum(p, b))


def _fma_blocks_exact(cfg, q, E, a, b):
    """Exact Python-integer path of :func:`_fma_blocks` (slow; for extreme exponent ranges)."""
    bfp, B, C = cfg.bfp, cfg.bfp.block, cfg.channels
    n = q.shape[0]
    ad = [_dyadic(v) for v in a]
    codes = np.zeros((n, cfg.groups, B), dtype=np.int64)
    exps = np.zeros((n, cfg.groups), dtype=np.int64)
    sat = np.zeros((n, cfg.groups), dtype=bool)
    ql, El, bl = q.tolist(), E.tolist(), b.tolist()
    for p in range(n):
        for g in range(cfg.groups):
            elements = []
            for lane in range(B):
                c = g * B + lane
                if c >= C:
                    elements.append((0, 0, 0))
                    continue
                ma, ea = ad[c]
                mb, eb = _dyadic(bl[p][c])
                ex = El[p][c] - bfp.bias - (bfp.width - 2)
                t1, e1 = ma * ql[p][c], ea + ex
                lo = min(e1, eb)
                v = (t1 << (e1 - lo)) + (mb << (eb - lo))
                elements.append((int(v < 0), abs(v), lo))
            shared, cs, s = quantize_block(bfp, elements)
            codes[p, g], exps[p, g], sat[p, g] = cs, shared, s
    false = np.zeros_like(sat)
    return Blocks(codes, exps, sat, false, false.copy())


# --- exact integer reductions ----------------------------------------------------------------

def _shift_sums(vals, shifts, vbound):
    """Per column: ``sum(vals << shifts)`` as Python ints, exactly. ``vals`` int64 with
    ``|vals| <= vbound``, ``shifts`` >= 0 int64; both (n, C)."""
    n, C = vals.shape
    nz = vals != 0
    if not nz.any():
        return [0] * C
    smin = int(shifts[nz].min())
    smax = int(shifts[nz].max())
    rel = np.where(nz, shifts - smin, 0)
    if not force_exact_path and (smax - smin) + int(vbound).bit_length() + max(n, 1).bit_length() <= 62:
        tot = (vals << rel).sum(axis=0)
        return [int(t) << smin for t in tot]
    # bin by exponent; each bin sums integers of magnitude <= vbound, exact while < 2**53
    span = smax - smin + 1
    rows = max(1, ((1 << 53) - 1) // max(int(vbound), 1))
    idx = rel * C + np.arange(C)[None, :]
    out = [0] * C
    for start in range(0, n, rows):
        part = np.bincount(idx[start:start + rows].ravel(), weights=vals[start:start + rows].ravel().astype(np.float64),
                           minlength=span * C).reshape(span, C)
        ss, cc = np.nonzero(part)
        for s, c, v in zip(ss.tolist(), cc.tolist(), part[ss, cc].tolist()):
            out[c] += int(v) << (s + smin)
    return out


def _windowed_sums_exact(vals, exps, guard):
    """Per column: ``golden_bn.windowed_sum`` of the pairs ``(vals[i, c], exps[i, c])`` in row
    order, with Python-integer shifts (the exact fallback; the golden model uses Fractions)."""
    out = []
    for col_v, col_e in zip(vals.T.tolist(), exps.T.tolist()):
        F = A = 0
        for v, e in zip(col_v, col_e):
            Fn = max(F, e)
            L, Ln = max(0, F - guard), max(0, Fn - guard)
            if Ln > L:
                A = (A + (1 << (Ln - L - 1))) >> (Ln - L)
            A += v << (e - Ln) if e >= Ln else (v + (1 << (Ln - e - 1))) >> (Ln - e)
            F = Fn
        out.append((A, max(0, F - guard)))
    return [a for a, _ in out], [lsb for _, lsb in out]


def _windowed_sums(vals, exps, guard):
    """Per column: ``golden_bn.windowed_sum`` over the rows (stream order). ``vals`` int64 with
    ``|vals| < 2**31``, ``exps`` >= 0 int64, both (n, C). Returns ``(A list, L list)``."""
    n, C = vals.shape
    if force_exact_path or n == 0:
        return _windowed_sums_exact(vals, exps, guard)
    F = np.maximum.accumulate(exps, axis=0)
    Ln = np.maximum(F - guard, 0)                             # L' of every element
    sh = exps - Ln                                            # <= guard
    right = np.minimum(np.maximum(-sh, 1), 62)
    up = (vals + (np.int64(1) << (right - 1))) >> right       # rhu(v 2^sh) for sh < 0
    t = np.where(sh >= 0, vals << np.maximum(sh, 0), up)      # |t| <= vmax 2^G < 2^47
    # segments: rank = how many times L' rose before this position (per column)
    rose = np.zeros((n, C), dtype=np.int64)
    rose[1:] = Ln[1:] != Ln[:-1]
    rank = np.cumsum(rose, axis=0)
    nseg = int(rank[-1].max()) + 1
    idx = (np.arange(C)[None, :] * nseg + rank).ravel()
    lo = (t & ((1 << 26) - 1)).ravel().astype(np.float64)    # t = hi 2^26 + lo, 0 <= lo < 2^26
    hi = (t >> 26).ravel().astype(np.float64)                  # |hi| < 2^21
    tot = [0] * (C * nseg)
    rows = 1 << 26                                             # bins stay below 2^53
    for start in range(0, n, rows):
        sl = slice(start * C, min(n, start + rows) * C)
        blo = np.bincount(idx[sl], weights=lo[sl], minlength=C * nseg)
        bhi = np.bincount(idx[sl], weights=hi[sl], minlength=C * nseg)
        for j in np.nonzero((blo != 0) | (bhi != 0))[0].tolist():
            tot[j] += (int(bhi[j]) << 26) + int(blo[j])
    # L' of each segment: its value at the segment's first position
    seg_L = np.zeros((C, nseg), dtype=np.int64)
    seg_L[np.broadcast_to(np.arange(C)[None, :], (n, C)).ravel(), rank.ravel()] = Ln.ravel()
    nsegs = (rank[-1] + 1).tolist()
    A_out, L_out = [], []
    for c in range(C):
        A, L = 0, 0
        for k, Lk in enumerate(seg_L[c, :nsegs[c]].tolist()):
            if Lk > L:
                A = (A + (1 << (Lk - L - 1))) >> (Lk - L)
            A += tot[c * nseg + k]
            L = Lk
        A_out.append(A)
        L_out.append(L)
    return A_out, L_out


@dataclass
class Stats:
    """Vectorized ``ChannelStats`` of every channel: ``sum`` (Python ints, units u), ``count``,
    ``max``/``min`` ([channel][chunk] Python ints), ``argmax``/``argmin`` ((channels, K) int64),
    ``sum_lsb`` (per channel; the sum's value is ``sum << sum_lsb``, all 0 in exact mode)."""
    sum: list
    count: int
    max: list
    min: list
    argmax: np.ndarray
    argmin: np.ndarray
    sum_lsb: list = None

    def __post_init__(self):
        if self.sum_lsb is None:
            self.sum_lsb = [0] * len(self.sum)

    @property
    def sum_value(self):
        """Per channel, the sum's value in units of u (``sum << sum_lsb``)."""
        return [a << lsb for a, lsb in zip(self.sum, self.sum_lsb)]

    @property
    def nonflat_chunk(self):
        """(channels, K) bool: chunk max != min (the dx correction applies)."""
        return np.array([[mx != mn for mx, mn in zip(a, b)] for a, b in zip(self.max, self.min)],
                        dtype=bool).reshape(len(self.max), -1)

    def channel_range(self):
        """Per channel ``sum_k max_k - sum_k min_k`` (units u)."""
        return [sum(a) - sum(b) for a, b in zip(self.max, self.min)]

    def to_golden(self):
        return [golden_bn.ChannelStats(sum=self.sum[c], count=self.count, max=list(self.max[c]),
                                       min=list(self.min[c]), argmax=self.argmax[c].tolist(),
                                       argmin=self.argmin[c].tolist(), sum_lsb=self.sum_lsb[c])
                for c in range(len(self.sum))]


def forward_stats(cfg, blocks):
    """The statistics unit: sums (exact, or windowed in low mode), count, per-chunk max/min and
    first-occurrence positions."""
    n = blocks.n
    check_count(cfg, n)
    K = cfg.chunks
    m = n // K
    q, E = blocks.lanes(cfg)
    C = cfg.channels
    if cfg.stats == "low":
        total, lsb = _windowed_sums(q, E, cfg.stats_guard)
    else:
        total, lsb = _shift_sums(q, E, cfg.bfp.code_max), None
    nzq = q != 0
    Eref = 0
    fast = not force_exact_path
    if fast and nzq.any():
        emax, emin = int(E[nzq].max()), int(E[nzq].min())
        Eref = max(0, emax - 1000)
        fast = emin - Eref >= -1000
    if fast:
        v = np.ldexp(q.astype(np.float64), E - Eref).reshape(K, m, C)
    else:
        v = (q.astype(object) * np.vectorize(lambda e: 1 << int(e), otypes=[object])(E)).reshape(K, m, C)
    am = v.argmax(axis=1) + (np.arange(K) * m)[:, None]     # (K, C), first occurrence
    an = v.argmin(axis=1) + (np.arange(K) * m)[:, None]
    cols = np.arange(C)[None, :]
    qmax, emx = q[am, cols].tolist(), E[am, cols].tolist()
    qmin, emn = q[an, cols].tolist(), E[an, cols].tolist()
    mx = [[qmax[k][c] << emx[k][c] for k in range(K)] for c in range(C)]
    mn = [[qmin[k][c] << emn[k][c] for k in range(K)] for c in range(C)]
    return Stats(sum=total, count=n, max=mx, min=mn, argmax=am.T.astype(np.int64).copy(),
                 argmin=an.T.astype(np.int64).copy(), sum_lsb=lsb)


# --- finalize ----------------------------------------------------------------------------------

@dataclass
class Params:
    """Per-channel finalize results as float64 values of internal floats, plus flags."""
    mu: np.ndarray
    sigma: np.ndarray
    inv: np.ndarray
    a: np.ndarray
    b: np.ndarray
    flat: np.ndarray
    flags: list = field(default_factory=list)

    def to_golden(self, cfg):
        f = cfg.internal
        return [golden_bn.ChannelParams(mu=to_bits(f, self.mu[c]), sigma=to_bits(f, self.sigma[c]),
                                        inv=to_bits(f, self.inv[c]), a=to_bits(f, self.a[c]),
                                        b=to_bits(f, self.b[c]), flat=bool(self.flat[c]),
                                        flags=set(self.flags[c]))
                for c in range(len(self.mu))]


def c_scale_for(cfg, n):
    """``c_scale`` of the configuration for count n (``BNConfig.c``)."""
    return cfg.c_scale if cfg.c_scale is not None else range_scale(n // cfg.chunks)


def _log2_exact(k):
    assert k > 0 and k & (k - 1) == 0
    return k.bit_length() - 1


def finalize(cfg, stats, gamma, beta, training=True, running_mean=None, running_sigma=None):
    """Per-channel finalize (``golden_bn.finalize`` on every channel). ``gamma``, ``beta`` and the
    running statistics are float64 arrays of internal-float values."""
    f = cfg.internal
    C = cfg.channels
    ue = cfg.unit_exp
    gamma = np.asarray(gamma, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    out = {k: np.zeros(C) for k in ("mu", "sigma", "inv", "a", "b")}
    flat = np.zeros(C, dtype=bool)
    flags = [set() for _ in range(C)]
    maxv = float(f.max_value())
    if training:
        n = stats.count
        scale = c_scale_for(cfg, n)
        base = ue - C_FRAC_BITS - _log2_exact(cfg.chunks)
        ranges = stats.channel_range()
    for c in range(C):
        fl = flags[c]

        def rnd(name, res):
            if res[1]:
                fl.add(f"overflow_{name}")
            return res[0]
        if training:
            mu = rnd("mu", _round_ratio(f, stats.sum[c], n, ue + stats.sum_lsb[c]))
            d = ranges[c]
            flat[c] = d == 0
            sigma = rnd("sigma", _round_dyadic_terms(f, [(scale * d, base), (1, cfg.eps_log2)]))
        else:
            mu, sigma = float(running_mean[c]), float(running_sigma[c])
        if sigma <= 0:
            fl.add("sigma_not_positive")
            inv = maxv
        else:
            ms, es = _dyadic(sigma)
            inv = rnd("inv", _round_ratio(f, 1, ms, -es))
        if flat[c]:
            a, b = 0.0, float(beta[c])
        else:
            mg, eg = _dyadic(gamma[c])
            mi, ei = _dyadic(inv)
            a = rnd("a", _round_ratio(f, mg * mi, 1, eg + ei))
            mb, eb = _dyadic(beta[c])
            mm, em = _dyadic(mu)
            ma, ea = _dyadic(a)
            b = rnd("b", _round_dyadic_terms(f, [(mb, eb), (-mm * ma, em + ea)]))
        out["mu"][c], out["sigma"][c], out["inv"][c], out["a"][c], out["b"][c] = mu, sigma, inv, a, b
    return Params(flat=flat, flags=flags, **out)


def running_reset(cfg):
    """Running statistics after reset (``golden_bn.running_reset``): mean 0, sigma_hat 1."""
    return (np.full(cfg.channels, float(RUNNING_MEAN_RESET)),
            np.full(cfg.channels, float(RUNNING_SIGMA_RESET)))


def update_running(cfg, running, batch):
    """``rnd(running + (batch - running) * 2**-momentum_shift)`` per channel (one rounding)."""
    f = cfg.internal
    s = cfg.momentum_shift
    out = np.zeros(len(running))
    for c, (r, x) in enumerate(zip(np.asarray(running, np.float64), np.asarray(batch, np.float64))):
        mr, er = _dyadic(r)
        mx, ex = _dyadic(x)
        # r + (x - r) / 2**s = (r (2**s - 1) + x) / 2**s
        out[c] = _round_dyadic_terms(f, [(mr * ((1 << s) - 1), er - s), (mx, ex - s)])[0]
    return out


def normalize(cfg, params, blocks):
    """y = a x + b per element, rounded once into the output block."""
    return _fma_blocks(cfg, blocks, params.a, params.b)


def forward(cfg, blocks, gamma, beta, training=True, running_mean=None, running_sigma=None):
    """``golden_bn.forward``: returns ``(y_blocks, stats, params, new_running_mean,
    new_running_sigma)``; values instead of packed bits."""
    if training:
        stats = forward_stats(cfg, blocks)
        params = finalize(cfg, stats, gamma, beta)
        if running_mean is not None:
            running_mean = update_running(cfg, running_mean, params.mu)
            running_sigma = update_running(cfg, running_sigma, params.sigma)
    else:
        stats = None
        params = finalize(cfg, None, gamma, beta, training=False,
                          running_mean=running_mean, running_sigma=running_sigma)
    return normalize(cfg, params, blocks), stats, params, running_mean, running_sigma


# --- backward ----------------------------------------------------------------------------------

@dataclass
class GradStats:
    """``sum_g``, ``sum_gx`` (Python ints) and their LSB exponents (all 0 in exact mode): the
    values are ``sum_g << sum_g_lsb`` (units u) and ``sum_gx << sum_gx_lsb`` (units u**2)."""
    sum_g: list
    sum_gx: list
    sum_g_lsb: list = None
    sum_gx_lsb: list = None

    def __post_init__(self):
        if self.sum_g_lsb is None:
            self.sum_g_lsb = [0] * len(self.sum_g)
        if self.sum_gx_lsb is None:
            self.sum_gx_lsb = [0] * len(self.sum_gx)

    def to_golden(self):
        return [golden_bn.GradStats(sum_g=a, sum_gx=b, sum_g_lsb=la, sum_gx_lsb=lb)
                for a, b, la, lb in zip(self.sum_g, self.sum_gx, self.sum_g_lsb, self.sum_gx_lsb)]


def backward_stats(cfg, x_blocks, g_blocks):
    """Integer reductions ``SG = sum q_g 2^E_g`` and ``SGX = sum q_g q_x 2^(E_g + E_x)``: exact,
    or windowed in low mode."""
    if x_blocks.codes.shape != g_blocks.codes.shape:
        raise ValueError("x and g streams must have the same number of blocks")
    qg, Eg = g_blocks.lanes(cfg)
    qx, Ex = x_blocks.lanes(cfg)
    if cfg.stats == "low":
        sg, lg = _windowed_sums(qg, Eg, cfg.stats_guard)
        sgx, lgx = _windowed_sums(qg * qx, Eg + Ex, cfg.stats_guard)
        return GradStats(sum_g=sg, sum_gx=sgx, sum_g_lsb=lg, sum_gx_lsb=lgx)
    cm = cfg.bfp.code_max
    return GradStats(sum_g=_shift_sums(qg, Eg, cm), sum_gx=_shift_sums(qg * qx, Eg + Ex, cm * cm))


@dataclass
class GradParams:
    dgamma: np.ndarray
    dbeta: np.ndarray
    b_mid: np.ndarray
    b_max: np.ndarray
    b_min: np.ndarray
    flags: list = field(default_factory=list)

    def to_golden(self, cfg):
        f = cfg.internal
        return [golden_bn.GradParams(dgamma=to_bits(f, self.dgamma[c]), dbeta=to_bits(f, self.dbeta[c]),
                                     b_mid=to_bits(f, self.b_mid[c]), b_max=to_bits(f, self.b_max[c]),
                                     b_min=to_bits(f, self.b_min[c]), flags=set(self.flags[c]))
                for c in range(len(self.dgamma))]


def backward_finalize(cfg, n, gstats, params):
    """``golden_bn.backward_finalize`` on every channel."""
    f = cfg.internal
    C = cfg.channels
    ue = cfg.unit_exp
    scale = c_scale_for(cfg, n)
    lk = _log2_exact(cfg.chunks)
    out = {k: np.zeros(C) for k in ("dgamma", "dbeta", "b_mid", "b_max", "b_min")}
    flags = [set() for _ in range(C)]
    for c in range(C):
        fl = flags[c]

        def rnd(name, res):
            if res[1]:
                fl.add(f"overflow_{name}")
            return res[0]
        sg, sgx = gstats.sum_g[c] << gstats.sum_g_lsb[c], gstats.sum_gx[c] << gstats.sum_gx_lsb[c]
        mm, em = _dyadic(params.mu[c])
        mi, ei = _dyadic(params.inv[c])
        ma, ea = _dyadic(params.a[c])
        dbeta = rnd("dbeta", _round_ratio(f, sg, 1, ue))
        # inv * (SGX u^2 - mu SG u)
        lo = min(2 * ue, em + ue)
        inner = (sgx << (2 * ue - lo)) - ((mm * sg) << (em + ue - lo))
        dgamma = rnd("dgamma", _round_ratio(f, mi * inner, 1, ei + lo))
        gbar = rnd("gbar", _round_ratio(f, sg, n, ue))
        mgb, egb = _dyadic(gbar)
        b_mid = rnd("b_mid", _round_ratio(f, -ma * mgb, 1, ea + egb))
        mdg, edg = _dyadic(dgamma)
        t = rnd("t", _round_ratio(f, scale * mdg, 1, edg - C_FRAC_BITS))
        mt, et = _dyadic(t)
        corr = rnd("corr", _round_ratio(f, ma * mt, 1, ea + et - lk))
        mb, eb = _dyadic(b_mid)
        mc, ec = _dyadic(corr)
        b_max = rnd("b_max", _round_dyadic_terms(f, [(mb, eb), (-mc, ec)]))
        b_min = rnd("b_min", _round_dyadic_terms(f, [(mb, eb), (mc, ec)]))
        (out["dgamma"][c], out["dbeta"][c], out["b_mid"][c], out["b_max"][c],
         out["b_min"][c]) = dgamma, dbeta, b_mid, b_max, b_min
    return GradParams(flags=flags, **out)


def backward_dx(cfg, stats, params, gparams, g_blocks):
    """dx = a g + b_sel per element (b_max at each chunk's argmax, b_min at its argmin, b_mid
    elsewhere and in chunks whose max equals their min), rounded once per block."""
    n = g_blocks.n
    C = cfg.channels
    bsel = np.broadcast_to(gparams.b_mid, (n, C)).copy()
    nonflat = stats.nonflat_chunk                      # (C, K)
    cc, kk = np.nonzero(nonflat)
    # argmin first, then argmax: positions differ in a non-flat chunk, so order is irrelevant
    bsel[stats.argmin[cc, kk], cc] = gparams.b_min[cc]
    bsel[stats.argmax[cc, kk], cc] = gparams.b_max[cc]
    return _fma_blocks(cfg, g_blocks, params.a, bsel)


def backward(cfg, x_blocks, g_blocks, stats, params, params_only=False):
    """``golden_bn.backward``: ``(dx_blocks or None, gparams)``."""
    n = x_blocks.n
    gstats = backward_stats(cfg, x_blocks, g_blocks)
    gparams = backward_finalize(cfg, n, gstats, params)
    dx = None if params_only else backward_dx(cfg, stats, params, gparams, g_blocks)
    return dx, gparams
