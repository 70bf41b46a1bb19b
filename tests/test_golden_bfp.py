"""The golden BFP model (``sim.model.golden.float_to_bfp`` / ``quantize_block``) against an exact
rational reference written here independently with ``fractions.Fraction``; plus the number
formats' encode/decode and validation.

The reference decodes each float to a Fraction, takes the shared exponent as the exact
floor(log2) of the largest magnitude (clamped to the BFP exponent range), divides by the code LSB
and rounds half to even with Fraction arithmetic (``round()`` of a Fraction), then saturates.
"""

import multiprocessing
import os
import random
from fractions import Fraction

import pytest

from hw.formats import BFPFormat, FloatFormat, FLOAT_FORMATS, float_format
from sim.model.golden import float_to_bfp, quantize_block

FP10 = float_format("fp10")


# --- the independent reference --------------------------------------------------------------

def ref_decode(fmt, word):
    """(value, is_special, is_flushed) of a packed float, from the field widths alone."""
    M, E = fmt.frac_bits, fmt.exp_bits
    fraction = word % (1 << M)
    exponent = (word >> M) % (1 << E)
    negative = (word >> (M + E)) % 2 == 1
    if exponent == 0:
        return Fraction(0), False, fraction != 0
    bias = 2 ** (E - 1) - 1
    value = (1 + Fraction(fraction, 2 ** M)) * Fraction(2) ** (exponent - bias)
    return (-value if negative else value), exponent == 2 ** E - 1, False


def floor_log2(x):
    """Exact floor(log2 x) of a positive Fraction, by repeated doubling and halving."""
    assert x > 0
    e = 0
    while x >= 2:
        x /= 2
        e += 1
    while x < 1:
        x *= 2
        e -= 1
    return e


def ref_round(bfp, shared, value):
    """Signed code of ``value`` in a block with shared exponent ``shared``, and its saturation."""
    bias = 2 ** (bfp.exp_bits - 1) - 1
    lsb = Fraction(2) ** (shared - bias - (bfp.width - 2))
    q = round(abs(value) / lsb)                 # Fraction rounds half to even
    limit = 2 ** (bfp.width - 1) - 1
    saturated = q > limit
    q = min(q, limit)
    return (-q if value < 0 else q), saturated


def ref_shared(bfp, values):
    nonzero = [abs(v) for v in values if v != 0]
    if not nonzero:
        return 0
    bias = 2 ** (bfp.exp_bits - 1) - 1
    return min(max(floor_log2(max(nonzero)) + bias, 1), 2 ** bfp.exp_bits - 1)


def ref_float_to_bfp(fmt, bfp, words):
    decoded = [ref_decode(fmt, w) for w in words]
    values = [v for v, _, _ in decoded]
    shared = ref_shared(bfp, values)
    codes, sat = [], False
    for v in values:
        q, s = ref_round(bfp, shared, v) if shared else (0, False)
        codes.append(q)
        sat |= s
    flags = {"sat": sat, "special": any(s for _, s, _ in decoded),
             "flush": any(f for _, _, f in decoded)}
    return shared, tuple(codes), flags


def golden(fmt, bfp, words):
    block = float_to_bfp(fmt, bfp, words)
    return block.exponent, tuple(block.codes), dict(block.flags)


# --- exhaustive: every pair of FP10 values in a block of two ------------------------------

