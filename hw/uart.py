"""8N1 UART receiver and transmitter with streams, for the board bridge (``hw.board_top``).

Both take ``divisor``: clock cycles per bit, ``round(f_clk / baud)``. The receiver samples each
bit once, in its middle, so the baud mismatch between the two ends must stay below about
``1 / (2 * 10)`` = 5 % over a frame; with integer divisors from 12 MHz and 25 MHz the error at
115200 baud is 0.16 % (divisor 104) and 0.01 % (217), and 0 at 1 Mbaud (12 and 25).

Frame: one start bit (0), eight data bits LSB first, one stop bit (1); the line idles high.
"""

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from hw.checks import check_int

__all__ = ["UARTRx", "UARTTx", "MIN_DIVISOR", "MAX_DIVISOR", "check_divisor"]

#: Limits of the bit divisor (clock cycles per bit).
MIN_DIVISOR = 4
MAX_DIVISOR = 1 << 24


def check_divisor(divisor):
    return check_int("UART divisor", divisor, MIN_DIVISOR, MAX_DIVISOR, unit="(clock cycles per bit)")


class UARTRx(wiring.Component):
    """8N1 receiver.

    Ports
    -----
    rx : In(1)
        The line (asynchronous; synchronized here by two flip-flops; idles high).
    o : Out(stream.Signature(8))
        Received bytes. There is no flow control on a UART: ``o.valid`` rises one cycle after the
        middle of the stop bit and holds until ``o.ready``; a byte completed while the previous one
        is still waiting is dropped and ``overrun`` pulses. Put a FIFO behind it.
    framing_error : Out(1)
        One-cycle pulse: a stop bit sampled 0 (the byte is dropped; the receiver then waits for
        the line to go high before looking for the next start bit).
    brk : Out(1)
        One-cycle pulse when the line has been low for ``break_bits`` bit times (a UART break);
        the bridge uses it as a reset.

    Timing: a falling edge starts a frame; the start bit is re-checked half a bit later (a glitch
    shorter than that is ignored); data bits and the stop bit are sampled a whole bit apart from
    there. After the stop bit's sample the receiver is idle again, so a sender up to half a bit
    faster per frame is tolerated.
    """

    def __init__(self, divisor, *, break_bits=20):
        self.divisor = check_divisor(divisor)
        self.break_bits = check_int("break length", break_bits, 11, 1024, unit="bit times")
        super().__init__({
            "rx": In(1, init=1),
            "o": Out(stream.Signature(8)),
            "framing_error": Out(1),
            "overrun": Out(1),
            "brk": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        div = self.divisor
        line = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, line, init=1)

        timer = Signal(range(div))
        bit = Signal(range(9))
        shreg = Signal(8)

        # Break detector: consecutive low samples.
        brk_len = self.break_bits * div
        low = Signal(range(brk_len + 1))
        with m.If(line):
            m.d.sync += low.eq(0)
        with m.Elif(low != brk_len):
            m.d.sync += low.eq(low + 1)
        m.d.comb += self.brk.eq(low == brk_len - 1)

        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(div // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(line):
                    m.next = "IDLE"                       # glitch, not a start bit
                with m.Else():
                    m.d.sync += [timer.eq(div - 1), bit.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [timer.eq(div - 1), shreg.eq(Cat(shreg[1:], line)), bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(line):
                    with m.If(self.o.valid & ~self.o.ready):
                        m.d.comb += self.overrun.eq(1)
                    with m.Else():
                        m.d.sync += [self.o.payload.eq(shreg), self.o.valid.eq(1)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += self.framing_error.eq(1)
                    m.next = "WAIT_HIGH"
            with m.State("WAIT_HIGH"):
                with m.If(line):
                    m.next = "IDLE"
        return m


class UARTTx(wiring.Component):
    """8N1 transmitter.

    Ports
    -----
    i : In(stream.Signature(8))
        Bytes to send. ``i.ready`` is high exactly when the transmitter is idle (it does not depend
        on ``i.valid``); a byte is taken in one cycle and its start bit begins on the next.
        Back to back bytes leave no idle time between the stop bit and the next start bit.
    tx : Out(1)
        The line (registered; idles high).
    """

    def __init__(self, divisor):
        self.divisor = check_divisor(divisor)
        super().__init__({
            "i": In(stream.Signature(8)),
            "tx": Out(1, init=1),
        })

    def elaborate(self, platform):
        m = Module()
        div = self.divisor
        timer = Signal(range(div))
        bits = Signal(range(11))                 # bits left to send, stop bit included
        shreg = Signal(9, init=0x1FF)            # data then stop bit, shifted out LSB first

        m.d.comb += self.i.ready.eq(bits == 0)
        with m.If(bits == 0):
            with m.If(self.i.valid):
                m.d.sync += [
                    self.tx.eq(0),               # start bit
                    shreg.eq(Cat(self.i.payload, Const(1, 1))),
                    timer.eq(div - 1),
                    bits.eq(10),
                ]
        with m.Elif(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.Else():
            m.d.sync += [bits.eq(bits - 1), timer.eq(div - 1)]
            with m.If(bits != 1):
                m.d.sync += [self.tx.eq(shreg[0]), shreg.eq(Cat(shreg[1:], Const(1, 1)))]
        return m
