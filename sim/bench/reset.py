"""Reset in the middle of a stream, back-to-back passes and configuration changes: cocotb tests
(run through ``tests/test_reset.py``, configuration in ``LN_CONFIG``).

The rule checked everywhere: after a synchronous reset (``rst`` high for one or more cycles, at
any point of a stream, under back-pressure or not) no output from before the reset appears, and
a fresh stream gives exactly the golden model's outputs of that fresh stream alone.

Conventions: the streams are driven by ``sim.bench.common.StreamDriver`` (stepped by the tests,
one :meth:`step` per cycle; :meth:`reset` asserts ``rst``). A handshake sampled while ``rst`` is
high does not count: producer and consumer are reset together with the design.

Configuration keys: ``unit`` (``"shifter"`` or ``"forward"``), ``params`` (``gen.units.Params``
keyword arguments), ``seed``, ``trials``; ``summary`` (path of a JSON summary, optional).
"""

import collections
import json
import random

try:
    import cocotb
    from cocotb.triggers import FallingEdge, RisingEdge
    from cocotb.clock import Clock
except ImportError:                 # importable without cocotb (for documentation tools)
    cocotb = None

from sim.bench.common import StreamDriver  # noqa: E402


async def _start(dut):
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0


def _write_summary(cfg, test, stats, failures):
    """The bench's result record (``sim.bench.common.write_result``): ``stats`` and the failures."""
    from sim.bench.common import write_result
    write_result(cfg.get("summary"), cfg["unit"], failures, tests=[test], stats=dict(stats))


# --------------------------------------------------------------------------------------------
# BFP shifter
# --------------------------------------------------------------------------------------------

def _shifter_case(cfg):
    from gen.units import Params
    from hw.bfp_shifter import BFPShifter
    p = Params(**cfg["params"])
    dut = BFPShifter(p.float_format, p.bfp)
    return p, dut


def _random_words(fmt, B, rng):
    words = []
    for _ in range(B):
        r = rng.random()
        e = 0 if r < 0.1 else fmt.exp_max if r < 0.2 else rng.randint(1, fmt.exp_max)
        words.append(fmt.pack(rng.randrange(2), e, rng.randrange(1 << fmt.frac_bits)))
    return words


def _pack_words(fmt, words):
    bits = 0
    for k, w in enumerate(words):
        bits |= w << (k * fmt.width)
    return bits


