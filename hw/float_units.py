"""Small floating-point units for the conventional batch-norm baseline (``hw.float_bn``).

Every unit is parameterized by a ``hw.formats.FloatFormat`` (fp32, bf16, ...). Arithmetic
convention, shared with ``sim.model.float_golden``:

* round to nearest, ties to even, once per operation;
* subnormal operands read as zero; a result that is tiny *after* rounding (biased exponent < 1)
  is flushed to ``+0``; every zero result is ``+0``;
* no Inf / NaN: the all-ones exponent is an ordinary binade (project convention, see
  ``hw.formats``); a result above the largest magnitude saturates to it.

Within the normal range this is IEEE 754 RNE arithmetic, so fp32 results equal ``numpy.float32``.

Units
-----
:class:`FloatAdd`
    Pipelined adder (``a + b``; subtract by flipping ``b``'s sign bit), ``LATENCY`` = 4:
    swap/exponent difference, alignment shift with sticky + add, leading-zero normalize,
    round/pack. One result per cycle.
:class:`FloatMul`
    Pipelined multiplier, ``LATENCY`` = 3: significand product (maps to DSP blocks), normalize
    with sticky, round/pack. One result per cycle.
:class:`FloatDiv`, :class:`FloatSqrt`
    Iterative (one quotient / root bit per cycle, ``frac_bits + 2`` iterations plus 2 cycles);
    ``start`` pulse in, ``done`` pulse out, ``busy`` between.
:func:`float_less`, :func:`int_to_float`, :func:`float_convert`
    Combinational helpers (compare; unsigned integer to float with RNE; one format to another:
    exact when widening, RNE with flush and saturation when narrowing).

The pipelined units have a clock enable ``en`` (default 1): when it is low every stage holds, so
a stalled stream pipeline can stop them.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.checks import check_instance
from hw.float_convention import ADD_LATENCY, MUL_LATENCY
from hw.formats import FloatFormat, float_format

__all__ = ["FloatAdd", "FloatMul", "FloatDiv", "FloatSqrt", "float_less", "int_to_float", "round_pack",
           "float_convert"]


def _fmt(fmt):
    return float_format(check_instance("fmt", fmt, FloatFormat, alternative="a format name"))


def _lzc(m, value, width, name):
    """Leading-zero count of a ``width``-bit value (``width`` when it is zero)."""
    count = Signal(range(width + 1), name=name)
    result = Const(width, range(width + 1))
    for k in range(width):
        result = Mux(value[k], width - 1 - k, result)
    m.d.comb += count.eq(result)
    return count


def round_pack(m, fmt, sign, exp, mant, guard, sticky, zero, name="rp"):
    """Round a normalized significand and pack it.

    ``mant``: ``frac_bits + 1`` bits with the hidden bit on top; ``exp``: signed biased exponent
    of ``mant``; ``guard``/``sticky``: the bits below. Returns a Signal of packed bits."""
    F, E = fmt.frac_bits, fmt.exp_bits
    up = guard & (sticky | mant[0])
    rounded = Signal(F + 2, name=f"{name}_rounded")
    m.d.comb += rounded.eq(mant + up)
    e_final = Signal(signed(len(exp) + 1), name=f"{name}_e")
    m.d.comb += e_final.eq(exp + rounded[F + 1])
    frac = Mux(rounded[F + 1], 0, rounded[:F])
    out = Signal(fmt.width, name=f"{name}_out")
    with m.If(zero | (e_final < 1)):
        m.d.comb += out.eq(0)
    with m.Elif(e_final > fmt.exp_max):
        m.d.comb += out.eq(Cat(Const((1 << F) - 1, F), Const(fmt.exp_max, E), sign))
    with m.Else():
        m.d.comb += out.eq(Cat(frac, e_final[:E], sign))
    return out


def float_less(fmt, a, b):
    """``a < b`` for packed values (zeros of either sign and subnormals are equal to 0)."""
    F, E = fmt.frac_bits, fmt.exp_bits
    za = a[F:F + E] == 0
    zb = b[F:F + E] == 0
    ma = Mux(za, 0, a[:F + E])
    mb = Mux(zb, 0, b[:F + E])
    sa = a[-1] & ~za
    sb = b[-1] & ~zb
    return Mux(sa != sb, sa, Mux(sa, ma > mb, ma < mb))


def int_to_float(m, fmt, value, width, name="i2f"):
    """Unsigned ``width``-bit integer to packed float, RNE. Combinational."""
    F = fmt.frac_bits
    lz = _lzc(m, value, width, f"{name}_lz")
    norm = Signal(width, name=f"{name}_norm")
    m.d.comb += norm.eq(value << lz)                 # leading one at bit width-1
    if width - 1 > F:
        mant = norm[width - 1 - F:]
        guard = norm[width - 2 - F]
        sticky = norm[:width - 2 - F].any() if width - 2 - F > 0 else Const(0, 1)
    else:
        mant = Cat(Const(0, F + 1 - width), norm)
        guard = sticky = Const(0, 1)
    exp = Signal(signed(max(fmt.exp_bits, width.bit_length()) + 2), name=f"{name}_exp")
    m.d.comb += exp.eq(fmt.bias + width - 1 - lz)
    return round_pack(m, fmt, Const(0, 1), exp, mant, guard, sticky, value == 0, name=name)


def float_convert(m, src, dst, value, name="cvt"):
    """Packed ``src`` value -> packed ``dst`` value, combinational, under the convention above
    (``sim.model.float_golden.fround(dst, value)``). Widening (``dst`` has at least ``src``'s exponent
    and fraction bits) is exact: rebias, pad the fraction; a zero or subnormal gives ``+0``.
    Narrowing rounds to nearest, ties to even, then flushes (biased exponent < 1) or saturates
    (above ``exp_max``) like every other operation. ``src == dst`` is the value itself."""
    src, dst = _fmt(src), _fmt(dst)
    if src == dst:
        return value
    Fs, Es, Fd, Ed = src.frac_bits, src.exp_bits, dst.frac_bits, dst.exp_bits
    sign, exp, frac = value[Fs + Es], value[Fs:Fs + Es], value[:Fs]
    zero = exp == 0
    if Es <= Ed and Fs <= Fd:
        out = Signal(dst.width, name=f"{name}_out")
        e = Signal(Ed, name=f"{name}_e")
        m.d.comb += e.eq(exp + (dst.bias - src.bias))
        m.d.comb += out.eq(Mux(zero, 0, Cat(Const(0, Fd - Fs), frac, e, sign)))
        return out
    e = Signal(signed(max(Es, Ed) + 2), name=f"{name}_e")
    m.d.comb += e.eq(exp + (dst.bias - src.bias))
    mant = Cat(frac, Const(1, 1))                  # Fs + 1 bits, hidden bit on top
    if Fd >= Fs:
        return round_pack(m, dst, sign, e, Cat(Const(0, Fd - Fs), mant), Const(0, 1), Const(0, 1), zero, name)
    cut = Fs - Fd                                  # dropped fraction bits
    guard = mant[cut - 1]
    sticky = mant[:cut - 1].any() if cut > 1 else Const(0, 1)
    return round_pack(m, dst, sign, e, mant[cut:], guard, sticky, zero, name)


class FloatAdd(wiring.Component):
    """Pipelined float adder ``y = a + b``.

    Latency ``LATENCY`` = 4 enabled cycles; throughput one per cycle; ``en`` low holds every
    stage. Guard/round/sticky alignment, so the result is correctly rounded (RNE). Commutative;
    ``x + (-x)`` is ``+0``."""

    LATENCY = ADD_LATENCY

    def __init__(self, fmt):
        self.fmt = _fmt(fmt)
        self.latency = self.LATENCY
        w = self.fmt.width
        super().__init__({"a": In(w), "b": In(w), "en": In(1, init=1), "y": Out(w)})

    def elaborate(self, platform):
        m = Module()
        fmt = self.fmt
        F, E = fmt.frac_bits, fmt.exp_bits
        M = F + 1                       # significand bits
        X = M + 3                       # with guard, round, sticky
        dmax = X                        # a shift of X or more leaves only sticky

        # Stage 1: order by magnitude, exponent difference.
        a, b = self.a, self.b
        swap = b[:F + E] > a[:F + E]
        big = Mux(swap, b, a)
        small = Mux(swap, a, b)
        eb, es = big[F:F + E], small[F:F + E]
        d = Signal(E, name="d")
        m.d.comb += d.eq(eb - es)
        s1_sign, s1_sub = Signal(name="s1_sign", reset_less=True), Signal(name="s1_sub", reset_less=True)
        s1_e = Signal(E, name="s1_e", reset_less=True)
        s1_mb, s1_ms = Signal(M, name="s1_mb", reset_less=True), Signal(M, name="s1_ms", reset_less=True)
        s1_d = Signal(range(dmax + 1), name="s1_d", reset_less=True)
        with m.If(self.en):
            m.d.sync += [
                s1_sign.eq(big[-1]),
                s1_sub.eq(big[-1] ^ small[-1]),
                s1_e.eq(eb),
                s1_mb.eq(Mux(eb == 0, 0, Cat(big[:F], Const(1, 1)))),
                s1_ms.eq(Mux(es == 0, 0, Cat(small[:F], Const(1, 1)))),
                s1_d.eq(Mux(d > dmax, dmax, d)),
            ]

        # Stage 2: align the smaller operand (sticky into the LSB) and add or subtract.
        ms_ext = Cat(Const(0, 3), s1_ms)                 # X bits
        shifted = Signal(X, name="shifted")
        m.d.comb += shifted.eq(ms_ext >> s1_d)
        sticky = Cat(*[ms_ext[j] & (s1_d > j) for j in range(3, X)]).any()
        aligned = Cat(shifted[0] | sticky, shifted[1:])
        mb_ext = Cat(Const(0, 3), s1_mb)
        s2_sum = Signal(X + 1, name="s2_sum", reset_less=True)
        s2_sign = Signal(name="s2_sign", reset_less=True)
        s2_e = Signal(E, name="s2_e", reset_less=True)
        with m.If(self.en):
            m.d.sync += [
                s2_sum.eq(Mux(s1_sub, mb_ext - aligned, mb_ext + aligned)),
                s2_sign.eq(s1_sign),
                s2_e.eq(s1_e),
            ]

        # Stage 3: normalize (carry: one right shift; cancellation: left shift by the LZC).
        low = s2_sum[:X]
        lz = _lzc(m, low, X, "lz")
        left = Signal(X, name="left")
        m.d.comb += left.eq(low << lz)
        s3_norm = Signal(X, name="s3_norm", reset_less=True)
        s3_e = Signal(signed(E + 2), name="s3_e", reset_less=True)
        s3_sign, s3_zero = Signal(name="s3_sign", reset_less=True), Signal(name="s3_zero", reset_less=True)
        with m.If(self.en):
            m.d.sync += [s3_sign.eq(s2_sign), s3_zero.eq(s2_sum == 0)]
            with m.If(s2_sum[X]):
                m.d.sync += [
                    s3_norm.eq(Cat(s2_sum[0] | s2_sum[1], s2_sum[2:])),
                    s3_e.eq(s2_e + 1),
                ]
            with m.Else():
                m.d.sync += [s3_norm.eq(left), s3_e.eq(s2_e - lz)]

        # Stage 4: round and pack.
        packed = round_pack(m, fmt, s3_sign, s3_e, s3_norm[3:], s3_norm[2], s3_norm[:2].any(), s3_zero)
        with m.If(self.en):
            m.d.sync += self.y.eq(packed)
        return m


class FloatMul(wiring.Component):
    """Pipelined float multiplier ``y = a * b``; latency ``LATENCY`` = 3 enabled cycles,
    one result per cycle, ``en`` low holds every stage."""

    LATENCY = MUL_LATENCY

    def __init__(self, fmt):
        self.fmt = _fmt(fmt)
        self.latency = self.LATENCY
        w = self.fmt.width
        super().__init__({"a": In(w), "b": In(w), "en": In(1, init=1), "y": Out(w)})

    def elaborate(self, platform):
        m = Module()
        fmt = self.fmt
        F, E = fmt.frac_bits, fmt.exp_bits
        M = F + 1
        a, b = self.a, self.b
        ea, eb = a[F:F + E], b[F:F + E]

        # Stage 1: significand product, exponent sum.
        s1_p = Signal(2 * M, name="s1_p", reset_less=True)
        s1_e = Signal(signed(E + 3), name="s1_e", reset_less=True)
        s1_sign, s1_zero = Signal(name="s1_sign", reset_less=True), Signal(name="s1_zero", reset_less=True)
        with m.If(self.en):
            m.d.sync += [
                s1_p.eq(Cat(a[:F], Const(1, 1)) * Cat(b[:F], Const(1, 1))),
                s1_e.eq(ea + eb - fmt.bias),
                s1_sign.eq(a[-1] ^ b[-1]),
                s1_zero.eq((ea == 0) | (eb == 0)),
            ]

        # Stage 2: normalize the product in [1, 4) and form guard and sticky.
        hi = s1_p[2 * M - 1]
        s2_mant = Signal(M, name="s2_mant", reset_less=True)
        s2_guard, s2_sticky = Signal(name="s2_guard", reset_less=True), Signal(name="s2_sticky", reset_less=True)
        s2_e = Signal(signed(E + 3), name="s2_e", reset_less=True)
        s2_sign, s2_zero = Signal(name="s2_sign", reset_less=True), Signal(name="s2_zero", reset_less=True)
        with m.If(self.en):
            m.d.sync += [
                s2_mant.eq(Mux(hi, s1_p[M:], s1_p[M - 1:2 * M - 1])),
                s2_guard.eq(Mux(hi, s1_p[M - 1], s1_p[M - 2])),
                s2_sticky.eq(Mux(hi, s1_p[:M - 1].any(), s1_p[:M - 2].any() if M > 2 else 0)),
                s2_e.eq(s1_e + hi),
                s2_sign.eq(s1_sign),
                s2_zero.eq(s1_zero),
            ]

        # Stage 3: round and pack.
        packed = round_pack(m, fmt, s2_sign, s2_e, s2_mant, s2_guard, s2_sticky, s2_zero)
        with m.If(self.en):
            m.d.sync += self.y.eq(packed)
        return m


class _Iterative(wiring.Component):
    def __init__(self, fmt, operands):
        self.fmt = _fmt(fmt)
        self.iterations = self.fmt.frac_bits + 2
        #: Cycles from the ``start`` edge to ``done`` high.
        self.latency = self.iterations + 2
        w = self.fmt.width
        ports = {name: In(w) for name in operands}
        ports.update({"start": In(1), "busy": Out(1), "done": Out(1), "y": Out(w)})
        super().__init__(ports)


class FloatDiv(_Iterative):
    """Iterative float divider ``y = a / b`` (restoring division, one quotient bit per cycle).

    Pulse ``start`` with ``a`` and ``b`` valid (they are captured); ``done`` pulses
    ``latency`` = ``frac_bits + 4`` cycles later with ``y`` valid (``y`` holds until the next
    ``done``). ``b = 0`` saturates to the largest magnitude; ``0 / b`` is 0."""

    def __init__(self, fmt):
        super().__init__(fmt, ("a", "b"))

    def elaborate(self, platform):
        m = Module()
        fmt = self.fmt
        F, E = fmt.frac_bits, fmt.exp_bits
        M, N = F + 1, self.iterations
        a, b = self.a, self.b
        ea, eb = a[F:F + E], b[F:F + E]
        ma, mb = Cat(a[:F], Const(1, 1)), Cat(b[:F], Const(1, 1))

        rem = Signal(M + 2, name="rem")
        div = Signal(M, name="div")
        q = Signal(N, name="q")
        e = Signal(signed(E + 3), name="e")
        sign, zero, dz = Signal(name="sign"), Signal(name="zero"), Signal(name="dz")
        count = Signal(range(N + 1), name="count")
        final = Signal(name="final")

        m.d.sync += [self.done.eq(0), final.eq(0)]
        with m.If(self.start & ~self.busy):
            pre = ma < mb
            m.d.sync += [
                rem.eq(Mux(pre, ma << 1, ma)),
                div.eq(mb),
                e.eq(ea - eb + fmt.bias - pre),
                sign.eq(a[-1] ^ b[-1]),
                zero.eq(ea == 0),
                dz.eq(eb == 0),
                q.eq(0),
                count.eq(N),
                self.busy.eq(1),
            ]
        with m.Elif(self.busy & (count != 0)):
            ge = rem >= div
            m.d.sync += [
                rem.eq(Mux(ge, rem - div, rem) << 1),
                q.eq(Cat(ge, q[:-1])),
                count.eq(count - 1),
            ]
            with m.If(count == 1):
                m.d.sync += final.eq(1)
        packed = round_pack(m, fmt, sign, e, q[1:], q[0], rem != 0, zero)
        with m.If(final):
            m.d.sync += [
                self.y.eq(Mux(dz & ~zero, Cat(Const((1 << F) - 1, F), Const(fmt.exp_max, E), sign), packed)),
                self.done.eq(1),
                self.busy.eq(0),
            ]
        return m


class FloatSqrt(_Iterative):
    """Iterative float square root (digit recurrence, one root bit per cycle). Same handshake as
    :class:`FloatDiv`; a negative operand gives 0."""

    def __init__(self, fmt):
        super().__init__(fmt, ("a",))

    def elaborate(self, platform):
        m = Module()
        fmt = self.fmt
        F, E = fmt.frac_bits, fmt.exp_bits
        M, N = F + 1, self.iterations
        a = self.a
        ea = a[F:F + E]
        # Radicand: significand (M bits) placed so the root has N = F + 2 bits.
        R = 2 * N
        rad = Signal(R, name="rad")
        rem = Signal(N + 2, name="rem")
        root = Signal(N, name="root")
        e = Signal(signed(E + 2), name="e")
        zero = Signal(name="zero")
        count = Signal(range(N + 1), name="count")
        final = Signal(name="final")

        m.d.sync += [self.done.eq(0), final.eq(0)]
        with m.If(self.start & ~self.busy):
            unb = Signal(signed(E + 2), name="unb")
            m.d.comb += unb.eq(ea - fmt.bias)
            odd = unb[0]
            sig = Cat(a[:F], Const(1, 1))
            m.d.sync += [
                # even: sig * 2**(F+2), odd: sig * 2**(F+3); the root is then sqrt(sig * 2**-F) * 2**(F+1).
                rad.eq(Mux(odd, sig << (F + 3), sig << (F + 2))),
                e.eq(((unb - odd) >> 1) + fmt.bias),
                zero.eq((ea == 0) | a[-1]),
                rem.eq(0),
                root.eq(0),
                count.eq(N),
                self.busy.eq(1),
            ]
        with m.Elif(self.busy & (count != 0)):
            cur = Cat(rad[R - 2:], rem)                  # rem * 4 + next two radicand bits
            trial = Cat(Const(1, 2), root)               # root * 4 + 1
            ge = cur >= trial
            m.d.sync += [
                rem.eq(Mux(ge, cur - trial, cur)),
                root.eq(Cat(ge, root[:-1])),
                rad.eq(rad << 2),
                count.eq(count - 1),
            ]
            with m.If(count == 1):
                m.d.sync += final.eq(1)
        packed = round_pack(m, fmt, Const(0, 1), e, root[1:], root[0], rem != 0, zero)
        with m.If(final):
            m.d.sync += [self.y.eq(packed), self.done.eq(1), self.busy.eq(0)]
        return m
