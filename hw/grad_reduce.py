"""Gradient reductions of the Range-BN backward core (``sim.model.golden_bn.backward_stats`` bit for bit).

Per channel, over one reduction pass of paired x / g blocks (LightNorm grouping: a block is ``B``
channels at one position, ``groups = ceil(channels / B)`` blocks per position, group fastest):

* ``sum_g  = sum q_g * 2**E_g`` exactly, an integer in units ``u`` (the code LSB at shared
  exponent 0);
* ``sum_gx = sum (q_g * q_x) * 2**(E_g + E_x)`` exactly, an integer in units ``u**2``: one W x W
  signed multiply per lane, the product aligned by the sum of the two shared exponents.

Sizing (no saturation logic exists because none can fire): with ``c = 2**(W-1) - 1`` the largest
code magnitude (``-2**(W-1)`` never occurs) and ``e = 2**exp_bits - 1`` the largest shared exponent,
``|sum_g| <= max_count * c * 2**e`` and ``|sum_gx| <= max_count * c**2 * 2**(2 e)``;
:func:`grad_widths` returns the bit lengths of these bounds plus a sign bit, so for any pass of
``n <= max_count`` positions neither accumulator can overflow. (fp10, W = 8, max_count = 4096:
51 and 89 bits; W = 16, max_count = 2**24: 71 and 117 bits.)

Storage: one memory of ``groups`` rows; a row holds the two accumulators of the ``B`` lanes of one
group. Padding lanes (channels past ``channels`` in the last group) are accumulated like the
others and never read.

Pipeline (one block pair per cycle, never back-pressures): stage 1 registers the ``B`` products
and the exponent sums; stage 2 registers the aligned addends and issues nothing; the accumulate
stage reads the group's row (the read was issued one cycle earlier, from stage 1's group, through
a read port transparent to the write port, so back-to-back blocks of the same group -- ``groups``
= 1 -- see each other's sums) and writes the new row. During the first position of a pass the
addends are written instead of the sums (as if the old row were zero), so no clearing pass is
needed; with one group the row is a register that ``clear`` zeroes instead.

Ports
-----
``clear`` (in): start a pass: group counter to 0, next ``groups`` blocks are position 0. May
    be held high for any number of cycles (the backward core holds it, from a register, while
    idle), only while no block is transferred.
``i`` (in stream of ``hw.bn_layouts.pair_layout(bfp)``): ``i.ready`` is always 1.
``busy`` (out): a block is in the pipeline (its sums are not yet written).
``overflow`` (out, sticky until ``clear``): an accumulator wrapped. The sizing below makes this
    impossible for ``n <= max_count``; the check costs one XOR per accumulator and is kept as a
    safety net (the backward core ORs it into every ``grads.overflow``). It rises the cycle
    after the wrapping block is written (with its sums readable) and is an OR of registers: the
    block's wrap bits are registered, and ORed one cycle later into a sticky bit.
``rd_en``, ``rd_addr`` (in), ``rd_data`` (out, ``row_layout``): synchronous read of one group's
    row; ``rd_data`` is valid the cycle after ``rd_en`` and holds while ``rd_en`` is low. Only
    while ``busy`` is low and no block is accepted (the read port is shared with the accumulator).

Latency: ``LATENCY`` = 3 cycles from accepting a block to its sums being readable (``busy`` low).
"""

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.arith import (grad_widths, shift_left_to, window_accumulate, window_control, window_lsb,
                      window_lsb_width, windowed_width)
from hw.bn_layouts import pair_layout
from hw.checks import check_instance, check_int
from hw.formats import STATS_GUARD_DEFAULT, BFPFormat, check_stats

__all__ = ["GradReduce", "grad_widths", "RowStore"]


