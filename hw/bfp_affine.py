"""``y = a * x + b`` per lane of a BFP block, rounded once into a BFP block.

:class:`BFPAffine` is the per-element datapath of the Range-BN cores: the forward normalize pass
(``y = a x + b`` with ``a = gamma / sigma_hat``, ``b = beta - mu a``) and the backward dx pass
(``dx = a g + b_sel``). It implements ``sim.model.golden_bn._fma_block`` bit for bit: every lane's
exact value ``a_l * x_l + b_l`` goes through one :func:`sim.model.golden.quantize_block`.

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
   The hardware takes the distance as ``dd`` XOR its sign (``dd = top_b - top_P``): a low ``b``
   enters the shifter one bit lower (``mb`` has at least two zero bits below it in the field) and
   moves by ``|dd| - 1``, the same bits with no incrementer; the exponent key is the high
   operand's own (``E + ea`` or ``eb + bias_bfp - 2``), selected, not added.
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

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from hw.arith import add_const, cond_neg, fold_u, shift_right_jam, widen
from hw.bfp_shifter import BlockQuantizer
from hw.checks import check_instance
from hw.formats import BFPFormat, FloatFormat

__all__ = ["BFPAffine", "affine_window"]


def affine_window(bfp, internal):
    """Width ``N`` of the per-lane alignment window (see the module docstring)."""
    W, M = bfp.width, internal.frac_bits
    return max(W + M + 2, 2 * W + 2)


class BFPAffine(wiring.Component):
    """Pipelined ``y_l = rnd(a_l * x_l + b_l)`` over the lanes of a BFP block (one rounding per
    block, ``sim.model.golden.quantize_block``).

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
    ``latency`` = 7 + the quantizer's latency: stage 0 decodes the codes and floats, takes the
    exponent difference and picks the high operand and its exponent key, stage 1 multiplies
    (register to register, so the multiplier block's delay and its routing are alone on their
    path), stage 2 orders the operands, stage 3 aligns (with jamming), stage 4 adds and takes
    the magnitude, then :class:`hw.bfp_shifter.BlockQuantizer` (its comparator variant: lane
    keys, clamped keys, partial maxima (none for ``B <= 4``), shared exponent, shift amounts,
    shift, round; 6 stages for ``B <= 4``, 7 for ``B <= 16``, 8 up to ``B = 64``), then the output
    queue (2: written, then read into its output register), so 13 for ``B <= 4``, 14 for
    ``B <= 16`` and 15 beyond. A block accepted on clock edge ``t`` is on
    ``o`` (``o.valid`` high) from edge ``t + latency - 1`` when nothing waits ahead of it, and is
    transferred at the first edge after that with ``o.ready`` high.
    Throughput: one block per cycle while ``o.ready`` is high (``QUEUE_DEPTH`` > ``latency`` + 1,
    so the credit never runs out then). Back-pressure: the pipeline never stalls, and none of its
    registers has an enable; its blocks collect in an output queue of ``QUEUE_DEPTH`` = 17 blocks
    (``amaranth.lib.fifo.SyncFIFOBuffered``; LUT RAM on ECP5). ``i.ready`` is a register, high
    while fewer than ``QUEUE_DEPTH`` blocks are taken and not yet delivered, so the queue never
    overflows and ``i.ready`` does not depend on ``o.ready`` in the same cycle; ``o.valid``
    never depends on ``o.ready``; ``o`` holds while stalled. While ``o`` stalls, ``i`` keeps
    being taken until ``QUEUE_DEPTH`` blocks are outstanding. (The earlier scheme, one enable
    ``o.ready | ~o.valid`` for every register, made the consumer's ``ready`` a net of thousands
    of loads: it limited the backward core to 82 MHz at B = 16.)

    Reset: the valid bits, the credit and the queue's pointers are reset; the lane registers of
    stages 0 to 4 and of the quantizer have no reset (``reset_less``): each is written in the
    cycle before it is read, and nothing reads it while its ``valid`` is low. A synchronous
    reset would cost a gate per bit in standard cells (docs/area.md, "Registers without reset").
    The exceptions are the multiplier's operand and product registers (``s0_mul``, ``sp_prod``):
    without a reset Yosys folds them into the iCE40 SB_MAC16, and that netlist fails the
    gate-level check (docs/boards.md, "Gate-level check").
    """

    #: Blocks the output queue holds (``SyncFIFOBuffered``: 16 in memory, one in its output
    #: register); more than the blocks in flight at full throughput (``latency + 1``).
    QUEUE_DEPTH = 17
    #: Cycles the queue adds to the pipeline (write, then the buffered read).
    QUEUE_EXTRA_LATENCY = 2

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
        self.latency = 5 + self._quant.latency + self.QUEUE_EXTRA_LATENCY
        assert self.QUEUE_DEPTH > self.latency + 1      # full throughput (see Timing)
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
        s1 = Signal(data.ArrayLayout(lane1, B), reset_less=True)
        s2_valid = Signal()
        s2 = Signal(data.ArrayLayout(lane2, B), reset_less=True)
        # The pipeline never stalls (no register of it has an enable): a block is taken only when
        # the output queue has room for it and every block ahead of it (``credit``, below).
        take = Signal()
        m.d.comb += take.eq(self.i.valid & self.i.ready)

        # Stage 0: decode the codes and floats, exponent difference, high operand and its key.
        blk = self.i.payload.block
        ew = max(bfp.exp_bits, f.exp_bits)
        lane0 = data.StructLayout({
            "mb": M + 1, "sp": 1, "sb": 1, "b_high": 1, "key": kw, "dd": signed(ew + 2),
        })
        s0_valid = Signal()
        s0 = Signal(data.ArrayLayout(lane0, B), reset_less=True)
        # The multiplier's operand and product registers keep their reset: Yosys' ``synth_ice40
        # -dsp`` folds registers without reset into the SB_MAC16 and that netlist fails the
        # gate-level check (docs/boards.md); with a reset it keeps them outside and passes.
        s0_mul = Signal(data.ArrayLayout(data.StructLayout({"qmag": W, "ma": M + 1}), B))
        lanes0 = []
        for l in range(B):
            q = blk.codes.as_value()[l * W:(l + 1) * W]
            a = self.i.payload.a[l]
            b = self.i.payload.b[l]
            sa, ea, fa = a[-1], a[M:M + f.exp_bits], a[:M]
            sb, eb, fb = b[-1], b[M:M + f.exp_bits], b[:M]
            qmag = Signal(W, name=f"qmag{l}")
            m.d.comb += qmag.eq(fold_u(m, cond_neg(m, q, q[-1], f"qneg{l}"), W, f"qf{l}"))
            # kP = kp0 + 2 with kp0 = E + ea, kb = ebc + 2 with ebc = eb + bias_bfp - 2, and
            # dd = kb - kP: two adders and a subtraction (the key is one of kp0, ebc: no adder).
            kp0 = Signal(ew + 1, name=f"kp0_{l}")
            m.d.comb += kp0.eq(widen(blk.exponent, ew) + widen(ea, ew))
            ebc = add_const(m, Cat(eb, Const(0, ew + 1 - f.exp_bits)).as_signed(), bfp.bias - 2, f"ebc{l}")
            # |dd| < 2**(ew + 1): kp0 < 2**(ew + 1) and ebc < 2**ew + 2**(ew - 1).
            dd = Signal(signed(ew + 2), name=f"dd{l}")     # exact: the dropped bits are sign copies
            m.d.comb += dd.eq(ebc - kp0)
            # The operand whose field top is higher stays (b on a tie; a zero operand never).
            pz = ~qmag.any() | ~ea.any()                # the product is zero
            b_high = Signal(name=f"b_high{l}")
            m.d.comb += b_high.eq(eb.any() & (pz | ~dd[-1]))
            key = Signal(kw, name=f"key{l}")
            m.d.comb += key.eq(fold_u(m, Mux(b_high, ebc[:ew + 1], kp0), kw, f"kf{l}"))
            lanes0.append({
                "qmag": qmag,
                "ma": Mux(ea.any(), Cat(fa, Const(1, 1)), Const(0, M + 1)),
                "mb": Mux(eb.any(), Cat(fb, Const(1, 1)), Const(0, M + 1)),
                "sp": q[-1] ^ sa, "sb": sb, "b_high": b_high, "key": key, "dd": dd,
            })
        m.d.sync += s0_valid.eq(take)
        for l, fields in enumerate(lanes0):
            for name, value in fields.items():
                m.d.sync += (s0_mul if name in ("qmag", "ma") else s0)[l][name].eq(value)

        # Stage 1: the exact product, register to register (the DSP block's output is registered
        # before any logic: on ECP5 the multiplier column is far from the lane logic).
        lanep = data.StructLayout({
            "mb": M + 1, "sp": 1, "sb": 1, "b_high": 1, "key": kw, "dd": signed(ew + 2),
        })
        sp_valid = Signal()
        sp = Signal(data.ArrayLayout(lanep, B), reset_less=True)
        sp_prod = Signal(data.ArrayLayout(Wp, B))      # with reset, as ``s0_mul``
        m.d.sync += sp_valid.eq(s0_valid)
        for l in range(B):
            z = s0[l]
            m.d.sync += sp_prod[l].eq(s0_mul[l].qmag * s0_mul[l].ma)
            for name in ("mb", "sp", "sb", "b_high", "key", "dd"):
                m.d.sync += sp[l][name].eq(z[name])

        # Stage 2: distance (clamped) and operand swap.
        lanes1 = []
        for l in range(B):
            z = sp[l]
            prod = sp_prod[l]
            dd, b_high = z.dd, z.b_high
            pf = Cat(Const(0, N - Wp), prod)
            bf = Cat(Const(0, N - M - 1), z.mb)
            # The low operand moves right by |dd|. With ``b`` low (dd < 0) it enters one bit lower
            # (``bf`` has N - M - 1 >= 2 zero low bits, so nothing is lost) and moves by
            # ``~dd = |dd| - 1``: the distance is ``dd`` XOR its sign, with no incrementer.
            tabs = Signal(ew + 1, name=f"tabs{l}")
            m.d.comb += tabs.eq(dd[:ew + 1] ^ dd[-1].replicate(ew + 1))
            t = Signal(t_width, name=f"t{l}")
            if len(tabs) > t_width:
                m.d.comb += t.eq(Mux(tabs[t_width:].any(), Const((1 << t_width) - 1, t_width), tabs[:t_width]))
            else:
                m.d.comb += t.eq(tabs)
            lanes1.append({
                "hi": Mux(b_high, bf, pf), "lo": Mux(b_high, pf, bf[1:]), "t": t,
                "key": z.key, "sign": Mux(b_high, z.sb, z.sp), "sub": z.sb ^ z.sp,
            })
        m.d.sync += s1_valid.eq(sp_valid)
        for l, fields in enumerate(lanes1):
            for name, value in fields.items():
                m.d.sync += s1[l][name].eq(value)

        # Stage 3: align with jamming.
        jammed = [shift_right_jam(m, s1[l].lo, s1[l].t, f"lo{l}") for l in range(B)]
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

        # Stage 4: add or subtract, magnitude.
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
        m.d.sync += [quant.i.valid.eq(s2_valid), qi.flags.eq(0)]
        for l, (mag, key, sign) in enumerate(lanes3):
            m.d.sync += [qi.lanes[l].mag.eq(mag), qi.lanes[l].exp.eq(key), qi.lanes[l].sign.eq(sign)]

        # Output queue and credit. The quantizer always moves on (``o.ready`` = 1 removes its
        # enables), so each of its output blocks is valid for one cycle and is written into the
        # queue then. ``credit`` counts the blocks taken and not yet delivered (in the pipeline or
        # in the queue): a block is taken only while ``credit < QUEUE_DEPTH``, so the queue never
        # overflows. ``i.ready`` is a register.
        depth = self.QUEUE_DEPTH
        m.submodules.queue = queue = SyncFIFOBuffered(width=len(quant.o.payload.as_value()), depth=depth)
        m.d.comb += [
            quant.o.ready.eq(1),
            queue.w_en.eq(quant.o.valid),
            queue.w_data.eq(quant.o.payload),
            self.o.valid.eq(queue.r_rdy),
            self.o.payload.eq(queue.r_data),
            queue.r_en.eq(self.o.ready),
        ]
        credit = Signal(range(depth + 1))
        credit_next = Signal(range(depth + 1))
        m.d.comb += credit_next.eq(credit + take - (self.o.valid & self.o.ready))
        room = Signal(init=1)
        m.d.sync += [credit.eq(credit_next), room.eq(credit_next != depth)]
        m.d.comb += self.i.ready.eq(room)
        return m
