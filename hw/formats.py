"""Number formats: the one place every module, the golden model and the benches derive from.

This module is plain Python. Amaranth is imported lazily, only by the ``*_layout()`` methods, so the
golden model in ``sim/`` can import it without pulling in an HDL.

Two families:

``FloatFormat(exp_bits, frac_bits)``
    Sign, biased exponent, fraction (the fraction does *not* count the hidden bit), packed MSB to
    LSB as ``sign | exponent | fraction``. Bias is ``2**(exp_bits-1) - 1``. Conventions used by
    every unit of this project:

    * exponent 0 is zero; a non-zero fraction with exponent 0 (a subnormal) is flushed to zero and
      raises the ``flush`` flag;
    * the all-ones exponent is an ordinary normal binade (value ``1.f * 2**(emax)``); it raises the
      ``special`` flag, so an IEEE producer can tell that an Inf or NaN went in. This matches the
      OCP FP8 E4M3 reading of that exponent and keeps the datapath free of special cases.

``BFPFormat(width, exp_bits, block)``
    A block of ``block`` signed ``width``-bit two's-complement codes (``width`` counts the sign)
    sharing one biased exponent of ``exp_bits`` bits (bias ``2**(exp_bits-1) - 1``). The value of
    code ``q`` in a block with shared exponent ``E`` is ``q * 2**(E - bias - (width - 2))``, so a
    block whose largest magnitude lies in ``[2**(E-bias), 2**(E-bias+1))`` uses the top code bit.
    Codes never take the value ``-2**(width-1)`` and zero is never negative.
"""

import numbers
from dataclasses import dataclass
from fractions import Fraction

from hw.checks import check_int

__all__ = [
    "FloatFormat", "BFPFormat", "FLOAT_FORMATS", "float_format", "internal_format", "FLAG_NAMES",
    "MIN_WIDTH", "MAX_WIDTH", "MAX_BLOCK", "BN_MAX_EXP_BITS", "check_bn_format", "C_FRAC_BITS",
    "BN_MAX_CHANNELS", "BN_MAX_COUNT", "BN_MAX_CHUNKS", "INTERNAL_FRAC_BITS", "check_bn_args",
    "STATS_MODES", "STATS_GUARD", "STATS_GUARD_DEFAULT", "check_stats",
    "RUNNING_MEAN_RESET", "RUNNING_SIGMA_RESET", "running_reset_bits",
]

#: Block flags, LSB first, in every BFP output stream.
#: ``sat``: a magnitude was clamped to the largest code; ``special``: an input had the all-ones
#: exponent; ``flush``: a subnormal input was flushed to zero.
FLAG_NAMES = ("sat", "special", "flush")

#: Supported BFP element widths (including sign) and block sizes.
MIN_WIDTH = 2
MAX_WIDTH = 16
MAX_BLOCK = 64

#: Largest exponent field of an input format (and so of its BFP format) that the Range-BN units
#: accept. Six bits keep the exact per-channel sums below 100 bits and keep ``1 / sigma_hat`` and
#: every per-channel value far inside the internal float's range (``docs/numerics.md``, "Formats").
#: The generator, the golden model, the NumPy twin and the PyTorch layer all refuse wider fields
#: through :func:`check_bn_format`, with its one message.
BN_MAX_EXP_BITS = 6

#: The other limits of the Range-BN cores (forward and backward), the generator's: the verified
#: range (``tests/test_sweep.py`` visits both ends of each); the internal float is
#: ``internal_format(M)``.
BN_MAX_CHANNELS = 4096
BN_MAX_COUNT = 1 << 24
BN_MAX_CHUNKS = 64
INTERNAL_FRAC_BITS = (4, 23)
#: Precision of the Range-BN statistics (the generator's ``--stats``): ``exact`` keeps every channel
#: sum (``sum x``, ``sum g``, ``sum g x``) as an exact integer; ``low`` keeps each in a windowed
#: accumulator whose LSB follows the group's largest block exponent so far, ``stats_guard`` bits
#: below it (docs/numerics.md, "Low-precision statistics"). Max, min and their positions are exact
#: in both.
STATS_MODES = ("exact", "low")
#: Allowed guard bits G of the windowed accumulators (``--stats-guard``).
STATS_GUARD = (0, 16)
STATS_GUARD_DEFAULT = 4

