"""A LightNorm unit behind a UART: the board top for iCEBreaker and ULX3S, and its simulation twin.

:class:`BoardTop` is a plain ``wiring.Component`` with the UART pins as ports (``rx`` in, ``tx``
out); the cocotb bench drives exactly these. :class:`BoardBuild` puts it on an amaranth-boards
platform (pins from the platform's ``uart`` resource, plus the extras in ``constraints.targets``).
What sits behind the bridge is an :class:`Attachment`: any unit whose interface is a set of
input and output streams (the BFP shifter, the forward core, forward + backward cores).

Byte protocol (version 1)
-------------------------
UART 8N1, ``divisor`` clock cycles per bit (no flow control). Every command starts with one
opcode byte; multi-byte integers are little-endian. A *record* is one payload of a unit stream
port, sent as ``ceil(width / 8)`` bytes, least significant byte first; the payload bits are the
Amaranth layout's bits (first field at bit 0), and the pad bits of the last byte are 0 on output
and ignored on input.

``0x00``  NOP.
``'I'``   INFO (0x49). Reply: ``'L' 'N' version kind n_in n_out n_status``, then ``n_in`` bytes
          (record bytes of each input port), ``n_out`` bytes (each output port), ``n_params``,
          then ``n_params`` unsigned 32-bit values in the order of :data:`INFO_PARAMS`.
``'S'``   STATUS (0x53). Reply: ``n_status`` bytes: byte 0 the bridge flags (:data:`FLAGS`, sticky,
          cleared by this read), then the unit's status bits, LSB first (see the attachment).
``'W' port count_lo count_hi`` then ``count`` records: WRITE records into input port ``port``.
          The bridge hands each record to the unit as soon as it is complete and waits for the unit
          to accept it; the 512-byte receive FIFO absorbs the wait. Sending faster than the unit
          consumes, for more than the FIFO holds, loses bytes (flag ``overrun``).
``'R' port count_lo count_hi``: READ ``count`` records from output port ``port``. The reply is
          the records' bytes, nothing else, sent as the unit produces them. The read runs in the
          transmit engine, so the receiver goes on to the next command at once: a host sends
          ``R`` *before* the ``W`` whose data produce the results, and then reads the reply.
          A second ``R``/``S``/``I`` waits (in the receiver) until the previous reply is sent.
``'Z'``   RESET the unit (its registers and streams, not the bridge); no reply.
Any other opcode, or a port number out of range, sets flag ``bad_command`` and is skipped (the
bytes that follow are read as commands). A *UART break* (the line held low for 20 bit times or
more) resets the bridge, its FIFO and the unit: a host starts a session with a break, drains its
input, and sends ``I``.

Flow control is the host's job: the unit consumes input only while its outputs are being read,
so a host reads (``R``) every output a ``W`` will produce, issues the ``R`` first, and keeps each
``W`` small enough (a few hundred bytes) that neither its receive FIFO nor the host's buffer
overflows. ``sim/apps/host.py`` does this.
"""

from amaranth.hdl import Array, Cat, Const, Elaboratable, Module, Mux, ResetInserter, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from hw.checks import check_instance, check_int
from hw.uart import UARTRx, UARTTx, check_divisor

__all__ = [
    "Attachment", "BoardTop", "BoardBuild", "ATTACHMENTS", "attachment_for",
    "shifter_attachment", "forward_attachment", "bn_attachment",
    "UNIT_KINDS", "INFO_PARAMS", "FLAGS", "OP_NOP", "OP_INFO", "OP_STATUS", "OP_WRITE", "OP_READ",
    "OP_RESET", "PROTOCOL_VERSION", "MAGIC", "MAX_RECORD_BYTES", "MAX_COUNT",
]

