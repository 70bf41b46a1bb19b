"""Host program for a UART-attached LightNorm unit (``hw/board_top.py``): real board or simulation.

The protocol logic is written once, *sans I/O*: a session is a generator that yields
:class:`Send` (bytes to write) and :class:`Recv` (a number of bytes to read, sent back into the
generator) and returns a :class:`Report`. Two drivers run the same sessions:

* :func:`run_serial` on a real serial port (pyserial, imported only here; ``pip install pyserial``
  — an optional extra, not a dependency of the project);
* the cocotb bench ``sim/test_board_uart.py``, which turns ``Send`` into UART frames on the ``rx``
  pin of :class:`hw.board_top.BoardTop` and ``Recv`` into bytes decoded from its ``tx`` pin.

Every result is compared bit for bit with the golden model (``sim/golden.py``).

Command line (a board flashed with ``python -m gen bitstream``)::

    pip install pyserial
    python -m sim.host --port /dev/ttyUSB1                    # iCEBreaker: 2nd FTDI channel
    python -m sim.host --port /dev/ttyUSB0 --blocks 1000      # ULX3S
    python -m sim.host --port /dev/ttyUSB0 --npy tensor.npy   # floats from a file

Exit status: 0 all results equal the golden model, 1 mismatches (listed) or a board error,
2 bad arguments.
"""

import argparse
import random
import sys
from dataclasses import dataclass, field

from hw.formats import BFPFormat, FloatFormat, FLAG_NAMES

__all__ = [
    "Send", "Recv", "BoardInfo", "Report", "HostError",
    "read_info", "read_status", "reset_unit", "transfer",
    "shifter_session", "random_float_words", "words_from_array",
    "run_session", "run_serial", "main",
]

# Protocol constants; kept equal to hw.board_top's (checked by tests/test_board_uart.py) so that
# this module needs no HDL to talk to a board.
OP_INFO, OP_STATUS, OP_WRITE, OP_READ, OP_RESET = b"I", b"S", b"W", b"R", b"Z"
MAGIC = b"LN"
PROTOCOL_VERSION = 1
UNIT_KINDS = {0: "shifter", 1: "forward", 2: "bn"}
INFO_PARAMS = ("width", "block", "exp_bits", "frac_bits", "channels", "chunks", "max_count",
               "internal_frac_bits", "divisor", "rx_fifo_depth")
FLAGS = ("framing_error", "overrun", "bad_command")


class HostError(Exception):
    """The board answered something the host cannot use (wrong magic, timeout, ...)."""


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class Recv:
    count: int


@dataclass
class BoardInfo:
    version: int
    kind: str
    in_bytes: list
    out_bytes: list
    status_bytes: int
    params: dict

    def float_format(self):
        p = self.params
        return FloatFormat(f"e{p['exp_bits']}m{p['frac_bits']}", p["exp_bits"], p["frac_bits"])

    def bfp(self):
        p = self.params
        return BFPFormat(width=p["width"], exp_bits=p["exp_bits"], block=p["block"])


@dataclass
class Report:
    what: str
    records: int = 0
    mismatches: list = field(default_factory=list)    # (index, expected, got) as text
    flags: dict = field(default_factory=dict)          # bridge flags seen at the end
    info: BoardInfo = None

    @property
    def ok(self):
        return not self.mismatches and not any(self.flags.values())

    def summary(self):
        bad = [name for name, v in self.flags.items() if v]
        text = (f"{self.what}: {self.records} records, {len(self.mismatches)} mismatches against the "
                f"golden model" + (f", bridge flags: {', '.join(bad)}" if bad else ""))
        lines = [text] + [f"  record {i}: expected {e}, got {g}" for i, e, g in self.mismatches[:20]]
        if len(self.mismatches) > 20:
            lines.append(f"  ... {len(self.mismatches) - 20} more")
        return "\n".join(lines)


# --- protocol steps (generators) ----------------------------------------------------------------

def read_info():
    """``'I'``: returns a :class:`BoardInfo`."""
    yield Send(OP_INFO)
    head = yield Recv(7)
    if head[:2] != MAGIC:
        raise HostError(f"no LightNorm board top answered (INFO reply starts {bytes(head[:2])!r}, expected {MAGIC!r})")
    version, kind, n_in, n_out, n_status = head[2:7]
    if version != PROTOCOL_VERSION:
        raise HostError(f"board speaks protocol version {version}, this host {PROTOCOL_VERSION}")
    ports = yield Recv(n_in + n_out + 1)
    n_params = ports[-1]
    values = yield Recv(4 * n_params)
    params = {name: int.from_bytes(values[4 * k:4 * k + 4], "little")
              for k, name in enumerate(INFO_PARAMS[:n_params])}
    return BoardInfo(version=version, kind=UNIT_KINDS.get(kind, f"unknown({kind})"),
                     in_bytes=list(ports[:n_in]), out_bytes=list(ports[n_in:n_in + n_out]),
                     status_bytes=n_status, params=params)


