"""``y = a * x + b`` per lane of a BFP block, rounded once into a BFP block.

:class:`BFPAffine` is the per-element datapath of the Range-BN cores: the forward normalize pass
(``y = a x + b`` with ``a = gamma / sigma_hat``, ``b = beta - mu a``) and the backward dx pass
(``dx = a g + b_sel``). It implements ``sim.golden_bn._fma_block`` bit for bit: every lane's
exact value ``a_l * x_l + b_l`` goes through one :func:`sim.golden.quantize_block`.

Per-lane arithmetic (a fused multiply-add with a round-to-odd window)
---------------------------------------------------------------------
Notation: ``W`` = ``bfp.width``, ``M`` = ``internal.frac_bits``. A lane's code ``q`` (``W``-bit
two's complement; even ``-2**(W-1)`` is handled exactly) in a block with shared exponent ``E`` is
``x = q * 2**(E - bias_bfp - (W-2))``; ``a = (-1)**sa * ma * 2**(ea - 127 - M)`` with
``ma = 2**M + fa`` (``ea = 0``: ``a = 0``), ``b`` likewise.

1. ``P = |q| * ma`` exactly (``Wp = W + M + 1`` bits, possibly with leading zeros: ``q`` is not
   normalized) and ``mb`` (``M + 1`` bits, normalized) are each placed at the top of an ``N``-bit
   field, ``N = max(W + M + 2, 2W + 2)``; the field tops are ``top_P = E + ea - bias_bfp - 124``
   and ``top_b = eb - 126`` (as powers of two).
2. The operand whose field top is higher (``b`` on a tie; a zero operand never) is *high* and
   stays; the other is shifted right by ``t = |top_P - top_b|`` (clamped to ``N + 1``); the bits
   shifted out are ORed into bit 0 ("jamming"). Since ``N > Wp`` and ``N > M + 1``, bit 0 of the
   high operand is always 0, so the jammed low operand is the round-to-odd image of the exact low
   operand on the window's integer grid, and ``high +- low_jammed`` is the round-to-odd image of
   the exact sum on that grid (adding an even integer keeps the "odd or exact" property).
3. ``|high +- low_jammed|`` (``N + 1`` bits), its sign and the exponent of bit 0
   (``max(top) - N``) form one exact-or-rounded-to-odd element for the :class:`BlockQuantizer`.

Why this equals rounding the exact value once: ``quantize_block`` rounds a lane to the grid
``2**lsb`` with ``lsb >= floor(log2|v|) - (W-2)`` (``W-1`` significant bits at most; a coarser
grid when the lane is not the block maximum or the shared exponent is clamped up; a lane whose
``floor(log2|v|)`` exceeds a clamped-down shared exponent saturates whatever its low bits are).
Round-to-odd at ``p`` bits followed by round-to-nearest-even at ``<= p - 2`` bits equals one
round-to-nearest-even, and round-to-odd never changes ``floor(log2|v|)``. So it suffices that an
*inexact* window result has its leading one at least ``W`` bits above bit 0. Bits are lost only
when the low operand reaches below bit 0:

* ``b`` high (leading one at ``N - 1``): then ``t >= N - Wp + 1 >= 2``, so ``|low| < 2**(N-2)`` and
  the result is ``>= 2**(N-2)``: ``N - 2 >= W`` holds.
* ``P`` high (leading one ``>= N - W - 1`` as ``|q| >= 1``): ``b`` loses bits only if
  ``t >= N - M >= W + 2``, so ``|b| < 2**(N-W-2)`` and the result is ``>= 2**(N-W-2)``, and
  ``N - W - 2 >= W``.

Exact cancellation (``b = -a x``, the common ``y = a (x - mu)`` case) therefore comes out exactly
zero, and every tie of the exact value is seen as a tie by the block rounding. Checked against
the golden model on random and directed blocks (``tests/test_bfp_affine.py``).

Output exponent range, saturation and flags are :class:`hw.bfp_shifter.BlockQuantizer`'s:
shared exponent clamped to ``[1, exp_max]`` (0 for an all-zero block), codes saturate to
``+-(2**(W-1) - 1)`` and raise ``sat``; ``special`` and ``flush`` are always 0.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.bfp_shifter import BlockQuantizer
from hw.checks import check_instance
from hw.formats import BFPFormat, FloatFormat

__all__ = ["BFPAffine", "affine_window"]


def affine_window(bfp, internal):
    """Width ``N`` of the per-lane alignment window (see the module docstring)."""
    W, M = bfp.width, internal.frac_bits
    return max(W + M + 2, 2 * W + 2)


# --- small combinational helpers, shared with hw.finalize ----------------------------------------
#
# Lint-clean arithmetic. ``gen.verilog.emit`` writes a flat netlist that must pass
# ``verilator --lint-only -Wall`` without waivers. Yosys writes every Amaranth operator as one cell
# whose output is a wire, constants at their shortest width, and drops plain zero/sign extensions of
# arithmetic operands. So: both operands of an arithmetic or comparison operator have the same width
# (``widen``; a 1-bit operand is also fine); constant operands have their top bit set at that width
# (``add_const``, ``gt_const``, ``eq_const``); every bit of every result is used, and a value used
# more than once (sliced) is first held in a ``Signal`` (``as_sig``: Amaranth would otherwise build
# one cell per use). Where a result bit is provably zero (or a copy of the sign) it is folded into a
# neighbouring bit with one gate (``fold_u``, ``fold_s``) instead of being left dangling.
# Multiplexers are ``Mux`` trees or AND-OR selects, never ``Switch`` (a ``casez`` with overlapping
# patterns).

def as_sig(m, value, name):
    """``value`` held in a ``Signal`` of its own shape (or ``value`` itself if it is one)."""
    if isinstance(value, Signal):
        return value
    value = Value.cast(value)
    sig = Signal(value.shape(), name=name)
    m.d.comb += sig.eq(value)
    return sig


def zext(value, width):
    """Zero-extend ``value`` to ``width`` bits (a concatenation; fine as an assignment source or a
    multiplexer input, but an arithmetic operand needs :func:`widen`)."""
    value = Value.cast(value)
    assert len(value) <= width, (len(value), width)
    return value if len(value) == width else Cat(value, Const(0, width - len(value)))


def sext(value, width):
    """Sign-extend ``value`` (its top bit is the sign) to ``width`` bits, as a signed value."""
    value = Value.cast(value)
    assert len(value) <= width, (len(value), width)
    if len(value) == width:
        return value.as_signed()
    return Cat(value, value[-1].replicate(width - len(value))).as_signed()


def widen(value, width, signed_=False):
    """``value`` extended to ``width`` bits as an arithmetic operand. Amaranth hands a plain
    extension to Yosys as the narrower operand (and Verilator then flags the width mismatch), so the
    extension goes through a multiplexer that is the identity (``value != 0 ? ext(value) : 0``)."""
    value = Value.cast(value)
    if len(value) == width:
        return value.as_signed() if signed_ else value.as_unsigned()
    ext = sext(value, width) if signed_ else zext(value, width)
    out = Mux(value.any(), ext, Const(0, width))
    return out.as_signed() if signed_ else out.as_unsigned()


def s_add(a, b, sub=False):
    """Exact ``a + b`` (or ``a - b``) of two signed values: one bit wider than the wider one."""
    a, b = Value.cast(a), Value.cast(b)
    w = max(len(a), len(b))
    a, b = widen(a, w, True), widen(b, w, True)
    return a - b if sub else a + b


def add_const(m, value, k, name):
    """Exact ``value + k`` (a signed ``Signal`` one bit wider) for a signed ``value`` and an integer
    ``k``. The constant is applied as an unsigned operand with its top bit set (``value + (2**w +
    k)`` for ``k < 0``, ``value - (2**w - k)`` for ``k > 0``) and the sign of the exact result is
    rebuilt from the carry and the operand's sign."""
    value = Value.cast(value)
    if k == 0:
        return as_sig(m, value.as_signed(), name)
    w = max(len(value), abs(k).bit_length() + 1)
    v = as_sig(m, widen(value, w, True).as_unsigned(), f"{name}_v")
    total = Signal(w + 1, name=f"{name}_t")
    out = Signal(signed(w + 1), name=name)
    if k < 0:
        m.d.comb += [total.eq(v + Const((1 << w) + k, w)),
                     out.eq(Cat(total[:w], ~total[w] | v[w - 1]))]
    else:
        m.d.comb += [total.eq(v - Const((1 << w) - k, w)),
                     out.eq(Cat(total[:w], total[w] & v[w - 1]))]
    return out