class RowStore:
    """``depth`` rows of ``shape`` with one synchronous read port and one write port: an
    ``amaranth.lib.memory.Memory`` when ``depth > 1``, a register otherwise (no zero-width
    addresses in the Verilog).

    Drive ``wr_addr``, ``wr_en``, ``wr_data``, ``rd_addr``, ``rd_en`` (addresses are ignored when
    ``depth == 1``); read ``rd_data``, valid the cycle after ``rd_en`` and held while it is low
    and no row is written. ``lanes``: ``shape`` is an ``ArrayLayout`` and ``wr_en`` has one
    enable bit per element. ``transparent``: a read of the row written in the same cycle returns
    the new data. With ``depth == 1``, ``rd_data`` is the row register itself (no read register,
    no bypass multiplexer): it shows a write from the next cycle on, whatever ``rd_en``, and
    ``clear`` (a synchronous reset of the row, taking priority over a write) is available. So a
    user must not rely on ``rd_data`` holding across a write: ``GradReduce`` reads its
    accumulator row transparently, and the backward core writes its coefficient stores only
    between its reduction and its dx pass, and reads them only in the dx pass.
    """

    def __init__(self, name, shape, depth, *, lanes=False, transparent=False):
        self.name, self.shape, self.depth = name, shape, depth
        self.lanes, self.transparent = lanes, transparent
        self.wr_addr = Signal(range(max(depth, 2)), name=f"{name}_wr_addr")
        self.rd_addr = Signal(range(max(depth, 2)), name=f"{name}_rd_addr")
        self.wr_en = Signal(shape.length if lanes else 1, name=f"{name}_wr_en")
        self.wr_data = Signal(shape, name=f"{name}_wr_data")
        self.rd_en = Signal(name=f"{name}_rd_en")
        self.rd_data = Signal(shape, name=f"{name}_rd_data")
        self.clear = Signal(name=f"{name}_clear")        # depth 1, transparent only

    def elaborate(self, m):
        if self.depth > 1:
            mem = memory.Memory(shape=self.shape, depth=self.depth, init=[])
            m.submodules[self.name] = mem
            wr = mem.write_port(granularity=1 if self.lanes else None)
            rd = mem.read_port(transparent_for=(wr,) if self.transparent else ())
            m.d.comb += [
                wr.addr.eq(self.wr_addr), wr.en.eq(self.wr_en), wr.data.eq(self.wr_data),
                rd.addr.eq(self.rd_addr), rd.en.eq(self.rd_en), self.rd_data.eq(rd.data),
            ]
            return
        row = Signal(self.shape, name=f"{self.name}_row")
        if self.lanes:
            for k in range(self.shape.length):
                with m.If(self.wr_en[k]):
                    m.d.sync += row[k].eq(self.wr_data[k])
        else:
            with m.If(self.wr_en):
                m.d.sync += row.eq(self.wr_data)
        with m.If(self.clear):
            m.d.sync += row.eq(0)
        m.d.comb += self.rd_data.eq(row)


