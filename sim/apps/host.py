"""Host program for a UART-attached LightNorm unit (``hw/board_top.py``): real board or simulation.

The protocol logic is written once, *sans I/O*: a session is a generator that yields
:class:`Send` (bytes to write) and :class:`Recv` (a number of bytes to read, sent back into the
generator) and returns a :class:`Report`. Two drivers run the same sessions:

* :func:`run_serial` on a real serial port (pyserial, imported only here; ``pip install pyserial``
  — an optional extra, not a dependency of the project);
* the cocotb bench ``sim/bench/board_uart.py``, which turns ``Send`` into UART frames on the ``rx``
  pin of :class:`hw.board_top.BoardTop` and ``Recv`` into bytes decoded from its ``tx`` pin.

Every result is compared bit for bit with the golden model (``sim/model/golden.py``).

Command line (a board flashed with ``python -m gen bitstream``)::

    pip install pyserial
    python -m sim.apps.host --port /dev/ttyUSB1                    # iCEBreaker: 2nd FTDI channel
    python -m sim.apps.host --port /dev/ttyUSB0 --blocks 1000      # ULX3S
    python -m sim.apps.host --port /dev/ttyUSB0 --npy tensor.npy   # floats from a file
    python -m sim.apps.host --port /dev/ttyUSB0 --n 64             # a 'bn' board: forward + backward

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
    "shifter_session", "random_float_words", "words_from_array", "bn_session",
    "pack_layout", "unpack_layout",
    "run_session", "run_serial", "main",
]

# Protocol constants; kept equal to hw.board_top's (checked by tests/test_board_uart.py) so that
# this module needs no HDL to talk to a board.
OP_INFO, OP_STATUS, OP_WRITE, OP_READ, OP_RESET = b"I", b"S", b"W", b"R", b"Z"
MAGIC = b"LN"
PROTOCOL_VERSION = 1
UNIT_KINDS = {0: "shifter", 1: "forward", 2: "bn"}
INFO_PARAMS = ("width", "block", "exp_bits", "frac_bits", "channels", "chunks", "max_count",
               "internal_frac_bits", "divisor", "rx_fifo_depth", "stats_low", "stats_guard")
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
    from sim.model.golden import Block
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
    shifter and compare every block with ``sim.model.golden.float_to_bfp`` bit for bit."""
    from sim.model.golden import float_to_bfp
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


# --- the Range-BN cores ----------------------------------------------------------------------------

def pack_layout(layout, value):
    """Bits of ``value`` (int, or dict / list following an Amaranth ``data`` layout)."""
    from amaranth.hdl import Shape
    from amaranth.lib import data
    if isinstance(layout, data.Layout):
        bits = 0
        for key, fld in layout:
            item = value[key] if isinstance(value, (dict, list, tuple)) else 0
            bits |= pack_layout(fld.shape, item) << fld.offset
        return bits
    return int(value) & ((1 << Shape.cast(layout).width) - 1)


def unpack_layout(layout, bits):
    """Inverse of :func:`pack_layout`: dicts for structs, lists for arrays, ints (unsigned)."""
    from amaranth.hdl import Shape
    from amaranth.lib import data
    if isinstance(layout, data.ArrayLayout):
        return [unpack_layout(fld.shape, bits >> fld.offset) for _, fld in layout]
    if isinstance(layout, data.Layout):
        return {key: unpack_layout(fld.shape, bits >> fld.offset) for key, fld in layout}
    return bits & ((1 << Shape.cast(layout).width) - 1)