def _pair_chunk(args):
    """Compare golden and reference on all pairs (a, b) with a in ``firsts``. The reference's
    per-element rounding is tabulated per (word, shared exponent), each entry computed with
    Fractions; the pairing (maximum, clamp, flags) is done per pair."""
    width, firsts = args
    fmt = FP10
    bfp = BFPFormat.for_float(fmt, width, 2)
    words = range(1 << fmt.width)
    dec = [ref_decode(fmt, w) for w in words]
    log2 = [floor_log2(abs(v)) if v else None for v, _, _ in dec]
    bias = 2 ** (bfp.exp_bits - 1) - 1
    table = {}

    def code(w, shared):
        key = (w, shared)
        if key not in table:
            table[key] = ref_round(bfp, shared, dec[w][0])
        return table[key]

    mismatches, examples, count = 0, [], 0
    for a in firsts:
        for b in words:
            logs = [x for x in (log2[a], log2[b]) if x is not None]
            if logs:
                shared = min(max(max(logs) + bias, 1), 2 ** bfp.exp_bits - 1)
                (qa, sa), (qb, sb) = code(a, shared), code(b, shared)
            else:
                shared, qa, sa, qb, sb = 0, 0, False, 0, False
            want = (shared, (qa, qb), {"sat": sa or sb, "special": dec[a][1] or dec[b][1],
                                       "flush": dec[a][2] or dec[b][2]})
            got = golden(fmt, bfp, [a, b])
            count += 1
            if got != want:
                mismatches += 1
                if len(examples) < 5:
                    examples.append(((a, b), want, got))
    return count, mismatches, examples


@pytest.mark.parametrize("width", [4, 8])
def test_all_fp10_pairs(width):
    """All 1024 x 1024 pairs of FP10 words (zeros, subnormals, the all-ones exponent included)."""
    firsts = list(range(1 << FP10.width))
    jobs = [(width, firsts[k::4]) for k in range(4)]
    procs = min(4, max(1, os.cpu_count() or 1))
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        results = pool.map(_pair_chunk, jobs)
    count = sum(r[0] for r in results)
    mismatches = sum(r[1] for r in results)
    examples = [e for r in results for e in r[2]][:5]
    print(f"golden vs exact reference, all FP10 pairs, W={width}: {count} blocks, {mismatches} mismatches")
    assert count == 1 << 20
    assert mismatches == 0, examples


def test_pair_reference_sees_ties_and_saturation():
    """The exhaustive sweep is only worth something if it hits the interesting cases: count exact
    ties, ties rounded up, saturations and flushes among the pairs at W=4."""
    bfp = BFPFormat.for_float(FP10, 4, 2)
    ties = ups = sats = flushes = 0
    rng = random.Random(5)
    for _ in range(20000):
        a, b = rng.randrange(1024), rng.randrange(1024)
        shared, codes, flags = ref_float_to_bfp(FP10, bfp, [a, b])
        if shared:
            bias = 2 ** (bfp.exp_bits - 1) - 1
            lsb = Fraction(2) ** (shared - bias - (bfp.width - 2))
            for w, q in zip((a, b), codes):
                scaled = abs(ref_decode(FP10, w)[0]) / lsb
                if scaled.denominator == 2:
                    ties += 1
                    ups += abs(q) > scaled
        sats += flags["sat"]
        flushes += flags["flush"]
    assert ties > 100 and 0 < ups < ties and sats > 100 and flushes > 100


# --- random blocks for other formats, widths, block sizes ---------------------------------

def _random_word(fmt, rng, e_max):
    kind = rng.random()
    if kind < 0.05:
        return fmt.pack(rng.randrange(2), 0, rng.randrange(1 << fmt.frac_bits))  # zero / subnormal
    if kind < 0.10:
        return rng.randrange(1 << fmt.width)
    e = e_max - rng.randint(0, fmt.frac_bits + 18)
    if e < 1:
        return fmt.pack(rng.randrange(2), 0, 0)
    fraction = rng.randrange(1 << fmt.frac_bits)
    if kind > 0.7:                                   # tie-like: one set bit, zeros below
        t = rng.randint(1, fmt.frac_bits)
        fraction = (fraction & ~((1 << t) - 1)) | (1 << (t - 1))
    return fmt.pack(rng.randrange(2), e, fraction)


RANDOM_CASES = [
    (fmt, width, block, exp_bits)
    for fmt in ("fp10", "fp16", "bf16", "fp15", "e4m3", "e5m2", "e3m6")
    for width, block in ((2, 1), (3, 5), (4, 16), (6, 3), (8, 16), (10, 32), (12, 4), (16, 64))
    for exp_bits in (None, 4)
]