class GradReduce(wiring.Component):
    """Exact per-channel ``sum g`` and ``sum g x`` over a stream of x / g block pairs.

    Parameters: ``bfp`` (format of x and g), ``channels``, ``max_count`` (largest n).
    See the module docstring for ports, sizing and timing.
    """

    LATENCY = 3

    def __init__(self, bfp, channels, max_count, stats="exact", stats_guard=STATS_GUARD_DEFAULT):
        check_instance("bfp", bfp, BFPFormat)
        check_int("channels", channels, 1)
        check_int("max_count", max_count, 1)
        check_stats(stats, stats_guard)
        self.bfp = bfp
        self.channels = channels
        self.max_count = max_count
        self.stats_mode, self.stats_guard = stats, stats_guard
        self.groups = -(-channels // bfp.block)
        self.latency = self.LATENCY
        self.sum_g_width, self.sum_gx_width = grad_widths(bfp, max_count)
        self.lsb_g_width = self.lsb_gx_width = 0
        window = {}
        if stats == "low":
            W, e = bfp.width, bfp.exp_max
            self.sum_g_width = windowed_width(1 << (W - 1), stats_guard, max_count)
            self.sum_gx_width = windowed_width(1 << (2 * W - 2), stats_guard, max_count)
            self.lsb_g_width, self.lsb_gx_width = window_lsb_width(e), window_lsb_width(2 * e)
            # the group's running exponents (read out as the LSB exponents: ``lsb_g``/``lsb_gx``)
            window = {"f_g": self.lsb_g_width, "f_gx": self.lsb_gx_width}
        self.row_layout = data.StructLayout({
            "sum_g": data.ArrayLayout(signed(self.sum_g_width), bfp.block),
            "sum_gx": data.ArrayLayout(signed(self.sum_gx_width), bfp.block),
            **window,
        })
        super().__init__({
            "clear": In(1),
            "i": In(stream.Signature(pair_layout(bfp))),
            "busy": Out(1),
            "overflow": Out(1),
            "rd_en": In(1),
            "rd_addr": In(range(max(self.groups, 2))),
            "rd_data": Out(self.row_layout),
            # low: the LSB exponents of the row read (from its running exponents)
            **({"rd_lsb_g": Out(self.lsb_g_width), "rd_lsb_gx": Out(self.lsb_gx_width)} if window else {}),
        })

    def elaborate(self, platform):
        m = Module()
        bfp, B, W = self.bfp, self.bfp.block, self.bfp.width
        groups = self.groups
        esum_width = bfp.exp_bits + 1

        acc = RowStore("acc", self.row_layout, groups, transparent=True)
        acc.elaborate(m)

        # Input side: group counter and "position 0" flag.
        group = Signal(range(max(groups, 2)))
        first = Signal()
        m.d.comb += self.i.ready.eq(1)
        with m.If(self.clear):
            m.d.sync += [group.eq(0), first.eq(1)]
        with m.Elif(self.i.valid):
            if groups > 1:
                with m.If(group == groups - 1):
                    m.d.sync += [group.eq(0), first.eq(0)]
                with m.Else():
                    m.d.sync += group.eq(group + 1)
            else:
                m.d.sync += first.eq(0)

        # Stage 1: products and exponent sums (payload without reset: read only while s1_valid).
        s1_valid = Signal()
        s1_group = Signal(range(max(groups, 2)))
        s1_first = Signal()
        s1_eg = Signal(bfp.exp_bits, reset_less=True)
        s1_esum = Signal(esum_width, reset_less=True)
        s1_qg = Signal(data.ArrayLayout(signed(W), B), reset_less=True)
        # The product register keeps its reset (see ``hw.bfp_affine``: SB_MAC16 folding).
        s1_prod = Signal(data.ArrayLayout(signed(2 * W), B))
        pay = self.i.payload
        m.d.sync += [
            s1_valid.eq(self.i.valid),
            s1_group.eq(group),
            s1_first.eq(first),
            s1_eg.eq(pay.g.exponent),
            s1_esum.eq(pay.g.exponent + pay.x.exponent),
        ]
        for lane in range(B):
            qg = pay.g.codes[lane].as_signed()
            qx = pay.x.codes[lane].as_signed()
            m.d.sync += [s1_qg[lane].eq(qg), s1_prod[lane].eq(qg * qx)]

        # Stage 2: aligned addends; the accumulator row is read for it meanwhile.
        s2_valid = Signal()
        s2_group = Signal(range(max(groups, 2)))
        s2_first = Signal()
        m.d.sync += [s2_valid.eq(s1_valid), s2_group.eq(s1_group), s2_first.eq(s1_first)]
        low = self.stats_mode == "low"
        if low:
            # The windowed sums shift in the accumulate stage (by amounts the group's running
            # exponents set): stage 2 only delays the codes, products and exponents.
            s2_eg, s2_esum = Signal.like(s1_eg), Signal.like(s1_esum)
            s2_qg, s2_prod = Signal.like(s1_qg), Signal.like(s1_prod)
            m.d.sync += [s2_eg.eq(s1_eg), s2_esum.eq(s1_esum), s2_qg.eq(s1_qg), s2_prod.eq(s1_prod)]
        else:
            s2_dg = Signal(data.ArrayLayout(signed(self.sum_g_width), B))
            s2_dgx = Signal(data.ArrayLayout(signed(self.sum_gx_width), B))
            for lane in range(B):
                m.d.sync += [
                    s2_dg[lane].eq(shift_left_to(m, s1_qg[lane], s1_eg, self.sum_g_width, f"dg{lane}")),
                    s2_dgx[lane].eq(shift_left_to(m, s1_prod[lane], s1_esum, self.sum_gx_width, f"dgx{lane}")),
                ]
        m.d.comb += [
            acc.rd_en.eq(self.rd_en | s1_valid),
            acc.rd_addr.eq(Mux(self.rd_en, self.rd_addr, s1_group)),
            self.rd_data.eq(acc.rd_data),
        ]

        if low:
            m.d.comb += [
                self.rd_lsb_g.eq(window_lsb(m, acc.rd_data.f_g, self.stats_guard, "rd_lsb_g_c")),
                self.rd_lsb_gx.eq(window_lsb(m, acc.rd_data.f_gx, self.stats_guard, "rd_lsb_gx_c")),
            ]

        # Accumulate and write back.
        m.d.comb += [acc.wr_en.eq(s2_valid), acc.wr_addr.eq(s2_group)]
        # The sums are one bit wider than the accumulators; the two top bits differ only on an
        # overflow, which the sizing rules out. They are compared anyway (``overflow``).
        # During the first position the addend replaces the old row: the selection follows the
        # adder (``s2_first`` fans out to every bit; before the adder its routing would lengthen
        # the carry-chain path). With one group the row is a register that ``clear`` zeroes
        # instead (a synchronous reset: no multiplexer at all).
        if groups == 1:
            m.d.comb += acc.clear.eq(self.clear)
        wraps = []
        def old_row(value, shape, name):
            """The row's value, 0 during the first position (a register with one group: cleared)."""
            if groups == 1:
                return value
            sig = Signal(shape, name=name)
            m.d.comb += sig.eq(Mux(s2_first, 0, value))
            return sig

        if low:
            # The group's running exponents (in the row, like the sums) and the shifts they set.
            row = acc.rd_data
            f_g_new, _, up_g, d_g = window_control(m, old_row(row.f_g, unsigned(self.lsb_g_width), "f_g_old"),
                                                   s2_eg, self.stats_guard, self.sum_g_width, "wg")
            f_gx_new, _, up_gx, d_gx = window_control(m, old_row(row.f_gx, unsigned(self.lsb_gx_width), "f_gx_old"),
                                                      s2_esum, self.stats_guard, self.sum_gx_width, "wgx")
            m.d.comb += [acc.wr_data.f_g.eq(f_g_new), acc.wr_data.f_gx.eq(f_gx_new)]
        for lane in range(B):
            new_g = Signal(signed(self.sum_g_width + 1), name=f"new_g{lane}")
            new_gx = Signal(signed(self.sum_gx_width + 1), name=f"new_gx{lane}")
            if low:
                g_old = old_row(acc.rd_data.sum_g[lane], signed(self.sum_g_width), f"g_old{lane}")
                gx_old = old_row(acc.rd_data.sum_gx[lane], signed(self.sum_gx_width), f"gx_old{lane}")
                m.d.comb += [
                    new_g.eq(window_accumulate(m, g_old, s2_qg[lane], up_g, d_g, self.stats_guard, f"wsg{lane}")),
                    new_gx.eq(window_accumulate(m, gx_old, s2_prod[lane], up_gx, d_gx, self.stats_guard,
                                                f"wsgx{lane}")),
                ]
            else:
                sum_g = Signal(signed(self.sum_g_width + 1), name=f"sum_g{lane}")
                sum_gx = Signal(signed(self.sum_gx_width + 1), name=f"sum_gx{lane}")
                m.d.comb += [
                    sum_g.eq(acc.rd_data.sum_g[lane] + s2_dg[lane]),
                    sum_gx.eq(acc.rd_data.sum_gx[lane] + s2_dgx[lane]),
                    new_g.eq(sum_g if groups == 1 else Mux(s2_first, s2_dg[lane], sum_g)),
                    new_gx.eq(sum_gx if groups == 1 else Mux(s2_first, s2_dgx[lane], sum_gx)),
                ]
            m.d.comb += [
                acc.wr_data.sum_g[lane].eq(new_g[:self.sum_g_width]),
                acc.wr_data.sum_gx[lane].eq(new_gx[:self.sum_gx_width]),
            ]
            wraps += [new_g[-1] ^ new_g[-2], new_gx[-1] ^ new_gx[-2]]
        # Overflow detection in two steps, so that no path runs from the adders through an OR of
        # all 2 B wrap bits: the wrap bits of the block written this cycle are registered
        # (``wrapped``, all zero when no block was written), and ``overflow`` is the sticky OR
        # of the earlier ones (``overflow_seen``) with them. It is the same function of time as
        # a sticky register set from the unregistered wrap bits.
        wrapped = Signal(2 * B)
        overflow_seen = Signal()
        with m.If(self.clear):
            m.d.sync += [wrapped.eq(0), overflow_seen.eq(0)]
        with m.Else():
            m.d.sync += wrapped.eq(Mux(s2_valid, Cat(*wraps), 0))
            with m.If(wrapped.any()):
                m.d.sync += overflow_seen.eq(1)
        m.d.comb += self.overflow.eq(overflow_seen | wrapped.any())

        m.d.comb += self.busy.eq(s1_valid | s2_valid)
        return m