PROTOCOL_VERSION = 1
MAGIC = b"LN"
OP_NOP, OP_INFO, OP_STATUS, OP_WRITE, OP_READ, OP_RESET = 0x00, ord("I"), ord("S"), ord("W"), ord("R"), ord("Z")
#: Bridge flags in status byte 0, LSB first (sticky until read).
FLAGS = ("framing_error", "overrun", "bad_command")
#: Unit kinds in the INFO reply.
UNIT_KINDS = {"shifter": 0, "forward": 1, "bn": 2}
#: Parameters in the INFO reply, in order (0 where a unit has no such parameter).
INFO_PARAMS = ("width", "block", "exp_bits", "frac_bits", "channels", "chunks", "max_count",
               "internal_frac_bits", "divisor", "rx_fifo_depth", "stats_low", "stats_guard")
MAX_RECORD_BYTES = 255
MAX_COUNT = 0xFFFF


def _record_bytes(shape):
    from amaranth.hdl import Shape
    return (Shape.cast(shape).width + 7) // 8


class Attachment:
    """A unit as the bridge sees it.

    Parameters
    ----------
    kind : str
        A key of :data:`UNIT_KINDS`.
    unit : Elaboratable
        The unit itself (elaborated under a reset that ``'Z'`` and a break pulse).
    inputs, outputs : list of (name, stream interface)
        The unit's stream ports in host port order, e.g. ``[("x", shifter.i)]``. Input ports carry
        host -> unit records, output ports unit -> host.
    status : list of (name, 1-bit Value)
        Unit status bits reported by ``'S'`` after the flags byte, LSB first.
    params : dict
        Values for :data:`INFO_PARAMS` (missing ones are 0).
    """

    def __init__(self, kind, unit, inputs, outputs, status=(), params=None):
        if kind not in UNIT_KINDS:
            raise ValueError(f"attachment kind must be one of {', '.join(UNIT_KINDS)}, not {kind!r}")
        if not inputs or not outputs:
            raise ValueError("an attachment needs at least one input and one output stream")
        self.kind = kind
        self.unit = unit
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.status = list(status)
        self.params = dict(params or {})
        unknown = set(self.params) - set(INFO_PARAMS)
        if unknown:
            raise ValueError(f"unknown attachment parameters {sorted(unknown)}; known: {', '.join(INFO_PARAMS)}")
        for name, port in self.inputs + self.outputs:
            n = _record_bytes(Value.cast(port.payload).shape())
            if n > MAX_RECORD_BYTES:
                raise ValueError(f"stream {name!r} has {n}-byte records; the bridge carries at most "
                                 f"{MAX_RECORD_BYTES}")

    def in_bytes(self):
        return [_record_bytes(Value.cast(p.payload).shape()) for _, p in self.inputs]

    def out_bytes(self):
        return [_record_bytes(Value.cast(p.payload).shape()) for _, p in self.outputs]

    @property
    def status_bytes(self):
        return 1 + (len(self.status) + 7) // 8


def shifter_attachment(params):
    """The BFP shifter (``hw.bfp_shifter.BFPShifter``): input port 0 ``x`` takes blocks of
    ``params.block`` packed floats of ``params.in_format`` (lane 0 in the low bits), output port 0
    ``y`` gives flagged BFP blocks (``BFPFormat.flagged_block_layout()``: exponent, codes, flags).
    Status bits: ``x_ready``, ``y_valid``."""
    from hw.bfp_shifter import BFPShifter
    shifter = BFPShifter(params.float_format, params.bfp)
    fmt = params.float_format
    return Attachment(
        "shifter", shifter, inputs=[("x", shifter.i)], outputs=[("y", shifter.o)],
        status=[("x_ready", shifter.i.ready), ("y_valid", shifter.o.valid)],
        params={"width": params.width, "block": params.block, "exp_bits": fmt.exp_bits,
                "frac_bits": fmt.frac_bits})


def _core_params(params):
    fmt = params.float_format
    return {"width": params.width, "block": params.block, "exp_bits": fmt.exp_bits,
            "frac_bits": fmt.frac_bits, "channels": params.channels, "chunks": params.chunks,
            "max_count": params.max_count, "internal_frac_bits": params.frac_bits,
            "stats_low": int(params.stats == "low"), "stats_guard": params.stats_guard}