def _bn_setup(info, n, seed):
    """Random activations and gradients in LightNorm's stream order, and the golden config."""
    from sim.model import golden_bn as gbn
    from sim.model.golden import float_to_bfp
    p = info.params
    fmt, bfp = info.float_format(), info.bfp()
    channels, chunks = p["channels"], p["chunks"]
    while chunks > 1 and (n % chunks or n // chunks < 2):
        chunks //= 2
    cfg = gbn.BNConfig(bfp=bfp, channels=channels, chunks=chunks,
                       internal_frac_bits=p["internal_frac_bits"], c_scale=gbn.range_scale(n // chunks),
                       stats="low" if p.get("stats_low") else "exact", stats_guard=p.get("stats_guard", 4))
    rng = random.Random(seed)
    groups = cfg.groups

    def tensor(spread):
        scale = [2.0 ** rng.uniform(-spread, spread) for _ in range(channels)]
        offset = [rng.uniform(-2, 2) for _ in range(channels)]
        blocks = []
        for _ in range(n):
            row = [fmt.encode((rng.gauss(0, 1) + offset[c]) * scale[c]) for c in range(channels)]
            for g in range(groups):
                lanes = [row[g * bfp.block + l] if g * bfp.block + l < channels else 0 for l in range(bfp.block)]
                blk = float_to_bfp(fmt, bfp, lanes)
                blocks.append(gbn.Block(blk[0], blk[1], {"sat": False, "special": False, "flush": False}))
        return blocks
    x, g = tensor(3), tensor(2)
    f = cfg.internal
    gamma = [f.encode(rng.uniform(0.5, 2.0) * rng.choice([1, -1])) for _ in range(channels)]
    beta = [f.encode(rng.uniform(-1, 1)) for _ in range(channels)]
    return cfg, x, g, gamma, beta


def _block_record(bfp, block):
    return block[0] | sum(bfp.to_bits(q) << (bfp.exp_bits + k * bfp.width) for k, q in enumerate(block[1]))


def bn_session(n=16, *, seed=0, backward=True):
    """Training forward pass (and, on a ``bn`` board, the backward pass) on the board's cores;
    every ``stats`` record, ``y`` block, ``grads`` record and ``dx`` block is compared with
    ``sim.model.golden_bn`` bit for bit. ``n`` positions per channel; K = the board's largest K that
    divides ``n`` with ``n / K >= 2``."""
    from hw import bn_layouts as L
    from sim.model import golden_bn as gbn
    info = yield from read_info()
    if info.kind not in ("forward", "bn"):
        raise HostError(f"this session needs the Range-BN cores; the board has {info.kind!r}")
    p = info.params
    cfg, x, g, gamma, beta = _bn_setup(info, n, seed)
    bfp, f = cfg.bfp, cfg.internal
    max_count, max_chunks = p["max_count"], p["chunks"]
    if n > max_count:
        raise HostError(f"n={n} exceeds the board's max_count {max_count}")
    k_log2 = cfg.chunks.bit_length() - 1
    rm0, rs0 = gbn.running_reset(cfg)
    y_gold, stats_gold, params_gold, rm, rs = gbn.forward(
        cfg, x, gamma, beta, training=True, running_mean=[rm0] * cfg.channels, running_sigma=[rs0] * cfg.channels)

    saved_l = L.saved_layout(f, max_count, max_chunks)
    yield from reset_unit()
    yield from read_status(info)
    report = Report("Range-BN forward" + (" + backward" if backward and info.kind == "bn" else ""), info=info)

    cmd = pack_layout(L.cmd_layout(max_count, max_chunks),
                      {"count": n, "chunks_log2": k_log2, "c_scale": cfg.c_scale, "training": 1})
    yield from transfer(info, 0, [cmd])
    x_records = [_block_record(bfp, b) for b in x]
    yield from transfer(info, 1, x_records)                               # statistics pass
    prm_l = L.params_layout(f)
    prm = [pack_layout(prm_l, {"gamma": gamma[c], "beta": beta[c], "running_mean": rm0,
                               "running_sigma": rs0, "load_running": 1}) for c in range(cfg.channels)]
    saved = yield from transfer(info, 2, prm, out_port=0)                 # finalize
    for c, got in enumerate(saved):
        pc, sc = params_gold[c], stats_gold[c]
        want = {"mu": pc.mu, "sigma": pc.sigma, "inv": pc.inv, "a": pc.a, "b": pc.b,
                "running_mean": rm[c], "running_sigma": rs[c], "flat": int(pc.flat),
                "argmax": [sc.argmax[k] if k < cfg.chunks else 0 for k in range(max_chunks)],
                "argmin": [sc.argmin[k] if k < cfg.chunks else 0 for k in range(max_chunks)],
                "chunk_flat": [int(sc.max[k] == sc.min[k]) if k < cfg.chunks else 0 for k in range(max_chunks)],
                "overflow": int(any(fl.startswith("overflow") for fl in pc.flags))}
        if pack_layout(saved_l, want) != got:
            have = unpack_layout(saved_l, got)
            diff = {k: (want[k], have[k]) for k in want if want[k] != have[k]}
            report.mismatches.append((f"stats[{c}]", str({k: v[0] for k, v in diff.items()}),
                                      str({k: v[1] for k, v in diff.items()})))
    y = yield from transfer(info, 1, x_records, out_port=1)              # normalize pass
    for j, (want, got) in enumerate(zip(y_gold, y)):
        if pack_flagged_block(bfp, want) != got:
            report.mismatches.append((f"y[{j}]", _block_text(want), _block_text(unpack_flagged_block(bfp, got))))
    report.records = len(saved) + len(y)

    if backward and info.kind == "bn":
        dx_gold, gparams = gbn.backward(cfg, x, g, stats_gold, params_gold)
        bcmd = pack_layout(L.backward_cmd_layout(max_count, max_chunks),
                           {"count": n, "chunks_log2": k_log2, "c_scale": cfg.c_scale, "params_only": 0})
        yield from transfer(info, 3, [bcmd])
        pair_l = L.pair_layout(bfp)
        pairs = [(_block_record(bfp, xb) << pair_l["x"].offset) | (_block_record(bfp, gb) << pair_l["g"].offset)
                 for xb, gb in zip(x, g)]
        yield from transfer(info, 5, pairs)                               # reduction pass
        # The backward stats port takes the low bits of each forward record (backward_saved_layout).
        mask = (1 << L.backward_saved_layout(f, max_count, max_chunks).size) - 1
        grads = yield from transfer(info, 4, [w & mask for w in saved], out_port=2)  # finalize
        grads_l = L.grads_layout(f)
        for c, got in enumerate(grads):
            gp = gparams[c]
            want = {"dgamma": gp.dgamma, "dbeta": gp.dbeta,
                    "overflow": int(any(fl.startswith("overflow") for fl in gp.flags))}
            if pack_layout(grads_l, want) != got:
                report.mismatches.append((f"grads[{c}]", str(want), str(unpack_layout(grads_l, got))))
        g_records = [_block_record(bfp, b) for b in g]
        dx = yield from transfer(info, 6, g_records, out_port=3)         # dx pass
        for j, (want, got) in enumerate(zip(dx_gold, dx)):
            if pack_flagged_block(bfp, want) != got:
                report.mismatches.append((f"dx[{j}]", _block_text(want), _block_text(unpack_flagged_block(bfp, got))))
        report.records += len(grads) + len(dx)
    report.flags, status = yield from read_status(info)
    errors = [name for bit, name in ((1, "forward count_error"), (3, "backward count_error")) if status >> bit & 1]
    if errors:
        report.mismatches.append(("status", "no count_error", ", ".join(errors)))
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
    parser = _Parser(prog="python -m sim.apps.host",
                     description="Talk to a UART-attached LightNorm board (built with 'python -m gen "
                                 "bitstream'): send a tensor, read the results, compare them bit for "
                                 "bit with the golden model. Needs pyserial (pip install pyserial).")
    parser.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB1 (iCEBreaker) or /dev/ttyUSB0 (ULX3S)")
    parser.add_argument("--baud", type=int, default=115200, help="baud rate the bitstream was built for (default 115200)")
    parser.add_argument("--blocks", type=int, default=256, help="random blocks to send (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random tensor (default 0)")
    parser.add_argument("--npy", help="shifter: send the values of this .npy file (any shape, flattened) instead")
    parser.add_argument("--n", type=int, default=16,
                        help="Range-BN cores: positions per channel of the random tensor (default 16)")
    parser.add_argument("--forward-only", action="store_true", help="Range-BN cores: skip the backward pass")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a reply (default 5)")
    args = parser.parse_args(argv)
    if args.blocks < 1:
        parser.error(f"blocks must be a positive integer, not {args.blocks!r}")

    def session():
        info = yield from read_info()
        fmt, bfp = info.float_format(), info.bfp()
        if info.kind != "shifter":
            words = []
        elif args.npy:
            import numpy as np
            try:
                words = words_from_array(fmt, np.load(args.npy).ravel())
            except (OSError, ValueError) as exc:
                raise HostError(f"cannot read {args.npy}: {exc}") from None
        else:
            words = random_float_words(fmt, args.blocks * bfp.block, seed=args.seed)
        print(f"board: {info.kind}, " + ", ".join(f"{k}={v}" for k, v in info.params.items() if v))
        if info.kind in ("forward", "bn"):
            return (yield from bn_session(args.n, seed=args.seed, backward=not args.forward_only))
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
