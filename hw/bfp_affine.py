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

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.bfp_shifter import BlockQuantizer
from hw.formats import BFPFormat, FloatFormat

__all__ = ["BFPAffine", "affine_window", "shift_right_jam", "shift_left", "count_leading_zeros"]


def affine_window(bfp, internal):
    """Width ``N`` of the per-lane alignment window (see the module docstring)."""
    W, M = bfp.width, internal.frac_bits
    return max(W + M + 2, 2 * W + 2)


# --- small combinational helpers, shared with hw.finalize ----------------------------------------

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
            nxt = cur[step:]
        cur, sticky = Mux(amount[j], nxt, cur), sticky | (amount[j] & dropped)
    out = Signal(width, name=name)
    m.d.comb += out.eq(cur | sticky)
    return out


def shift_left(m, value, amount, name):
    """``(value << amount)`` truncated to ``len(value)`` bits (logarithmic shifter)."""
    width = len(value)
    cur = value
    for j in range(len(amount)):
        step = 1 << j
        nxt = Cat(Const(0, step), cur[:width - step]) if step < width else Const(0, width)
        cur = Mux(amount[j], nxt, cur)
    out = Signal(width, name=name)
    m.d.comb += out.eq(cur)
    return out


def count_leading_zeros(m, value, name):
    """Leading-zero count of ``value`` as a ``range(len(value) + 1)`` signal; a zero value gives
    ``len(value)``. A balanced tree of (all-zero, count) pairs."""
    width = len(value)
    # Pad to a power of two with ones at the bottom (they never change the count of a non-zero
    # value; a zero value is handled separately).
    size = 1 << max(0, (width - 1).bit_length())
    pad = size - width
    bits = Cat(Const((1 << pad) - 1, pad), value) if pad else value
    nodes = [(~bits[k], None) for k in range(size)]    # (all zero, count), leaves LSB first
    level = 0
    while len(nodes) > 1:
        merged = []
        for k in range(0, len(nodes), 2):
            (z_lo, c_lo), (z_hi, c_hi) = nodes[k], nodes[k + 1]
            if c_lo is None:
                count = Mux(z_hi, Const(1, 1), Const(0, 1))
            else:
                # High half all zero: 2**level + count of the low half; else count of the high half.
                count = Mux(z_hi, Cat(c_lo, Const(1, 1)), Cat(c_hi, Const(0, 1)))
            merged.append((z_lo & z_hi, count))
        nodes = merged
        level += 1
    zero, count = nodes[0]
    out = Signal(range(width + 1), name=name)
    if count is None:           # width 1
        m.d.comb += out.eq(zero)
    else:
        m.d.comb += out.eq(Mux(value.any(), count, width))
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
    ``latency`` = 5: stage 1 multiplies and compares exponents, stage 2 aligns (with jamming),
    adds and takes the magnitude, then :class:`hw.bfp_shifter.BlockQuantizer` (3 stages). A block
    accepted on clock edge ``t`` is on ``o`` (``o.valid`` high) after edge ``t + 5``.
    Throughput: one block per cycle while ``o.ready`` is high. Back-pressure: every stage is a
    register stage that loads when it is empty or its content leaves (``ready = next.ready |
    ~valid``), so ``i.ready`` depends combinationally on ``o.ready`` and the stages' valid bits;
    ``o.valid`` never depends on ``o.ready``; ``o`` holds while stalled; bubbles are squeezed out.
    """

    def __init__(self, bfp, internal):
        if not isinstance(bfp, BFPFormat):
            raise ValueError(f"bfp must be a hw.formats.BFPFormat, not {bfp!r}")
        if not isinstance(internal, FloatFormat):
            raise ValueError(f"internal must be a hw.formats.FloatFormat, not {internal!r}")
        if internal.exp_bits > 8:
            raise ValueError(f"internal float exponent bits must be at most 8, not {internal.exp_bits!r}")
        self.bfp = bfp
        self.internal = internal
        self.window = affine_window(bfp, internal)
        B = bfp.block
        # Exponent keys: kP = E + ea + 2, kb = eb + bias_bfp (both >= 0); field tops are
        # key - bias_bfp - 126 - (bias_int - 127), bit 0 of the window is at top - N.
        self._bias_shift = internal.bias - 127
        self.key_max = max(bfp.exp_max + internal.exp_max + 2, internal.exp_max + bfp.bias)
        self.key_width = self.key_max.bit_length()
        self._quant = BlockQuantizer(
            bfp, self.window + 1, self.key_width, exp_signed=False,
            exp_offset=-(bfp.bias + 126 + self._bias_shift + self.window))
        self.latency = 2 + self._quant.latency
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
        t_width = (N + 1).bit_length()

        lane1 = data.StructLayout({
            "hi": N, "lo": N, "t": t_width, "key": kw, "sign": 1, "sub": 1,
        })
        s1_valid = Signal()
        s1 = Signal(data.ArrayLayout(lane1, B))
        s1_ready = Signal()
        s2_ready = Signal()
        m.d.comb += [
            s2_ready.eq(quant.i.ready | ~quant.i.valid),
            s1_ready.eq(s2_ready | ~s1_valid),
            self.i.ready.eq(s1_ready),
        ]

        # Stage 1: decode, exact product, exponent compare, operand swap.
        blk = self.i.payload.block
        lanes1 = []
        for l in range(B):
            q = blk.codes.as_value()[l * W:(l + 1) * W].as_signed()
            a = self.i.payload.a[l]
            b = self.i.payload.b[l]
            sa, ea, fa = a[-1], a[M:M + f.exp_bits], a[:M]
            sb, eb, fb = b[-1], b[M:M + f.exp_bits], b[:M]
            qmag = Signal(W, name=f"qmag{l}")
            m.d.comb += qmag.eq(Mux(q[-1], -q, q))
            ma = Signal(M + 1, name=f"ma{l}")
            mb = Signal(M + 1, name=f"mb{l}")
            m.d.comb += [ma.eq(Mux(ea.any(), Cat(fa, Const(1, 1)), 0)),
                         mb.eq(Mux(eb.any(), Cat(fb, Const(1, 1)), 0))]
            prod = Signal(Wp, name=f"prod{l}")
            m.d.comb += prod.eq(qmag * ma)
            sp = q[-1] ^ sa
            kp = Signal(kw, name=f"kp{l}")
            kb = Signal(kw, name=f"kb{l}")
            m.d.comb += [kp.eq(blk.exponent + ea + 2), kb.eq(eb + bfp.bias)]
            pz = ~prod.any()
            bz = ~eb.any()
            b_high = Signal(name=f"b_high{l}")
            m.d.comb += b_high.eq(~bz & (pz | (kb >= kp)))
            pf = Cat(Const(0, N - Wp), prod)
            bf = Cat(Const(0, N - M - 1), mb)
            diff = Signal(kw, name=f"tdiff{l}")
            m.d.comb += diff.eq(Mux(b_high, kb - kp, kp - kb))
            t = Signal(t_width, name=f"t{l}")
            if (1 << kw) - 1 > N + 1:
                m.d.comb += t.eq(Mux(diff > N + 1, N + 1, diff))
            else:
                m.d.comb += t.eq(diff)
            lanes1.append({
                "hi": Mux(b_high, bf, pf), "lo": Mux(b_high, pf, bf), "t": t,
                "key": Mux(b_high, kb, kp), "sign": Mux(b_high, sb, sp), "sub": sb ^ sp,
            })
        with m.If(s1_ready):
            m.d.sync += s1_valid.eq(self.i.valid)
            for l, fields in enumerate(lanes1):
                for name, value in fields.items():
                    m.d.sync += s1[l][name].eq(value)

        # Stage 2: align with jamming, add or subtract, magnitude.
        qi = quant.i.payload
        lanes2 = []
        for l in range(B):
            lane = s1[l]
            lo = shift_right_jam(m, lane.lo, lane.t, f"lo{l}")
            total = Signal(N + 2, name=f"sum{l}")
            m.d.comb += total.eq(Mux(lane.sub, lane.hi - lo, lane.hi + lo))
            neg = total[-1] & lane.sub
            mag = Signal(N + 1, name=f"mag{l}")
            m.d.comb += mag.eq(Mux(neg, -total, total)[:N + 1])
            lanes2.append((mag, lane.key, lane.sign ^ neg))
        with m.If(s2_ready):
            m.d.sync += [
                quant.i.valid.eq(s1_valid),
                qi.flags.eq(0),
            ]
            for l, (mag, key, sign) in enumerate(lanes2):
                m.d.sync += [qi.lanes[l].mag.eq(mag), qi.lanes[l].exp.eq(key), qi.lanes[l].sign.eq(sign)]

        # ``quant.o.ready`` is also raised while ``quant.o`` is empty: no transfer can happen then, so
        # this changes nothing for a correct stream sink, and it keeps the quantizer's last stage
        # from loading its output register while also holding its own content (its ``s2.ready`` is
        # ``o.ready | ~s2.valid`` at the time of writing, which duplicates a block in that case).
        m.d.comb += [
            self.o.valid.eq(quant.o.valid),
            self.o.payload.eq(quant.o.payload),
            quant.o.ready.eq(self.o.ready | ~quant.o.valid),
        ]
        return m