def forward_attachment(params):
    """The Range-BN forward core (``hw.forward_core.ForwardCore``, records of ``hw.bn_layouts``).
    Input ports: 0 ``cmd``, 1 ``x``, 2 ``params``; output ports: 0 ``stats``, 1 ``y``.
    Status bits: ``busy``, ``count_error``."""
    from hw.forward_core import ForwardCore
    fwd = ForwardCore.from_params(params)
    return Attachment(
        "forward", fwd,
        inputs=[("cmd", fwd.cmd), ("x", fwd.x), ("params", fwd.params)],
        outputs=[("stats", fwd.stats), ("y", fwd.y)],
        status=[("busy", fwd.busy), ("count_error", fwd.count_error)],
        params=_core_params(params))


def bn_attachment(params):
    """The training unit ``hw.bn_core.BNCore`` (forward and backward cores sharing one affine; the
    host carries the forward ``stats`` records back into the backward core, so it can check them
    too). Input ports: 0 ``cmd``, 1 ``x``, 2 ``params`` (forward), 3 ``bcmd``, 4 ``saved``
    (backward ``stats``), 5 ``xg``, 6 ``g``; output ports: 0 ``stats``, 1 ``y``, 2 ``grads``, 3 ``dx``.
    Status bits: forward ``busy``, ``count_error``, backward ``busy``, ``count_error``."""
    from hw.bn_core import BNCore
    bn = BNCore.from_params(params)
    return Attachment(
        "bn", bn,
        inputs=[("cmd", bn.fwd_cmd), ("x", bn.fwd_x), ("params", bn.fwd_params),
                ("bcmd", bn.bwd_cmd), ("saved", bn.bwd_stats), ("xg", bn.bwd_xg), ("g", bn.bwd_g)],
        outputs=[("stats", bn.fwd_stats), ("y", bn.fwd_y), ("grads", bn.bwd_grads), ("dx", bn.bwd_dx)],
        status=[("fwd_busy", bn.fwd_busy), ("fwd_count_error", bn.fwd_count_error),
                ("bwd_busy", bn.bwd_busy), ("bwd_count_error", bn.bwd_count_error)],
        params=_core_params(params))


#: Attachments by name: ``factory(params) -> Attachment``.
ATTACHMENTS = {"shifter": shifter_attachment, "forward": forward_attachment, "bn": bn_attachment}


def attachment_for(name, params):
    if name not in ATTACHMENTS:
        raise ValueError(f"unknown unit {name!r}; available: {', '.join(ATTACHMENTS)}")
    return ATTACHMENTS[name](params)


