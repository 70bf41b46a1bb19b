"""The conventional float BN baseline (hw.float_bn) and its float units (hw.float_units) against
sim.model.float_golden.

Float units: bit for bit against the float64-rounded golden model (random values, random bit
patterns covering zero / subnormal / all-ones exponents, cancellation, overflow, underflow).

Format conversion (``float_convert``, the mixed-precision baseline's widening and rounding):
bit for bit against ``fround`` of the target format, widening and narrowing.

BN cores: bit for bit against ``sim.model.float_golden.bn_forward`` / ``bn_backward`` (same order of
operations, including the interleaved partial sums), and the golden model against plain float64
batch norm within a bound derived from the format (see ``_tolerance``). Configurations are named
``fp32``, ``bf16`` (one format) and ``bf16/fp32`` (bf16 per-element I/O, fp32 compute: the
mixed-precision baseline).
"""

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.formats import float_format
from hw.float_bn import FloatBNBackward, FloatBNForward
from hw.float_units import FloatAdd, FloatDiv, FloatMul, FloatSqrt, float_convert
from sim.model import float_golden as fg

FORMATS = ["fp32", "bf16"]


def _run_pipe(dut, A, B):
    out = []

    async def tb(ctx):
        for i in range(len(A) + dut.latency):
            if i < len(A):
                ctx.set(dut.a, int(A[i]))
                ctx.set(dut.b, int(B[i]))
            await ctx.tick()
            if i + 1 >= dut.latency:
                out.append(ctx.get(dut.y))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return np.array(out[:len(A)], dtype=np.int64)


def _run_iter(dut, ops):
    out = []

    async def tb(ctx):
        for vals in ops:
            for port, v in zip(("a", "b"), vals):
                ctx.set(getattr(dut, port), int(v))
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            cycles = 1
            while not ctx.get(dut.done):
                await ctx.tick()
                cycles += 1
            assert cycles == dut.latency
            out.append(ctx.get(dut.y))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return np.array(out, dtype=np.int64)