if cocotb is not None:
    @cocotb.test()
    async def shifter_reset_mid_stream(dut):
        """Trials: stream random blocks for a random number of cycles (gaps, back-pressure), reset
        for 1..3 cycles (inputs valid or not during reset, the output stalled or not), check that
        ``o.valid`` is low right after the reset, then stream a fresh set of blocks back to back
        and compare every output with ``sim.model.golden.float_to_bfp`` of the fresh blocks only."""
        from sim.bench.common import config, unpack
        from sim.model.golden import float_to_bfp
        cfg = config()
        if cfg.get("unit") != "shifter":
            return
        p, comp = _shifter_case(cfg)
        fmt, bfp = p.float_format, p.bfp
        rng = random.Random(cfg.get("seed", 1))
        await _start(dut)
        st = StreamDriver(dut, ["i"], ["o"], rng=rng)
        stats = collections.Counter()
        failures = []
        for trial in range(cfg.get("trials", 40)):
            # 1. some blocks of a first stream, possibly interrupted anywhere
            st.idle, st.backpressure = rng.choice([0.0, 0.3, 0.6]), rng.choice([0.0, 0.3, 0.9])
            first = [_random_words(fmt, bfp.block, rng) for _ in range(rng.randint(0, 8))]
            st.queue["i"].extend(_pack_words(fmt, w) for w in first)
            for _ in range(rng.randint(0, 12)):
                await st.step()
            in_flight = st.sent["i"] - len(st.received["o"])
            stats["resets"] += 1
            stats["resets_with_blocks_in_flight"] += in_flight > 0
            stats["resets_while_output_stalled"] += st.held["o"] is not None
            # the prefix delivered before the reset must be right
            before = [unpack(comp.output_layout, bits) for bits in st.received["o"]]
            for k, got_b in enumerate(before):
                b = float_to_bfp(fmt, bfp, first[k])
                if got_b["exponent"] != b.exponent or got_b["codes"] != [bfp.to_bits(q) for q in b.codes]:
                    failures.append(f"trial {trial}: block {k} before the reset is wrong")
            # 2. reset
            cycles = rng.choice([1, 1, 2, 3])
            await st.reset(cycles, keep_valid=rng.random() < 0.5)
            await FallingEdge(dut.clk)
            if int(dut.o__valid.value):
                failures.append(f"trial {trial}: o.valid high right after a {cycles}-cycle reset "
                                f"({in_flight} blocks were in flight)")
            await RisingEdge(dut.clk)
            st.drive()
            # 3. a fresh stream; nothing of the first may come out
            st.received["o"].clear()
            st.sent["i"] = 0
            st.idle, st.backpressure = rng.choice([0.0, 0.0, 0.3]), rng.choice([0.0, 0.3])
            fresh = [_random_words(fmt, bfp.block, rng) for _ in range(rng.randint(1, 10))]
            st.queue["i"].extend(_pack_words(fmt, w) for w in fresh)
            limit = st.cycle + 40 * len(fresh) + 50
            while (len(st.received["o"]) < len(fresh) or st.queue["i"]) and st.cycle < limit:
                await st.step()
            for _ in range(6):                  # anything extra (stale) would show up here
                await st.step()
            want = []
            for words in fresh:
                b = float_to_bfp(fmt, bfp, words)
                want.append({"exponent": b.exponent, "codes": [bfp.to_bits(q) for q in b.codes],
                             "flags": {k: int(v) for k, v in b.flags.items()}})
            got = [unpack(comp.output_layout, bits) for bits in st.received["o"]]
            if got != want:
                failures.append(f"trial {trial}: after reset got {len(got)} blocks, want {len(want)}; "
                                f"first difference at {next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))}")
            stats["fresh_blocks"] += len(fresh)
            st.received["o"].clear()
            st.sent["i"] = 0
        failures += st.errors
        _write_summary(cfg, "shifter_reset_mid_stream", stats, failures)
        assert not failures, "\n".join(failures[:10])


# --------------------------------------------------------------------------------------------
# Forward core
# --------------------------------------------------------------------------------------------

FWD_SOURCES = ("cmd", "x", "params")
FWD_SINKS = ("y", "stats")


def _fwd_expected(p, steps):
    from sim.bench.forward_core import block_word
    from sim.bench.common import pack
    from hw.bn_layouts import saved_layout
    sav_l = saved_layout(p.internal, p.max_count, p.chunks)
    y = [block_word(p.bfp, b, flagged=True) for s in steps for b in s["y"]]
    stats = [pack(sav_l, r) for s in steps for r in s["stats"]]
    return y, stats


async def _fwd_run(st, p, steps, *, stop=None, limit_per_step=None):
    """Drive ``steps`` (``sim.bench.forward_core.Planner`` steps) one command after another: the
    command is offered as soon as the core is idle, with x and params queued up front.
    ``stop(st, step_index)`` -> True aborts (returns the index of the interrupted step)."""
    from sim.bench.forward_core import block_word
    from sim.bench.common import pack
    from hw.bn_layouts import cmd_layout, params_layout
    cmd_l = cmd_layout(p.max_count, p.chunks)
    prm_l = params_layout(p.internal)
    for i, s in enumerate(steps):
        st.queue["x"].extend(block_word(p.bfp, b) for b in s["x"])
        st.queue["params"].extend(pack(prm_l, r) for r in s["params"])
        st.queue["cmd"].append(pack(cmd_l, s["cmd"]))
        sent_cmd = st.sent["cmd"]
        want_y = len(st.received["y"]) + len(s["y"])
        want_s = len(st.received["stats"]) + len(s["stats"])
        limit = st.cycle + (limit_per_step or 60 * (len(s["x"]) + 1) + 300 * p.channels + 2000)
        while True:
            if stop is not None and stop(st, i):
                return i
            await st.step()
            accepted = st.sent["cmd"] > sent_cmd
            if accepted and not int(st.dut.busy.value) and len(st.received["y"]) >= want_y \
                    and len(st.received["stats"]) >= want_s and not st.queue["x"] and not st.active["x"]:
                break
            if s["bad"] and accepted:
                break
            if st.cycle > limit:
                st.errors.append(f"step {i} ({s['tag']}): timeout")
                return i
    return None