#: Fraction bits of the fixed-point Range-BN constant C (the ``c_scale`` register: unsigned, C < 4).
C_FRAC_BITS = 16

#: Running statistics of the forward core after reset: mean 0, sigma_hat 1 (as PyTorch's
#: ``running_mean = 0``, ``running_var = 1``).
RUNNING_MEAN_RESET = 0
RUNNING_SIGMA_RESET = 1


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: ``exp_bits`` exponent bits, ``frac_bits`` fraction bits
    (hidden bit not counted), one sign bit."""
    name: str
    exp_bits: int
    frac_bits: int

    def __post_init__(self):
        check_int("float exponent bits", self.exp_bits, 2, 11)
        check_int("float fraction bits", self.frac_bits, 1, 52)

    @property
    def width(self):
        return 1 + self.exp_bits + self.frac_bits

    @property
    def bias(self):
        return (1 << (self.exp_bits - 1)) - 1

    @property
    def exp_max(self):
        """Largest biased exponent (all ones; an ordinary binade here, flagged ``special``)."""
        return (1 << self.exp_bits) - 1

    def pack(self, sign, exponent, fraction):
        return (sign << (self.exp_bits + self.frac_bits)) | (exponent << self.frac_bits) | fraction

    def unpack(self, bits):
        """``bits -> (sign, biased exponent, fraction)``."""
        fraction = bits & ((1 << self.frac_bits) - 1)
        exponent = (bits >> self.frac_bits) & ((1 << self.exp_bits) - 1)
        sign = (bits >> (self.exp_bits + self.frac_bits)) & 1
        return sign, exponent, fraction

    def decode(self, bits):
        """Exact value (a ``Fraction``) under this project's conventions (subnormals are zero)."""
        sign, exponent, fraction = self.unpack(bits)
        if exponent == 0:
            return Fraction(0)
        value = Fraction((1 << self.frac_bits) | fraction) * Fraction(2) ** (exponent - self.bias - self.frac_bits)
        return -value if sign else value

    def encode(self, value):
        """Nearest representable value, ties to even; saturates to the largest magnitude; values
        below the smallest normal round to zero or to the smallest normal (no subnormals).
        ``value`` may be a float, int or ``Fraction``; an infinity saturates, a NaN is refused."""
        if isinstance(value, float) and value != value:
            raise ValueError(f"cannot encode NaN in {self.name}")
        if isinstance(value, float) and value in (float("inf"), float("-inf")):
            return self.pack(int(value < 0), self.exp_max, (1 << self.frac_bits) - 1)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{self.name}.encode() takes an int, float or Fraction, not {value!r}")
        value = Fraction(value)
        sign = int(value < 0)
        mag = -value if sign else value
        if mag == 0:
            return self.pack(sign, 0, 0)
        exponent = _floor_log2(mag)
        biased = exponent + self.bias
        if biased < 1:
            # Round on the grid of the smallest binade; halfway to the smallest normal goes to even (zero).
            step = Fraction(2) ** (1 - self.bias)
            return self.pack(sign, 1, 0) if _round_half_even(mag / step) >= 1 else self.pack(sign, 0, 0)
        mant = _round_half_even(mag / Fraction(2) ** (exponent - self.frac_bits))
        if mant >> (self.frac_bits + 1):
            mant >>= 1
            biased += 1
        if biased > self.exp_max:
            return self.pack(sign, self.exp_max, (1 << self.frac_bits) - 1)
        return self.pack(sign, biased, mant - (1 << self.frac_bits))

    def max_value(self):
        return self.decode(self.pack(0, self.exp_max, (1 << self.frac_bits) - 1))

    def overflows(self, value):
        """True if ``encode(value)`` saturates (the magnitude rounds above the largest value)."""
        ulp = Fraction(2) ** (self.exp_max - self.bias - self.frac_bits)
        return abs(Fraction(value)) >= self.max_value() + ulp / 2

    def layout(self):
        """Amaranth ``StructLayout`` with fields ``fraction``, ``exponent``, ``sign`` (LSB first)."""
        from amaranth.lib import data
        return data.StructLayout({
            "fraction": self.frac_bits,
            "exponent": self.exp_bits,
            "sign": 1,
        })