def read_status(info):
    """``'S'``: returns ``(flags dict, unit status int)``; the flags are cleared by the read."""
    yield Send(OP_STATUS)
    data = yield Recv(info.status_bytes)
    flags = {name: bool(data[0] >> k & 1) for k, name in enumerate(FLAGS)}
    return flags, int.from_bytes(bytes(data[1:]), "little")


def reset_unit():
    """``'Z'``: reset the unit behind the bridge."""
    yield Send(OP_RESET)


def _cmd(op, port, count):
    return op + bytes([port]) + count.to_bytes(2, "little")


def transfer(info, in_port, records, out_port=None, out_per_record=1, chunk=None):
    """Write ``records`` (ints) to input port ``in_port``; when ``out_port`` is given, read
    ``out_per_record`` records from it per record written (the ``R`` goes first, so the results
    stream back while the input is sent). Chunks keep each ``W`` inside the board's receive FIFO.
    Returns the output records (ints)."""
    nin = info.in_bytes[in_port]
    fifo = info.params.get("rx_fifo_depth", 512)
    limit = max(1, min(0xFFFF, (fifo - 4) // nin))
    chunk = limit if chunk is None else max(1, min(chunk, limit))
    results = []
    for start in range(0, len(records), chunk):
        part = records[start:start + chunk]
        if out_port is not None:
            yield Send(_cmd(OP_READ, out_port, len(part) * out_per_record))
        yield Send(_cmd(OP_WRITE, in_port, len(part)) + b"".join(r.to_bytes(nin, "little") for r in part))
        if out_port is not None:
            nout = info.out_bytes[out_port]
            data = yield Recv(len(part) * out_per_record * nout)
            results += [int.from_bytes(data[k:k + nout], "little") for k in range(0, len(data), nout)]
    return results


# --- the BFP shifter ------------------------------------------------------------------------------

def pack_float_block(fmt, words):
    """Input record of the shifter: lane k in bits ``[k * fmt.width, (k + 1) * fmt.width)``."""
    return sum(w << (k * fmt.width) for k, w in enumerate(words))


def pack_flagged_block(bfp, block):
    """A ``hw.formats.BFPFormat.flagged_block_layout()`` record: exponent, codes (lane 0 first),
    flags (``FLAG_NAMES``), LSB first."""
    value = block[0]
    pos = bfp.exp_bits
    for code in block[1]:
        value |= bfp.to_bits(code) << pos
        pos += bfp.width
    for name in FLAG_NAMES:
        value |= int(bool(block[2][name])) << pos
        pos += 1
    return value


def unpack_flagged_block(bfp, value):
    from sim.golden import Block
    exponent = value & ((1 << bfp.exp_bits) - 1)
    pos = bfp.exp_bits
    codes = []
    for _ in range(bfp.block):
        codes.append(bfp.to_signed(value >> pos))
        pos += bfp.width
    flags = {}
    for name in FLAG_NAMES:
        flags[name] = bool(value >> pos & 1)
        pos += 1
    return Block(exponent, codes, flags)


def _block_text(block):
    flags = "".join(name[0] if block[2][name] else "-" for name in FLAG_NAMES)
    return f"E={block[0]} codes={list(block[1])} flags={flags}"


def random_float_words(fmt, count, seed=0):
    """``count`` packed floats of ``fmt`` that exercise the shifter: random words, blocks with a
    narrow exponent spread (rounding at every shift), zeros, subnormals (flushed) and the all-ones
    exponent (flag ``special``)."""
    rng = random.Random(seed)
    words = []
    while len(words) < count:
        style = rng.randrange(4)
        base = rng.randrange(1, fmt.exp_max + 1)
        for _ in range(8):
            if style == 0:
                w = rng.getrandbits(fmt.width)
            else:
                e = min(fmt.exp_max, max(0, base - rng.randrange(0, 4 if style == 1 else fmt.frac_bits + 4)))
                if rng.random() < 0.05:
                    e = 0
                w = fmt.pack(rng.getrandbits(1), e, rng.getrandbits(fmt.frac_bits))
            words.append(w)
    return words[:count]


def words_from_array(fmt, values):
    """Packed floats (round to nearest even, saturating) of any iterable of numbers."""
    return [fmt.encode(float(v)) for v in values]


def shifter_session(words, *, chunk=None):
    """Convert ``words`` (packed floats; padded with zeros to whole blocks) on the board's BFP
    shifter and compare every block with ``sim.golden.float_to_bfp`` bit for bit."""
    from sim.golden import float_to_bfp
    info = yield from read_info()
    if info.kind != "shifter":
        raise HostError(f"this session needs the BFP shifter; the board has {info.kind!r}")
    fmt, bfp = info.float_format(), info.bfp()
    yield from reset_unit()
    yield from read_status(info)                          # clear stale flags
    words = list(words) + [0] * (-len(words) % bfp.block)
    blocks = [words[k:k + bfp.block] for k in range(0, len(words), bfp.block)]
    got = yield from transfer(info, 0, [pack_float_block(fmt, b) for b in blocks], out_port=0, chunk=chunk)
    report = Report("BFP shifter", records=len(blocks), info=info)
    for k, (lanes, value) in enumerate(zip(blocks, got)):
        expected = float_to_bfp(fmt, bfp, lanes)
        if pack_flagged_block(bfp, expected) != value:
            report.mismatches.append((k, _block_text(expected), _block_text(unpack_flagged_block(bfp, value))))
    report.flags, _ = yield from read_status(info)
    return report


# --- drivers ----------------------------------------------------------------------------------------

def run_session(session, send, recv):
    """Drive a session with two plain functions: ``send(bytes)`` and ``recv(n) -> bytes``."""
    reply = None
    try:
        while True:
            step = session.send(reply)
            if isinstance(step, Send):
                send(step.data)
                reply = None
            else:
                reply = recv(step.count)
    except StopIteration as stop:
        return stop.value


def run_serial(port, baud, session, *, timeout=2.0):
    """Run a session on a real serial port: start with a UART break (resets the bridge), drain
    stale input, then talk."""
    try:
        import serial
    except ImportError:
        raise HostError("talking to a board needs pyserial, which is not a dependency of this "
                        "project: pip install pyserial") from None
    import time
    with serial.Serial(port, baud, timeout=timeout) as ser:
        ser.send_break(0.05)
        time.sleep(0.05)
        ser.reset_input_buffer()

        def recv(n):
            data = ser.read(n)
            if len(data) != n:
                raise HostError(f"timeout: expected {n} bytes from {port}, got {len(data)} "
                                f"(baud {baud} as built? board flashed?)")
            return data
        return run_session(session, ser.write, recv)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        sys.stderr.write(f"host: error: {message}\n")
        sys.exit(2)


def main(argv=None):
    parser = _Parser(prog="python -m sim.host",
                     description="Talk to a UART-attached LightNorm board (built with 'python -m gen "
                                 "bitstream'): send a tensor, read the results, compare them bit for "
                                 "bit with the golden model. Needs pyserial (pip install pyserial).")
    parser.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB1 (iCEBreaker) or /dev/ttyUSB0 (ULX3S)")
    parser.add_argument("--baud", type=int, default=115200, help="baud rate the bitstream was built for (default 115200)")
    parser.add_argument("--blocks", type=int, default=256, help="random blocks to send (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random tensor (default 0)")
    parser.add_argument("--npy", help="send the values of this .npy file (any shape, flattened) instead")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a reply (default 5)")
    args = parser.parse_args(argv)
    if args.blocks < 1:
        parser.error(f"blocks must be a positive integer, not {args.blocks!r}")

    def session():
        info = yield from read_info()
        fmt, bfp = info.float_format(), info.bfp()
        if args.npy:
            import numpy as np
            try:
                words = words_from_array(fmt, np.load(args.npy).ravel())
            except (OSError, ValueError) as exc:
                raise HostError(f"cannot read {args.npy}: {exc}") from None
        else:
            words = random_float_words(fmt, args.blocks * bfp.block, seed=args.seed)
        print(f"board: {info.kind}, " + ", ".join(f"{k}={v}" for k, v in info.params.items() if v))
        return (yield from shifter_session(words))

    try:
        report = run_serial(args.port, args.baud, session(), timeout=args.timeout)
    except HostError as exc:
        sys.stderr.write(f"host: error: {exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"host: error: {exc}\n")
        return 1
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
