"""The statistics unit of the Range-BN forward core (``sim.model.golden_bn.forward_stats`` bit for bit).

It consumes the BFP blocks of one statistics pass (LightNorm grouping: a block is ``B`` channels at
one position, ``groups = ceil(channels / B)`` blocks per position, group fastest) and keeps, per
channel:

* ``sum``: the exact sum ``S = sum q * 2**E`` as an integer in units ``u`` (the code LSB at shared
  exponent 0). The accumulator has ``sum_width`` bits, enough for
  ``max_count * (2**(W-1) - 1) * 2**exp_max`` plus sign, so it can never overflow for
  ``n <= max_count`` (no saturation logic is needed, none is present).
* for each of the ``K = 2**chunks_log2`` chunks (positions ``[k m, (k+1) m)``, ``m = n / K``; the
  chunk boundaries are tracked with a position-in-chunk counter, no divider) the exact max and min
  of ``q * 2**E`` (compared as integers in units ``u``, so blocks with different exponents compare
  exactly) and the position of the first occurrence of each (strict compares: ties keep the
  lowest position).

Only ``sum_k max_k - sum_k min_k`` is needed by finalize, so the unit keeps the running max/min of
the current chunk and, when the next chunk begins, adds ``max - min`` into a ``range``
accumulator and files the chunk's argmax, argmin and ``max == min`` (``chunk_flat``) into per-chunk
registers. The last chunk is folded in by the read port (``range = acc + max - min``,
``argmax[K-1] = running argmax``), so nothing has to be flushed at the end of a pass.

Storage
-------
Per-channel state lives in registers arranged as a *rotating bank*: ``groups`` banks of ``lanes``
channels each (``lanes = B``, or ``channels`` when a single group exists, so a one-channel design
keeps one lane of state). The head bank is the group of the block being accumulated; every
accumulated block rotates the banks by one, so the head is always the right group and no group
read multiplexer or write decoder exists (each state bit has one 2:1 enable mux). Bits per channel:
``sum_width + 2*value_width + range_width + 2*pos_width + (K-1)*(2*pos_width + 1)`` (no
``range_width`` with ``K = 1``: there are no ended chunks to accumulate); see
``state_bits``. This is the dominant area of the forward core for large ``channels * K``; a
later optimisation is to move the per-chunk positions (and then the banks) into a single-port
memory, which the rotating organisation maps onto directly (one read and one write address per
cycle, both equal to the group counter).

Ports
-----
``start`` (in, pulse): begin a pass with ``count`` (n) and ``chunks_log2``, both sampled with
    ``start`` (they need not be held); clears every channel's ``sum`` and ``range`` on the next
    cycle, from a register (so the previous pass's results are gone: read them before). Only while no block is in the unit. The caller guarantees a good count
    (``golden_bn.check_count``); the forward core checks it.
``i`` (in stream of ``bfp.block_layout()``): ``n * groups`` blocks; ``i.ready`` is high while the
    pass is open (no back-pressure: one block per cycle sustained).
``done`` (out): the last block's update is committed; stays high until the next ``start``.
``rd_lane`` (in), ``rd`` (out, ``readout_layout``): registered read of channel
    ``head_group * B + rd_lane``, ``READ_LATENCY`` = 2 cycles after ``rd_lane`` and the banks
    are set (a lane-select stage, then the range sum): ``sum``, ``range`` (sum of chunk maxima minus sum of chunk minima,
    units u), ``argmax[Kmax]``, ``argmin[Kmax]``, ``chunk_flat[Kmax]`` (entries ``>= K`` read 0).
``rd_rotate`` (in): rotate the banks one group (the caller does this after reading every lane of
    the head group, ``groups`` times in all, so the banks are aligned for the next pass).

Timing: two register stages (input, aligned values) then the state update; ``done`` rises
3 cycles after the last block is accepted. Throughput: one block per cycle.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.arith import (stats_widths, window_accumulate, window_control, window_lsb, window_lsb_width,
                      windowed_width)
from hw.bn_layouts import chunks_log2_width, count_width, position_width
from hw.checks import check_instance, check_int
from hw.formats import STATS_GUARD_DEFAULT, BFPFormat, check_stats

__all__ = ["StatsUnit", "stats_widths"]


class StatsUnit(wiring.Component):
    """Per-channel exact sum and per-chunk max/min/argmax/argmin of a BFP block stream.

    See the module docstring for the arithmetic, storage and ports.
    """

    #: Cycles from accepting the last block to ``done``.
    LATENCY = 3
    #: Cycles from ``rd_lane`` (or a bank rotation) to ``rd``.
    READ_LATENCY = 2

    def __init__(self, bfp, channels, max_count, max_chunks, stats="exact", stats_guard=STATS_GUARD_DEFAULT):
        check_instance("bfp", bfp, BFPFormat)
        check_stats(stats, stats_guard)
        check_int("channels", channels, 1)
        check_int("max_chunks", max_chunks, 1, power_of_two=True)
        check_int("max_count", max_count, 2 * max_chunks, lo_text=f"2 * max_chunks = {2 * max_chunks}")
        self.bfp = bfp
        self.channels = channels
        self.max_count = max_count
        self.max_chunks = max_chunks
        B = bfp.block
        self.groups = -(-channels // B)
        self.lanes = B if self.groups > 1 else channels
        self.stats_mode, self.stats_guard = stats, stats_guard
        self.value_width, self.sum_width, self.range_width = stats_widths(bfp, max_count, max_chunks)
        # low: the sum is a windowed accumulator (hw.arith.window_accumulate) whose LSB exponent
        # ``sum_lsb`` the group's running exponent sets; 0 bits when exact.
        self.lsb_width = 0
        if stats == "low":
            self.sum_width = windowed_width(1 << (bfp.width - 1), stats_guard, max_count)
            self.lsb_width = window_lsb_width(bfp.exp_max)
        self.pos_width = position_width(max_count)
        K = max_chunks
        self.lane_layout = data.StructLayout({
            "sum": signed(self.sum_width),
            "cmax": signed(self.value_width),
            "cmin": signed(self.value_width),
            "amax": self.pos_width,
            "amin": self.pos_width,
            # the sum of the ended chunks' ranges (none with one chunk: no register)
            **({"rng": self.range_width} if K > 1 else {}),
            # chunks 0..K-2 once they have ended (the last chunk is read from cmax/cmin/amax/amin)
            "arr_amax": data.ArrayLayout(self.pos_width, max(K - 1, 1)),
            "arr_amin": data.ArrayLayout(self.pos_width, max(K - 1, 1)),
            "arr_flat": data.ArrayLayout(1, max(K - 1, 1)),
        })
        self.readout_layout = data.StructLayout({
            "sum": signed(self.sum_width),
            **({"sum_lsb": self.lsb_width} if self.lsb_width else {}),
            "range": self.range_width,
            "argmax": data.ArrayLayout(self.pos_width, K),
            "argmin": data.ArrayLayout(self.pos_width, K),
            "chunk_flat": data.ArrayLayout(1, K),
        })
        super().__init__({
            "start": In(1),
            "count": In(count_width(max_count)),
            "chunks_log2": In(chunks_log2_width(max_chunks)),
            "i": In(stream.Signature(bfp.block_layout())),
            "done": Out(1),
            "rd_lane": In(range(max(self.lanes, 2))),
            "rd_rotate": In(1),
            "rd": Out(self.readout_layout),
        })

    @property
    def state_bits(self):
        """Flip-flops of per-channel state (all banks)."""
        K = self.max_chunks
        per = (self.sum_width + 2 * self.value_width + (self.range_width if K > 1 else 0) + 2 * self.pos_width
               + (K - 1) * (2 * self.pos_width + 1))
        return per * self.groups * self.lanes + self.lsb_width * self.groups

    def elaborate(self, platform):
        m = Module()
        bfp, B, G, L, K = self.bfp, self.bfp.block, self.groups, self.lanes, self.max_chunks
        pw, vw = self.pos_width, self.value_width

        # --- input counters -------------------------------------------------------------------
        active = Signal()
        m_last = Signal(count_width(self.max_count))     # m - 1
        n_last = Signal(pw)                              # n - 1
        pos = Signal(pw)
        grp = Signal(range(max(G, 2)))
        in_chunk = Signal(count_width(self.max_count))   # position within the chunk
        chunk = Signal(range(max(K, 2)))
        used = Signal(K)                                 # chunk j < K
        last_oh = Signal(K)                              # chunk j == K - 1

        m.d.comb += self.i.ready.eq(active)
        with m.If(self.start):
            m.d.sync += [
                active.eq(1),
                self.done.eq(0),
                m_last.eq((self.count >> self.chunks_log2) - 1),
                n_last.eq(self.count - 1),
                pos.eq(0), grp.eq(0), in_chunk.eq(0), chunk.eq(0),
            ]
            for j in range(K):
                # K = 2**chunks_log2: chunk j is used iff bit_length(j) <= chunks_log2, and is the
                # last one iff j + 1 == K.
                if j == 0:
                    m.d.sync += used[j].eq(1)
                else:
                    m.d.sync += used[j].eq(self.chunks_log2 >= j.bit_length())
                if (j + 1) & j == 0:
                    m.d.sync += last_oh[j].eq(self.chunks_log2 == (j + 1).bit_length() - 1)
                else:
                    m.d.sync += last_oh[j].eq(0)

        # Stage 1: the accepted block and where it sits.
        s1_valid = Signal()
        s1_block = Signal(bfp.block_layout())
        s1_pos = Signal(pw)
        s1_first = Signal()          # position 0: start the sums
        s1_cfirst = Signal()         # first position of a chunk: restart max/min
        s1_commit = Signal(max(K - 1, 1))   # one-hot: file the previous chunk k-1 into slot k-1
        s1_last = Signal()

        accept = self.i.valid & self.i.ready
        last_group = grp == G - 1
        last_block = last_group & (pos == n_last)
        m.d.sync += s1_valid.eq(accept)
        with m.If(accept):
            m.d.sync += [
                s1_block.eq(self.i.payload),
                s1_pos.eq(pos),
                s1_first.eq(pos == 0),
                s1_cfirst.eq(in_chunk == 0),
                s1_last.eq(last_block),
            ]
            for j in range(K - 1):
                m.d.sync += s1_commit[j].eq((in_chunk == 0) & (chunk == j + 1))
            with m.If(last_group):
                m.d.sync += [grp.eq(0), pos.eq(pos + 1)]
                with m.If(in_chunk == m_last):
                    m.d.sync += [in_chunk.eq(0), chunk.eq(chunk + 1)]
                with m.Else():
                    m.d.sync += in_chunk.eq(in_chunk + 1)
            with m.Else():
                m.d.sync += grp.eq(grp + 1)
            with m.If(last_block):
                m.d.sync += active.eq(0)

        # Stage 2: every lane's value q * 2**E in units u (a left shift by the shared exponent).
        s2_valid = Signal()
        s2_vals = Signal(data.ArrayLayout(signed(vw), L))
        s2_pos = Signal(pw)
        s2_first = Signal()
        s2_cfirst = Signal()
        s2_commit = Signal.like(s1_commit)
        s2_last = Signal()
        m.d.sync += [
            s2_valid.eq(s1_valid),
            s2_pos.eq(s1_pos), s2_first.eq(s1_first), s2_cfirst.eq(s1_cfirst),
            s2_commit.eq(s1_commit), s2_last.eq(s1_last & s1_valid),
        ]
        for l in range(L):
            code = s1_block.codes[l].as_signed()
            m.d.sync += s2_vals[l].eq(code << s1_block.exponent)
        low = self.stats_mode == "low"
        if low:
            # The windowed sum takes the code and the exponent itself (one right shifter per lane,
            # its amount shared by the group: hw.arith.window_control).
            s2_codes = Signal(data.ArrayLayout(signed(bfp.width), L))
            s2_exp = Signal(bfp.exp_bits)
            m.d.sync += s2_exp.eq(s1_block.exponent)
            m.d.sync += [s2_codes[l].eq(s1_block.codes[l].as_signed()) for l in range(L)]

        # --- rotating banks of per-channel state ----------------------------------------------
        # One signal per channel slot (not one per bank): keeps every net of the emitted Verilog
        # narrow (a flattened multi-thousand-bit bank makes single Verilog lines too long for
        # Verilator's preprocessor).
        banks = [[Signal(self.lane_layout, name=f"bank{g}_lane{l}") for l in range(L)] for g in range(G)]
        head = banks[0]
        new_head = [Signal(self.lane_layout, name=f"new_lane{l}") for l in range(L)]
        if low:
            # One running exponent per group, rotating with its bank.
            bank_f = [Signal(self.lsb_width, name=f"bank{g}_f") for g in range(G)]
            f_new, _, w_up, w_d = window_control(m, bank_f[0], s2_exp, self.stats_guard, self.sum_width, "win")
        for l in range(L):
            s, v, n = head[l], s2_vals[l], new_head[l]
            m.d.comb += n.eq(s)
            gt = Signal(name=f"gt{l}")
            lt = Signal(name=f"lt{l}")
            m.d.comb += [gt.eq(v > s.cmax), lt.eq(v < s.cmin)]
            # ``sum`` and ``rng`` are cleared by ``start`` (below), so position 0 needs no
            # multiplexer in front of the registers: the sum always adds, the range skips the
            # chunk end of position 0 (whose max/min are stale).
            if low:
                m.d.comb += n.sum.eq(window_accumulate(m, s.sum, s2_codes[l], w_up, w_d, self.stats_guard,
                                                       f"wsum{l}")[:self.sum_width])
            else:
                m.d.comb += n.sum.eq(s.sum + v)
            if K > 1:
                with m.If(s2_cfirst & ~s2_first):
                    m.d.comb += n.rng.eq(s.rng + (s.cmax - s.cmin).as_unsigned())
            with m.If(s2_cfirst | gt):
                m.d.comb += [n.cmax.eq(v), n.amax.eq(s2_pos)]
            with m.If(s2_cfirst | lt):
                m.d.comb += [n.cmin.eq(v), n.amin.eq(s2_pos)]
            for j in range(K - 1):
                with m.If(s2_commit[j]):
                    m.d.comb += [
                        n.arr_amax[j].eq(s.amax),
                        n.arr_amin[j].eq(s.amin),
                        n.arr_flat[j].eq(s.cmax == s.cmin),
                    ]

        with m.If(s2_valid):
            m.d.sync += [banks[g][l].eq(banks[g + 1][l]) for g in range(G - 1) for l in range(L)]
            m.d.sync += [banks[G - 1][l].eq(new_head[l]) for l in range(L)]
            if low:
                m.d.sync += [bank_f[g].eq(bank_f[g + 1]) for g in range(G - 1)]
                m.d.sync += bank_f[G - 1].eq(f_new)
        with m.Elif(self.rd_rotate):
            m.d.sync += [banks[g][l].eq(banks[(g + 1) % G][l]) for g in range(G) for l in range(L)]
            if low:
                m.d.sync += [bank_f[g].eq(bank_f[(g + 1) % G]) for g in range(G)]
        # The sums are cleared the cycle after ``start``, from a register: ``start`` comes from the
        # caller's command handshake, and the clear resets every sum bit of every bank (a net of
        # ``sum_width * channels`` loads). The first block of the pass reaches the banks two
        # cycles after it is accepted, so it never meets the clear.
        clear = Signal()
        m.d.sync += clear.eq(self.start)
        with m.If(clear):      # after the bank updates: takes priority (no block reaches the banks then)
            m.d.sync += [banks[g][l].sum.eq(0) for g in range(G) for l in range(L)]
            if K > 1:
                m.d.sync += [banks[g][l].rng.eq(0) for g in range(G) for l in range(L)]
            if low:
                m.d.sync += [bank_f[g].eq(0) for g in range(G)]
        with m.If(s2_last):
            m.d.sync += self.done.eq(1)

        # --- read port: two register stages (the lane select, then the range sum) ----------------
        lanes = Array(head[l] for l in range(L))
        s = Signal(self.lane_layout, name="rd_sel")
        m.d.sync += s.eq(lanes[self.rd_lane] if L > 1 else head[0])
        m.d.sync += [
            self.rd.sum.eq(s.sum),
            self.rd.range.eq(s.rng + (s.cmax - s.cmin).as_unsigned() if K > 1 else (s.cmax - s.cmin).as_unsigned()),
        ]
        if low:
            f_sel = Signal(self.lsb_width, name="rd_f")
            m.d.sync += f_sel.eq(bank_f[0])
            m.d.sync += self.rd.sum_lsb.eq(window_lsb(m, f_sel, self.stats_guard, "rd_lsb"))
        for j in range(K):
            if j < K - 1:
                arr_amax, arr_amin, arr_flat = s.arr_amax[j], s.arr_amin[j], s.arr_flat[j]
            else:
                arr_amax, arr_amin, arr_flat = 0, 0, 0
            with m.If(last_oh[j]):
                m.d.sync += [
                    self.rd.argmax[j].eq(s.amax),
                    self.rd.argmin[j].eq(s.amin),
                    self.rd.chunk_flat[j].eq(s.cmax == s.cmin),
                ]
            with m.Elif(used[j]):
                m.d.sync += [
                    self.rd.argmax[j].eq(arr_amax),
                    self.rd.argmin[j].eq(arr_amin),
                    self.rd.chunk_flat[j].eq(arr_flat),
                ]
            with m.Else():
                m.d.sync += [self.rd.argmax[j].eq(0), self.rd.argmin[j].eq(0), self.rd.chunk_flat[j].eq(0)]
        return m