class _Bridge(Elaboratable):
    """Command parser and transmit engine; everything in here is reset by a UART break."""

    def __init__(self, attachment, divisor, rx_fifo_depth):
        self.att = attachment
        self.divisor = divisor
        self.rx_fifo_depth = rx_fifo_depth
        self.rx_byte = stream.Signature(8).flip().create()   # from the UART receiver
        self.rx_flags = Signal(2)                            # framing_error, overrun pulses
        self.tx = Signal(init=1)
        self.busy = Signal()
        self.error = Signal()

    def info_bytes(self):
        att = self.att
        params = dict(att.params, divisor=self.divisor, rx_fifo_depth=self.rx_fifo_depth)
        out = bytearray(MAGIC)
        out += bytes([PROTOCOL_VERSION, UNIT_KINDS[att.kind], len(att.inputs), len(att.outputs),
                      att.status_bytes])
        out += bytes(att.in_bytes()) + bytes(att.out_bytes())
        out.append(len(INFO_PARAMS))
        for name in INFO_PARAMS:
            out += int(params.get(name, 0)).to_bytes(4, "little")
        return bytes(out)

    def elaborate(self, platform):
        m = Module()
        att = self.att
        zap = Signal()
        m.submodules.unit = ResetInserter(zap)(att.unit)
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=8, depth=self.rx_fifo_depth)
        m.submodules.uart_tx = utx = UARTTx(self.divisor)
        m.d.comb += self.tx.eq(utx.tx)

        m.d.comb += [
            fifo.w_data.eq(self.rx_byte.payload),
            fifo.w_en.eq(self.rx_byte.valid),
            self.rx_byte.ready.eq(fifo.w_rdy),
        ]

        flags = Signal(len(FLAGS))
        set_flags = Signal(len(FLAGS))
        clear_flags = Signal()
        m.d.sync += flags.eq(Mux(clear_flags, 0, flags | set_flags))
        m.d.comb += [set_flags[0].eq(self.rx_flags[0]), set_flags[1].eq(self.rx_flags[1])]
        m.d.comb += self.error.eq(flags.any())

        in_bytes, out_bytes = att.in_bytes(), att.out_bytes()
        n_in, n_out = len(in_bytes), len(out_bytes)
        rec = Signal(8 * max(in_bytes))
        byte_idx = Signal(range(max(max(in_bytes), max(out_bytes), len(self.info_bytes()), att.status_bytes) + 1))

        # --- receiver: command parser -------------------------------------------------------
        op = Signal(8)
        port = Signal(8)
        count = Signal(16)
        # A job handed to the transmit engine.
        job_start = Signal()
        job_kind = Signal(2)        # 0 read, 1 status, 2 info
        tx_idle = Signal()
        JOB_READ, JOB_STATUS, JOB_INFO = 0, 1, 2

        in_limit = Array(Const(n - 1, 8) for n in in_bytes)
        port_ok_in = port < n_in
        port_ok_out = port < n_out
        for k, (_, p) in enumerate(att.inputs):
            width = Value.cast(p.payload).shape().width
            m.d.comb += p.payload.eq(rec[:width])

        with m.FSM(name="rx_fsm") as rx_fsm:
            with m.State("IDLE"):
                with m.If(fifo.r_rdy):
                    m.d.comb += fifo.r_en.eq(1)
                    m.d.sync += op.eq(fifo.r_data)
                    with m.Switch(fifo.r_data):
                        with m.Case(OP_NOP):
                            pass
                        with m.Case(OP_WRITE, OP_READ):
                            m.next = "PORT"
                        with m.Case(OP_STATUS, OP_INFO):
                            m.next = "JOB"
                        with m.Case(OP_RESET):
                            m.d.comb += zap.eq(1)
                        with m.Default():
                            m.d.comb += set_flags[2].eq(1)
            with m.State("PORT"):
                with m.If(fifo.r_rdy):
                    m.d.comb += fifo.r_en.eq(1)
                    m.d.sync += port.eq(fifo.r_data)
                    m.next = "COUNT_LO"
            with m.State("COUNT_LO"):
                with m.If(fifo.r_rdy):
                    m.d.comb += fifo.r_en.eq(1)
                    m.d.sync += count[:8].eq(fifo.r_data)
                    m.next = "COUNT_HI"
            with m.State("COUNT_HI"):
                with m.If(fifo.r_rdy):
                    m.d.comb += fifo.r_en.eq(1)
                    m.d.sync += [count[8:].eq(fifo.r_data), byte_idx.eq(0)]
                    m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(op == OP_WRITE):
                    with m.If(~port_ok_in):
                        m.d.comb += set_flags[2].eq(1)
                        m.next = "IDLE"
                    with m.Elif(count == 0):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "WDATA"
                with m.Else():
                    with m.If(~port_ok_out):
                        m.d.comb += set_flags[2].eq(1)
                        m.next = "IDLE"
                    with m.Elif(count == 0):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "JOB"
            with m.State("JOB"):
                with m.If(tx_idle):
                    m.d.comb += job_start.eq(1)
                    with m.Switch(op):
                        with m.Case(OP_READ):
                            m.d.comb += job_kind.eq(JOB_READ)
                        with m.Case(OP_STATUS):
                            m.d.comb += job_kind.eq(JOB_STATUS)
                        with m.Default():
                            m.d.comb += job_kind.eq(JOB_INFO)
                    m.next = "IDLE"
            with m.State("WDATA"):
                with m.If(fifo.r_rdy):
                    m.d.comb += fifo.r_en.eq(1)
                    m.d.sync += rec.word_select(byte_idx, 8).eq(fifo.r_data)
                    with m.If(byte_idx == in_limit[port[:max(1, (n_in - 1).bit_length())]]):
                        m.next = "WVALID"
                    with m.Else():
                        m.d.sync += byte_idx.eq(byte_idx + 1)
            with m.State("WVALID"):
                ready = Signal()
                for k, (_, p) in enumerate(att.inputs):
                    sel = port == k
                    m.d.comb += p.valid.eq(sel)
                    with m.If(sel):
                        m.d.comb += ready.eq(p.ready)
                with m.If(ready):
                    m.d.sync += [count.eq(count - 1), byte_idx.eq(0)]
                    with m.If(count == 1):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "WDATA"
        m.d.comb += self.busy.eq(~rx_fsm.ongoing("IDLE") | ~tx_idle)

        # --- transmit engine --------------------------------------------------------------------
        t_port = Signal(8)
        t_count = Signal(16)
        t_idx = Signal(range(max(max(out_bytes), len(self.info_bytes()), att.status_bytes) + 1))
        snapshot = Signal(8 * att.status_bytes)
        info = self.info_bytes()
        info_rom = Array(Const(b, 8) for b in info)

        port_sel = t_port[:max(1, (n_out - 1).bit_length())]
        out_limit = Array(Const(n - 1, 8) for n in out_bytes)
        out_valid = Array(p.valid for _, p in att.outputs)
        out_byte = Array(
            Array(Value.cast(p.payload).as_unsigned()[8 * j:8 * j + 8] for j in range(n))
            for (_, p), n in zip(att.outputs, out_bytes))
        status_bits = Cat(*(bit for _, bit in att.status)) if att.status else Const(0, 1)

        # ``ready`` is also high while an output is not valid (legal, and it lets a producer whose
        # last stage only loads on ``ready`` drain its bubbles).
        take = Signal()
        for k, (_, p) in enumerate(att.outputs):
            m.d.comb += p.ready.eq(~p.valid | (take & (port_sel == k)))

        with m.FSM(name="tx_fsm") as tx_fsm:
            with m.State("IDLE"):
                m.d.comb += tx_idle.eq(1)
                with m.If(job_start):
                    m.d.sync += [t_port.eq(port), t_count.eq(count), t_idx.eq(0)]
                    with m.Switch(job_kind):
                        with m.Case(JOB_READ):
                            m.next = "READ"
                        with m.Case(JOB_STATUS):
                            m.d.sync += snapshot.eq(Cat(flags | set_flags, Const(0, 8 - len(FLAGS)), status_bits))
                            m.d.comb += clear_flags.eq(1)
                            m.next = "STATUS"
                        with m.Default():
                            m.next = "INFO"
            with m.State("READ"):
                # Bytes come straight from the unit's output payload, which holds while valid and
                # not ready; ready is raised with the last byte.
                with m.If(out_valid[port_sel]):
                    m.d.comb += [utx.i.valid.eq(1), utx.i.payload.eq(out_byte[port_sel][t_idx])]
                    with m.If(utx.i.ready):
                        with m.If(t_idx == out_limit[port_sel]):
                            m.d.comb += take.eq(1)
                            m.d.sync += [t_idx.eq(0), t_count.eq(t_count - 1)]
                            with m.If(t_count == 1):
                                m.next = "IDLE"
                        with m.Else():
                            m.d.sync += t_idx.eq(t_idx + 1)
            with m.State("STATUS"):
                m.d.comb += [utx.i.valid.eq(1), utx.i.payload.eq(snapshot.word_select(t_idx, 8))]
                with m.If(utx.i.ready):
                    m.d.sync += t_idx.eq(t_idx + 1)
                    with m.If(t_idx == att.status_bytes - 1):
                        m.next = "IDLE"
            with m.State("INFO"):
                m.d.comb += [utx.i.valid.eq(1), utx.i.payload.eq(info_rom[t_idx])]
                with m.If(utx.i.ready):
                    m.d.sync += t_idx.eq(t_idx + 1)
                    with m.If(t_idx == len(info) - 1):
                        m.next = "IDLE"
        return m