@pytest.mark.parametrize("fmt,width,block,exp_bits", RANDOM_CASES,
                         ids=[f"{f}-w{w}-b{b}-e{e or 'same'}" for f, w, b, e in RANDOM_CASES])
def test_random_blocks(fmt, width, block, exp_bits):
    fmt = float_format(fmt)
    bfp = BFPFormat(width, exp_bits or fmt.exp_bits, block)
    rng = random.Random(hash((fmt.name, width, block, exp_bits)) & 0xFFFF)
    blocks = 0
    for _ in range(max(20, 600 // block)):
        e_max = rng.randint(1, fmt.exp_max)
        words = [_random_word(fmt, rng, e_max) for _ in range(block)]
        assert golden(fmt, bfp, words) == ref_float_to_bfp(fmt, bfp, words), words
        blocks += 1
    assert blocks >= 20


def test_quantize_block_exact_elements():
    """``quantize_block`` on arbitrary exact elements (wide magnitudes, any exponent) against the
    reference: the form the Range-BN units use."""
    rng = random.Random(11)
    for _ in range(3000):
        bfp = BFPFormat(rng.randint(2, 16), rng.randint(2, 8), rng.randint(1, 8))
        base = rng.randint(-40, 40)
        elements = []
        for _ in range(rng.randint(1, bfp.block)):
            mag = rng.choice([0, rng.randrange(1 << rng.randint(1, 40))])
            elements.append((rng.randrange(2), mag, base - rng.randint(0, 30)))
        values = [Fraction((-1) ** s * m) * Fraction(2) ** e for s, m, e in elements]
        shared = ref_shared(bfp, values)
        want = [ref_round(bfp, shared, v) if shared else (0, False) for v in values]
        got = quantize_block(bfp, elements)
        assert got == (shared, [q for q, _ in want], any(s for _, s in want)), elements


def test_never_negative_zero_or_most_negative_code():
    bfp = BFPFormat.for_float(FP10, 4, 4)
    rng = random.Random(3)
    for _ in range(5000):
        words = [rng.randrange(1024) for _ in range(4)]
        block = float_to_bfp(FP10, bfp, words)
        for q in block.codes:
            assert -bfp.code_max <= q <= bfp.code_max
            assert bfp.to_bits(q) != 1 << (bfp.width - 1)


# --- FloatFormat encode / decode -----------------------------------------------------------

SMALL_FORMATS = ["fp10", "e4m3", "e5m2", "e3m2"]


@pytest.mark.parametrize("name", SMALL_FORMATS)
def test_decode_matches_reference_and_round_trips(name):
    fmt = float_format(name)
    for word in range(1 << fmt.width):
        value, _, _ = ref_decode(fmt, word)
        assert fmt.decode(word) == value
        sign, exponent, fraction = fmt.unpack(word)
        assert fmt.pack(sign, exponent, fraction) == word
        back = fmt.encode(value)
        if exponent:
            assert back == word                   # every normal value round-trips
        else:
            assert back == 0                      # +-0 and subnormals come back as +0


def _nearest(fmt, x):
    """Nearest representable value by brute force over every word, ties to an even fraction;
    between 0 and the smallest normal (both even) a tie goes to 0."""
    best = None
    for word in range(1 << fmt.width):
        sign, exponent, fraction = fmt.unpack(word)
        if exponent == 0 and (fraction or sign):
            continue                              # one zero, no subnormals
        v = fmt.decode(word)
        key = (abs(v - x), fraction & 1, abs(v))
        if best is None or key < best[0]:
            best = (key, v)
    return best[1]


@pytest.mark.parametrize("name", ["fp10", "e4m3", "e3m2"])
def test_encode_is_nearest_ties_to_even(name):
    fmt = float_format(name)
    rng = random.Random(7)
    top = fmt.max_value()
    values = [Fraction(0), top, top * 2, -top * 3, Fraction(2) ** (1 - fmt.bias) / 2,
              Fraction(3, 4) * Fraction(2) ** (1 - fmt.bias)]
    for word in range(1, 1 << fmt.width, 7):      # midpoints between neighbours: exact ties
        v = fmt.decode(word)
        values.append(v + Fraction(2) ** (_exp(fmt, word) - fmt.bias - fmt.frac_bits - 1))
    for _ in range(300):
        values.append(Fraction(rng.randint(-10 ** 6, 10 ** 6), rng.randint(1, 10 ** 6))
                      * Fraction(2) ** rng.randint(-fmt.bias - 2, fmt.bias))
    for x in values:
        got = fmt.decode(fmt.encode(x))
        assert abs(got) == abs(_nearest(fmt, abs(x))), x
        assert got == 0 or (got < 0) == (x < 0)


def _exp(fmt, word):
    return fmt.unpack(word)[1]


# --- validation messages -------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    ((1, 5, 16), "BFP width must be an integer in 2..16, not 1"),
    ((17, 5, 16), "BFP width must be an integer in 2..16, not 17"),
    (("8", 5, 16), "BFP width must be an integer in 2..16, not '8'"),
    ((8, 1, 16), "BFP exponent bits must be an integer in 2..11, not 1"),
    ((8, 12, 16), "BFP exponent bits must be an integer in 2..11, not 12"),
    ((8, 5, 0), "block size must be an integer in 1..64, not 0"),
    ((8, 5, 65), "block size must be an integer in 1..64, not 65"),
    ((8, 5, 2.0), "block size must be an integer in 1..64, not 2.0"),
])
def test_bfp_format_validation(args, message):
    with pytest.raises(ValueError) as info:
        BFPFormat(*args)
    assert str(info.value) == message