def _operands(fmt, n, seed):
    """Random bit patterns, a third with extreme exponents, plus near-cancelling pairs."""
    rng = np.random.default_rng(seed)
    A = rng.integers(0, 1 << fmt.width, n)
    B = rng.integers(0, 1 << fmt.width, n)
    emask = ((1 << fmt.exp_bits) - 1) << fmt.frac_bits
    special = [0, 1, 2, fmt.exp_max - 1, fmt.exp_max, fmt.bias, fmt.bias + 1, fmt.bias - 1]
    k = n // 3
    A[:k] = (A[:k] & ~emask) | (rng.choice(special, k) << fmt.frac_bits)
    B[k // 2:k + k // 2] = (B[k // 2:k + k // 2] & ~emask) | (rng.choice(special, k) << fmt.frac_bits)
    a = fg.from_bits(fmt, A)
    # Near cancellation: b = -a * (1 + small), exponent differences of 0..2.
    c = slice(2 * k, 2 * k + k // 2)
    near = fg.fround(fmt, -a[c] * (1 + rng.integers(-4, 5, len(a[c])) * 2.0 ** -fmt.frac_bits)
                     * 2.0 ** rng.integers(-2, 3, len(a[c])))
    B[c] = fg.to_bits(fmt, near)
    return A, B


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("op", ["add", "mul"])
def test_pipelined_unit_bit_exact(name, op):
    fmt = float_format(name)
    A, B = _operands(fmt, 1500, seed=1 + (op == "mul"))
    a, b = fg.from_bits(fmt, A), fg.from_bits(fmt, B)
    cls, ref = (FloatAdd, fg.fadd) if op == "add" else (FloatMul, fg.fmul)
    got = _run_pipe(cls(fmt), A, B)
    want = fg.to_bits(fmt, ref(fmt, a, b))
    bad = np.nonzero(got != want)[0]
    assert len(bad) == 0, [(hex(A[i]), hex(B[i]), hex(got[i]), hex(want[i])) for i in bad[:5]]


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("op", ["div", "sqrt"])
def test_iterative_unit_bit_exact(name, op):
    fmt = float_format(name)
    A, B = _operands(fmt, 150, seed=3)
    B[:8] = 0
    a, b = fg.from_bits(fmt, A), fg.from_bits(fmt, B)
    if op == "div":
        got = _run_iter(FloatDiv(fmt), list(zip(A, B)))
        want = fg.to_bits(fmt, fg.fdiv(fmt, a, b))
    else:
        got = _run_iter(FloatSqrt(fmt), [(v,) for v in A])
        want = fg.to_bits(fmt, fg.fsqrt(fmt, a))
    bad = np.nonzero(got != want)[0]
    assert len(bad) == 0, [(hex(A[i]), hex(B[i]), hex(got[i]), hex(want[i])) for i in bad[:5]]


@pytest.mark.parametrize("src,dst", [("fp32", "bf16"), ("bf16", "fp32"), ("fp32", "e5m10"), ("e5m10", "fp32"),
                                     ("fp32", "e8m4")])
def test_float_convert_bit_exact(src, dst):
    """Combinational conversion against ``fround`` (narrowing: RNE incl. ties, flush, saturation;
    widening: exact, zero and subnormal inputs give +0)."""
    from amaranth.hdl import Module, Signal
    s, d = float_format(src), float_format(dst)
    A, _ = _operands(s, 600, seed=11)
    # Exact ties and near-ties of the narrowing: fraction bits below the cut set to 100..0 / 011..1.
    if s.frac_bits > d.frac_bits:
        cut = s.frac_bits - d.frac_bits
        A[:60] = (A[:60] & ~((1 << cut) - 1)) | (1 << (cut - 1))
        A[60:90] = (A[60:90] & ~((1 << cut) - 1)) | ((1 << (cut - 1)) - 1)
    m = Module()
    a = Signal(s.width)
    y = float_convert(m, s, d, a)
    got = []

    async def tb(ctx):
        for v in A:
            ctx.set(a, int(v))
            got.append(ctx.get(y))

    sim = Simulator(m)
    sim.add_testbench(tb)
    sim.run()
    want = fg.to_bits(d, fg.fround(d, fg.from_bits(s, A)))
    bad = [i for i in range(len(A)) if got[i] != want[i]]
    assert not bad, [(hex(A[i]), hex(got[i]), hex(want[i])) for i in bad[:5]]


# -- BN cores ---------------------------------------------------------------------------------------

def _formats(name):
    """``"fp32"`` -> (fp32, fp32); ``"bf16/fp32"`` -> (compute fp32, io bf16)."""
    io, _, compute = name.partition("/")
    return float_format(compute or io), float_format(io)


def _vectors(fmt, arr, block):
    """(n, C) values -> list of per-vector lane bit lists in stream order (t = pos * G + group)."""
    n, C = arr.shape
    G = -(-C // block)
    bits = fg.to_bits(fmt, arr)
    out = []
    for pos in range(n):
        for g in range(G):
            lanes = [int(bits[pos, g * block + k]) if g * block + k < C else 0 for k in range(block)]
            out.append(lanes)
    return out


def _pack(fmt, lanes):
    v = 0
    for k, b in enumerate(lanes):
        v |= b << (k * fmt.width)
    return v


def _unpack(fmt, value, block):
    return [(value >> (k * fmt.width)) & ((1 << fmt.width) - 1) for k in range(block)]


def _collect(vecs, n, C, block, fmt):
    G = -(-C // block)
    out = np.zeros((n, C), dtype=np.int64)
    for t, lanes in enumerate(vecs):
        pos, g = divmod(t, G)
        for k in range(block):
            if g * block + k < C:
                out[pos, g * block + k] = lanes[k]
    return out


def _sim_core(dut, cmd, passes, per_channel_in, in_name, rec_out, vec_out, stall_seed=None):
    """Drive ``cmd``, two passes of vectors on ``in_name`` (the second with random output
    back-pressure when ``stall_seed`` is set), per-channel records on ``per_channel_in``; collect
    the per-channel output records ``rec_out`` and output vectors ``vec_out``."""
    fmt, io, block = dut.fmt, dut.io_fmt, dut.block
    got_recs, got_vecs = [], []
    n_out = len(passes[1])
    rng = np.random.default_rng(stall_seed) if stall_seed is not None else None
    inp = getattr(dut, in_name)
    pin = getattr(dut, per_channel_in[0])
    rout = getattr(dut, rec_out)
    vout = getattr(dut, vec_out)

    async def producer(ctx):
        ctx.set(dut.cmd.payload.count, cmd)
        ctx.set(dut.cmd.valid, 1)
        await ctx.tick().until(dut.cmd.ready)
        ctx.set(dut.cmd.valid, 0)
        for vecs in passes:
            for lanes in vecs:
                if rng is not None and rng.random() < 0.2:
                    ctx.set(inp.valid, 0)
                    await ctx.tick()
                ctx.set(inp.payload.as_value(), _pack(io, lanes) if isinstance(lanes, list) else lanes)
                ctx.set(inp.valid, 1)
                await ctx.tick().until(inp.ready)
            ctx.set(inp.valid, 0)

    async def params(ctx):
        for rec in per_channel_in[1]:
            for name, v in rec.items():
                ctx.set(pin.payload[name].as_value(), int(v))
            ctx.set(pin.valid, 1)
            await ctx.tick().until(pin.ready)
        ctx.set(pin.valid, 0)

    async def consumer_rec(ctx):
        ctx.set(rout.ready, 1)
        for _ in range(dut.channels):
            payload, = await ctx.tick().sample(rout.payload.as_value()).until(rout.valid)
            names = list(rout.payload.shape().members)
            got_recs.append({nm: (payload >> (i * fmt.width)) & ((1 << fmt.width) - 1)
                             for i, nm in enumerate(names)})

    async def consumer_vec(ctx):
        while len(got_vecs) < n_out:
            ready = 1 if rng is None else int(rng.random() < 0.7)
            ctx.set(vout.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(vout.valid, vout.payload.as_value())
            if valid and ready:
                got_vecs.append(_unpack(io, payload, block))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(params)
    sim.add_testbench(consumer_rec)
    sim.add_testbench(consumer_vec)
    sim.run_until(2e-8 * (len(passes[0]) + len(passes[1])) * 4 + 1e-8 * dut.channels * 400)
    return got_recs, got_vecs


def _fields(fmt, rec, names):
    return {n: int(rec[n].as_value()) for n in names}


def _tolerance(fmt, n, scale, io=None):
    """Error bound of the baseline against float64 batch norm.

    With unit roundoff u = 2**-(frac_bits + 1): each of the L interleaved partial sums of n/L
    terms carries a relative error of at most (n/L) u of the sum of magnitudes, the partial
    combine adds L u; mean and E[x^2] carry about (n + 4) u relative to their magnitudes, the
    variance E[x^2] - mu^2 loses a further (E[x^2] / var) in cancellation, and sqrt, reciprocal,
    a, b and the per-element multiply-add add a few u each. For standardized data (|mu| <= sigma,
    which the tests use) this is bounded by (2 n + 16) u relative to ``scale`` (the
    magnitude of the outputs); the tests assert it. With a narrower per-element format ``io``
    the inputs are exact in both models and the outputs are rounded once more: + u_io * scale."""
    u = 2.0 ** -(fmt.frac_bits + 1)
    u_io = 0.0 if io is None or io == fmt else 2.0 ** -(io.frac_bits + 1)
    return ((2 * n + 16) * u + u_io) * scale


def _bn_case(name, n, C, seed):
    fmt, io = _formats(name)
    rng = np.random.default_rng(seed)
    x = fg.fround(io, rng.standard_normal((n, C)) * 2.0 + rng.uniform(-1, 1, C))
    gamma = fg.fround(fmt, rng.uniform(0.5, 1.5, C))
    beta = fg.fround(fmt, rng.uniform(-0.5, 0.5, C))
    g = fg.fround(io, rng.standard_normal((n, C)))
    return fmt, io, x, gamma, beta, g


FWD_CASES = [("fp32", 4, 4, 6), ("bf16", 4, 8, 5), ("fp32", 3, 8, 4), ("bf16", 8, 8, 16),
             ("bf16/fp32", 4, 8, 5), ("bf16/fp32", 3, 5, 9)]


@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_io_format_checked():
    """A storage format wider than the compute format is refused with one line naming it."""
    with pytest.raises(ValueError, match=r"io format must be no wider than the compute format bf16 .*not fp32"):
        FloatBNForward("bf16", block=2, channels=2, max_count=4, io_fmt="fp32")
    with pytest.raises(ValueError, match="io format must be no wider"):
        fg.bn_forward("bf16", np.zeros((2, 2)), np.ones(2), np.zeros(2), 2, io_fmt="fp32")


@pytest.mark.parametrize("name,block,channels,n", FWD_CASES)
def test_forward_bit_exact(name, block, channels, n):
    fmt, io, x, gamma, beta, _ = _bn_case(name, n, channels, seed=block * 100 + n)
    dut = FloatBNForward(fmt, block=block, channels=channels, max_count=64, io_fmt=io)
    vecs = _vectors(io, x, block)
    params = [{"gamma": int(fg.to_bits(fmt, gamma[c])), "beta": int(fg.to_bits(fmt, beta[c]))}
              for c in range(channels)]
    recs, out = _sim_core(dut, n, [vecs, vecs], ("params", params), "x", "stats", "y", stall_seed=n)
    y_want, st_want = fg.bn_forward(fmt, x, gamma, beta, block, io_fmt=io)
    assert len(recs) == channels and len(out) == len(vecs)
    for key in ("mu", "inv", "a", "b"):
        got = np.array([r[key] for r in recs])
        assert list(got) == list(fg.to_bits(fmt, st_want[key])), key
    y_got = _collect(out, n, channels, block, io)
    assert (y_got == fg.to_bits(io, y_want)).all()
    # Golden model against float64 batch norm.
    y_ref, _ = fg.bn_forward_ref(x, gamma, beta)
    assert np.max(np.abs(y_want - y_ref)) <= _tolerance(fmt, n, np.max(np.abs(y_ref)), io)


BWD_CASES = [("fp32", 4, 4, 6), ("bf16", 4, 8, 5), ("fp32", 3, 8, 4), ("bf16", 8, 8, 16),
             ("bf16/fp32", 4, 8, 5), ("bf16/fp32", 3, 5, 9)]


@pytest.mark.parametrize("name,block,channels,n", BWD_CASES)
def test_backward_bit_exact(name, block, channels, n):
    fmt, io, x, gamma, beta, g = _bn_case(name, n, channels, seed=block * 7 + n)
    _, st = fg.bn_forward(fmt, x, gamma, beta, block, io_fmt=io)
    dut = FloatBNBackward(fmt, block=block, channels=channels, max_count=64, io_fmt=io)
    G = -(-channels // block)
    xb, gb = fg.to_bits(io, x), fg.to_bits(io, g)
    vecs = []
    for pos in range(n):
        for grp in range(G):
            lanes = []
            for k in range(block):
                c = grp * block + k
                lanes.append({"x": int(xb[pos, c]) if c < channels else 0,
                              "g": int(gb[pos, c]) if c < channels else 0})
            vecs.append(_pack_pairs(io, lanes))
    stats = [{k: int(fg.to_bits(fmt, st[k][c])) for k in ("mu", "inv", "a")} for c in range(channels)]
    recs, out = _sim_core(dut, n, [vecs, vecs], ("stats", stats), "xg", "grads", "dx", stall_seed=n + 1)
    dx_want, gr_want = fg.bn_backward(fmt, x, g, st, block, io_fmt=io)
    assert len(recs) == channels and len(out) == len(vecs)
    for key in ("dgamma", "dbeta"):
        got = np.array([r[key] for r in recs])
        assert list(got) == list(fg.to_bits(fmt, gr_want[key])), key
    dx_got = _collect(out, n, channels, block, io)
    assert (dx_got == fg.to_bits(io, dx_want)).all()
    dx_ref, gr_ref = fg.bn_backward_ref(x, g, gamma)
    assert np.max(np.abs(dx_want - dx_ref)) <= _tolerance(fmt, n, np.max(np.abs(dx_ref)), io)
    for key in ("dgamma", "dbeta"):
        assert np.max(np.abs(gr_want[key] - gr_ref[key])) <= _tolerance(fmt, n, np.max(np.abs(g)) * n)


def _pack_pairs(fmt, lanes):
    v = 0
    w = fmt.width
    for k, lane in enumerate(lanes):
        v |= (lane["x"] | (lane["g"] << w)) << (k * 2 * w)
    return v
