"""Throughput and latency of the backward core, measured in simulation (Verilator + cocotb).

    PYTHONPATH=. python sim/verify/measure_backward.py [--width 8 --block 16 --chunks 8 --channels 16 --count 256]

With no input gaps and no back-pressure one command runs twice over the same data, once normally
and once in parameters-only mode, and the stream monitors' transfer cycles give:

* ``reduce_blocks_per_cycle``: xg pairs / cycles from the first to the last pair (1.0 = one pair
  per cycle);
* ``dx_blocks_per_cycle``: dx blocks / cycles from the first to the last dx block, and the same
  for the g input;
* ``dx_latency``: cycles from a g block's transfer to its dx block's (``BackwardCore.latency``);
* ``finalize_cycles_per_channel``: cycles between consecutive ``stats`` transfers (the per-channel
  finalize rate), and ``reduce_to_grads`` / ``reduce_to_dx_pass``: cycles from the last xg pair
  to the first grads record / to the first g block of the dx pass;
* ``busy_cycles`` of both commands (command transfer to ``busy`` low) and
  ``params_only_saved_cycles``, their difference.
"""

import argparse
import json
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

try:
    import cocotb
    from cocotb.triggers import FallingEdge, RisingEdge
except ImportError:
    cocotb = None


def _plan(p, n, seed=5):
    from sim.bench.backward_core import BackwardPlan
    plan = BackwardPlan(p, seed)
    K = p.chunks
    x = plan.tensor("gauss", n, K)
    g = plan.tensor("grad", n, K)
    plan.good(x, g, K, tag="normal")
    step = plan.good(x, g, K, params_only=True, tag="parameters only")
    return plan.steps


if cocotb is not None:
    @cocotb.test()
    async def backward_throughput(dut):
        from gen.units import Params
        from sim.bench import common as bench
        from sim.bench.backward_core import queue_step
        conf = bench.config()
        p = Params(**conf["params"])
        steps = _plan(p, conf["n"])
        await bench.start_clock_and_reset(dut)
        clk = dut.clk
        names = ("cmd", "stats", "xg", "g", "grads", "dx")
        # No idle cycles, no back-pressure: the figures are the core's own.
        drv = bench.StreamDriver(dut, ("cmd", "stats", "xg", "g"), ("grads", "dx"))
        cocotb.start_soon(drv.run())
        busy_end = []
        was = [0]

        def busy_watch(d):
            now = int(dut.busy.value)
            if was[0] and not now:
                busy_end.append(d.cycle)
            was[0] = now
        drv.watchers.append(busy_watch)
        # The second command is queued only after the first finished, so that the stats source
        # does not run ahead (it is not anyway: the core takes stats only in finalize).
        for step in steps:
            queue_step(drv, step)
        limit = 100000 + 20 * sum(len(s["xg"]) + len(s["g"]) + 64 * len(s["stats"]) for s in steps)
        while len(busy_end) < len(steps):
            await RisingEdge(clk)
            assert drv.cycle < limit, "timeout"
        assert not drv.errors, drv.errors[:2]
        C, G, n = p.channels, -(-p.channels // p.block), conf["n"]
        t = dict(drv.sent_cycles, **drv.received_cycles)
        got_ok = (drv.received["grads"] == [w for s in steps for w in s["grads"]]
                  and drv.received["dx"] == [w for s in steps for w in s["dx"]])
        nb = n * G
        xg1, g1, dx1, st1, gr1 = t["xg"][:nb], t["g"][:nb], t["dx"][:nb], t["stats"][:C], t["grads"][:C]
        st2 = t["stats"][C:2 * C]
        xg2 = t["xg"][nb:2 * nb]
        busy = [busy_end[0] - t["cmd"][0], busy_end[1] - t["cmd"][1]]
        res = {
            "n": n, "groups": G, "channels": C, "chunks": p.chunks,
            "bit_exact": got_ok,
            "reduce_blocks_per_cycle": round(nb / (xg1[-1] - xg1[0] + 1), 4),
            "g_blocks_per_cycle": round(nb / (g1[-1] - g1[0] + 1), 4),
            "dx_blocks_per_cycle": round(nb / (dx1[-1] - dx1[0] + 1), 4),
            "dx_latency": dx1[0] - g1[0],
            "finalize_cycles_per_channel": ((st1[-1] - st1[0]) / (C - 1)) if C > 1 else None,
            "finalize_cycles_per_channel_params_only": ((st2[-1] - st2[0]) / (C - 1)) if C > 1 else None,
            "reduce_to_first_grads": gr1[0] - xg1[-1],
            "reduce_to_last_grads": gr1[-1] - xg1[-1],
            "reduce_to_dx_pass": g1[0] - xg1[-1],
            "reduce_to_busy_low_params_only": busy_end[1] - xg2[-1],
            "busy_cycles": busy,
            "params_only_saved_cycles": busy[0] - busy[1],
        }
        bench_conf = conf.get("result_file")
        if bench_conf:
            Path(bench_conf).write_text(json.dumps(res))


def measure(p, n=None):
    """Run the measurement for ``gen.units.Params`` ``p``; returns the dict described above plus
    the documented values (``*_doc``) from ``BackwardCore``."""
    from gen.verilog import emit
    from hw.backward_core import unit
    from sim.bench.common import REPO_ROOT, run_cocotb
    n = n or max(64, 8 * p.chunks)
    n -= n % p.chunks
    core = unit(p)
    out = REPO_ROOT / "build" / "sim" / "backward-results"
    out.mkdir(parents=True, exist_ok=True)
    label = f"W{p.width}-B{p.block}-K{p.chunks}-C{p.channels}-{p.in_format}"
    result_file = out / f"throughput-{label}-{n}.json"
    if result_file.exists():
        result_file.unlink()
    from sim.bench.backward_core import build_core
    verilog = emit(core, "ln_backward_core")
    run_cocotb(verilog, "ln_backward_core", "sim.verify.measure_backward", build_dir=build_core(verilog, f"backward-{label}"),
               name=f"backward-{label}", config={"params": p.as_dict(), "n": n, "result_file": str(result_file)},
               testcase="backward_throughput")
    res = json.loads(result_file.read_text())
    res["dx_latency_doc"] = core.latency
    res["finalize_cycles_per_channel_doc"] = core.finalize_cycles_per_channel(p.chunks)
    res["finalize_cycles_per_channel_params_only_doc"] = core.finalize_cycles_per_channel(p.chunks, True)
    res["finalize_latency"] = core.finalize_latency
    return res


def main(argv=None):
    from gen.units import Params
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--block", type=int, default=16)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--in-format", default="fp10")
    ap.add_argument("--count", type=int, default=256, help="n, positions per channel")
    args = ap.parse_args(argv)
    p = Params(width=args.width, block=args.block, chunks=args.chunks, channels=args.channels,
               in_format=args.in_format, max_count=max(4096, args.count))
    t0 = time.time()
    res = measure(p, args.count)
    res["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