class BoardTop(wiring.Component):
    """UART bridge + attached unit (see the module docstring for the protocol).

    Parameters
    ----------
    attachment : Attachment
    divisor : int
        Clock cycles per UART bit (``round(f_clk / baud)``; 4 or more).
    rx_fifo_depth : int
        Bytes the receive FIFO holds (default 512: one iCE40 EBR, half an ECP5 DP16KD).

    Ports
    -----
    rx : In(1)        UART line from the host (idles high).
    tx : Out(1)       UART line to the host (idles high).
    busy : Out(1)     a command is being parsed or a reply sent (for an LED).
    error : Out(1)    a bridge flag is set (for an LED).
    """

    def __init__(self, attachment, divisor, *, rx_fifo_depth=512):
        check_instance("attachment", attachment, Attachment)
        check_divisor(divisor)
        check_int("receive FIFO depth", rx_fifo_depth, 16, 65536, power_of_two=True)
        self.attachment = attachment
        self.divisor = divisor
        self.rx_fifo_depth = rx_fifo_depth
        self._bridge = _Bridge(attachment, divisor, rx_fifo_depth)
        super().__init__({
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "busy": Out(1),
            "error": Out(1),
        })

    def info_bytes(self):
        """The exact INFO reply of this top."""
        return self._bridge.info_bytes()

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = urx = UARTRx(self.divisor)
        brk = Signal()
        m.d.sync += brk.eq(urx.brk)
        m.submodules.bridge = bridge = ResetInserter(brk)(self._bridge)
        b = self._bridge
        m.d.comb += [
            urx.rx.eq(self.rx),
            b.rx_byte.payload.eq(urx.o.payload),
            b.rx_byte.valid.eq(urx.o.valid),
            urx.o.ready.eq(b.rx_byte.ready),
            b.rx_flags.eq(Cat(urx.framing_error, urx.overrun)),
            self.tx.eq(b.tx),
            self.busy.eq(b.busy),
            self.error.eq(b.error),
        ]
        return m


class BoardBuild(Elaboratable):
    """:class:`BoardTop` on an amaranth-boards platform: UART pins from the platform's ``uart``
    resource; ``busy`` and ``error`` on two LEDs; board extras from ``constraints.targets``."""

    def __init__(self, board, attachment, divisor, *, rx_fifo_depth=512):
        from constraints.targets import board_target
        self.target = board_target(board)
        self.top = BoardTop(attachment, divisor, rx_fifo_depth=rx_fifo_depth)

    def elaborate(self, platform):
        m = Module()
        m.submodules.top = top = self.top
        uart = platform.request("uart", 0)
        m.d.comb += [top.rx.eq(uart.rx.i), uart.tx.o.eq(top.tx)]
        led_busy, led_error = (platform.request(name, idx) for name, idx in self.target.leds)
        # Registered: an LED needs no same-cycle timing, and a combinational LED output puts the
        # whole status logic (down to the finalize datapath) on a register-to-pin path.
        m.d.sync += [led_busy.o.eq(top.busy), led_error.o.eq(top.error)]
        for name, value in self.target.drive_high:
            m.d.comb += platform.request(name, 0).o.eq(value)
        return m
