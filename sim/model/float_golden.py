"""Golden model of the conventional float batch-norm baseline (``hw.float_bn``) and its float units
(``hw.float_units``). NumPy only, no Amaranth.

Arithmetic convention (shared with the hardware, see ``hw/float_units.py``)
---------------------------------------------------------------------------
Every operation (add, subtract, multiply, divide, square root, integer-to-float) is computed
exactly and rounded once to the format: round to nearest, ties to even, to ``frac_bits + 1``
significant bits with an unbounded exponent; then

* a result whose biased exponent is below 1 (tiny *after* rounding) is flushed to ``+0``;
* a result whose biased exponent is above ``exp_max`` saturates to the largest finite magnitude
  (the all-ones exponent is an ordinary binade in this project, there is no Inf or NaN);
* every zero result is ``+0``; subnormal inputs are read as zero.

Inside the range of normal numbers this is IEEE 754 round-to-nearest-even, so for fp32 the results
equal NumPy ``float32`` arithmetic. The implementation computes each operation in float64 and
rounds the float64 result to the format: for +, -, *, / and sqrt the double rounding is innocuous
because 53 >= 2 * (frac_bits + 1) + 2 for every format up to fp32 (Figueroa, "When is double rounding
innocuous?", 1995), and float64's exponent range holds every exact result of two 8-bit-exponent
operands.

The batch-norm models take a compute format ``fmt`` and a storage format ``io_fmt`` of the
per-element values (default ``fmt``), like ``hw.float_bn``: inputs are rounded to ``io_fmt`` and
read exactly in ``fmt`` (``io_fmt`` is no wider), everything is computed in ``fmt``, and the
per-element outputs are the ``fmt`` results rounded once more, to ``io_fmt`` (bf16 I/O with fp32
compute: the fp32 result rounded to bf16, as a mixed-precision BN stores it).

The batch-norm models mirror the hardware's order of operations (including the interleaved
partial sums of the accumulators), so the RTL must match them bit for bit; :func:`bn_forward_ref`
and :func:`bn_backward_ref` are the plain float64 formulas the tests use for the error bound.
The rounding (``fround``, ``to_bits``), the adder and multiplier latencies and ``ring_depth`` come
from ``hw.float_convention``, shared with the hardware.
"""

import numpy as np

from hw.float_convention import ADD_LATENCY, MUL_LATENCY, check_format as _check, fround, ring_depth, to_bits
from hw.formats import float_format

__all__ = [
    "fround", "to_bits", "from_bits", "fadd", "fsub", "fmul", "fdiv", "fsqrt",
    "ring_depth", "bn_forward", "bn_backward", "bn_forward_ref", "bn_backward_ref",
    "ADD_LATENCY", "MUL_LATENCY",
]

# ``fround``, ``to_bits``, ``ring_depth`` and the latencies are the hardware's facts
# (``hw.float_convention``); they are re-exported here so the model reads as one module.


def from_bits(fmt, bits):
    """Values of bit patterns (subnormals read as zero)."""
    fmt = float_format(fmt)
    bits = np.asarray(bits, dtype=np.int64)
    frac = bits & ((1 << fmt.frac_bits) - 1)
    exp = (bits >> fmt.frac_bits) & ((1 << fmt.exp_bits) - 1)
    sign = (bits >> (fmt.exp_bits + fmt.frac_bits)) & 1
    val = np.ldexp((frac + (1 << fmt.frac_bits)).astype(np.float64), (exp - fmt.bias - fmt.frac_bits).astype(np.int64))
    val = np.where(exp == 0, 0.0, val)
    return np.where(sign == 1, -val, val)


def fadd(fmt, a, b):
    return fround(fmt, np.asarray(a, np.float64) + np.asarray(b, np.float64))


def fsub(fmt, a, b):
    return fround(fmt, np.asarray(a, np.float64) - np.asarray(b, np.float64))


def fmul(fmt, a, b):
    return fround(fmt, np.asarray(a, np.float64) * np.asarray(b, np.float64))


def fdiv(fmt, a, b):
    """``a / b``; division by zero saturates to the largest magnitude with the sign of
    ``a`` XOR the sign of the zero (a zero operand with its sign bit set counts as -0); ``0 / b`` is 0."""
    fmt = _check(fmt)
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(b == 0, np.copysign(float(fmt.max_value()), a) * np.copysign(1.0, b), a / np.where(b == 0, 1.0, b))
    q = np.where(a == 0, 0.0, q)
    return fround(fmt, q)


def fsqrt(fmt, a):
    """Square root; a negative operand gives 0."""
    a = np.asarray(a, np.float64)
    return fround(fmt, np.sqrt(np.maximum(a, 0.0)))