def fold_u(m, value, width, name):
    """``value[:width]`` for an unsigned ``value`` whose bits from ``width`` up are provably zero;
    they are ORed into bit 0 so that every bit is used (one gate, no change in function)."""
    value = Value.cast(value)
    if len(value) <= width:
        return zext(value, width)
    value = as_sig(m, value, name)
    return Cat(value[0] | value[width:].any(), value[1:width])


def fold_s(m, value, width, name):
    """``value`` as a ``width``-bit signed value, for a signed ``value`` whose bits from
    ``width - 1`` up are provably all equal (they are ANDed into the new sign bit)."""
    value = Value.cast(value)
    if len(value) <= width:
        return sext(value, width)
    value = as_sig(m, value, name)
    return Cat(value[:width - 1], value[width - 1:].all()).as_signed()


def cond_neg(m, value, neg, name):
    """``-value if neg else value`` of a ``w``-bit value, as a ``w + 1``-bit unsigned ``Signal``
    (``(value ^ neg...) + neg``); for the magnitude of a two's-complement value the top bit is 0."""
    value = Value.cast(value)
    w = len(value)
    out = Signal(w + 1, name=name)
    m.d.comb += out.eq((value.as_unsigned() ^ neg.replicate(w)) + neg)
    return out


def gt_const(m, value, c, name="gt"):
    """``value > c`` for an unsigned ``value`` and an integer ``c >= 0``."""
    value = as_sig(m, Value.cast(value).as_unsigned(), name)
    n = len(value)
    if c >= (1 << n) - 1:
        return Const(0, 1)
    k = c.bit_length()
    if k == 0:
        return value.any()
    if c == (1 << k) - 1:                   # no k-bit value exceeds c
        return value[k:].any()
    low = value[:k] > Const(c, k)           # ``c`` is exactly k bits wide
    return value[k:].any() | low if k < n else low


