"""BNCore (forward + backward sharing one affine and one finalize engine; Verilator + cocotb): both cores' plans at once, bit
for bit against the golden model (``sim.bench.bn_core``), and the stream share on its own
(Amaranth simulation: every client gets exactly its own outputs, in order, whatever the gaps
and back-pressure).

Default matrix: the default configuration, an odd one (W = 5, B = 3, 7 channels, K = 4, low
statistics), one channel. A single configuration: ``pytest tests/test_bn_core.py --width 6 --block 5``.
"""

import random

import pytest


DEFAULT_MATRIX = [
    dict(width=8, block=16, chunks=1, channels=16, in_format="fp10"),
    dict(width=5, block=3, chunks=4, channels=7, in_format="fp10", stats="low", stats_guard=0),
    dict(width=4, block=4, chunks=2, channels=1, in_format="e4m3"),
]
ELEMENTS = 20_000


def run_bn_bench(params_kw, elements, seed=3):
    from gen.units import Params
    from gen.verilog import emit
    from hw.bn_core import BNCore
    from sim.bench.bn_core import run_bench

    p = Params(**params_kw, max_count=512)
    name = "bn_core-" + "-".join(f"{k}{v}" for k, v in sorted(params_kw.items()))
    return run_bench(emit(BNCore.from_params(p), "ln_bn_core"), p, elements, seed=seed, name=name)


def test_bn_core(unit_config):
    res = run_bn_bench(unit_config, ELEMENTS)
    f, b = res["forward"], res["backward"]
    print(f"bn core {unit_config}: forward {f['elements']} elements, {f['y_blocks']} y blocks, "
          f"mismatches {f['mismatches']}; backward {b['elements']} elements, {b['dx_blocks']} dx blocks, "
          f"{b['grads_mismatches']} grads / {b['dx_mismatches']} dx mismatches; "
          f"{f['cycles']} / {b['cycles']} cycles, hand-overs {res['hand_overs']}")
    assert not res["failed_cocotb_tests"], res["failed_cocotb_tests"]
    assert not res.get("failures"), res.get("failures")
    assert f["elements"] >= ELEMENTS and b["elements"] >= ELEMENTS
    assert not any(f["mismatches"].values()) and not b["grads_mismatches"] and not b["dx_mismatches"]
    # Both shared units changed hands many times while both cores were active, or the bench
    # would not test the shares.
    assert min(res["hand_overs"].values()) >= 10, f"too few hand-overs: {res['hand_overs']}"


# --- the share alone (Amaranth simulation) -------------------------------------------------------

def _share_dut(depth, n, burst):
    """The share in front of an in-order unit: three stages adding 1000 into a ``depth``-deep FIFO,
    admitted by a credit like ``BFPAffine``'s (never more than ``depth`` items untaken)."""
    from amaranth.hdl import Module, Signal
    from amaranth.lib import fifo, wiring

    from hw.stream_share import StreamShare

    class Top(wiring.Component):
        def __init__(self):
            self.share = StreamShare(16, 16, n=n, max_outstanding=depth, burst=burst)
            super().__init__({})

        def elaborate(self, platform):
            m = Module()
            m.submodules.share = share = self.share
            m.submodules.q = q = fifo.SyncFIFO(width=16, depth=depth)
            # three-stage delay into the FIFO, admitted by a credit like BFPAffine's
            credit = Signal(range(depth + 1))
            v = [Signal(name=f"v{i}") for i in range(3)]
            d = [Signal(16, name=f"d{i}") for i in range(3)]
            take = share.unit_i.valid & share.unit_i.ready
            give = q.r_en & q.r_rdy
            m.d.comb += share.unit_i.ready.eq(credit < depth)
            m.d.sync += credit.eq(credit + take - give)
            m.d.sync += [v[0].eq(take), d[0].eq(share.unit_i.payload + 1000)]
            for i in (1, 2):
                m.d.sync += [v[i].eq(v[i - 1]), d[i].eq(d[i - 1])]
            m.d.comb += [q.w_en.eq(v[2]), q.w_data.eq(d[2]),
                         share.unit_o.valid.eq(q.r_rdy), share.unit_o.payload.eq(q.r_data),
                         q.r_en.eq(share.unit_o.ready)]
            return m
    return Top()