def _fwd_compare(p, steps, st, label, failures):
    y, stats = _fwd_expected(p, steps)
    for name, got, want in (("y", st.received["y"], y), ("stats", st.received["stats"], stats)):
        if got != want:
            k = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            failures.append(f"{label}: {name}: got {len(got)} records, want {len(want)}; first difference at {k}")


if cocotb is not None:
    @cocotb.test()
    async def forward_reset_and_back_to_back(dut):
        """1. Back to back, no reset: commands with different n, K, C (cfix), training and
        inference, a dropped command in between; every y block and stats record vs golden.
        2. Reset in the statistics pass, in finalize, in the normalize pass (with y stalled or not),
        then a fresh plan from a fresh golden state (running statistics back to their reset
        values) must match bit for bit, with no stale y or stats record."""
        from gen.units import Params
        from sim.bench.common import config
        from sim.bench.forward_core import Planner
        cfg = config()
        if cfg.get("unit") != "forward":
            return
        p = Params(**cfg["params"])
        K = p.chunks
        rng = random.Random(cfg.get("seed", 1))
        await _start(dut)
        for name in FWD_SOURCES:
            getattr(dut, f"{name}__valid").value = 0
        st = StreamDriver(dut, FWD_SOURCES, FWD_SINKS, idle=0.1, backpressure=0.2, rng=rng)
        failures, stats = [], collections.Counter()

        def plan(seed, variant):
            pl = Planner(p, seed)
            if variant == "mixed":
                Ks = [k for k in (K, max(1, K // 2), 1) if p.max_count >= 2 * k]
                for j, k in enumerate(Ks):
                    n = 2 * k * (j + 1)
                    if n > p.max_count:
                        n = 2 * k
                    pl.good(pl.tensor("gauss", n, k), k, training=True, tag=f"train K={k} n={n}")
                    pl.good(pl.tensor("laplace", n, k), k, training=False, tag=f"infer K={k} n={n}")
                pl.bad(1, 0, "n = 1 (dropped)")
                pl.good(pl.tensor("edge", 2 * K, K), K, training=True, cfix=1.0, tag="edge, cfix 1")
                pl.good(pl.tensor("random", 2 * K, K), K, training=True, cfix=0.540208, tag="random, cfix 0.54")
            else:
                pl.good(pl.tensor("gauss", variant, K), K, training=True, tag=f"train n={variant}")
                pl.good(pl.tensor("relu", 2 * K, K), K, training=False, tag="infer")
            return pl.steps

        # 1. back to back
        steps = plan(cfg.get("seed", 1), "mixed")
        await _fwd_run(st, p, steps)
        _fwd_compare(p, steps, st, "back to back", failures)
        stats["back_to_back_commands"] = len(steps)

        # 2. resets at different points of a training command
        n_long = min(p.max_count, 8 * K)
        n_long -= n_long % K
        points = [("stats pass", lambda s: s.sent["x"] >= 2),
                  ("finalize", lambda s: len(s.received["stats"]) >= 1),
                  ("normalize pass", lambda s: len(s.received["y"]) >= 1),
                  ("normalize pass, y stalled", lambda s: len(s.received["y"]) >= 1 and s.held["y"] is not None),
                  ("right after the command", lambda s: s.sent["cmd"] >= 1)]
        for trial in range(cfg.get("trials", 2)):
            for where, cond in points:
                st.received["y"].clear(); st.received["stats"].clear()
                st.sent = {k: 0 for k in st.sent}
                st.backpressure = 0.5 if "stalled" in where else 0.2
                first = plan(100 + trial, n_long)
                interrupted = await _fwd_run(st, p, first[:1], stop=lambda s, i: cond(s),
                                             limit_per_step=None)
                if interrupted is None:
                    failures.append(f"reset '{where}': the command finished before the reset point")
                    continue
                await st.reset(rng.choice([1, 2, 3]), keep_valid=rng.random() < 0.5)
                await FallingEdge(dut.clk)
                if int(dut.y__valid.value) or int(dut.stats__valid.value) or int(dut.busy.value):
                    failures.append(f"reset '{where}': y.valid={int(dut.y__valid.value)} "
                                    f"stats.valid={int(dut.stats__valid.value)} busy={int(dut.busy.value)} "
                                    f"right after reset")
                await RisingEdge(dut.clk)
                st.drive()
                # idle a few cycles: nothing may come out
                st.received["y"].clear(); st.received["stats"].clear()
                st.sent = {k: 0 for k in st.sent}
                for _ in range(8):
                    await st.step()
                if st.received["y"] or st.received["stats"]:
                    failures.append(f"reset '{where}': stale output after reset")
                st.received["y"].clear(); st.received["stats"].clear()
                st.backpressure = 0.2
                fresh = plan(200 + trial, 2 * K if trial % 2 else n_long)
                await _fwd_run(st, p, fresh)
                _fwd_compare(p, fresh, st, f"fresh pass after reset '{where}'", failures)
                stats[f"reset: {where}"] += 1
        failures += st.errors
        _write_summary(cfg, "forward_reset_and_back_to_back", stats, failures)
        assert not failures, "\n".join(failures[:10])


# --------------------------------------------------------------------------------------------
# Backward core
# --------------------------------------------------------------------------------------------

BWD_SOURCES = ("cmd", "stats", "xg", "g")
BWD_SINKS = ("grads", "dx")


async def _bwd_run(st, p, steps, *, stop=None):
    """Drive ``sim.bench.backward_core.BackwardPlan`` steps one command after another (the next
    command is offered when the core is idle again); ``stop(st)`` -> True aborts."""
    for i, s in enumerate(steps):
        st.queue["cmd"].append(s["word"])
        st.queue["stats"].extend(s["stats"])
        st.queue["xg"].extend(s["xg"])
        st.queue["g"].extend(s["g"])
        sent_cmd = st.sent["cmd"]
        want_g = len(st.received["grads"]) + len(s["grads"])
        want_d = len(st.received["dx"]) + len(s["dx"])
        limit = st.cycle + 60 * (len(s["xg"]) + len(s["g"]) + 1) + 400 * p.channels + 2000
        while True:
            if stop is not None and stop(st):
                return i
            await st.step()
            accepted = st.sent["cmd"] > sent_cmd
            if s["bad"] and accepted:
                break
            if accepted and not int(st.dut.busy.value) and len(st.received["grads"]) >= want_g \
                    and len(st.received["dx"]) >= want_d \
                    and not any(st.queue[n] or st.active[n] for n in ("stats", "xg", "g")):
                break
            if st.cycle > limit:
                st.errors.append(f"step {i} ({s['tag']}): timeout")
                return i
    return None


def _bwd_compare(steps, st, label, failures):
    for name in BWD_SINKS:
        want = [w for s in steps for w in s[name]]
        got = st.received[name]
        if got != want:
            k = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            failures.append(f"{label}: {name}: got {len(got)} records, want {len(want)}; first difference at {k}")


if cocotb is not None:
    @cocotb.test()
    async def backward_reset_and_back_to_back(dut):
        """1. Back to back: commands with different n, K, C, parameters-only and full, a dropped
        command in between; every grads record and dx block vs golden.
        2. Reset in the reduction pass, in finalize, in the dx pass (dx stalled or not) and right
        after a command; then a fresh plan must match bit for bit with no stale output."""
        from gen.units import Params
        from sim.bench.common import config
        from sim.bench.backward_core import BackwardPlan
        cfg = config()
        if cfg.get("unit") != "backward":
            return
        p = Params(**cfg["params"])
        K = p.chunks
        rng = random.Random(cfg.get("seed", 1))
        await _start(dut)
        for name in BWD_SOURCES:
            getattr(dut, f"{name}__valid").value = 0
        st = StreamDriver(dut, BWD_SOURCES, BWD_SINKS, idle=0.1, backpressure=0.2, rng=rng)
        failures, stats = [], collections.Counter()

        def plan(seed, n=None):
            pl = BackwardPlan(p, seed)
            if n is None:
                Ks = [k for k in (K, max(1, K // 2), 1) if p.max_count >= 2 * k]
                for j, k in enumerate(Ks):
                    nn = min(p.max_count, 2 * k * (j + 1))
                    nn -= nn % k
                    pl.good(pl.tensor("gauss", nn, k), pl.tensor("random", nn, k), k, tag=f"K={k} n={nn}")
                    pl.good(pl.tensor("laplace", nn, k), pl.tensor("random", nn, k), k, params_only=True,
                            tag=f"params only K={k} n={nn}")
                pl.bad(1, 0, "n = 1 (dropped)")
                pl.good(pl.tensor("edge", 2 * K, K), pl.tensor("random", 2 * K, K), K, tag="edge")
            else:
                pl.good(pl.tensor("gauss", n, K), pl.tensor("random", n, K), K, tag=f"n={n}")
                pl.good(pl.tensor("relu", 2 * K, K), pl.tensor("random", 2 * K, K), K, params_only=True,
                        tag="params only")
            return pl.steps

        steps = plan(cfg.get("seed", 1))
        await _bwd_run(st, p, steps)
        _bwd_compare(steps, st, "back to back", failures)
        stats["back_to_back_commands"] = len(steps)

        n_long = min(p.max_count, 8 * K)
        n_long -= n_long % K
        points = [("reduction pass", lambda s: s.sent["xg"] >= 2),
                  ("finalize", lambda s: len(s.received["grads"]) >= 1),
                  ("dx pass", lambda s: len(s.received["dx"]) >= 1),
                  ("dx pass, dx stalled", lambda s: len(s.received["dx"]) >= 1 and s.held["dx"] is not None),
                  ("right after the command", lambda s: s.sent["cmd"] >= 1)]
        for trial in range(cfg.get("trials", 1)):
            for where, cond in points:
                for name in BWD_SINKS:
                    st.received[name].clear()
                st.sent = {k: 0 for k in st.sent}
                st.backpressure = 0.5 if "stalled" in where else 0.2
                first = plan(100 + trial, n_long)
                interrupted = await _bwd_run(st, p, first[:1], stop=cond)
                if interrupted is None:
                    failures.append(f"reset '{where}': the command finished before the reset point")
                    continue
                await st.reset(rng.choice([1, 2, 3]), keep_valid=rng.random() < 0.5)
                await FallingEdge(dut.clk)
                if int(dut.dx__valid.value) or int(dut.grads__valid.value) or int(dut.busy.value):
                    failures.append(f"reset '{where}': dx.valid={int(dut.dx__valid.value)} "
                                    f"grads.valid={int(dut.grads__valid.value)} busy={int(dut.busy.value)} "
                                    f"right after reset")
                await RisingEdge(dut.clk)
                st.drive()
                for name in BWD_SINKS:
                    st.received[name].clear()
                st.sent = {k: 0 for k in st.sent}
                for _ in range(8):
                    await st.step()
                if st.received["dx"] or st.received["grads"]:
                    failures.append(f"reset '{where}': stale output after reset")
                for name in BWD_SINKS:
                    st.received[name].clear()
                st.backpressure = 0.2
                fresh = plan(200 + trial, 2 * K if trial % 2 else n_long)
                await _bwd_run(st, p, fresh)
                _bwd_compare(fresh, st, f"fresh pass after reset '{where}'", failures)
                stats[f"reset: {where}"] += 1
        failures += st.errors
        _write_summary(cfg, "backward_reset_and_back_to_back", stats, failures)
        assert not failures, "\n".join(failures[:10])
