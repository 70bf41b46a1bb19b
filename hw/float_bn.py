"""Conventional floating-point batch normalization: the baseline the LightNorm cores are measured
against (issue 5). Forward and backward, any ``hw.formats.FloatFormat`` (fp32 and bf16 are the
ones reported). Bit-exact golden model: ``sim.model.float_golden.bn_forward`` / ``bn_backward``.

Two formats: the *compute* format ``fmt`` (every multiply, add, accumulator, the per-channel
finalize, and the per-channel records ``params``/``stats``/``grads``) and the *storage* format
``io_fmt`` of the per-element streams (``x``, ``y``, ``xg``, ``dx``; default ``fmt``). With
``io_fmt = bf16`` and ``fmt = fp32`` this is the usual mixed-precision BN (bf16 activations and
gradients, fp32 statistics, accumulation and parameters, like PyTorch autocast): each lane
widens its inputs to ``fmt`` (exact, wiring only) and rounds its outputs to ``io_fmt``
(``hw.float_units.float_convert``: RNE, flush, saturation; combinational after the last adder).

It is meant to be a *good* conventional design, not a strawman:

* same stream style and throughput as the LightNorm cores: one vector of ``block`` lanes (one
  value per channel of a channel group, like a BFP block across channels) per cycle on every
  per-element path; channel groups ``G = ceil(channels / block)`` follow each other
  (vector ``t`` of a pass is position ``t // G``, group ``t % G``);
* per lane the forward pass shares one multiplier and one adder between the statistics pass
  (``x*x``, ``sum x*x``) and the normalize pass, where ``(x - mu) * inv * gamma + beta`` is folded
  into ``y = a x + b`` (one multiply and one add per element, ``a``, ``b`` per channel);
* accumulation at one vector per cycle through a pipelined adder: each accumulator is a ring of
  ``D = hw.float_convention.ring_depth(channels, block)`` interleaved partial sums per lane (a
  small distributed RAM), ``D`` a multiple of ``G`` larger than the adder latency; the partials
  of a channel are added once per channel at the end;
* everything per channel (partials, 1/n, mean, variance, sqrt, reciprocal, a, b, gradients,
  dx coefficients) runs on one shared scalar adder, multiplier, iterative divider and square
  root, sequenced by the control FSM; that takes about 100-150 cycles per channel (fp32) while
  the per-element paths are idle, like the LightNorm cores' finalize.
* backward uses ``sum g`` and ``sum g*x`` (``dgamma = inv * (sum g x - mu sum g)``) instead of
  forming ``xhat`` per element, and ``dx = A g + Cc x + D`` per element (two multiplies and two
  adds per lane, shared with the reduction pass); the dx pass needs ``x`` again, as any
  conventional BN backward does.

Not included (the LightNorm forward core has them; leaving them out favours the baseline):
running statistics and the inference mode.

Stream protocol
---------------
``FloatBNForward``: ``cmd`` (count n >= 1 positions per channel) starts a training pass; ``x``
carries the tensor twice (statistics pass, then normalize pass), ``n * G`` vectors each;
``params`` (gamma, beta) is consumed once per channel, channel 0 first, between the passes, and
``stats`` (mu, inv, a, b) is emitted once per channel at the same time; ``y`` carries one vector per
``x`` vector of the normalize pass.

``FloatBNBackward``: ``cmd`` (count n); ``xg`` carries (x, g) pairs twice (reduction pass, dx
pass); ``stats`` (the forward pass's mu, inv, a) is consumed once per channel between the passes
and ``grads`` (dgamma, dbeta) emitted once per channel; ``dx`` one vector per ``xg`` vector of the
second pass.

Latency of the per-element paths: forward ``MUL + ADD`` = 7 cycles from ``x`` to ``y``; backward
``MUL + 2 ADD`` = 11 cycles. Back-pressure: while ``y``/``dx`` is stalled (valid and not ready)
the whole element pipeline holds (clock enable) and ``x``/``xg`` is not ready.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.float_units import FloatAdd, FloatDiv, FloatMul, FloatSqrt, float_convert, int_to_float, _fmt
from hw.checks import check_int
from hw.float_convention import fround, ring_depth, to_bits

__all__ = ["FloatBNForward", "FloatBNBackward"]


def _io_fmt(fmt, io_fmt):
    """The storage format: ``fmt`` when None; else no wider than ``fmt`` in exponent and fraction."""
    if io_fmt is None:
        return fmt
    io = _fmt(io_fmt)
    if io.exp_bits > fmt.exp_bits or io.frac_bits > fmt.frac_bits:
        raise ValueError(f"io format must be no wider than the compute format {fmt.name} "
                         f"(exponent <= {fmt.exp_bits}, fraction <= {fmt.frac_bits} bits), not {io.name}")
    return io


def _neg(fmt, v):
    """Negate a packed value; zero stays +0."""
    F, E = fmt.frac_bits, fmt.exp_bits
    return Mux(v[F:F + E] == 0, 0, Cat(v[:F + E], ~v[-1]))


class _FloatBNBase(wiring.Component):
    #: Per-element units per lane (overridden).
    ELEMENT_LATENCY = None

    def __init__(self, fmt, block, channels, max_count, eps, ports, io_fmt=None):
        self.fmt = _fmt(fmt)
        if self.fmt.frac_bits > 23 or self.fmt.exp_bits > 8:
            raise ValueError(f"float BN baseline supports formats up to fp32, not {self.fmt.name}")
        self.io_fmt = _io_fmt(self.fmt, io_fmt)
        check_int("block", block, 1, 64)
        check_int("channels", channels, 1, 4096)
        check_int("max-count", max_count, 1, 1 << 24)
        self.block, self.channels, self.max_count = block, channels, max_count
        self.groups = -(-channels // block)
        self.depth = ring_depth(channels, block)
        self.partials = self.depth // self.groups
        self.eps = eps
        self.eps_bits = int(to_bits(self.fmt, fround(self.fmt, eps)))
        self.one_bits = int(to_bits(self.fmt, 1.0))
        self.count_width = max_count.bit_length()
        self.latency = self.ELEMENT_LATENCY
        super().__init__(ports)

    def _vec(self):
        return data.ArrayLayout(self.fmt.layout(), self.block)

    def _rec(self, *names):
        return data.StructLayout({n: self.fmt.layout() for n in names})

    def manifest_info(self):
        return {"baseline": True, "format": self.fmt.name, "io_format": self.io_fmt.name, "block": self.block,
                "channels": self.channels, "ring_depth": self.depth, "eps": self.eps}

    # -- shared pieces ----------------------------------------------------------------------------

    def _delay(self, m, value, n, en, name):
        """``[value, value delayed 1, ..., delayed n]`` through clock-enabled registers."""
        out = [value]
        for k in range(1, n + 1):
            r = Signal.like(value, name=f"{name}_d{k}")
            with m.If(en):
                m.d.sync += r.eq(out[-1])
            out.append(r)
        return out

    def _ring(self, m, name, lane, rd_addr, wr_addr, wr_en, wr_data, written):
        """One lane's ring of partial sums. Returns the (gated) read data."""
        mem = Memory(shape=self.fmt.width, depth=self.depth, init=[])
        m.submodules[f"{name}{lane}"] = mem
        rp = mem.read_port(domain="comb")
        wp = mem.write_port()
        m.d.comb += [rp.addr.eq(rd_addr), wp.addr.eq(wr_addr), wp.en.eq(wr_en), wp.data.eq(wr_data)]
        return Mux(written.bit_select(rd_addr, 1), rp.data, 0)

    def _coef(self, m, name, lane, rd_addr, wr_addr, wr_en, wr_data):
        """One lane's per-channel coefficient store (``G`` entries)."""
        if self.groups == 1:
            r = Signal(self.fmt.width, name=f"{name}{lane}")
            with m.If(wr_en):
                m.d.sync += r.eq(wr_data)
            return r
        mem = Memory(shape=self.fmt.width, depth=self.groups, init=[])
        m.submodules[f"{name}{lane}"] = mem
        rp = mem.read_port(domain="comb")
        wp = mem.write_port()
        m.d.comb += [rp.addr.eq(rd_addr), wp.addr.eq(wr_addr), wp.en.eq(wr_en), wp.data.eq(wr_data)]
        return rp.data

    def _sequencer(self, m, steps, regs, sources, units, first_state, exit_state, hooks):
        """Emit FSM states ``F0..Fk`` for the per-channel finalize program ``steps``.

        ``steps``: tuples ``(op, dst, src...)`` with op in add, mul, div, sqrt, relu, mov, or
        ``(hook_name,)`` for a state built by ``hooks[hook_name](m, next_state)``. Sources are
        register names, ``("neg", name)``, or keys of ``sources`` (constant Values)."""
        fmt = self.fmt
        cnt = Signal(range(64), name="seq_cnt")
        fadd, fmul, fdiv, fsqrt = units

        def src(s):
            if isinstance(s, tuple) and s[0] == "neg":
                return _neg(fmt, src(s[1]))
            if s in sources:
                return sources[s]
            return regs[s]

        names = [f"{first_state}{i}" for i in range(len(steps))] + [exit_state]
        for i, step in enumerate(steps):
            op, nxt = step[0], names[i + 1]
            with m.State(names[i]):
                for s_ in step[2:]:
                    if isinstance(s_, str) and "_p" in s_ and s_.rsplit("_p", 1)[1].isdigit():
                        m.d.comb += self._fin_j.eq(int(s_.rsplit("_p", 1)[1]))
                if op in ("add", "mul"):
                    unit = fadd if op == "add" else fmul
                    m.d.comb += [unit.a.eq(src(step[2])), unit.b.eq(src(step[3]))]
                    m.d.sync += cnt.eq(cnt + 1)
                    with m.If(cnt == unit.latency):
                        m.d.sync += [regs[step[1]].eq(unit.y), cnt.eq(0)]
                        m.next = nxt
                elif op in ("div", "sqrt"):
                    unit = fdiv if op == "div" else fsqrt
                    m.d.comb += unit.a.eq(src(step[2]))
                    if op == "div":
                        m.d.comb += unit.b.eq(src(step[3]))
                    m.d.comb += unit.start.eq(cnt == 0)
                    m.d.sync += cnt.eq(1)
                    with m.If(unit.done):
                        m.d.sync += [regs[step[1]].eq(unit.y), cnt.eq(0)]
                        m.next = nxt
                elif op == "relu":
                    v = src(step[2])
                    m.d.sync += regs[step[1]].eq(Mux(v[-1], 0, v))
                    m.next = nxt
                elif op == "mov":
                    m.d.sync += regs[step[1]].eq(src(step[2]))
                    m.next = nxt
                else:
                    hooks[op](m, nxt)
        return names

    def _scalar_units(self, m):
        m.submodules.fin_add = fadd = FloatAdd(self.fmt)
        m.submodules.fin_mul = fmul = FloatMul(self.fmt)
        m.submodules.fin_div = fdiv = FloatDiv(self.fmt)
        m.submodules.fin_sqrt = fsqrt = FloatSqrt(self.fmt)
        return fadd, fmul, fdiv, fsqrt

    def _partial_steps(self, dst, ring):
        steps = [("mov", dst, f"{ring}_p0")]
        for j in range(1, self.partials):
            steps.append(("add", dst, dst, f"{ring}_p{j}"))
        return steps