@pytest.mark.parametrize("n,depth,burst,seed", [(2, 4, 8, 1), (2, 1, 1, 2), (3, 5, 3, 3), (2, 2, 1, 4)])
def test_stream_share(n, depth, burst, seed):
    """Each client sends its own numbers with random gaps, bursts and back-pressure; each must get
    exactly its inputs + 1000 back, in order; ``ready`` of a client never depends on its own
    ``valid`` (checked by flipping it)."""
    from amaranth.sim import Simulator

    top = _share_dut(depth, n, burst)
    cl = top.share.clients
    per = 150
    sent = [[k * 100 + i for i in range(per)] for k in range(n)]
    got = [[] for _ in range(n)]
    problems = []

    async def bench(ctx):
        rng = random.Random(seed)
        nxt = [0] * n
        busy_phase = [rng.random() < 0.5 for _ in range(n)]
        for cycle in range(20000):
            for k in range(n):
                if rng.random() < 0.05:
                    busy_phase[k] = not busy_phase[k]
                offer = nxt[k] < per and busy_phase[k] and rng.random() < 0.8
                if not offer and ctx.get(cl[k].i.valid) and nxt[k] < per:
                    offer = True                          # valid holds until taken
                ctx.set(cl[k].i.valid, offer)
                if nxt[k] < per:
                    ctx.set(cl[k].i.payload, sent[k][nxt[k]])
                ctx.set(cl[k].o.ready, rng.random() < 0.7)
            await ctx.delay(1e-9)
            readies = [ctx.get(cl[k].i.ready) for k in range(n)]
            for k in range(n):                            # ready must not depend on own valid
                v = ctx.get(cl[k].i.valid)
                ctx.set(cl[k].i.valid, not v)
                await ctx.delay(1e-10)
                if ctx.get(cl[k].i.ready) != readies[k]:
                    problems.append(f"cycle {cycle}: client {k} ready follows its own valid")
                ctx.set(cl[k].i.valid, v)
                await ctx.delay(1e-10)
            for k in range(n):
                if ctx.get(cl[k].i.valid) and ctx.get(cl[k].i.ready):
                    nxt[k] += 1
                if ctx.get(cl[k].o.valid) and ctx.get(cl[k].o.ready):
                    got[k].append(ctx.get(cl[k].o.payload))
            await ctx.tick()
            if all(len(g) == per for g in got):
                break

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert not problems, problems[:3]
    for k in range(n):
        assert got[k] == [x + 1000 for x in sent[k]], f"client {k}: {got[k][:10]}..."


@pytest.mark.parametrize("burst", [1, 3, 8])
def test_stream_share_bounded_wait(burst):
    """Two clients that always offer: the unit alternates between them, each holding it for
    ``burst`` transfers (the waiting client is never starved); a share whose
    owner never yields (burst 2**16) keeps the unit for one client only."""
    from amaranth.sim import Simulator

    def run(b):
        top = _share_dut(4, 2, b)
        cl = top.share.clients
        order = []

        async def bench(ctx):
            nxt = [0, 0]
            for _ in range(400):
                for k in range(2):
                    ctx.set(cl[k].i.valid, 1)
                    ctx.set(cl[k].i.payload, k * 1000 + nxt[k])
                    ctx.set(cl[k].o.ready, 1)
                await ctx.delay(1e-9)
                for k in range(2):
                    if ctx.get(cl[k].i.ready):
                        nxt[k] += 1
                        order.append(k)
                await ctx.tick()

        sim = Simulator(top)
        sim.add_clock(1e-8)
        sim.add_testbench(bench)
        sim.run()
        runs, cur = [], 1
        for a, c in zip(order, order[1:]):
            if a == c:
                cur += 1
            else:
                runs.append(cur)
                cur = 1
        return runs, order

    runs, order = run(burst)
    assert len(runs) >= 10 and set(runs[1:]) == {burst}, runs[:12]
    _, order = run(1 << 16)
    assert set(order) == {0}


def test_bn_core_manifest():
    """The manifest entry of ln_bn_core: every port has its core's role, each core's timing is
    the separate core's, and the shared units are named."""
    from gen.units import Params, manifest_entry
    from hw.backward_core import BackwardCore
    from hw.bn_core import BNCore
    from hw.forward_core import ForwardCore
    p = Params(width=6, block=3, channels=7, chunks=2)
    e = manifest_entry("ln_bn_core", BNCore.from_params(p))
    assert all(q["role"] != "control" for q in e["ports"]), [q["name"] for q in e["ports"] if q["role"] == "control"]
    assert e["forward"]["timing"] == ForwardCore.from_params(p).manifest_info()["timing"]
    bwd = BackwardCore(p.bfp, p.internal, p.channels, p.max_count, p.chunks)
    assert e["backward"]["timing"] == bwd.manifest_info()["timing"]
    assert set(e["shared"]) == {"affine", "finalize", "arbitration"}
