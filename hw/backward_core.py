"""The Range-BN backward core: gradient reductions, per-channel finalize, dx pass.

Implements ``sim.model.golden_bn.backward`` (with ``check_count``) bit for bit, including the exact
Range-BN gradient's argmax/argmin correction. Stream records are those of ``hw.bn_layouts``.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.bn_layouts import (backward_cmd_layout, chunks_log2_width, count_width, grads_layout,
                           pair_layout, position_width, backward_saved_layout)
from hw.formats import STATS_GUARD_DEFAULT, check_bn_args, check_stats
from hw.grad_reduce import GradReduce, RowStore

__all__ = ["BackwardCore", "unit"]


class _Port:
    """``addr`` / ``en`` / ``data`` of one ``RowStore`` port, named like a memory port."""

    def __init__(self, addr, en, data):
        self.addr, self.en, self.data = addr, en, data


def unit(p):
    """The core for generator parameters ``p`` (``gen.units.Params``): ``max_chunks = p.chunks``."""
    return BackwardCore(p.bfp, p.internal, p.channels, p.max_count, p.chunks, stats=p.stats,
                        stats_guard=p.stats_guard)


class BackwardCore(wiring.Component):
    """Range-BN backward core (LightNorm): exact ``sum g`` / ``sum g x``, per-channel finalize,
    ``dx = a g + b_sel`` with the argmax/argmin correction.

    Parameters
    ----------
    bfp : BFPFormat
        Format of ``x``, ``g`` and ``dx`` (``B = bfp.block`` channels per block).
    internal : FloatFormat
        The per-channel internal float (``hw.formats.internal_format``).
    channels : int
        Channels held on chip; ``groups = ceil(channels / B)`` blocks per position (group fastest;
        lanes past the last channel are padding: ignored on input, 0 on output).
    max_count : int
        Largest n (positions per channel); sizes counters, positions and the exact accumulators.
    max_chunks : int
        Largest K (a power of two); the run-time K is ``2**cmd.chunks_log2``.

    Ports
    -----
    ``cmd`` (in stream, ``backward_cmd_layout``): ``count`` n, ``chunks_log2``, ``c_scale`` (C, as
        in the forward command), ``params_only``. Accepted only while idle. A command with
        ``n % K != 0``, ``n / K < 2``, ``n > max_count`` or ``K > max_chunks`` is consumed and
        dropped and raises ``count_error`` (``golden_bn.check_count``); a good one clears it.
    ``xg`` (in stream, ``pair_layout``): the reduction pass, ``n * groups`` pairs of the x block and
        the g block of the same position and group (block ``p * groups + g``).
    ``stats`` (in stream, ``backward_saved_layout``): the low bits of the forward core's record of
        every channel (the prefix ``mu``, ``inv``, ``a``, ``argmax[k]``, ``argmin[k]``,
        ``chunk_flat[k]``; ``k < K`` are used), channel 0 first, consumed during finalize.
    ``grads`` (out stream, ``grads_layout``): ``dgamma``, ``dbeta``, ``overflow`` (a backward
        internal-float result saturated) per channel, channel 0 first, emitted during finalize.
    ``g`` (in stream, ``bfp.block_layout()``): the dx pass, the ``n * groups`` g blocks again (not
        taken in parameters-only mode).
    ``dx`` (out stream, ``bfp.flagged_block_layout()``): one block per ``g`` block of the dx pass;
        flags: ``sat`` from the rounding, ``special`` = ``flush`` = 0.
    ``busy`` (out): a command is in progress (from its acceptance until its last ``dx`` block,
        or in parameters-only mode its last ``grads`` record, has left).
    ``count_error`` (out): sticky; set by a dropped command, cleared by the next good one.

    dx
    --
    ``dx = a g + b_sel`` per element through ``BFPAffine`` (exact product and sum, one rounding
    into the output block): ``b_sel = b_max`` at the position equal to the element's chunk's saved
    argmax, ``b_min`` at its argmin, ``b_mid`` elsewhere and everywhere in a chunk with
    ``chunk_flat = 1``. The chunk is tracked with a position-in-chunk counter (``m = n >> log2 K``);
    each lane compares the running position with the two saved positions of its channel. The
    chunk entries are read one block ahead (the row of the block after the one taken, on every
    take), so the compares run on the offered block and only the ``b`` select is left for the
    next stage.

    Storage: ``GradReduce``'s accumulator memory (``groups`` rows); per channel ``a`` (``groups``
    rows of ``B`` lanes), ``b_mid``/``b_max``/``b_min`` (the same) and, per channel and chunk,
    argmax, argmin and chunk_flat (``groups * max_chunks`` rows of ``B`` lanes). All are
    ``amaranth.lib.memory`` memories (a register when there is a single row) with one
    synchronous read port and lane-enabled writes.

    Timing
    ------
    * Reduction pass: ``xg.ready`` is high throughout; one pair per cycle sustained. Finalize
      starts ``GradReduce.LATENCY + 1`` = 4 cycles after the last pair is accepted.
    * Finalize: the channel's ``stats`` record is held for ``K`` cycles while its ``K`` chunk
      entries are written (one cycle in parameters-only mode, which writes none), and is offered
      to ``BackwardFinalize`` on the last of them. The engine has no record register: it reads
      the held record while it computes and takes it with the result, so the next channel's
      chunk entries are written from then on, and with ``stats`` valid and ``grads`` ready a
      channel costs ``finalize initiation interval + max(0, K - 2)`` cycles
      (``finalize_cycles_per_channel(K)``). ``hw.finalize.BackwardFinalize`` is a sequential
      engine: ``finalize_latency`` (156 + 7 M; 240 for M = 12) cycles per channel and an
      initiation interval two more than that (``TURNAROUND``), so at K <= 2 finalize takes
      ``channels * (latency + 2)`` cycles; the last ``grads`` record is offered from the edge of
      the last ``stats`` transfer, and the dx pass opens the cycle after it is taken.
    * dx pass: one block per cycle sustained; ``latency`` = ``2 + BFPAffine latency`` cycles from
      a ``g`` block's acceptance to its ``dx`` block (one stage reads the ``a`` / ``b``
      memories and registers the position compares, made on the chunk entries read one block
      ahead; one selects ``b``). The two stages here advance when the affine's ``i.ready`` (a
      register: its credit for the output queue, ``BFPAffine.QUEUE_DEPTH`` blocks) is high or
      the second stage is empty, and ``g.ready`` is that: a function of two registers. So
      while ``dx`` stalls ``g`` is still taken until the queue's credit runs out and the two
      stages are full, and a core whose affine is shared (``hw.bn_core``) fills them and
      offers its first block while the other core owns the affine.
    * Parameters-only mode saves the whole dx pass: ``n * groups`` cycles of ``g`` input plus the
      pipeline drain (``latency`` and a few hand-over cycles; ``sim/verify/measure_backward.py`` measures
      it), and the second read of g. It writes no chunk entries, which would also save
      ``K - initiation interval`` cycles per channel if K exceeded the finalize engine's
      initiation interval (it never does with ``hw.finalize``: 157 + 7 M cycles).
      ``busy`` falls the cycle after the last ``grads`` record leaves.

    ``finalize``, ``affine``: an outside finalize engine / ``BFPAffine`` to drive instead of
    building one (as ``ForwardCore``'s: a ``hw.stream_share.StreamShare`` client port,
    ``hw.bn_core``).
    """

    def __init__(self, bfp, internal, channels, max_count, max_chunks, stats="exact",
                 stats_guard=STATS_GUARD_DEFAULT, finalize=None, affine=None):
        check_bn_args(bfp, internal, channels, max_count, max_chunks)     # the generator's limits
        check_stats(stats, stats_guard)
        self.stats_mode, self.stats_guard = stats, stats_guard
        self.bfp = bfp
        self.internal = internal
        self.channels = channels
        self.max_count = max_count
        self.max_chunks = max_chunks
        self.groups = -(-channels // bfp.block)

        self._reduce = GradReduce(bfp, channels, max_count, stats, stats_guard)
        self._owns_finalize = finalize is None
        self._finalize = self._make_finalize() if finalize is None else finalize
        self._owns_affine = affine is None
        self._affine = self._make_affine() if affine is None else affine
        self.finalize_latency = getattr(self._finalize, "latency", None)
        self.latency = 2 + self._affine.latency

        super().__init__({
            "cmd": In(stream.Signature(backward_cmd_layout(max_count, max_chunks))),
            "stats": In(stream.Signature(backward_saved_layout(internal, max_count, max_chunks))),
            "xg": In(stream.Signature(pair_layout(bfp))),
            "grads": Out(stream.Signature(grads_layout(internal))),
            "g": In(stream.Signature(bfp.block_layout())),
            "dx": Out(stream.Signature(bfp.flagged_block_layout())),
            "busy": Out(1),
            "count_error": Out(1),
        })

    # The two arithmetic units come from hw.finalize / hw.bfp_affine.
    def _make_finalize(self):
        from hw.finalize import BackwardFinalize
        return BackwardFinalize(self.bfp, self.internal, self.max_count, self.max_chunks,
                                stats=self.stats_mode, stats_guard=self.stats_guard)

    def _make_affine(self):
        from hw.bfp_affine import BFPAffine
        return BFPAffine(self.bfp, self.internal)

    @property
    def finalize_interval(self):
        """Cycles between two inputs ``BackwardFinalize`` can take (its initiation interval)."""
        fin = self._finalize
        for name in ("cycles_per_channel", "initiation_interval"):
            if getattr(fin, name, None) is not None:
                return getattr(fin, name)
        return 1

    def finalize_cycles_per_channel(self, chunks, params_only=False):
        """Cycles per channel of finalize with ``stats`` valid and ``grads`` ready, for run-time
        K = ``chunks``: the record is held ``K`` cycles for its chunk entries (1 in
        parameters-only mode), then offered to the finalize engine, which reads it until its
        result is ready and takes it with the result; the next record's entries are written from
        then on, so ``K - TURNAROUND`` of them are not hidden by the engine's turnaround."""
        from hw.finalize import BackwardFinalize
        k = 1 if params_only else chunks
        return self.finalize_interval + max(0, k - BackwardFinalize.TURNAROUND)

    @property
    def sum_widths(self):
        """Signed widths of the exact ``sum g`` (units u) and ``sum g x`` (units u**2)."""
        return self._reduce.sum_g_width, self._reduce.sum_gx_width

    def manifest_info(self):
        B = self.bfp.block
        f = self.internal
        return {
            "parameters": {
                "channels": self.channels, "groups": self.groups, "block": B,
                "max_count": self.max_count, "max_chunks": self.max_chunks,
                "stats": self.stats_mode, "stats_guard": self.stats_guard,
                "sum_g_width": self._reduce.sum_g_width,
                "sum_gx_width": self._reduce.sum_gx_width,
                "position_width": position_width(self.max_count),
            },
            "formats": {
                "x": {"bfp_width": self.bfp.width, "exp_bits": self.bfp.exp_bits, "block": B},
                "g": {"bfp_width": self.bfp.width, "exp_bits": self.bfp.exp_bits, "block": B},
                "dx": {"bfp_width": self.bfp.width, "exp_bits": self.bfp.exp_bits, "block": B,
                       "flags": "sat, special (0), flush (0)"},
                "internal_float": {"name": f.name, "exp_bits": f.exp_bits, "frac_bits": f.frac_bits},
            },
            "timing": {
                "dx_latency": self.latency,
                "reduce_to_finalize_cycles": GradReduce.LATENCY + 1,
                "finalize_latency": self.finalize_latency,
                "finalize_cycles_per_channel": self.finalize_cycles_per_channel(self.max_chunks),
                "finalize_cycles_per_channel_params_only": self.finalize_cycles_per_channel(
                    self.max_chunks, params_only=True),
                "throughput": "one block (pair) per cycle in the reduction and dx passes",
                "params_only_saves": "the dx pass: n * groups cycles of g input plus the pipeline "
                                     "drain (see docs/backward.md for measured cycles)",
            },
            "port_roles": {
                "cmd__payload": "stream cmd: count n, chunks_log2, c_scale, params_only "
                                "(hw.bn_layouts.backward_cmd_layout)",
                "cmd__valid": "stream cmd: valid", "cmd__ready": "stream cmd: ready (high when idle)",
                "stats__payload": "stream stats: low bits of the per-channel record saved by the "
                                  "forward core (hw.bn_layouts.backward_saved_layout)",
                "stats__valid": "stream stats: valid", "stats__ready": "stream stats: ready",
                "xg__payload": "stream xg: x and g BFP blocks of one position and group "
                               "(hw.bn_layouts.pair_layout), reduction pass",
                "xg__valid": "stream xg: valid", "xg__ready": "stream xg: ready",
                "grads__payload": "stream grads: per-channel dgamma, dbeta, overflow "
                                  "(hw.bn_layouts.grads_layout)",
                "grads__valid": "stream grads: valid", "grads__ready": "stream grads: ready",
                "g__payload": "stream g: BFP block of the output gradient, dx pass",
                "g__valid": "stream g: valid", "g__ready": "stream g: ready",
                "dx__payload": "stream dx: flagged BFP block of the input gradient",
                "dx__valid": "stream dx: valid", "dx__ready": "stream dx: ready",
                "busy": "status: a command is in progress",
                "count_error": "status: sticky, last command dropped for a bad count (cleared by a good one)",
            },
        }

    def elaborate(self, platform):
        m = Module()
        bfp, B, G, C = self.bfp, self.bfp.block, self.groups, self.channels
        Kmax, f = self.max_chunks, self.internal
        pw = position_width(self.max_count)
        log2_kmax = Kmax.bit_length() - 1
        m.submodules.reduce = red = self._reduce
        fin = self._finalize
        if self._owns_finalize:
            m.submodules.finalize = fin
        aff = self._affine
        if self._owns_affine:
            m.submodules.affine = aff

        # --- command --------------------------------------------------------------------------
        cmd = self.cmd.payload
        n = Signal(count_width(self.max_count))
        cl2 = Signal(chunks_log2_width(Kmax))
        c_scale = Signal.like(cmd.c_scale)
        params_only = Signal()
        n_last = Signal(pw)
        m_last = Signal(pw)             # positions per chunk - 1
        k_last = Signal(range(max(Kmax, 2)))    # K - 1

        low_mask = Signal(len(cmd.count))      # K - 1
        cl2_max = (1 << len(cmd.chunks_log2)) - 1
        for i in range(min(len(cmd.count), cl2_max)):     # (higher bits: never set)
            m.d.comb += low_mask[i].eq(cmd.chunks_log2 > i)
        k_ok = (cmd.chunks_log2 <= log2_kmax) if log2_kmax < cl2_max else Const(1)
        n_ok = (cmd.count <= self.max_count) if self.max_count < (1 << len(cmd.count)) - 1 else Const(1)
        cmd_ok = Signal()
        m.d.comb += cmd_ok.eq(k_ok & n_ok
                              & ((cmd.count & low_mask) == 0)
                              & ((cmd.count >> (cmd.chunks_log2 + 1)) != 0))

        # --- storage for the dx pass ------------------------------------------------------------
        b_layout = data.StructLayout({"b_mid": f.width, "b_max": f.width, "b_min": f.width})
        c_layout = data.StructLayout({"argmax": pw, "argmin": pw, "flat": 1})
        amem = RowStore("amem", data.ArrayLayout(f.width, B), G, lanes=True)
        bmem = RowStore("bmem", data.ArrayLayout(b_layout, B), G, lanes=True)
        cmem = RowStore("cmem", data.ArrayLayout(c_layout, B), G * Kmax, lanes=True)
        for store in (amem, bmem, cmem):
            store.elaborate(m)
        a_wr, b_wr, c_wr = (_Port(st.wr_addr, st.wr_en, st.wr_data) for st in (amem, bmem, cmem))
        a_rd, b_rd, c_rd = (_Port(st.rd_addr, st.rd_en, st.rd_data) for st in (amem, bmem, cmem))

        # The channel's ``a`` is written into ``amem`` the cycle after its record is taken, from
        # registers: the handshake (``fsm_state``, ``kk_last``, ``fin.i.ready``) drove the enables
        # of every ``amem`` bit and limited the core's clock. ``amem`` is read in the dx pass only.
        a_pend = Signal(f.width)
        a_pend_addr = Signal.like(a_wr.addr)
        a_pend_en = Signal(B)
        m.d.sync += a_pend_en.eq(0)
        m.d.comb += [a_wr.addr.eq(a_pend_addr), a_wr.en.eq(a_pend_en)]
        m.d.comb += [a_wr.data[lane].eq(a_pend) for lane in range(B)]

        def cmem_addr(grp, k):
            return Cat(k[:log2_kmax], grp) if log2_kmax else grp

        # --- finalize counters ------------------------------------------------------------------
        # Input side (stats record -> chunk entries -> BackwardFinalize).
        in_lane = Signal(range(max(B, 2)))
        in_grp = Signal(range(max(G, 2)))
        in_chan = Signal(range(C + 1))
        kk = Signal(range(max(Kmax, 2)))
        # ``in_chan != C`` and ``kk == k_last``, registered: they gate ``stats.ready`` and
        # ``fin.i.valid``, whose loads lie far apart (a compare of ``in_chan`` on that path
        # limited the core's clock).
        in_open = Signal()
        kk_last = Signal()
        # Output side (BackwardFinalize -> grads, b memory).
        out_lane = Signal(range(max(B, 2)))
        out_grp = Signal(range(max(G, 2)))
        out_chan = Signal(range(C + 1))

        # --- dx counters ------------------------------------------------------------------------
        # d_pos / d_grp: position and group of the g block taken next. n_grp / n_k /
        # n_in_chunk: group, chunk and position-in-chunk of the block after it (the chunk-entry
        # memory is read one block ahead, see the dx pass below).
        d_pos = Signal(pw)
        d_grp = Signal(range(max(G, 2)))
        n_grp = Signal(range(max(G, 2)))
        n_k = Signal(range(max(Kmax, 2)))
        n_in_chunk = Signal(pw)
        d_done = Signal()               # every g block taken
        o_pos = Signal(pw)
        o_grp = Signal(range(max(G, 2)))
        # Reduction counters.
        r_pos = Signal(pw)
        r_grp = Signal(range(max(G, 2)))

        red_rd_en = Signal()
        red_rd_addr = Signal(range(max(G, 2)))
        m.d.comb += [
            red.rd_en.eq(red_rd_en),
            red.rd_addr.eq(red_rd_addr),
            red.i.payload.eq(self.xg.payload),
        ]

        # GradReduce's clear, a register: high from the entry into IDLE until a command is taken
        # (the reduction is idle then). Driven from the command handshake it was the core's
        # limiting path: ``cmd.valid`` -> ``cmd_ok`` -> the synchronous reset of every
        # accumulator bit (with one group the accumulator row is a register).
        red_clear = Signal(init=1)
        m.d.comb += red.clear.eq(red_clear)

        in_fx = Signal()
        take = Signal()
        d1_ready = Signal()

        st = self.stats.payload
        fi = fin.i.payload
        fo = fin.o.payload

        with m.FSM(name="fsm") as fsm:
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    with m.If(cmd_ok):
                        m.d.sync += [
                            red_clear.eq(0),
                            self.count_error.eq(0),
                            n.eq(cmd.count), cl2.eq(cmd.chunks_log2), c_scale.eq(cmd.c_scale),
                            params_only.eq(cmd.params_only),
                            n_last.eq(cmd.count - 1),
                            m_last.eq((cmd.count >> cmd.chunks_log2) - 1),
                            k_last.eq(low_mask),
                            r_pos.eq(0), r_grp.eq(0),
                        ]
                        m.next = "REDUCE"
                    with m.Else():
                        m.d.sync += self.count_error.eq(1)

            with m.State("REDUCE"):
                m.d.comb += [
                    red.i.valid.eq(self.xg.valid),
                    self.xg.ready.eq(red.i.ready),
                ]
                with m.If(self.xg.valid):
                    if G > 1:
                        with m.If(r_grp == G - 1):
                            m.d.sync += [r_grp.eq(0), r_pos.eq(r_pos + 1)]
                        with m.Else():
                            m.d.sync += r_grp.eq(r_grp + 1)
                        last = (r_grp == G - 1) & (r_pos == n_last)
                    else:
                        m.d.sync += r_pos.eq(r_pos + 1)
                        last = r_pos == n_last
                    with m.If(last):
                        m.next = "DRAIN"

            with m.State("DRAIN"):
                with m.If(~red.busy):
                    # Read group 0's sums; they are valid from the first FINAL cycle on.
                    m.d.comb += [red_rd_en.eq(1), red_rd_addr.eq(0)]
                    m.d.sync += [
                        in_lane.eq(0), in_grp.eq(0), in_chan.eq(0), kk.eq(0),
                        in_open.eq(1), kk_last.eq(k_last == 0),
                        out_lane.eq(0), out_grp.eq(0), out_chan.eq(0),
                        n_grp.eq(0), n_k.eq(0),     # FINAL reads chunk-entry row (0, 0)
                    ]
                    m.next = "FINAL"

            with m.State("FINAL"):
                last_chunk = params_only | kk_last
                m.d.comb += [
                    fin.i.valid.eq(in_open & self.stats.valid & last_chunk),
                    self.stats.ready.eq(in_open & last_chunk & fin.i.ready),
                    # chunk entries of the current channel (not in parameters-only mode)
                    c_wr.addr.eq(cmem_addr(in_grp, kk)),
                    c_wr.en.eq(Mux(in_open & self.stats.valid & ~params_only,
                                   Const(1, B) << in_lane, 0)),
                ]
                for lane in range(B):
                    m.d.comb += [
                        c_wr.data[lane].argmax.eq(st.argmax[kk]),
                        c_wr.data[lane].argmin.eq(st.argmin[kk]),
                        c_wr.data[lane].flat.eq(st.chunk_flat[kk]),
                    ]
                with m.If(in_open & self.stats.valid & ~last_chunk):
                    m.d.sync += [kk.eq(kk + 1), kk_last.eq(kk + 1 == k_last)]
                with m.If(self.stats.valid & self.stats.ready):
                    m.d.sync += [a_pend_addr.eq(in_grp), a_pend_en.eq(Const(1, B) << in_lane), a_pend.eq(st.a)]
                    m.d.sync += [kk.eq(0), kk_last.eq(k_last == 0),
                                 in_chan.eq(in_chan + 1), in_open.eq(in_chan != C - 1)]
                    with m.If((in_lane == B - 1) | (in_chan == C - 1)):
                        m.d.sync += [in_lane.eq(0), in_grp.eq(in_grp + 1)]
                        # the next group's sums, valid from the next cycle on
                        m.d.comb += [red_rd_en.eq(1), red_rd_addr.eq(in_grp + 1)]
                    with m.Else():
                        m.d.sync += in_lane.eq(in_lane + 1)

                # Finalize results: grads out, b coefficients stored.
                m.d.comb += [
                    self.grads.valid.eq(fin.o.valid),
                    fin.o.ready.eq(self.grads.ready),
                    b_wr.addr.eq(out_grp),
                ]
                for lane in range(B):
                    m.d.comb += [
                        b_wr.data[lane].b_mid.eq(fo.b_mid),
                        b_wr.data[lane].b_max.eq(fo.b_max),
                        b_wr.data[lane].b_min.eq(fo.b_min),
                    ]
                with m.If(fin.o.valid & fin.o.ready):
                    m.d.comb += b_wr.en.eq(Const(1, B) << out_lane)
                    m.d.sync += out_chan.eq(out_chan + 1)
                    with m.If(out_lane == B - 1):
                        m.d.sync += [out_lane.eq(0), out_grp.eq(out_grp + 1)]
                    with m.Else():
                        m.d.sync += out_lane.eq(out_lane + 1)
                    with m.If(out_chan == C - 1):
                        # the block after (position 0, group 0): group 1, or position 1 (which is
                        # in chunk 0: n / K >= 2)
                        m.d.sync += [
                            d_pos.eq(0), d_grp.eq(0), d_done.eq(0),
                            n_grp.eq(1 if G > 1 else 0), n_k.eq(0),
                            n_in_chunk.eq(0 if G > 1 else 1),
                            o_pos.eq(0), o_grp.eq(0),
                        ]
                        with m.If(params_only):
                            m.d.sync += red_clear.eq(1)
                            m.next = "IDLE"
                        with m.Else():
                            m.next = "DX"

            with m.State("DX"):
                with m.If(take):
                    end_pos = (d_grp == G - 1) if G > 1 else Const(1)
                    with m.If(end_pos):
                        m.d.sync += [d_grp.eq(0), d_pos.eq(d_pos + 1)]
                        with m.If(d_pos == n_last):
                            m.d.sync += d_done.eq(1)
                    with m.Else():
                        m.d.sync += d_grp.eq(d_grp + 1)
                    # on to the block after the new next one (past the last block: a row never used)
                    n_end_pos = (n_grp == G - 1) if G > 1 else Const(1)
                    with m.If(n_end_pos):
                        m.d.sync += n_grp.eq(0)
                        with m.If(n_in_chunk == m_last):
                            m.d.sync += [n_in_chunk.eq(0), n_k.eq(n_k + 1)]
                        with m.Else():
                            m.d.sync += n_in_chunk.eq(n_in_chunk + 1)
                    with m.Else():
                        m.d.sync += n_grp.eq(n_grp + 1)

                with m.If(self.dx.valid & self.dx.ready):
                    end_pos = (o_grp == G - 1) if G > 1 else Const(1)
                    with m.If(end_pos):
                        m.d.sync += [o_grp.eq(0), o_pos.eq(o_pos + 1)]
                        with m.If(o_pos == n_last):
                            m.d.sync += red_clear.eq(1)
                            m.next = "IDLE"
                    with m.Else():
                        m.d.sync += o_grp.eq(o_grp + 1)



        # Finalize input record: the current lane of the group's sums and the stats record.
        row = red.rd_data
        m.d.comb += [
            fi.sum_g.eq(row.sum_g[in_lane]),
            fi.sum_gx.eq(row.sum_gx[in_lane]),
            *([fi.sum_g_lsb.eq(red.rd_lsb_g), fi.sum_gx_lsb.eq(red.rd_lsb_gx)] if self.stats_mode == "low" else []),
            fi.count.eq(n), fi.chunks_log2.eq(cl2), fi.c_scale.eq(c_scale),
            fi.mu.eq(st.mu), fi.inv.eq(st.inv), fi.a.eq(st.a),
        ]
        m.d.comb += [
            self.grads.payload.dgamma.eq(fo.dgamma),
            self.grads.payload.dbeta.eq(fo.dbeta),
            self.grads.payload.overflow.eq(fo.overflow | red.overflow),
        ]

        # --- dx pass ----------------------------------------------------------------------------
        # Stage D0 (the g block offered): the chunk-entry memory's data is already that of the
        # block's group and chunk, read one block ahead: it reads row (n_grp, n_k), the block
        # after the one taken, on every take, and row (0, 0) throughout FINAL, so it holds the
        # entries of the block taken next (d_pos, d_grp). Each lane compares d_pos with its
        # argmax / argmin there. Stage D1: the g block, its group and the lanes' two compare
        # results; the a and b memories are read for it as it is taken (read enable = the
        # pipeline advances), so their data matches D1 and holds while the pipeline is stalled.
        # Stage D2: each lane's a and selected b (the b select alone on its path). D1 and D2
        # advance on the affine's ``i.ready`` (a register: its queue credit) or into an empty D2.
        # Their payloads have no reset: nothing reads them while d1_valid / d2_valid is low.
        d1_valid = Signal()
        d1_block = Signal(bfp.block_layout(), reset_less=True)
        d1_grp = Signal(range(max(G, 2)))
        d1_at_max = Signal(B, reset_less=True)
        d1_at_min = Signal(B, reset_less=True)
        d2_valid = Signal()
        d2_block = Signal(bfp.block_layout(), reset_less=True)
        d2_a = Signal(data.ArrayLayout(f.width, B), reset_less=True)
        d2_b = Signal(data.ArrayLayout(f.width, B), reset_less=True)
        advance = Signal()
        m.d.comb += advance.eq(aff.i.ready | ~d2_valid)
        m.d.comb += in_fx.eq(fsm.ongoing("DX"))
        m.d.comb += d1_ready.eq(advance)

        m.d.comb += [
            self.g.ready.eq(in_fx & ~d_done & d1_ready),
            take.eq(self.g.valid & self.g.ready),
            a_rd.en.eq(d1_ready), b_rd.en.eq(d1_ready),
            a_rd.addr.eq(d_grp), b_rd.addr.eq(d_grp),
            c_rd.en.eq(take | ~in_fx), c_rd.addr.eq(cmem_addr(n_grp, n_k)),
        ]
        with m.If(advance):
            m.d.sync += [
                d1_valid.eq(take),
                d1_block.eq(self.g.payload),
                d1_grp.eq(d_grp),
                d2_valid.eq(d1_valid),
                d2_block.eq(d1_block),
            ]
        ai = aff.i.payload
        m.d.comb += [aff.i.valid.eq(d2_valid), ai.block.eq(d2_block), ai.a.eq(d2_a), ai.b.eq(d2_b)]
        for lane in range(B):
            ce = c_rd.data[lane]
            bs = b_rd.data[lane]
            with m.If(advance):
                m.d.sync += [d1_at_max[lane].eq(~ce.flat & (d_pos == ce.argmax)),
                             d1_at_min[lane].eq(~ce.flat & (d_pos == ce.argmin))]
            b_sel = Mux(d1_at_max[lane], bs.b_max, Mux(d1_at_min[lane], bs.b_min, bs.b_mid))
            with m.If(advance):
                if (G - 1) * B + lane >= C:            # a padding lane of the last group
                    keep = d1_grp != G - 1
                    m.d.sync += [d2_a[lane].eq(Mux(keep, a_rd.data[lane], 0)),
                                 d2_b[lane].eq(Mux(keep, b_sel, 0))]
                else:
                    m.d.sync += [d2_a[lane].eq(a_rd.data[lane]), d2_b[lane].eq(b_sel)]

        wiring.connect(m, aff.o, wiring.flipped(self.dx))
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m