def eq_const(m, value, c, name="eq"):
    """``value == c`` for an unsigned ``value`` and an integer ``0 <= c < 2**len(value)``."""
    value = as_sig(m, Value.cast(value).as_unsigned(), name)
    k = c.bit_length()
    if k == 0:
        return ~value.any()
    low = value[:k] == Const(c, k)
    return low & ~value[k:].any() if k < len(value) else low


def select(pairs, width):
    """AND-OR multiplexer: ``OR_j (sel_j ? value_j : 0)`` over ``(sel_j, value_j)``; the selects
    are one-hot (or all zero: the result is 0). Values are zero-extended to ``width``."""
    terms = [Mux(sel, zext(Value.cast(val).as_unsigned(), width), Const(0, width)) for sel, val in pairs]
    if not terms:
        return Const(0, width)
    out = terms[0]
    for t in terms[1:]:
        out = out | t
    return out


def shift_right_jam(m, value, amount, name):
    """``value >> amount`` with every bit shifted out ORed into bit 0 of the result (jamming).
    ``amount`` is unsigned; amounts of ``len(value)`` or more leave only the jam bit. Returns a
    ``len(value)``-bit signal. A logarithmic shifter: one stage per bit of ``amount``, each stage
    ORs the bits it drops into a running sticky bit."""
    width = len(value)
    cur = value
    sticky = Const(0, 1)
    for j in range(len(amount)):
        step = 1 << j
        if step >= width:
            dropped = cur.any()
            nxt = Const(0, width)
        else:
            dropped = cur[:step].any()
            nxt = zext(cur[step:], width)
        s = Signal(width, name=f"{name}_s{j}")
        k = Signal(name=f"{name}_k{j}")
        m.d.comb += [s.eq(Mux(amount[j], nxt, cur)), k.eq(sticky | (amount[j] & dropped))]
        cur, sticky = s, k
    out = Signal(width, name=name)
    m.d.comb += out.eq(Cat(cur[0] | sticky, cur[1:]))
    return out


def shift_left(m, value, amount, name):
    """``(value << amount)`` truncated to ``len(value)`` bits (logarithmic shifter)."""
    width = len(value)
    cur = value
    for j in range(len(amount)):
        step = 1 << j
        nxt = Cat(Const(0, step), cur[:width - step]) if step < width else Const(0, width)
        s = Signal(width, name=f"{name}_s{j}")
        m.d.comb += s.eq(Mux(amount[j], nxt, cur))
        cur = s
    return cur