def _partial_sums(fmt, values, groups, depth):
    """``values``: (n, C) per position and channel (already rounded to the format). Returns
    (C,) sums formed like the hardware: vector ``t = pos * G + group`` goes to slot ``t % depth``;
    each slot accumulates sequentially from 0; then a channel's partials (slots g, g+G, ...) are
    added in slot order."""
    n, C = values.shape
    block = -(-C // groups)
    L = depth // groups
    out = np.zeros(C)
    for c in range(C):
        g = c // block
        parts = np.zeros(L)
        for pos in range(n):
            j = ((pos * groups + g) % depth) // groups
            parts[j] = fadd(fmt, parts[j], values[pos, c])
        total = parts[0]
        for j in range(1, L):
            total = fadd(fmt, total, parts[j])
        out[c] = total
    return out


def _io(fmt, io_fmt):
    if io_fmt is None:
        return fmt
    io = _check(io_fmt)
    if io.exp_bits > fmt.exp_bits or io.frac_bits > fmt.frac_bits:
        raise ValueError(f"io format must be no wider than the compute format {fmt.name}, not {io.name}")
    return io


def bn_forward(fmt, x, gamma, beta, block, eps=2.0 ** -16, io_fmt=None):
    """Training-mode forward pass of ``hw.float_bn.FloatBNForward``, bit for bit.

    ``x``: (n, C) values (rounded to ``io_fmt`` here); ``gamma``, ``beta``: (C,), in ``fmt``.
    Returns ``(y, stats)`` with ``y`` (n, C, in ``io_fmt``) and ``stats`` a dict of (C,) arrays
    mu, inv, a, b (in ``fmt``)."""
    fmt = _check(fmt)
    io = _io(fmt, io_fmt)
    x = fround(io, x)
    gamma = fround(fmt, gamma)
    beta = fround(fmt, beta)
    n, C = x.shape
    groups = -(-C // block)
    depth = ring_depth(C, block)
    S = _partial_sums(fmt, x, groups, depth)
    Q = _partial_sums(fmt, fmul(fmt, x, x), groups, depth)
    rn = fdiv(fmt, 1.0, fround(fmt, float(n)))
    mu = fmul(fmt, S, rn)
    e2 = fmul(fmt, Q, rn)
    var = fsub(fmt, e2, fmul(fmt, mu, mu))
    var = np.maximum(var, 0.0)
    sd = fsqrt(fmt, fadd(fmt, var, fround(fmt, eps)))
    inv = fdiv(fmt, 1.0, sd)
    a = fmul(fmt, gamma, inv)
    b = fsub(fmt, beta, fmul(fmt, mu, a))
    y = fround(io, fadd(fmt, fmul(fmt, a[None, :], x), b[None, :]))
    return y, {"mu": mu, "inv": inv, "a": a, "b": b}


def bn_backward(fmt, x, g, stats, block, io_fmt=None):
    """Backward pass of ``hw.float_bn.FloatBNBackward``, bit for bit.

    ``x``, ``g``: (n, C), rounded to ``io_fmt``; ``stats``: the forward pass's ``mu``, ``inv``
    and ``a`` (= gamma * inv), in ``fmt``. Returns ``(dx, grads)``, ``dx`` in ``io_fmt``, grads a
    dict of (C,) arrays dgamma, dbeta in ``fmt``.
    dbeta = sum g; dgamma = sum g * xhat = inv * (sum g x - mu sum g);
    dx = A g + Cc x + D with A = a, Cc = -A inv dgamma / n, D = -A dbeta / n - Cc mu."""
    fmt = _check(fmt)
    io = _io(fmt, io_fmt)
    x = fround(io, x)
    g = fround(io, g)
    mu, inv, a = (fround(fmt, stats[k]) for k in ("mu", "inv", "a"))
    n, C = x.shape
    groups = -(-C // block)
    depth = ring_depth(C, block)
    Sg = _partial_sums(fmt, g, groups, depth)
    Sgx = _partial_sums(fmt, fmul(fmt, g, x), groups, depth)
    rn = fdiv(fmt, 1.0, fround(fmt, float(n)))
    dgamma = fmul(fmt, inv, fsub(fmt, Sgx, fmul(fmt, mu, Sg)))
    u = fmul(fmt, fmul(fmt, a, inv), dgamma)
    cc = -fmul(fmt, u, rn)
    v = fmul(fmt, fmul(fmt, a, Sg), rn)
    d = fsub(fmt, -v, fmul(fmt, cc, mu))
    dx = fround(io, fadd(fmt, fadd(fmt, fmul(fmt, a[None, :], g), fmul(fmt, cc[None, :], x)), d[None, :]))
    return dx, {"dgamma": dgamma, "dbeta": Sg}


def bn_forward_ref(x, gamma, beta, eps=2.0 ** -16):
    """Plain float64 batch norm (biased variance), for error bounds."""
    x = np.asarray(x, np.float64)
    mu = x.mean(axis=0)
    var = ((x - mu) ** 2).mean(axis=0)
    inv = 1.0 / np.sqrt(var + eps)
    return (x - mu) * inv * gamma + beta, {"mu": mu, "inv": inv}


def bn_backward_ref(x, g, gamma, eps=2.0 ** -16):
    """Plain float64 batch-norm gradients (same inputs as the forward pass)."""
    x = np.asarray(x, np.float64)
    g = np.asarray(g, np.float64)
    n = x.shape[0]
    mu = x.mean(axis=0)
    inv = 1.0 / np.sqrt(((x - mu) ** 2).mean(axis=0) + eps)
    xhat = (x - mu) * inv
    dbeta = g.sum(axis=0)
    dgamma = (g * xhat).sum(axis=0)
    dx = gamma * inv * (g - dbeta / n - xhat * dgamma / n)
    return dx, {"dgamma": dgamma, "dbeta": dbeta}