class FloatBNForward(_FloatBNBase):
    """Conventional float BN, training forward pass (see the module docstring).

    Parameters: ``fmt`` (compute format: FloatFormat or name), ``block`` lanes, ``channels``,
    ``max_count`` (largest n), ``eps`` (added to the variance, rounded to ``fmt``), ``io_fmt``
    (format of ``x`` and ``y``; default ``fmt``).

    Ports: ``cmd`` in (``count``), ``x`` in (vectors of ``block`` floats), ``params`` in
    (gamma, beta per channel), ``stats`` out (mu, inv, a, b per channel), ``y`` out (vectors).
    ``latency`` = 7: cycles from an ``x`` vector of the normalize pass to its ``y``."""

    ELEMENT_LATENCY = FloatMul.LATENCY + FloatAdd.LATENCY

    def __init__(self, fmt, block=16, channels=16, max_count=4096, eps=2.0 ** -16, io_fmt=None):
        fmt_ = _fmt(fmt)
        self.fmt = fmt_
        io_ = _io_fmt(fmt_, io_fmt)
        vec = data.ArrayLayout(io_.layout(), block if isinstance(block, int) else 1)
        rec = lambda *ns: data.StructLayout({n: fmt_.layout() for n in ns})
        super().__init__(fmt, block, channels, max_count, eps, io_fmt=io_, ports={
            "cmd": In(stream.Signature(data.StructLayout({"count": max(1, max_count).bit_length()}))),
            "x": In(stream.Signature(vec)),
            "params": In(stream.Signature(rec("gamma", "beta"))),
            "stats": Out(stream.Signature(rec("mu", "inv", "a", "b"))),
            "y": Out(stream.Signature(vec)),
        })

    def elaborate(self, platform):
        m = Module()
        fmt, B, G, D = self.fmt, self.block, self.groups, self.depth
        W = fmt.width
        Lm, La = FloatMul.LATENCY, FloatAdd.LATENCY

        count = Signal(self.count_width, name="count")
        total = Signal((self.max_count * G).bit_length() + 1, name="total")
        t = Signal.like(total, name="t")
        slot = Signal(range(D), name="slot")
        grp = Signal(range(max(G, 2)), name="grp")
        mode = Signal(name="mode")          # 0: statistics pass, 1: normalize pass
        issue = Signal(name="issue")
        en = Signal(name="en")
        written1 = Signal(D, name="written1")
        written2 = Signal(D, name="written2")
        in_fin = Signal(name="in_fin")

        # Element pipeline tags: valid, slot, group, through clock-enabled delay lines.
        tag = data.StructLayout({"valid": 1, "slot": range(D), "grp": range(max(G, 2))})
        tag0 = Signal(tag, name="tag")
        m.d.comb += [tag0.valid.eq(issue), tag0.slot.eq(slot), tag0.grp.eq(grp)]
        tags = self._delay(m, tag0, Lm + La, en, "tag")
        tag_a1 = tags[La]            # ring 1 (sum x) write
        tag_m = tags[Lm]             # ring 2 read / coefficient b read
        tag_y = tags[Lm + La]        # ring 2 write / y out
        busy = Cat(*[tg.valid for tg in tags[1:]]).any()

        m.d.comb += en.eq(Mux(mode, self.y.ready | ~self.y.valid, 1))
        m.d.comb += [self.y.valid.eq(tag_y.valid & mode)]

        # Finalize access to the lanes.
        fin_lane = Signal(range(max(B, 2)), name="fin_lane")
        fin_grp = Signal(range(max(G, 2)), name="fin_grp")
        fin_addr = Signal(range(D), name="fin_addr")
        self._fin_j = Signal(range(max(self.partials, 2)), name="fin_j")
        m.d.comb += fin_addr.eq((fin_grp if G > 1 else 0) + self._fin_j * G)
        coef_we = Signal(name="coef_we")
        regs = {n: Signal(W, name=f"r_{n}") for n in
                ("nf", "rn", "S", "Q", "mu", "e2", "m2", "var", "sd", "inv", "gamma", "beta", "a", "b", "t")}

        p1, p2 = [], []
        io = self.io_fmt
        for k in range(B):
            xk = float_convert(m, io, fmt, self.x.payload[k].as_value(), name=f"x_wide{k}")
            m.submodules[f"mul{k}"] = mul = FloatMul(fmt)
            m.submodules[f"add1_{k}"] = add1 = FloatAdd(fmt)
            m.submodules[f"add2_{k}"] = add2 = FloatAdd(fmt)
            lane_we = coef_we & (fin_lane == k)
            ca = self._coef(m, "coef_a", k, grp, fin_grp, lane_we, regs["a"])
            cb = self._coef(m, "coef_b", k, tag_m.grp, fin_grp, lane_we, regs["b"])
            r1 = self._ring(m, "acc_x", k, Mux(in_fin, fin_addr, slot), tag_a1.slot,
                            tag_a1.valid & ~mode, add1.y, written1)
            r2 = self._ring(m, "acc_xx", k, Mux(in_fin, fin_addr, tag_m.slot), tag_y.slot,
                            tag_y.valid & ~mode, add2.y, written2)
            p1.append(r1)
            p2.append(r2)
            m.d.comb += [
                mul.en.eq(en), add1.en.eq(en), add2.en.eq(en),
                mul.a.eq(Mux(mode, ca, xk)), mul.b.eq(xk),
                add1.a.eq(r1), add1.b.eq(xk),
                add2.a.eq(Mux(mode, cb, r2)), add2.b.eq(mul.y),
                self.y.payload[k].eq(float_convert(m, fmt, io, add2.y, name=f"y_round{k}")),
            ]
        with m.If(tag_a1.valid & ~mode):
            m.d.sync += written1.bit_select(tag_a1.slot, 1).eq(1)
        with m.If(tag_y.valid & ~mode):
            m.d.sync += written2.bit_select(tag_y.slot, 1).eq(1)

        # Issue-side counters.
        with m.If(issue):
            m.d.sync += t.eq(t + 1)
            m.d.sync += slot.eq(Mux(slot == D - 1, 0, slot + 1))
            if G > 1:
                m.d.sync += grp.eq(Mux(grp == G - 1, 0, grp + 1))
        last = t == total - 1

        units = self._scalar_units(m)
        nf = int_to_float(m, fmt, count, self.count_width, name="nf")
        sources = {"ONE": Const(self.one_bits, W), "EPS": Const(self.eps_bits, W), "NF": nf}
        for j in range(self.partials):
            sources[f"acc_x_p{j}"] = Array(p1)[fin_lane]
            sources[f"acc_xx_p{j}"] = Array(p2)[fin_lane]
        chan = Signal(range(max(self.channels, 2)), name="chan")

        def params_hook(m, nxt):
            m.d.comb += self.params.ready.eq(1)
            with m.If(self.params.valid):
                m.d.sync += [regs["gamma"].eq(self.params.payload.gamma.as_value()),
                             regs["beta"].eq(self.params.payload.beta.as_value())]
                m.next = nxt

        def emit_hook(m, nxt):
            m.d.comb += [self.stats.valid.eq(1), coef_we.eq(self.stats.ready)]
            for n in ("mu", "inv", "a", "b"):
                m.d.comb += self.stats.payload[n].eq(regs[n])
            with m.If(self.stats.ready):
                m.next = nxt

        def next_hook(m, nxt):
            m.d.sync += [chan.eq(chan + 1), fin_lane.eq(fin_lane + 1)]
            if B > 1:
                with m.If(fin_lane == B - 1):
                    m.d.sync += [fin_lane.eq(0), fin_grp.eq(fin_grp + 1)]
            else:
                m.d.sync += [fin_lane.eq(0), fin_grp.eq(fin_grp + 1)]
            with m.If(chan == self.channels - 1):
                m.d.sync += [mode.eq(1), t.eq(0), slot.eq(0), grp.eq(0), in_fin.eq(0)]
                m.next = "NORM"
            with m.Else():
                m.next = "C0"

        per_channel = (self._partial_steps("S", "acc_x") + self._partial_steps("Q", "acc_xx") + [
            ("mul", "mu", "S", "rn"),
            ("mul", "e2", "Q", "rn"),
            ("mul", "m2", "mu", "mu"),
            ("add", "var", "e2", ("neg", "m2")),
            ("relu", "var", "var"),
            ("add", "var", "var", "EPS"),
            ("sqrt", "sd", "var"),
            ("div", "inv", "ONE", "sd"),
            ("params",),
            ("mul", "a", "gamma", "inv"),
            ("mul", "t", "mu", "a"),
            ("add", "b", "beta", ("neg", "t")),
            ("emit",),
            ("next",),
        ])
        # Partial j of the channel being finalized is slot fin_grp + j * G.
        with m.FSM(name="ctrl"):
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [
                        count.eq(self.cmd.payload.count),
                        total.eq(self.cmd.payload.count * G),
                        t.eq(0), slot.eq(0), grp.eq(0), mode.eq(0),
                        written1.eq(0), written2.eq(0),
                    ]
                    m.next = "STATS"
            with m.State("STATS"):
                m.d.comb += [self.x.ready.eq(1), issue.eq(self.x.valid)]
                with m.If(self.x.valid & last):
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                with m.If(~busy):
                    m.d.sync += [in_fin.eq(1), chan.eq(0), fin_lane.eq(0), fin_grp.eq(0)]
                    m.next = "P0"
            self._sequencer(m, [("mov", "nf", "NF"), ("div", "rn", "ONE", "nf")],
                            regs, sources, units, "P", "C0", {})
            names = self._sequencer(m, per_channel, regs, sources, units, "C", "NORM",
                                    {"params": params_hook, "emit": emit_hook, "next": next_hook})
            with m.State("NORM"):
                m.d.comb += [self.x.ready.eq(en), issue.eq(self.x.valid & en)]
                with m.If(self.x.valid & en & last):
                    m.next = "FLUSH"
            with m.State("FLUSH"):
                with m.If(~busy):
                    m.d.sync += mode.eq(0)
                    m.next = "IDLE"
        return m