def count_leading_zeros(m, value, name):
    """Leading-zero count of ``value`` as a ``range(len(value) + 1)`` signal; a zero value gives
    ``len(value)``. A balanced tree of (all-zero, count) pairs, built as expressions."""
    width = len(value)
    out = Signal(range(width + 1), name=name)
    if width == 1:
        m.d.comb += out.eq(~value[0])
        return out
    # Pad to a power of two with ones at the bottom (they never change the count of a non-zero
    # value; a zero value is handled separately).
    size = 1 << (width - 1).bit_length()
    pad = size - width
    bits = Cat(Const((1 << pad) - 1, pad), value) if pad else value
    nodes = [(~bits[k], None) for k in range(size)]    # (all zero, count), leaves LSB first
    while len(nodes) > 1:
        merged = []
        for k in range(0, len(nodes), 2):
            (z_lo, c_lo), (z_hi, c_hi) = nodes[k], nodes[k + 1]
            if c_lo is None:
                count = z_hi
            else:
                # High half all zero: 2**level + count of the low half; else count of the high half.
                count = Mux(z_hi, Cat(c_lo, Const(1, 1)), Cat(c_hi, Const(0, 1)))
            merged.append((z_lo & z_hi, count))
        nodes = merged
    count = nodes[0][1]
    m.d.comb += out.eq(Mux(value.any(), zext(count, len(out)), Const(width, len(out))))
    return out