@pytest.mark.parametrize("args,message", [
    (("x", 1, 4), "float exponent bits must be an integer in 2..11, not 1"),
    (("x", 12, 4), "float exponent bits must be an integer in 2..11, not 12"),
    (("x", 5, 0), "float fraction bits must be an integer in 1..52, not 0"),
    (("x", 5, 53), "float fraction bits must be an integer in 1..52, not 53"),
])
def test_float_format_validation(args, message):
    with pytest.raises(ValueError) as info:
        FloatFormat(*args)
    assert str(info.value) == message


def test_float_format_lookup():
    assert float_format("FP10") is FLOAT_FORMATS["fp10"]
    assert (float_format("e6m9").exp_bits, float_format("e6m9").frac_bits) == (6, 9)
    with pytest.raises(ValueError, match=r"unknown float format 'fp11'; known: fp32, "):
        float_format("fp11")


def test_golden_rejects_wrong_block_length():
    bfp = BFPFormat.for_float(FP10, 8, 4)
    with pytest.raises(ValueError, match="expected 4 words, got 3"):
        float_to_bfp(FP10, bfp, [0, 0, 0])


def test_reference_itself():
    """Spot checks of the reference against hand-computed blocks (FP10, W=4, bias 15)."""
    bfp = BFPFormat.for_float(FP10, 4, 2)
    one, one_and_half = FP10.pack(0, 15, 0), FP10.pack(0, 15, 8)
    # max 1.5 -> shared exponent 15, LSB 2**-2: 1 -> 4, 1.5 -> 6.
    assert ref_float_to_bfp(FP10, bfp, [one, one_and_half]) == (15, (4, 6), {"sat": False, "special": False, "flush": False})
    # 1.9375 = 7.75 LSB -> 8 -> saturates to 7.
    assert ref_float_to_bfp(FP10, bfp, [FP10.pack(1, 15, 15), 0])[1:] == ((-7, 0), {"sat": True, "special": False, "flush": False})
    # 0.625 = 2.5 LSB -> 2 (tie to even); 0.875 = 3.5 LSB -> 4.
    assert ref_float_to_bfp(FP10, bfp, [one, FP10.pack(0, 14, 4)])[1] == (4, 2)
    assert ref_float_to_bfp(FP10, bfp, [one, FP10.pack(0, 14, 12)])[1] == (4, 4)
    assert floor_log2(Fraction(1, 3)) == -2 and floor_log2(Fraction(8)) == 3
