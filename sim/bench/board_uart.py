"""cocotb bench of the board top at the UART pins: the host program of ``sim/apps/host.py`` runs against
the simulated board exactly as it runs against a real one.

The DUT is ``hw.board_top.BoardTop`` (ports ``clk``, ``rst``, ``rx``, ``tx``, ``busy``, ``error``),
generated and run by ``tests/test_board_uart.py`` through ``sim.bench.common.run_cocotb``. Configuration
(``sim.bench.common.config()``): ``divisor`` (clock cycles per UART bit, as built), ``blocks`` (random
blocks of the end-to-end test), ``seed``.

``rx`` is driven with 8N1 frames (timers of whole bit times; the receiver synchronizes), ``tx`` is
decoded by a monitor that samples each bit in its middle. Host sessions yield ``Send`` / ``Recv``
steps; :func:`run_session` performs them on the pins.
"""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge, Timer

from sim.apps import host
from sim.bench.common import config

CLOCK_NS = 10
#: The unit behind the bridge in this build (``hw.board_top.ATTACHMENTS``).
UNIT = config().get("unit", "shifter")


class UARTBench:
    def __init__(self, dut):
        self.dut = dut
        self.config = config()
        self.divisor = int(self.config["divisor"])
        self.bit_ns = self.divisor * CLOCK_NS
        self.received = bytearray()
        self.frame_errors = 0

    async def start(self):
        dut = self.dut
        dut.rx.value = 1
        dut.rst.value = 1
        cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
        for _ in range(4):
            await RisingEdge(dut.clk)
        dut.rst.value = 0
        for _ in range(4):
            await RisingEdge(dut.clk)
        cocotb.start_soon(self._monitor())

    async def send_frame(self, byte, stop=1):
        for bit in [0] + [(byte >> k) & 1 for k in range(8)] + [stop]:
            self.dut.rx.value = bit
            await Timer(self.bit_ns, unit="ns")

    async def send(self, data):
        for byte in data:
            await self.send_frame(byte)

    async def send_break(self, bits=30):
        self.dut.rx.value = 0
        await Timer(bits * self.bit_ns, unit="ns")
        self.dut.rx.value = 1
        await Timer(4 * self.bit_ns, unit="ns")

    async def idle(self, bits):
        await Timer(bits * self.bit_ns, unit="ns")

    async def _monitor(self):
        tx = self.dut.tx
        while True:
            await FallingEdge(tx)
            await Timer(self.bit_ns // 2, unit="ns")
            if int(tx.value) != 0:
                continue                                  # glitch
            byte = 0
            for k in range(8):
                await Timer(self.bit_ns, unit="ns")
                byte |= int(tx.value) << k
            await Timer(self.bit_ns, unit="ns")
            if int(tx.value) != 1:
                self.frame_errors += 1
            self.received.append(byte)

    async def recv(self, count, *, timeout_bytes=None):
        """Wait for ``count`` bytes; fail if they do not come within ``timeout_bytes`` byte times
        (default: the bytes themselves plus generous slack for the unit)."""
        budget = timeout_bytes if timeout_bytes is not None else 4 * count + 400
        while len(self.received) < count:
            if budget <= 0:
                raise AssertionError(f"timeout: expected {count} bytes from tx, got {len(self.received)}")
            await Timer(10 * self.bit_ns, unit="ns")
            budget -= 1
        data = bytes(self.received[:count])
        del self.received[:count]
        return data


async def run_session(bench, session):
    """The cocotb driver of a ``sim.apps.host`` session."""
    reply = None
    while True:
        try:
            step = session.send(reply)
        except StopIteration as stop:
            return stop.value
        if isinstance(step, host.Send):
            await bench.send(step.data)
            reply = None
        else:
            reply = await bench.recv(step.count)


async def _setup(dut):
    bench = UARTBench(dut)
    await bench.start()
    return bench


@cocotb.test()
async def test_info(dut):
    """INFO names the protocol, the unit and its record sizes; the divisor is the one built."""
    bench = await _setup(dut)
    info = await run_session(bench, host.read_info())
    assert info.version == host.PROTOCOL_VERSION
    assert info.params["divisor"] == bench.divisor
    assert info.kind in host.UNIT_KINDS.values()
    flags, _ = await run_session(bench, host.read_status(info))
    assert not any(flags.values()), flags
    assert bench.frame_errors == 0


@cocotb.test(skip=UNIT != "shifter")
async def test_host_session(dut):
    """The host program end to end: random and edge-case blocks, bit for bit against the golden
    model, in several chunks (R before W, results streaming back while the input is sent)."""
    bench = await _setup(dut)
    info = await run_session(bench, host.read_info())
    assert info.kind == "shifter", info.kind
    blocks = int(bench.config.get("blocks", 40))
    fmt, bfp = info.float_format(), info.bfp()
    words = host.random_float_words(fmt, blocks * bfp.block, seed=int(bench.config.get("seed", 1)))
    # Edge cases first: zeros, subnormals (flush), all-ones exponent (special), largest magnitudes.
    edge = [0] * bfp.block
    edge += [fmt.pack(0, 0, 1)] + [0] * (bfp.block - 1)
    edge += [fmt.pack(k & 1, fmt.exp_max, (1 << fmt.frac_bits) - 1) for k in range(bfp.block)]
    edge += [fmt.pack(1, 1, 0)] + [fmt.pack(0, fmt.exp_max, 0)] * (bfp.block - 1)
    report = await run_session(bench, host.shifter_session(edge + words, chunk=7))
    dut._log.info(report.summary())
    assert report.records == blocks + 4
    assert report.ok, report.summary()
    assert bench.frame_errors == 0


@cocotb.test()
async def test_errors_and_break(dut):
    """Bad opcode and bad port set ``bad_command``; a stop bit of 0 sets ``framing_error``; the
    flags clear on read; a break mid-command resets the bridge, and the board answers again."""
    bench = await _setup(dut)
    info = await run_session(bench, host.read_info())
    await bench.send(b"?")
    await bench.send(b"W" + bytes([len(info.in_bytes)]) + b"\x01\x00")
    await bench.send(b"R" + bytes([len(info.out_bytes)]) + b"\x01\x00")
    await bench.send_frame(0x55, stop=0)
    dut.rx.value = 1                                      # (a line left low would be a break)
    await bench.idle(12)
    flags, _ = await run_session(bench, host.read_status(info))
    assert flags == {"framing_error": True, "overrun": False, "bad_command": True}, flags
    flags, _ = await run_session(bench, host.read_status(info))
    assert not any(flags.values()), flags
    assert int(dut.error.value) == 0
    # Half a WRITE, then a break: the parser would otherwise take the next bytes as data.
    await bench.send(b"W\x00\x05\x00\x12\x34")
    await bench.send_break()
    again = await run_session(bench, host.read_info())
    assert again == info
    flags, _ = await run_session(bench, host.read_status(info))
    assert not any(flags.values()), flags
    if UNIT == "shifter":
        report = await run_session(bench, host.shifter_session(host.random_float_words(
            info.float_format(), 3 * info.params["block"], seed=5)))
        assert report.ok, report.summary()


@cocotb.test(skip=UNIT != "shifter")
async def test_reset_unit(dut):
    """``'Z'`` drops a record held inside the unit: after it, a READ returns only new results."""
    bench = await _setup(dut)
    info = await run_session(bench, host.read_info())
    fmt, bfp = info.float_format(), info.bfp()
    stale = host.pack_float_block(fmt, [fmt.pack(0, 3, 1)] * bfp.block)
    # A WRITE without a READ: the result waits inside the unit.
    await bench.send(b"W\x00\x01\x00" + stale.to_bytes(info.in_bytes[0], "little"))
    await bench.idle(40)
    _, status = await run_session(bench, host.read_status(info))
    assert status & 2, "the unit should hold a result (y_valid)"
    await run_session(bench, host.reset_unit())
    _, status = await run_session(bench, host.read_status(info))
    assert not status & 2, "'Z' should have emptied the unit"
    report = await run_session(bench, host.shifter_session(host.random_float_words(fmt, 2 * bfp.block, seed=9)))
    assert report.ok, report.summary()


@cocotb.test(skip=UNIT not in ("forward", "bn"))
async def test_bn_session(dut):
    """The Range-BN cores through the UART: a training forward pass (stats records and y) and, on
    a ``bn`` top, the backward pass (grads and dx), bit for bit against ``sim.model.golden_bn``; two
    tensors, the second with the largest n the configuration allows."""
    bench = await _setup(dut)
    for n, seed in ((8, 3), (int(bench.config.get("n", 16)), 4)):
        report = await run_session(bench, host.bn_session(n, seed=seed))
        dut._log.info(report.summary())
        assert report.ok, report.summary()
    assert bench.frame_errors == 0
