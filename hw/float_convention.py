"""The float baseline's arithmetic convention and pipeline facts, plain NumPy (no Amaranth).

Shared by the hardware (``hw.float_units``, ``hw.float_bn``: latencies, accumulator ring depth,
constants such as eps) and the golden model ``sim.model.float_golden``, which imports them from here.

The convention: every operation is exact and rounded once, to nearest with ties to even, to
``frac_bits + 1`` significant bits with an unbounded exponent; a result whose biased exponent is
below 1 after rounding is flushed to ``+0``; one above ``exp_max`` saturates to the largest finite
magnitude (no Inf or NaN); every zero is ``+0`` (``hw/float_units.py`` and ``sim/model/float_golden.py``
say why float64 computes it exactly for formats up to fp32).
"""

import numpy as np

from hw.formats import float_format

__all__ = ["ADD_LATENCY", "MUL_LATENCY", "check_format", "fround", "to_bits", "ring_depth"]

#: Pipeline depths of ``hw.float_units.FloatAdd`` / ``FloatMul`` (their ``LATENCY``); the golden
#: model ``sim.model.float_golden`` needs them to reproduce the accumulators' interleaving.
ADD_LATENCY = 4
MUL_LATENCY = 3


def check_format(fmt):
    """``fmt`` as a ``FloatFormat``; refuses formats wider than fp32 (float64 would not be exact)."""
    fmt = float_format(fmt)
    if fmt.frac_bits > 23 or fmt.exp_bits > 8:
        raise ValueError(f"the float64 golden model supports formats up to fp32, not {fmt.name}")
    return fmt


def fround(fmt, x):
    """Round float64 values to ``fmt`` under the convention above.
    Returns float64 values that are exactly representable in ``fmt``."""
    fmt = check_format(fmt)
    x = np.asarray(x, dtype=np.float64)
    m, e = np.frexp(x)                      # x = m * 2**e, 0.5 <= |m| < 1
    p = fmt.frac_bits + 1
    r = np.ldexp(np.rint(np.ldexp(m, p)), e - p)
    m2, e2 = np.frexp(r)
    biased = e2 - 1 + fmt.bias
    largest = float(fmt.max_value())
    out = np.where(biased < 1, 0.0, r)
    out = np.where(biased > fmt.exp_max, np.copysign(largest, r), out)
    out = np.where(out == 0, 0.0, out)      # +0 only
    return out


def to_bits(fmt, x):
    """Bit patterns (int64 array) of values already representable in ``fmt``."""
    fmt = check_format(fmt)
    x = np.asarray(x, dtype=np.float64)
    sign = (np.signbit(x) & (x != 0)).astype(np.int64)
    m, e = np.frexp(np.abs(x))                  # |x| = m * 2**e, 0.5 <= m < 1
    exp = np.where(x == 0, 0, e - 1 + fmt.bias).astype(np.int64)
    scaled = np.ldexp(m, fmt.frac_bits + 1)
    assert np.all(scaled == np.rint(scaled)), "value not representable"
    assert np.all((exp >= 0) & (exp <= fmt.exp_max)), "value out of range"
    frac = np.where(x == 0, 0, scaled.astype(np.int64) - (1 << fmt.frac_bits))
    return (sign << (fmt.exp_bits + fmt.frac_bits)) | (exp << fmt.frac_bits) | frac


def ring_depth(channels, block):
    """Slots of each interleaved accumulator of ``hw.float_bn`` per lane: a multiple of the channel
    groups ``G = ceil(channels / block)`` that is larger than the adder latency, so a slot's
    previous sum has left the adder before the slot comes round again."""
    groups = -(-channels // block)
    return groups * -(-(ADD_LATENCY + 1) // groups)
