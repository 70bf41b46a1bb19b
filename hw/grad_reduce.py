"""Gradient reductions of the Range-BN backward core (``sim.golden_bn.backward_stats`` bit for bit).

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
= 1 -- see each other's sums) and writes the new row. During the first position of a pass the old
row is replaced by zero, so no clearing pass is needed.

Ports
-----
``clear`` (in, pulse): start a pass: group counter to 0, next ``groups`` blocks are position 0.
    Only while no block is transferred.
``i`` (in stream of ``hw.bn_layouts.pair_layout(bfp)``): ``i.ready`` is always 1.
``busy`` (out): a block is in the pipeline (its sums are not yet written).
``rd_en``, ``rd_addr`` (in), ``rd_data`` (out, ``row_layout``): synchronous read of one group's
    row; ``rd_data`` is valid the cycle after ``rd_en`` and holds while ``rd_en`` is low. Only
    while ``busy`` is low and no block is accepted (the read port is shared with the accumulator).

Latency: ``LATENCY`` = 3 cycles from accepting a block to its sums being readable (``busy`` low).
"""

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.bn_layouts import pair_layout
from hw.formats import BFPFormat

__all__ = ["GradReduce", "grad_widths"]


def grad_widths(bfp, max_count):
    """``(sum_g_width, sum_gx_width)``: signed widths of the exact per-channel sums that cannot
    overflow for ``n <= max_count``."""
    c, e = bfp.code_max, bfp.exp_max
    return ((max_count * c << e).bit_length() + 1,
            (max_count * c * c << (2 * e)).bit_length() + 1)


class GradReduce(wiring.Component):
    """Exact per-channel ``sum g`` and ``sum g x`` over a stream of x / g block pairs.

    Parameters: ``bfp`` (format of x and g), ``channels``, ``max_count`` (largest n).
    See the module docstring for ports, sizing and timing.
    """

    LATENCY = 3

    def __init__(self, bfp, channels, max_count):
        if not isinstance(bfp, BFPFormat):
            raise ValueError(f"bfp must be a hw.formats.BFPFormat, not {bfp!r}")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive integer, not {channels!r}")
        if isinstance(max_count, bool) or not isinstance(max_count, int) or max_count < 1:
            raise ValueError(f"max_count must be a positive integer, not {max_count!r}")
        self.bfp = bfp
        self.channels = channels
        self.max_count = max_count
        self.groups = -(-channels // bfp.block)
        self.latency = self.LATENCY
        self.sum_g_width, self.sum_gx_width = grad_widths(bfp, max_count)
        self.row_layout = data.StructLayout({
            "sum_g": data.ArrayLayout(signed(self.sum_g_width), bfp.block),
            "sum_gx": data.ArrayLayout(signed(self.sum_gx_width), bfp.block),
        })
        super().__init__({
            "clear": In(1),
            "i": In(stream.Signature(pair_layout(bfp))),
            "busy": Out(1),
            "rd_en": In(1),
            "rd_addr": In(range(self.groups)),
            "rd_data": Out(self.row_layout),
        })

    def elaborate(self, platform):
        m = Module()
        bfp, B, W = self.bfp, self.bfp.block, self.bfp.width
        groups = self.groups
        esum_width = bfp.exp_bits + 1

        m.submodules.acc = acc = memory.Memory(shape=self.row_layout, depth=groups, init=[])
        wr = acc.write_port()
        rd = acc.read_port(transparent_for=(wr,))

        # Input side: group counter and "position 0" flag.
        group = Signal(range(groups))
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

        # Stage 1: products and exponent sums.
        s1_valid = Signal()
        s1_group = Signal(range(groups))
        s1_first = Signal()
        s1_eg = Signal(bfp.exp_bits)
        s1_esum = Signal(esum_width)
        s1_qg = Signal(data.ArrayLayout(signed(W), B))
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
        s2_group = Signal(range(groups))
        s2_first = Signal()
        s2_dg = Signal(data.ArrayLayout(signed(self.sum_g_width), B))
        s2_dgx = Signal(data.ArrayLayout(signed(self.sum_gx_width), B))
        m.d.sync += [s2_valid.eq(s1_valid), s2_group.eq(s1_group), s2_first.eq(s1_first)]
        for lane in range(B):
            m.d.sync += [
                s2_dg[lane].eq(s1_qg[lane] << s1_eg),
                s2_dgx[lane].eq(s1_prod[lane] << s1_esum),
            ]
        m.d.comb += [
            rd.en.eq(self.rd_en | s1_valid),
            rd.addr.eq(Mux(self.rd_en, self.rd_addr, s1_group)),
            self.rd_data.eq(rd.data),
        ]

        # Accumulate and write back.
        m.d.comb += [wr.en.eq(s2_valid), wr.addr.eq(s2_group)]
        for lane in range(B):
            old_g = Mux(s2_first, 0, rd.data.sum_g[lane])
            old_gx = Mux(s2_first, 0, rd.data.sum_gx[lane])
            m.d.comb += [
                wr.data.sum_g[lane].eq(old_g + s2_dg[lane]),
                wr.data.sum_gx[lane].eq(old_gx + s2_dgx[lane]),
            ]

        m.d.comb += self.busy.eq(s1_valid | s2_valid)
        return m