#: Named floating-point formats. Append only.
FLOAT_FORMATS = {
    f.name: f for f in (
        FloatFormat("fp32", 8, 23),
        FloatFormat("fp16", 5, 10),
        FloatFormat("bf16", 8, 7),
        FloatFormat("fp10", 5, 4),      # LightNorm's forward format, 1-5-4
        FloatFormat("fp15", 6, 8),      # LightNorm's backward format, 1-6-8
        FloatFormat("e4m3", 4, 3),      # OCP FP8 E4M3
        FloatFormat("e5m2", 5, 2),      # OCP FP8 E5M2
    )
}


def internal_format(frac_bits):
    """The per-channel internal float of the Range-BN units: 8 exponent bits (bias 127) and
    ``frac_bits`` fraction bits. Holds mu, sigma_hat, 1/sigma_hat, a, b, gamma, beta, gradients."""
    check_int("internal float fraction bits", frac_bits, *INTERNAL_FRAC_BITS)
    return FloatFormat(f"e8m{frac_bits}", 8, frac_bits)


def float_format(name):
    """Look a float format up by name; also accepts ``"e<E>m<M>"`` for any exponent/fraction pair."""
    if isinstance(name, FloatFormat):
        return name
    key = str(name).lower()
    if key in FLOAT_FORMATS:
        return FLOAT_FORMATS[key]
    import re
    match = re.fullmatch(r"e(\d+)m(\d+)", key)
    if match:
        return FloatFormat(key, int(match[1]), int(match[2]))
    raise ValueError(f"unknown float format {name!r}; known: {', '.join(FLOAT_FORMATS)} or e<E>m<M>")


@dataclass(frozen=True)
class BFPFormat:
    """Block floating point: ``block`` codes of ``width`` bits (sign included) sharing one biased
    exponent of ``exp_bits`` bits."""
    width: int
    exp_bits: int
    block: int

    def __post_init__(self):
        check_int("BFP width", self.width, MIN_WIDTH, MAX_WIDTH)
        check_int("BFP exponent bits", self.exp_bits, 2, 11)
        check_int("block size", self.block, 1, MAX_BLOCK)

    @classmethod
    def for_float(cls, fmt, width, block):
        """The BFP format a float format converts into: same exponent field and bias."""
        return cls(width=width, exp_bits=float_format(fmt).exp_bits, block=block)

    @property
    def bias(self):
        return (1 << (self.exp_bits - 1)) - 1

    @property
    def exp_max(self):
        return (1 << self.exp_bits) - 1

    @property
    def code_max(self):
        """Largest code magnitude, ``2**(width-1) - 1``."""
        return (1 << (self.width - 1)) - 1

    def lsb_exponent(self, shared_exponent):
        """Power of two of one code LSB in a block with this shared exponent."""
        return shared_exponent - self.bias - (self.width - 2)

    def code_value(self, shared_exponent, code):
        """Exact value of a signed integer code."""
        return Fraction(code) * Fraction(2) ** self.lsb_exponent(shared_exponent)

    def to_signed(self, bits):
        bits &= (1 << self.width) - 1
        return bits - (1 << self.width) if bits >> (self.width - 1) else bits

    def to_bits(self, code):
        return code & ((1 << self.width) - 1)

    def block_layout(self):
        """Amaranth ``StructLayout`` of one block: ``exponent``, ``codes`` (array, lane 0 first)."""
        from amaranth.lib import data
        return data.StructLayout({
            "exponent": self.exp_bits,
            "codes": data.ArrayLayout(self.width, self.block),
        })

    def flagged_block_layout(self):
        """A block plus its flags (``FLAG_NAMES``): what every BFP-producing unit emits."""
        from amaranth.lib import data
        return data.StructLayout({
            "exponent": self.exp_bits,
            "codes": data.ArrayLayout(self.width, self.block),
            "flags": flags_layout(),
        })


