"""Throughput of the Range-BN cores with no input gaps and no output back-pressure.

``python sim/verify/measure_throughput.py [--width 8 --block 16 --chunks 8 --channels 16 --n 256]``
simulates ``ForwardCore`` (Amaranth's simulator, the same RTL the generator emits) over one training
command and one inference command, every stream always valid / always ready, and prints:

* statistics pass: blocks accepted / cycles from the first to the last ``x`` transfer;
* finalize: cycles from the last statistics-pass block to the first normalize-pass block, per channel;
* normalize pass: ``x`` blocks per cycle and ``y`` blocks per cycle (first to last transfer);
* the latency from an ``x`` block to its ``y`` block.

The backward engineer may add a ``BackwardCore`` section here.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def measure_forward(p, n, seed=0):
    """Returns a dict of the measured figures for ``gen.units.Params`` ``p`` and count ``n``."""
    import numpy as np
    from amaranth.sim import Simulator

    from hw.bn_layouts import cmd_layout, params_layout
    from hw.forward_core import ForwardCore
    from sim.model import golden_bn as gbn
    from sim.bench.forward_core import block_word
    from sim.bench.stimulus import channel_params, random_blocks

    core = ForwardCore.from_params(p)
    K = p.chunks
    cfg = gbn.BNConfig(p.bfp, p.channels, chunks=K, internal_frac_bits=p.frac_bits)
    rng = np.random.default_rng(seed)
    blocks = random_blocks(cfg, n, rng)
    gamma, beta = channel_params(cfg, rng)
    xw = [block_word(p.bfp, b) for b in blocks]
    G = cfg.groups
    log = {"x": [], "y": [], "stats": [], "params": []}
    cmds = [{"count": n, "chunks_log2": K.bit_length() - 1, "c_scale": gbn.range_scale(n // K), "training": 1},
            {"count": n, "chunks_log2": K.bit_length() - 1, "c_scale": gbn.range_scale(n // K), "training": 0}]
    x_stream = xw + xw + xw            # training: two passes; inference: one
    prm = [{"gamma": gamma[c], "beta": beta[c], "running_mean": 0, "running_sigma": 0, "load_running": 0}
           for c in range(p.channels)] * 2
    total_y = 2 * n * G

    async def bench(ctx):
        ctx.set(core.y.ready, 1)
        ctx.set(core.stats.ready, 1)
        xi = pi = ci = 0
        cycle = 0
        while len(log["y"]) < total_y and cycle < 50 * (len(x_stream) + 200 * p.channels):
            if ci < len(cmds):
                ctx.set(core.cmd.payload, cmds[ci])
                ctx.set(core.cmd.valid, 1)
            else:
                ctx.set(core.cmd.valid, 0)
            if xi < len(x_stream):
                ctx.set(core.x.payload.as_value(), x_stream[xi])
                ctx.set(core.x.valid, 1)
            else:
                ctx.set(core.x.valid, 0)
            if pi < len(prm):
                ctx.set(core.params.payload, prm[pi])
                ctx.set(core.params.valid, 1)
            else:
                ctx.set(core.params.valid, 0)
            _, _, cv, cr, xv, xr, pv, pr, yv, yr, sv, sr = await ctx.tick().sample(
                core.cmd.valid, core.cmd.ready, core.x.valid, core.x.ready, core.params.valid,
                core.params.ready, core.y.valid, core.y.ready, core.stats.valid, core.stats.ready)
            if cv and cr:
                ci += 1
            if xv and xr:
                log["x"].append(cycle)
                xi += 1
            if pv and pr:
                log["params"].append(cycle)
                pi += 1
            if yv and yr:
                log["y"].append(cycle)
            if sv and sr:
                log["stats"].append(cycle)
            cycle += 1

    sim = Simulator(core)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()

    nb = n * G
    xs, ys = log["x"], log["y"]
    stats_pass = xs[:nb]
    norm_pass = xs[nb:2 * nb]
    infer_pass = xs[2 * nb:3 * nb]
    rate = lambda t: len(t) / (t[-1] - t[0] + 1)
    return {
        "blocks_per_pass": nb,
        "stats_pass_blocks_per_cycle": rate(stats_pass),
        "finalize_cycles": norm_pass[0] - stats_pass[-1] - 1,
        "finalize_cycles_per_channel": (norm_pass[0] - stats_pass[-1] - 1) / p.channels,
        # end of the training normalize pass to the first inference block: y drain, command, finalize
        "inference_gap_cycles": infer_pass[0] - norm_pass[-1] - 1,
        "normalize_x_blocks_per_cycle": rate(norm_pass),
        "normalize_y_blocks_per_cycle": rate(ys[:nb]),
        "inference_x_blocks_per_cycle": rate(infer_pass),
        "x_to_y_latency": ys[0] - norm_pass[0],
        "core_latency_attribute": core.latency,
        "finalize_cycles_per_channel_attribute": core.finalize_cycles_per_channel,
    }


def main(argv=None):
    from gen.units import Params
    parser = argparse.ArgumentParser(description="Throughput of ForwardCore, no gaps, no back-pressure.")
    parser.add_argument("--width", type=int, nargs="+", default=[8])
    parser.add_argument("--block", type=int, nargs="+", default=[16])
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--channels", type=int, nargs="+", default=[16])
    parser.add_argument("--n", type=int, default=256, help="positions per command (default 256)")
    args = parser.parse_args(argv)
    print("| W | B | K | channels | n | stats pass blocks/cycle | finalize cycles (per channel) "
          "| normalize x blocks/cycle | normalize y blocks/cycle | inference x blocks/cycle | x->y latency |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for w in args.width:
        for b in args.block:
            for c in args.channels:
                p = Params(width=w, block=b, chunks=args.chunks, channels=c)
                r = measure_forward(p, args.n)
                print(f"| {w} | {b} | {args.chunks} | {c} | {args.n} | {r['stats_pass_blocks_per_cycle']:.3f} "
                      f"| {r['finalize_cycles']} ({r['finalize_cycles_per_channel']:.1f}) "
                      f"| {r['normalize_x_blocks_per_cycle']:.3f} | {r['normalize_y_blocks_per_cycle']:.3f} "
                      f"| {r['inference_x_blocks_per_cycle']:.3f} | {r['x_to_y_latency']} |")


if __name__ == "__main__":
    main()