class FloatBNBackward(_FloatBNBase):
    """Conventional float BN, backward pass (see the module docstring).

    Parameters as :class:`FloatBNForward` (``io_fmt``: format of ``xg`` and ``dx``).

    Ports: ``cmd`` in (``count``), ``xg`` in (vectors of (x, g) pairs), ``stats`` in (mu, inv, a
    per channel, from the forward pass), ``grads`` out (dgamma, dbeta per channel), ``dx`` out.
    ``latency`` = 11: cycles from an ``xg`` vector of the dx pass to its ``dx``."""

    ELEMENT_LATENCY = FloatMul.LATENCY + 2 * FloatAdd.LATENCY

    def __init__(self, fmt, block=16, channels=16, max_count=4096, eps=2.0 ** -16, io_fmt=None):
        fmt_ = _fmt(fmt)
        io_ = _io_fmt(fmt_, io_fmt)
        pair = data.StructLayout({"x": io_.layout(), "g": io_.layout()})
        rec = lambda *ns: data.StructLayout({n: fmt_.layout() for n in ns})
        nb = block if isinstance(block, int) else 1
        super().__init__(fmt, block, channels, max_count, eps, io_fmt=io_, ports={
            "cmd": In(stream.Signature(data.StructLayout({"count": max(1, max_count).bit_length()}))),
            "xg": In(stream.Signature(data.ArrayLayout(pair, nb))),
            "stats": In(stream.Signature(rec("mu", "inv", "a"))),
            "grads": Out(stream.Signature(rec("dgamma", "dbeta"))),
            "dx": Out(stream.Signature(data.ArrayLayout(io_.layout(), nb))),
        })

    def elaborate(self, platform):
        m = Module()
        fmt, B, G, D = self.fmt, self.block, self.groups, self.depth
        W = fmt.width
        Lm, La = FloatMul.LATENCY, FloatAdd.LATENCY

        count = Signal(self.count_width, name="count")
        total = Signal((self.max_count * G).bit_length() + 1, name="total")
        t = Signal.like(total, name="t")
        slot = Signal(range(D), name="slot")
        grp = Signal(range(max(G, 2)), name="grp")
        mode = Signal(name="mode")          # 0: reduction pass, 1: dx pass
        issue = Signal(name="issue")
        en = Signal(name="en")
        written1 = Signal(D, name="written1")
        written2 = Signal(D, name="written2")
        in_fin = Signal(name="in_fin")

        tag = data.StructLayout({"valid": 1, "slot": range(D), "grp": range(max(G, 2))})
        tag0 = Signal(tag, name="tag")
        m.d.comb += [tag0.valid.eq(issue), tag0.slot.eq(slot), tag0.grp.eq(grp)]
        tags = self._delay(m, tag0, Lm + 2 * La, en, "tag")
        tag_a1 = tags[La]            # ring 1 (sum g) write
        tag_m = tags[Lm]             # ring 2 read
        tag_a2 = tags[Lm + La]       # ring 2 write / D coefficient read
        tag_y = tags[Lm + 2 * La]    # dx out
        busy = Cat(*[tg.valid for tg in tags[1:]]).any()

        m.d.comb += en.eq(Mux(mode, self.dx.ready | ~self.dx.valid, 1))
        m.d.comb += self.dx.valid.eq(tag_y.valid & mode)

        fin_lane = Signal(range(max(B, 2)), name="fin_lane")
        fin_grp = Signal(range(max(G, 2)), name="fin_grp")
        fin_addr = Signal(range(D), name="fin_addr")
        self._fin_j = Signal(range(max(self.partials, 2)), name="fin_j")
        m.d.comb += fin_addr.eq((fin_grp if G > 1 else 0) + self._fin_j * G)
        coef_we = Signal(name="coef_we")
        regs = {n: Signal(W, name=f"r_{n}") for n in
                ("nf", "rn", "Sg", "Sgx", "mu", "inv", "a", "t1", "t2", "dg", "u", "cc", "v", "w", "d")}

        p1, p2 = [], []
        io = self.io_fmt
        for k in range(B):
            xk = float_convert(m, io, fmt, self.xg.payload[k].x.as_value(), name=f"x_wide{k}")
            gk = float_convert(m, io, fmt, self.xg.payload[k].g.as_value(), name=f"g_wide{k}")
            m.submodules[f"mul1_{k}"] = mul1 = FloatMul(fmt)
            m.submodules[f"mul2_{k}"] = mul2 = FloatMul(fmt)
            m.submodules[f"add1_{k}"] = add1 = FloatAdd(fmt)
            m.submodules[f"add2_{k}"] = add2 = FloatAdd(fmt)
            lane_we = coef_we & (fin_lane == k)
            cA = self._coef(m, "coef_A", k, grp, fin_grp, lane_we, regs["a"])
            cC = self._coef(m, "coef_C", k, grp, fin_grp, lane_we, regs["cc"])
            cD = self._coef(m, "coef_D", k, tag_a2.grp, fin_grp, lane_we, regs["d"])
            r1 = self._ring(m, "acc_g", k, Mux(in_fin, fin_addr, slot), tag_a1.slot,
                            tag_a1.valid & ~mode, add1.y, written1)
            r2 = self._ring(m, "acc_gx", k, Mux(in_fin, fin_addr, tag_m.slot), tag_a2.slot,
                            tag_a2.valid & ~mode, add2.y, written2)
            p1.append(r1)
            p2.append(r2)
            m.d.comb += [
                mul1.en.eq(en), mul2.en.eq(en), add1.en.eq(en), add2.en.eq(en),
                mul1.a.eq(Mux(mode, cC, gk)), mul1.b.eq(xk),          # C x  |  g x
                mul2.a.eq(cA), mul2.b.eq(gk),                         # A g
                add2.a.eq(Mux(mode, mul2.y, r2)), add2.b.eq(mul1.y),  # A g + C x  |  sum g x
                add1.a.eq(Mux(mode, add2.y, r1)), add1.b.eq(Mux(mode, cD, gk)),  # + D  |  sum g
                self.dx.payload[k].eq(float_convert(m, fmt, io, add1.y, name=f"dx_round{k}")),
            ]
        with m.If(tag_a1.valid & ~mode):
            m.d.sync += written1.bit_select(tag_a1.slot, 1).eq(1)
        with m.If(tag_a2.valid & ~mode):
            m.d.sync += written2.bit_select(tag_a2.slot, 1).eq(1)

        with m.If(issue):
            m.d.sync += t.eq(t + 1)
            m.d.sync += slot.eq(Mux(slot == D - 1, 0, slot + 1))
            if G > 1:
                m.d.sync += grp.eq(Mux(grp == G - 1, 0, grp + 1))
        last = t == total - 1

        units = self._scalar_units(m)
        nf = int_to_float(m, fmt, count, self.count_width, name="nf")
        sources = {"ONE": Const(self.one_bits, W), "NF": nf}
        for j in range(self.partials):
            sources[f"acc_g_p{j}"] = Array(p1)[fin_lane]
            sources[f"acc_gx_p{j}"] = Array(p2)[fin_lane]
        chan = Signal(range(max(self.channels, 2)), name="chan")

        def stats_hook(m, nxt):
            m.d.comb += self.stats.ready.eq(1)
            with m.If(self.stats.valid):
                m.d.sync += [regs[n].eq(self.stats.payload[n].as_value()) for n in ("mu", "inv", "a")]
                m.next = nxt

        def emit_hook(m, nxt):
            m.d.comb += [self.grads.valid.eq(1),
                         self.grads.payload.dgamma.eq(regs["dg"]),
                         self.grads.payload.dbeta.eq(regs["Sg"])]
            with m.If(self.grads.ready):
                m.next = nxt

        def store_hook(m, nxt):
            m.d.comb += coef_we.eq(1)
            m.next = nxt

        def next_hook(m, nxt):
            m.d.sync += [chan.eq(chan + 1), fin_lane.eq(fin_lane + 1)]
            if B > 1:
                with m.If(fin_lane == B - 1):
                    m.d.sync += [fin_lane.eq(0), fin_grp.eq(fin_grp + 1)]
            else:
                m.d.sync += [fin_lane.eq(0), fin_grp.eq(fin_grp + 1)]
            with m.If(chan == self.channels - 1):
                m.d.sync += [mode.eq(1), t.eq(0), slot.eq(0), grp.eq(0), in_fin.eq(0)]
                m.next = "DX"
            with m.Else():
                m.next = "C0"

        per_channel = (self._partial_steps("Sg", "acc_g") + self._partial_steps("Sgx", "acc_gx") + [
            ("stats",),
            ("mul", "t1", "mu", "Sg"),
            ("add", "t2", "Sgx", ("neg", "t1")),
            ("mul", "dg", "inv", "t2"),
            ("emit",),
            ("mul", "u", "a", "inv"),
            ("mul", "u", "u", "dg"),
            ("mul", "cc", "u", "rn"),
            ("mov", "cc", ("neg", "cc")),
            ("mul", "v", "a", "Sg"),
            ("mul", "v", "v", "rn"),
            ("mul", "w", "cc", "mu"),
            ("add", "d", ("neg", "v"), ("neg", "w")),
            ("store",),
            ("next",),
        ])
        with m.FSM(name="ctrl"):
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [
                        count.eq(self.cmd.payload.count),
                        total.eq(self.cmd.payload.count * G),
                        t.eq(0), slot.eq(0), grp.eq(0), mode.eq(0),
                        written1.eq(0), written2.eq(0),
                    ]
                    m.next = "REDUCE"
            with m.State("REDUCE"):
                m.d.comb += [self.xg.ready.eq(1), issue.eq(self.xg.valid)]
                with m.If(self.xg.valid & last):
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                with m.If(~busy):
                    m.d.sync += [in_fin.eq(1), chan.eq(0), fin_lane.eq(0), fin_grp.eq(0)]
                    m.next = "P0"
            self._sequencer(m, [("mov", "nf", "NF"), ("div", "rn", "ONE", "nf")],
                            regs, sources, units, "P", "C0", {})
            self._sequencer(m, per_channel, regs, sources, units, "C", "DX",
                            {"stats": stats_hook, "emit": emit_hook, "store": store_hook, "next": next_hook})
            with m.State("DX"):
                m.d.comb += [self.xg.ready.eq(en), issue.eq(self.xg.valid & en)]
                with m.If(self.xg.valid & en & last):
                    m.next = "FLUSH"
            with m.State("FLUSH"):
                with m.If(~busy):
                    m.d.sync += mode.eq(0)
                    m.next = "IDLE"
        return m
