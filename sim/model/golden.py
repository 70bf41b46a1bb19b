"""Golden model: plain Python integers, no Amaranth. Every bench and every study uses this.

The hardware is checked against these functions bit for bit; these functions are checked against
exact rational arithmetic (``tests/test_golden_bfp.py``) and against float64 Range BN.

Integer conventions
-------------------
An *exact element* is ``(sign, mag, exp)`` with value ``(-1)**sign * mag * 2**exp``; ``mag`` is a
non-negative Python int of any size. Every unit's result is first formed exactly (or rounded to
odd, which the hardware uses and which gives the same final rounding) and then rounded once into a
BFP block by :func:`quantize_block`.
"""

from hw.formats import BFPFormat, FloatFormat, FLAG_NAMES, float_format

__all__ = [
    "Block", "rne_shift", "quantize_block", "float_to_bfp", "bfp_values",
    "encode_array", "decode_array",
]


class Block(tuple):
    """One BFP block as the hardware emits it: ``(exponent, codes, flags)``; codes are signed
    Python ints, flags a dict keyed by ``FLAG_NAMES``."""
    __slots__ = ()

    def __new__(cls, exponent, codes, flags):
        return super().__new__(cls, (exponent, tuple(codes), dict(flags)))

    exponent = property(lambda self: self[0])
    codes = property(lambda self: self[1])
    flags = property(lambda self: self[2])


def rne_shift(mag, shift):
    """``mag * 2**-shift`` rounded to the nearest integer, ties to even (guard and sticky).
    A negative shift is an exact left shift."""
    if shift <= 0:
        return mag << -shift
    q = mag >> shift
    guard = (mag >> (shift - 1)) & 1
    sticky = int(mag & ((1 << (shift - 1)) - 1) != 0)
    return q + (guard & (sticky | (q & 1)))


def quantize_block(bfp, elements):
    """Round exact elements ``[(sign, mag, exp), ...]`` (at most ``bfp.block`` of them) into one
    block. Returns ``(shared_exponent, codes, saturated)``.

    1. Shared exponent ``E = max(floor(log2 |v|)) + bias`` over non-zero elements, clamped to
       ``[1, exp_max]``; an all-zero block has ``E = 0``.
    2. Each magnitude is divided by the code LSB ``2**(E - bias - (W - 2))`` and rounded to nearest
       even; a result above ``2**(W-1) - 1`` saturates and sets ``saturated``.
    3. Codes are signed; zero is never negative.
    """
    leads = [exp + mag.bit_length() - 1 for _, mag, exp in elements if mag]
    if not leads:
        return 0, [0] * len(elements), False
    shared = min(max(max(leads) + bfp.bias, 1), bfp.exp_max)
    lsb = bfp.lsb_exponent(shared)
    codes, saturated = [], False
    for sign, mag, exp in elements:
        q = rne_shift(mag, lsb - exp)
        if q > bfp.code_max:
            q, saturated = bfp.code_max, True
        codes.append(-q if sign else q)
    return shared, codes, saturated


def float_to_bfp(fmt, bfp, words):
    """The BFP alignment shifter: ``bfp.block`` packed floats of format ``fmt`` -> one ``Block``.

    Exponent 0 is zero (a non-zero fraction there raises ``flush``); the all-ones exponent is an
    ordinary binade and raises ``special``. Lanes beyond ``len(words)`` do not exist: pass exactly
    ``bfp.block`` words (a padded lane is a zero word).
    """
    fmt = float_format(fmt)
    if len(words) != bfp.block:
        raise ValueError(f"expected {bfp.block} words, got {len(words)}")
    elements, special, flush = [], False, False
    for word in words:
        sign, exponent, fraction = fmt.unpack(word)
        if exponent == 0:
            flush |= fraction != 0
            elements.append((0, 0, 0))
            continue
        special |= exponent == fmt.exp_max
        mag = (1 << fmt.frac_bits) | fraction
        elements.append((sign, mag, exponent - fmt.bias - fmt.frac_bits))
    shared, codes, saturated = quantize_block(bfp, elements)
    return Block(shared, codes, {"sat": saturated, "special": special, "flush": flush})


def bfp_values(bfp, block):
    """Exact values (``Fraction``) of a block's codes."""
    exponent, codes = block[0], block[1]
    return [bfp.code_value(exponent, q) for q in codes]


def encode_array(fmt, bfp, words):
    """Convert a flat sequence of packed floats into blocks of ``bfp.block`` (the last block padded
    with zero words). Returns a list of ``Block``."""
    words = list(words)
    pad = (-len(words)) % bfp.block
    words += [0] * pad
    return [float_to_bfp(fmt, bfp, words[i:i + bfp.block]) for i in range(0, len(words), bfp.block)]


def decode_array(bfp, blocks, count=None):
    """Flatten blocks back into exact values, dropping padding beyond ``count``."""
    values = [v for block in blocks for v in bfp_values(bfp, block)]
    return values if count is None else values[:count]
