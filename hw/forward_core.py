"""The Range-BN forward core: statistics pass, per-channel finalize, normalize pass.

Implements ``sim.model.golden_bn.forward`` (with ``check_count``, ``running_reset`` and
``update_running``) bit for bit. Stream records are those of ``hw.bn_layouts``.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.bn_layouts import (chunks_log2_width, cmd_layout, count_width, params_layout, position_width,
                           saved_layout)
from hw.formats import STATS_GUARD_DEFAULT, check_bn_args, check_stats, running_reset_bits
from hw.stats_unit import StatsUnit

__all__ = ["ForwardCore"]


class ForwardCore(wiring.Component):
    """Range-BN forward core (LightNorm): exact statistics, per-channel finalize, ``y = a x + b``.

    Parameters
    ----------
    bfp : BFPFormat
        Format of ``x`` and ``y`` (``B = bfp.block`` channels per block).
    internal : FloatFormat
        The per-channel internal float (``hw.formats.internal_format``).
    channels : int
        Channels held on chip; ``groups = ceil(channels / B)`` blocks per position (group fastest,
        lanes past the last channel are padding: ignored on input, 0 on output).
    max_count : int
        Largest n (positions per channel) per command; sizes the counters and accumulators.
    max_chunks : int
        Largest K (a power of two); the run-time K is ``2**cmd.chunks_log2``.

    Ports
    -----
    ``cmd`` (in stream, ``cmd_layout``): ``count`` n, ``chunks_log2``, ``c_scale`` (C, from
        ``sim.model.golden_bn.range_scale``), ``training``. Accepted only while idle. A command with
        ``n % K != 0``, ``n / K < 2``, ``n > max_count`` or ``K > max_chunks`` is consumed and dropped
        and raises ``count_error`` (as ``golden_bn.check_count``); a good one clears it.
    ``x`` (in stream, ``bfp.block_layout()``): training: ``n * groups`` blocks for the statistics
        pass, then the same number again for the normalize pass; inference: one normalize pass.
        Block ``p * groups + g`` holds channels ``g*B .. g*B+B-1`` at position ``p``.
    ``params`` (in stream, ``params_layout``): one record per channel, channel 0 first, consumed
        during finalize (every command). ``load_running`` replaces the channel's running
        statistics with the record's ``running_mean`` / ``running_sigma`` before use.
    ``stats`` (out stream, ``saved_layout``): one record per channel, channel 0 first, emitted
        during finalize (every command): ``mu``, ``sigma``, ``inv``, ``a``, ``b``, the running
        statistics after this command, ``flat``, ``argmax[k]``/``argmin[k]``/``chunk_flat[k]``
        for ``k < K`` (entries ``k >= K`` are 0) and ``overflow``. In inference ``mu``/``sigma``
        are the running statistics used, ``flat`` and the per-chunk fields are 0.
    ``y`` (out stream, ``bfp.flagged_block_layout()``): one block per normalize-pass ``x`` block.
    ``busy`` (out): a command is in progress (from its acceptance until its last ``y`` block and
        its last ``stats`` record have left).
    ``count_error`` (out): sticky; set by a dropped command, cleared by the next good one.

    Running statistics live in the core: reset to ``hw.formats.running_reset_bits`` (mean 0, sigma 1),
    moved with momentum ``2**-3`` by every training command (``golden_bn.update_running``), used
    by inference commands.

    Timing
    ------
    * Statistics pass (training): ``x.ready`` is high throughout; one block per cycle sustained.
      Finalize starts ``StatsUnit.LATENCY`` = 3 cycles after the last block.
    * Finalize: channels one after another, ``2 + 1 + finalize latency + 1`` cycles per channel when
      ``params`` is valid and ``stats`` ready (``finalize_cycles_per_channel``); ``x`` is held
      (``x.ready`` low) for ``StatsUnit.LATENCY`` + ``channels`` times that in training. An
      inference command's first channel skips the two statistics read cycles (there are no
      statistics), so its first ``x`` is taken ``channels`` times that minus 1 cycles after the
      command.
    * Normalize pass: ``x`` feeds ``BFPAffine`` directly: one block per cycle sustained,
      ``latency`` cycles from an ``x`` block to its ``y`` block (the affine pipeline; ``x.ready``
      is the pipeline's credit register: while ``y`` stalls, ``x`` is still taken until
      ``BFPAffine.QUEUE_DEPTH`` blocks are outstanding).

    ``finalize``, ``affine``: an outside finalize engine / ``BFPAffine`` to drive instead of
    building one: any object with the unit's ``i`` / ``o`` ports and ``latency`` (the engine also
    ``cycles_per_channel``; a ``hw.stream_share.StreamShare`` client port, ``hw.bn_core``). The
    core then drives it and does not instantiate it; its records are the core's own engine's (a
    wider record is fine: the core sets only its own fields).
    """

    def __init__(self, bfp, internal, channels, max_count, max_chunks, *, momentum_shift=3, eps_log2=-16,
                 stats="exact", stats_guard=STATS_GUARD_DEFAULT, finalize=None, affine=None):
        check_bn_args(bfp, internal, channels, max_count, max_chunks)     # the generator's limits
        check_stats(stats, stats_guard)
        self.stats_mode, self.stats_guard = stats, stats_guard
        self.bfp = bfp
        self.internal = internal
        self.channels = channels
        self.max_count = max_count
        self.max_chunks = max_chunks
        self.momentum_shift = momentum_shift
        self.eps_log2 = eps_log2
        self.groups = -(-channels // bfp.block)

        self._stats_unit = StatsUnit(bfp, channels, max_count, max_chunks, stats, stats_guard)
        self._owns_finalize = finalize is None
        self._finalize = self._make_finalize() if finalize is None else finalize
        self._owns_affine = affine is None
        self._affine = self._make_affine() if affine is None else affine
        self.lanes = self._stats_unit.lanes
        self.latency = self._affine.latency
        self.finalize_latency = getattr(self._finalize, "latency", None)

        super().__init__({
            "cmd": In(stream.Signature(cmd_layout(max_count, max_chunks))),
            "x": In(stream.Signature(bfp.block_layout())),
            "params": In(stream.Signature(params_layout(internal))),
            "stats": Out(stream.Signature(saved_layout(internal, max_count, max_chunks))),
            "y": Out(stream.Signature(bfp.flagged_block_layout())),
            "busy": Out(1),
            "count_error": Out(1),
        })

    @classmethod
    def from_params(cls, p):
        """Build from ``gen.units.Params`` (width, block, in_format, chunks, channels, max_count,
        internal_frac_bits)."""
        return cls(p.bfp, p.internal, p.channels, p.max_count, p.chunks, stats=p.stats,
                   stats_guard=p.stats_guard)

    # The two arithmetic units come from hw.finalize / hw.bfp_affine.
    def _make_finalize(self):
        from hw.finalize import ForwardFinalize
        return ForwardFinalize(self.bfp, self.internal, self.max_count, self.max_chunks,
                               eps_log2=self.eps_log2, momentum_shift=self.momentum_shift,
                               stats=self.stats_mode, stats_guard=self.stats_guard)

    def _make_affine(self):
        from hw.bfp_affine import BFPAffine
        return BFPAffine(self.bfp, self.internal)

    @property
    def finalize_cycles_per_channel(self):
        """Cycles per channel of finalize with ``params`` valid and ``stats`` ready: the
        statistics unit's read latency, one for the finalize unit to start, its latency, one for
        the result (the ``stats`` record) to be taken."""
        lat = self.finalize_latency
        return None if lat is None else StatsUnit.READ_LATENCY + lat + 2

    def manifest_info(self):
        B = self.bfp.block
        return {
            "parameters": {
                "channels": self.channels, "groups": self.groups, "block": B,
                "max_count": self.max_count, "max_chunks": self.max_chunks,
                "momentum_shift": self.momentum_shift, "eps_log2": self.eps_log2,
                "stats": self.stats_mode, "stats_guard": self.stats_guard,
                "stats_state_bits": self._stats_unit.state_bits,
                "value_width": self._stats_unit.value_width,
                "sum_width": self._stats_unit.sum_width,
                "range_width": self._stats_unit.range_width,
            },
            "formats": {
                "x": {"bfp_width": self.bfp.width, "exp_bits": self.bfp.exp_bits, "block": B},
                "y": {"bfp_width": self.bfp.width, "exp_bits": self.bfp.exp_bits, "block": B,
                      "flags": "sat, special (0), flush (0)"},
                "internal_float": {"name": self.internal.name, "exp_bits": self.internal.exp_bits,
                                   "frac_bits": self.internal.frac_bits},
            },
            "timing": {
                "normalize_latency": self.latency,
                "stats_to_finalize_cycles": StatsUnit.LATENCY,
                "finalize_cycles_per_channel": self.finalize_cycles_per_channel,
                "throughput": "one block per cycle in the statistics and normalize passes",
            },
            "port_roles": {
                "cmd__payload": "stream cmd: count n, chunks_log2, c_scale, training (hw.bn_layouts.cmd_layout)",
                "cmd__valid": "stream cmd: valid", "cmd__ready": "stream cmd: ready (high when idle)",
                "x__payload": "stream x: BFP block (exponent, codes), channels g*B.. at one position",
                "x__valid": "stream x: valid", "x__ready": "stream x: ready",
                "params__payload": "stream params: per-channel gamma, beta, running stats load (hw.bn_layouts.params_layout)",
                "params__valid": "stream params: valid", "params__ready": "stream params: ready",
                "stats__payload": "stream stats: per-channel saved record (hw.bn_layouts.saved_layout)",
                "stats__valid": "stream stats: valid", "stats__ready": "stream stats: ready",
                "y__payload": "stream y: flagged BFP block", "y__valid": "stream y: valid",
                "y__ready": "stream y: ready",
                "busy": "status: a command is in progress",
                "count_error": "status: sticky, last command dropped for a bad count (cleared by a good one)",
            },
        }

    def elaborate(self, platform):
        m = Module()
        bfp, B, G, L, C = self.bfp, self.bfp.block, self.groups, self.lanes, self.channels
        Kmax, f = self.max_chunks, self.internal
        m.submodules.stats_unit = su = self._stats_unit
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
        c_scale = Signal.like(self.cmd.payload.c_scale)
        training = Signal()

        # Count check (golden_bn.check_count plus the generator limits). Comparisons whose result
        # is fixed by the field widths are folded here, not left to synthesis.
        log2_kmax = Kmax.bit_length() - 1
        cl2_w, cnt_w = len(cmd.chunks_log2), len(cmd.count)
        low_mask = Signal(cnt_w)      # K - 1
        for i in range(min(cnt_w, (1 << cl2_w) - 1)):
            m.d.comb += low_mask[i].eq(cmd.chunks_log2 > i)
        k_ok = (cmd.chunks_log2 <= log2_kmax) if log2_kmax < (1 << cl2_w) - 1 else Const(1)
        n_ok = (cmd.count <= self.max_count) if self.max_count < (1 << cnt_w) - 1 else Const(1)
        cmd_ok = Signal()
        m.d.comb += cmd_ok.eq(k_ok & n_ok
                              & ~(cmd.count & low_mask).any()
                              & (cmd.count >> (cmd.chunks_log2 + 1)).any())

        # --- per-channel registers: coefficients and running statistics (rotating banks) ------
        coef_layout = data.StructLayout({"a": f.width, "b": f.width})
        run_layout = data.StructLayout({"mean": f.width, "sigma": f.width})
        rm0, rs0 = running_reset_bits(f)
        # One signal per channel slot keeps the emitted nets narrow (see hw.stats_unit).
        coef = [[Signal(coef_layout, name=f"coef{g}_lane{l}") for l in range(L)] for g in range(G)]
        run = [[Signal(run_layout, name=f"run{g}_lane{l}", init={"mean": rm0, "sigma": rs0})
                for l in range(L)] for g in range(G)]
        coef_head, run_head = coef[0], run[0]
        rotate_coef = Signal()
        rotate_final = Signal()          # finalize moves on to the next group
        write_lane = Signal()            # finalize writes the head lane ``lane``

        lane = Signal(range(max(L, 2)))
        chan = Signal(range(max(C, 2)))
        lanes_in_group = Array(Const(min(B, C - g * B) - 1, range(max(L, 2))) for g in range(G))
        fgrp = Signal(range(max(G, 2)))

        # --- stats output: the finalize unit's result registers (and ``pend``), no copy ----------
        r = fin.o.payload
        sd = self.stats.payload
        m.d.comb += [
            sd.mu.eq(r.mu), sd.sigma.eq(r.sigma), sd.inv.eq(r.inv), sd.a.eq(r.a), sd.b.eq(r.b),
            sd.running_mean.eq(r.new_running_mean), sd.running_sigma.eq(r.new_running_sigma),
            sd.flat.eq(r.flat), sd.overflow.eq(r.overflow),
        ]

        pend = Signal(data.StructLayout({
            "argmax": data.ArrayLayout(position_width(self.max_count), Kmax),
            "argmin": data.ArrayLayout(position_width(self.max_count), Kmax),
            "chunk_flat": data.ArrayLayout(1, Kmax),
        }))
        m.d.comb += [sd.argmax.eq(pend.argmax), sd.argmin.eq(pend.argmin),
                     sd.chunk_flat.eq(pend.chunk_flat)]

        # --- normalize counters ---------------------------------------------------------------
        n_last = Signal(position_width(self.max_count))
        x_pos = Signal.like(n_last)
        x_grp = Signal(range(max(G, 2)))
        y_pos = Signal.like(n_last)
        y_grp = Signal(range(max(G, 2)))

        m.d.comb += [
            # The statistics unit samples these with ``start`` (IDLE, the cycle the command is taken).
            su.count.eq(cmd.count), su.chunks_log2.eq(cmd.chunks_log2),
            su.i.payload.eq(self.x.payload),
        ]

        x_done = Signal()
        with m.FSM(name="fsm") as fsm:
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    with m.If(cmd_ok):
                        m.d.sync += [
                            self.count_error.eq(0),
                            n.eq(cmd.count), cl2.eq(cmd.chunks_log2), c_scale.eq(cmd.c_scale),
                            training.eq(cmd.training),
                            n_last.eq(cmd.count - 1),
                            lane.eq(0), chan.eq(0), fgrp.eq(0),
                        ]
                        with m.If(cmd.training):
                            m.d.comb += su.start.eq(1)
                            m.next = "STATS"
                        with m.Else():
                            m.next = "FEED"
                    with m.Else():
                        m.d.sync += self.count_error.eq(1)

            with m.State("STATS"):
                m.d.comb += [
                    su.i.valid.eq(self.x.valid),
                    self.x.ready.eq(su.i.ready),
                ]
                with m.If(su.done):
                    m.next = "READ0"

            # The statistics unit's read port is registered (StatsUnit.READ_LATENCY = 2 cycles).
            with m.State("READ0"):
                m.next = "READ1"

            with m.State("READ1"):
                m.next = "FEED"

            with m.State("FEED"):
                m.d.comb += [
                    fin.i.valid.eq(self.params.valid),
                    self.params.ready.eq(fin.i.ready),
                ]
                with m.If(self.params.valid & fin.i.ready):
                    with m.If(training):
                        m.d.sync += [
                            pend.argmax.eq(su.rd.argmax),
                            pend.argmin.eq(su.rd.argmin),
                            pend.chunk_flat.eq(su.rd.chunk_flat),
                        ]
                    with m.Else():
                        m.d.sync += pend.eq(0)
                    m.next = "WAIT"

            with m.State("WAIT"):
                # The result leaves as ``stats`` straight from the finalize unit, which holds it
                # until taken.
                m.d.comb += [self.stats.valid.eq(fin.o.valid), fin.o.ready.eq(self.stats.ready)]
                with m.If(fin.o.valid & fin.o.ready):
                    m.d.comb += write_lane.eq(1)
                    m.d.sync += chan.eq(chan + 1)
                    with m.If(lane == lanes_in_group[fgrp]):
                        m.d.comb += [rotate_final.eq(1), su.rd_rotate.eq(1)]
                        m.d.sync += [lane.eq(0), fgrp.eq(fgrp + 1)]
                    with m.Else():
                        m.d.sync += lane.eq(lane + 1)
                    with m.If(chan == C - 1):
                        m.d.sync += [x_pos.eq(0), x_grp.eq(0), y_pos.eq(0), y_grp.eq(0)]
                        m.next = "NORM"
                    with m.Else():
                        m.next = "READ0"

            with m.State("NORM"):
                m.d.comb += [
                    aff.i.valid.eq(self.x.valid & ~x_done),
                    self.x.ready.eq(aff.i.ready & ~x_done),
                ]
                with m.If(self.x.valid & self.x.ready):
                    m.d.comb += rotate_coef.eq(1)
                    with m.If(x_grp == G - 1):
                        m.d.sync += [x_grp.eq(0), x_pos.eq(x_pos + 1)]
                        with m.If(x_pos == n_last):
                            m.d.sync += x_done.eq(1)
                    with m.Else():
                        m.d.sync += x_grp.eq(x_grp + 1)
                with m.If(self.y.valid & self.y.ready):
                    with m.If(y_grp == G - 1):
                        m.d.sync += [y_grp.eq(0), y_pos.eq(y_pos + 1)]
                        with m.If(y_pos == n_last):
                            m.d.sync += x_done.eq(0)
                            m.next = "IDLE"
                    with m.Else():
                        m.d.sync += y_grp.eq(y_grp + 1)

        # Finalize input record (the statistics unit reads lane ``lane`` of the head group).
        m.d.comb += su.rd_lane.eq(lane)
        prm = self.params.payload
        rd = su.rd
        lanes_run = Array(run_head[l] for l in range(L))
        run_cur = lanes_run[lane] if L > 1 else run_head[0]
        fi = fin.i.payload
        m.d.comb += [
            fi.sum.eq(rd.sum), fi.range.eq(rd.range),
            *([fi.sum_lsb.eq(rd.sum_lsb)] if self.stats_mode == "low" else []),
            fi.count.eq(n), fi.chunks_log2.eq(cl2), fi.c_scale.eq(c_scale), fi.training.eq(training),
            fi.gamma.eq(prm.gamma), fi.beta.eq(prm.beta),
            fi.running_mean.eq(Mux(prm.load_running, prm.running_mean, run_cur.mean)),
            fi.running_sigma.eq(Mux(prm.load_running, prm.running_sigma, run_cur.sigma)),
        ]

        # Head-bank updates: finalize writes lane ``lane``; rotations keep the head = group.
        new_coef = [Signal(coef_layout, name=f"new_coef{l}") for l in range(L)]
        new_run = [Signal(run_layout, name=f"new_run{l}") for l in range(L)]
        m.d.comb += [new_coef[l].eq(coef_head[l]) for l in range(L)]
        m.d.comb += [new_run[l].eq(run_head[l]) for l in range(L)]
        with m.If(write_lane):
            for l in range(L):
                with m.If(lane == l):
                    m.d.comb += [
                        new_coef[l].a.eq(r.a), new_coef[l].b.eq(r.b),
                        new_run[l].mean.eq(r.new_running_mean), new_run[l].sigma.eq(r.new_running_sigma),
                    ]
        with m.If(rotate_coef | rotate_final):
            m.d.sync += [coef[g][l].eq(coef[g + 1][l]) for g in range(G - 1) for l in range(L)]
            m.d.sync += [coef[G - 1][l].eq(new_coef[l]) for l in range(L)]
        with m.Else():
            m.d.sync += [coef[0][l].eq(new_coef[l]) for l in range(L)]
        with m.If(rotate_final):
            m.d.sync += [run[g][l].eq(run[g + 1][l]) for g in range(G - 1) for l in range(L)]
            m.d.sync += [run[G - 1][l].eq(new_run[l]) for l in range(L)]
        with m.Else():
            m.d.sync += [run[0][l].eq(new_run[l]) for l in range(L)]

        # Normalize datapath: x -> BFPAffine with the head group's coefficients; padding lanes
        # of the last group get a = b = 0 (y lane = 0).
        ai = aff.i.payload
        m.d.comb += ai.block.eq(self.x.payload)
        for l in range(B):
            if l < L:
                pad_in_last = (G - 1) * B + l >= C
                keep = (x_grp != G - 1) if pad_in_last else Const(1)
                m.d.comb += [
                    ai.a[l].eq(Mux(keep, coef_head[l].a, 0)),
                    ai.b[l].eq(Mux(keep, coef_head[l].b, 0)),
                ]
            else:
                m.d.comb += [ai.a[l].eq(0), ai.b[l].eq(0)]
        wiring.connect(m, aff.o, wiring.flipped(self.y))

        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m