class BFPAffine(wiring.Component):
    """Pipelined ``y_l = rnd(a_l * x_l + b_l)`` over the lanes of a BFP block (one rounding per
    block, ``sim.golden.quantize_block``).

    Parameters
    ----------
    bfp : BFPFormat
        Format of ``x`` and ``y``.
    internal : FloatFormat
        Format of ``a`` and ``b`` (normally ``hw.formats.internal_format(M)``; any exponent width
        up to 8 bits works, the analysis above assumes 8).

    Ports
    -----
    i : stream of ``input_layout``: ``block`` (``bfp.block_layout()``: ``exponent``, ``codes``),
        ``a`` and ``b`` (``data.ArrayLayout(internal.width, B)``, packed internal floats, lane 0
        first). Exponent-0 ``a`` or ``b`` is zero. Padding lanes: give ``a = b = 0`` (or code 0
        and ``b = 0``): they come out 0 and never affect the shared exponent.
    o : stream of ``bfp.flagged_block_layout()``; ``flags.special`` and ``flags.flush`` are 0.

    Timing
    ------
    ``latency`` = 4 + the quantizer's latency: stage 0 decodes the codes and floats and takes the
    exponent difference, stage 1 multiplies (register to register, so the multiplier block's
    delay is alone on its path) and orders the operands, stage 2 aligns (with jamming), stage 3
    adds and takes the magnitude, then
    :class:`hw.bfp_shifter.BlockQuantizer` (its comparator variant: lane keys, clamped keys,
    partial maxima, shared exponent, shift amounts, shift, round; 7 stages for ``B <= 16``, 8 up
    to ``B = 64``), so 11 for ``B <= 16`` and 12 beyond. A block accepted on clock edge ``t`` is
    on ``o`` (``o.valid`` high) from edge ``t + latency - 1`` and is transferred at edge
    ``t + latency`` when ``o.ready`` is high. W=8 B=16 M=12 alone (``ln_part_forward_affine``,
    ``python -m gen area``): ECP5 about 109 MHz.
    Throughput: one block per cycle while ``o.ready`` is high. Back-pressure: one enable for all
    the registers (the quantizer's, ``o.ready | ~o.valid``), which is also ``i.ready``: the
    pipeline advances as a whole, so ``i.ready`` is combinational from ``o.ready`` and
    ``o.valid`` only; ``o.valid`` never depends on ``o.ready``; ``o`` holds while stalled;
    bubbles are not squeezed out while ``o`` stalls. (Per-stage enables ``ready = next.ready |
    ~valid`` chain through all the stages, each link driving a whole register's enables, and
    limited the clock.)
    """

    def __init__(self, bfp, internal):
        check_instance("bfp", bfp, BFPFormat)
        check_instance("internal", internal, FloatFormat)
        if internal.exp_bits > 8:
            raise ValueError(f"internal float exponent bits must be at most 8, not {internal.exp_bits!r}")
        self.bfp = bfp
        self.internal = internal
        self.window = affine_window(bfp, internal)
        B = bfp.block
        # Exponent keys (see elaborate): key = max(kP, kb) - 2 with kP = E + ea + 2 and
        # kb = eb + bias_bfp; field tops are key + 2 - bias_bfp - 126 - (bias_int - 127); bit 0 of
        # the window is N below the top.
        self._bias_shift = internal.bias - 127
        self.key_max = max(bfp.exp_max + internal.exp_max, internal.exp_max + bfp.bias - 2)
        self.key_width = max(1, self.key_max.bit_length())
        self._quant = BlockQuantizer(
            bfp, self.window + 1, self.key_width, exp_signed=False,
            exp_offset=-(bfp.bias + 124 + self._bias_shift + self.window))
        self.latency = 4 + self._quant.latency
        self.input_layout = data.StructLayout({
            "block": bfp.block_layout(),
            "a": data.ArrayLayout(internal.width, B),
            "b": data.ArrayLayout(internal.width, B),
        })
        super().__init__({
            "i": In(stream.Signature(self.input_layout)),
            "o": Out(stream.Signature(bfp.flagged_block_layout())),
        })

    def elaborate(self, platform):
        m = Module()
        bfp, f = self.bfp, self.internal
        B, W, M, N = bfp.block, bfp.width, f.frac_bits, self.window
        Wp = W + M + 1
        m.submodules.quantizer = quant = self._quant
        kw = self.key_width
        t_width = (N + 1).bit_length()      # 2**t_width - 1 >= N + 1: every bit shifted out

        lane1 = data.StructLayout({
            "hi": N, "lo": N, "t": t_width, "key": kw, "sign": 1, "sub": 1,
        })
        lane2 = data.StructLayout({"hi": N, "lo": N, "key": kw, "sign": 1, "sub": 1})
        s1_valid = Signal()
        s1 = Signal(data.ArrayLayout(lane1, B))
        s2_valid = Signal()
        s2 = Signal(data.ArrayLayout(lane2, B))
        # One enable for the whole pipeline: the quantizer's (its comparator variant loads all its
        # registers together, when its output loads).
        advance = Signal()
        m.d.comb += [advance.eq(quant.i.ready), self.i.ready.eq(advance)]

        # Stage 0: decode the codes and floats, exponent difference. Stage 1: exact product (the
        # multiplier runs register to register), distance, key, operand swap.
        blk = self.i.payload.block
        ew = max(bfp.exp_bits, f.exp_bits)
        lane0 = data.StructLayout({
            "qmag": W, "ma": M + 1, "mb": M + 1, "sp": 1, "sb": 1, "bz": 1,
            "kp0": ew + 1, "dd": signed(ew + 3),
        })
        s0_valid = Signal()
        s0 = Signal(data.ArrayLayout(lane0, B))
        lanes0 = []
        for l in range(B):
            q = blk.codes.as_value()[l * W:(l + 1) * W]
            a = self.i.payload.a[l]
            b = self.i.payload.b[l]
            sa, ea, fa = a[-1], a[M:M + f.exp_bits], a[:M]
            sb, eb, fb = b[-1], b[M:M + f.exp_bits], b[:M]
            qmag = Signal(W, name=f"qmag{l}")
            m.d.comb += qmag.eq(fold_u(m, cond_neg(m, q, q[-1], f"qneg{l}"), W, f"qf{l}"))
            # kp0 = E + ea = kP - 2;  dd = kb - kP = eb - kp0 + (bias_bfp - 2).
            kp0 = Signal(ew + 1, name=f"kp0_{l}")
            m.d.comb += kp0.eq(widen(blk.exponent, ew) + widen(ea, ew))
            diff = Signal(signed(ew + 2), name=f"diff{l}")
            m.d.comb += diff.eq(widen(eb, ew + 1) - kp0)
            lanes0.append({
                "qmag": qmag,
                "ma": Mux(ea.any(), Cat(fa, Const(1, 1)), Const(0, M + 1)),
                "mb": Mux(eb.any(), Cat(fb, Const(1, 1)), Const(0, M + 1)),
                "sp": q[-1] ^ sa, "sb": sb, "bz": ~eb.any(), "kp0": kp0,
                "dd": add_const(m, diff, bfp.bias - 2, f"ddc{l}"),
            })
        with m.If(advance):
            m.d.sync += s0_valid.eq(self.i.valid)
            for l, fields in enumerate(lanes0):
                for name, value in fields.items():
                    m.d.sync += s0[l][name].eq(value)

        lanes1 = []
        for l in range(B):
            z = s0[l]
            prod = Signal(Wp, name=f"prod{l}")
            m.d.comb += prod.eq(z.qmag * z.ma)
            dd = z.dd
            pz = ~z.qmag.any() | ~z.ma.any()            # the product is zero
            b_high = Signal(name=f"b_high{l}")
            m.d.comb += b_high.eq(~z.bz & (pz | ~dd[-1]))
            pf = Cat(Const(0, N - Wp), prod)
            bf = Cat(Const(0, N - M - 1), z.mb)
            tabs = Signal(ew + 3, name=f"tabs{l}")          # |kb - kP|
            m.d.comb += tabs.eq(fold_u(m, cond_neg(m, dd, dd[-1], f"tneg{l}"), ew + 3, f"tf{l}"))
            t = Signal(t_width, name=f"t{l}")
            if len(tabs) > t_width:
                m.d.comb += t.eq(Mux(tabs[t_width:].any(), Const((1 << t_width) - 1, t_width), tabs[:t_width]))
            else:
                m.d.comb += t.eq(tabs)
            key = Signal(kw, name=f"key{l}")
            m.d.comb += key.eq(fold_u(m, s_add(widen(z.kp0, ew + 3).as_signed(), Mux(b_high, dd, Const(0, signed(ew + 3)))), kw, f"kf{l}"))
            lanes1.append({
                "hi": Mux(b_high, bf, pf), "lo": Mux(b_high, pf, bf), "t": t,
                "key": key, "sign": Mux(b_high, z.sb, z.sp), "sub": z.sb ^ z.sp,
            })
        with m.If(advance):
            m.d.sync += s1_valid.eq(s0_valid)
            for l, fields in enumerate(lanes1):
                for name, value in fields.items():
                    m.d.sync += s1[l][name].eq(value)

        # Stage 2: align with jamming.
        jammed = [shift_right_jam(m, s1[l].lo, s1[l].t, f"lo{l}") for l in range(B)]
        with m.If(advance):
            m.d.sync += s2_valid.eq(s1_valid)
            for l in range(B):
                lane = s1[l]
                m.d.sync += [
                    s2[l].hi.eq(lane.hi),
                    s2[l].lo.eq(jammed[l]),
                    s2[l].key.eq(lane.key),
                    s2[l].sign.eq(lane.sign),
                    s2[l].sub.eq(lane.sub),
                ]

        # Stage 3: add or subtract, magnitude.
        qi = quant.i.payload
        lanes3 = []
        for l in range(B):
            lane = s2[l]
            # hi +- lo with one adder (not two and a multiplexer): in N + 3 bits,
            # (2 hi + sub) + (2 (lo ^ sub...) + sub, sign-extended) = 2 (hi +- lo) mod 2**(N + 3).
            sub = lane.sub
            ext = Signal(N + 3, name=f"addsub{l}")
            m.d.comb += ext.eq((Cat(sub, lane.hi, Const(0, 2))
                                + Cat(sub, lane.lo ^ sub.replicate(N), sub, sub))[:N + 3])
            total = Signal(signed(N + 2), name=f"sum{l}")
            m.d.comb += total.eq(Cat(ext[1] | ext[0], ext[2:]))     # ext[0] is 0 (sub + sub)
            neg = total[-1]
            mag = Signal(N + 1, name=f"mag{l}")
            m.d.comb += mag.eq(fold_u(m, cond_neg(m, total, neg, f"mneg{l}"), N + 1, f"mf{l}"))
            lanes3.append((mag, lane.key, lane.sign ^ neg))
        with m.If(advance):
            m.d.sync += [
                quant.i.valid.eq(s2_valid),
                qi.flags.eq(0),
            ]
            for l, (mag, key, sign) in enumerate(lanes3):
                m.d.sync += [qi.lanes[l].mag.eq(mag), qi.lanes[l].exp.eq(key), qi.lanes[l].sign.eq(sign)]

        # ``quant.o.ready`` is also raised while ``quant.o`` is empty: no transfer can happen then, so
        # this changes nothing for a correct stream sink (and keeps working with a quantizer whose
        # last stage would otherwise hold a block it has already passed on).
        m.d.comb += [
            self.o.valid.eq(quant.o.valid),
            self.o.payload.eq(quant.o.payload),
            quant.o.ready.eq(self.o.ready | ~quant.o.valid),
        ]
        return m