def check_bn_format(fmt, label=None):
    """Refuse a format the Range-BN units do not accept: a :class:`FloatFormat` (or its name) or a
    :class:`BFPFormat` whose exponent field is wider than ``BN_MAX_EXP_BITS``. Returns the format.

    The message is the generator's (``python -m gen --in-format bf16``): it names the format, its
    exponent bits and the allowed range. ``label`` replaces the format's name in it (the generator
    passes the user's spelling)."""
    if not isinstance(fmt, BFPFormat):
        fmt = float_format(fmt)
    if fmt.exp_bits > BN_MAX_EXP_BITS:
        if label is None:
            label = (repr(fmt.name) if isinstance(fmt, FloatFormat)
                     else f"of the BFP format (W={fmt.width}, B={fmt.block})")
        raise ValueError(f"in-format {label} has {fmt.exp_bits} exponent bits; "
                         f"the Range-BN units accept 2..{BN_MAX_EXP_BITS} (fp10, fp16, fp15, e4m3, e5m2, e<E>m<M>)")
    return fmt


def check_bn_args(bfp, internal, channels, max_count, max_chunks):
    """Raise ``ValueError`` (one line naming the bad value and the allowed range) unless the
    arguments of a Range-BN core are in the range the generator accepts and the sweep verifies:
    ``bfp`` a ``BFPFormat`` that :func:`check_bn_format` accepts, ``internal`` an
    ``internal_format(M)`` (8 exponent bits, M in ``INTERNAL_FRAC_BITS``), ``channels`` in
    1..``BN_MAX_CHANNELS``, ``max_chunks`` a power of two in 1..``BN_MAX_CHUNKS``, ``max_count``
    in ``2 * max_chunks``..``BN_MAX_COUNT``."""
    from hw.checks import check_instance
    check_instance("bfp", bfp, BFPFormat)
    check_instance("internal", internal, FloatFormat)
    # The lower bounds first, in their own words (what a core needs at all), then the generator's
    # ranges.
    check_int("channels", channels, 1)
    check_int("max_chunks", max_chunks, 1, BN_MAX_CHUNKS, power_of_two=True)
    check_int("max_count", max_count, 2 * max_chunks, lo_text=f"2 * max_chunks = {2 * max_chunks}")
    check_bn_format(bfp)
    lo, hi = INTERNAL_FRAC_BITS
    if internal.exp_bits != 8 or not lo <= internal.frac_bits <= hi:
        raise ValueError(f"internal float must be e8m<M> with M in {lo}..{hi} "
                         f"(hw.formats.internal_format), not {internal.name!r}")
    check_int("channels", channels, 1, BN_MAX_CHANNELS)
    check_int("max_count", max_count, 2 * max_chunks, BN_MAX_COUNT)


def check_stats(stats, stats_guard):
    """Raise ``ValueError`` (one line) unless ``stats`` is one of ``STATS_MODES`` and
    ``stats_guard`` an integer in ``STATS_GUARD``; the generator, the cores, the golden model and
    the PyTorch layer all check with this."""
    if stats not in STATS_MODES:
        raise ValueError(f"stats must be one of {', '.join(STATS_MODES)}, not {stats!r}")
    check_int("stats_guard", stats_guard, *STATS_GUARD)


def flags_layout():
    from amaranth.lib import data
    return data.StructLayout({name: 1 for name in FLAG_NAMES})


def _floor_log2(mag):
    """floor(log2(mag)) for a positive Fraction, exactly."""
    mag = Fraction(mag)
    e = mag.numerator.bit_length() - mag.denominator.bit_length()
    if Fraction(2) ** e > mag:
        e -= 1
    return e


def _round_half_even(value):
    """Round a non-negative Fraction to the nearest integer, ties to even."""
    value = Fraction(value)
    floor = value.numerator // value.denominator
    rest = value - floor
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor & 1):
        floor += 1
    return floor


def running_reset_bits(internal):
    """``(mean, sigma_hat)`` bit patterns in the internal float ``internal`` after reset."""
    return internal.encode(RUNNING_MEAN_RESET), internal.encode(RUNNING_SIGMA_RESET)
