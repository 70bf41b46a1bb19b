"""The area probe's accumulators compute what their docstrings say (so its figures compare like
with like): ``ExactLanes`` the exact sum of ``v 2**e``, ``WindowedLanes`` the windowed sum with a
shared running exponent and round-half-up, against a plain Python model of that definition."""

import random

import pytest
from amaranth.sim import Simulator

from gen.probe_accumulators import ExactLanes, WindowedLanes


def rhu(t, d):
    """floor(t / 2**d + 1/2) for an integer t and d >= 0."""
    return t if d == 0 else (t + (1 << (d - 1))) >> d


def windowed_model(steps, lanes, guard, acc_width):
    f, lsb, acc = 0, 0, [0] * lanes
    for e, vs in steps:
        new_f = max(f, e)
        new_lsb = max(0, new_f - guard)
        for lane, v in enumerate(vs):
            # one of the two terms is exact: a rescale only happens when e is the new maximum
            acc[lane] = rhu(acc[lane], min(new_lsb - lsb, acc_width)) + rhu(v << guard, min(new_lsb - e + guard, acc_width))
            assert -(1 << (acc_width - 1)) <= acc[lane] < 1 << (acc_width - 1)
        f, lsb = new_f, new_lsb
    return acc, lsb


def run(dut, steps):
    got = {}

    async def bench(ctx):
        for e, vs in steps:
            ctx.set(dut.e, e)
            for lane, v in enumerate(vs):
                ctx.set(dut.v[lane], v)
            ctx.set(dut.go, 0)
            await ctx.tick()            # the inputs are registered once
            ctx.set(dut.go, 1)
            await ctx.tick()
            ctx.set(dut.go, 0)
        got["acc"] = [ctx.get(dut.o[lane]) for lane in range(dut.lanes)]

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got["acc"]


@pytest.mark.parametrize("seed", range(3))
def test_exact_lanes(seed):
    rng = random.Random(seed)
    W, ew, lanes = 5, 3, 3
    sw = (20 * ((1 << (W - 1)) - 1) << 7).bit_length() + 1
    steps = [(rng.randrange(8), [rng.randrange(-15, 16) for _ in range(lanes)]) for _ in range(20)]
    want = [sum(vs[lane] << e for e, vs in steps) for lane in range(lanes)]
    assert run(ExactLanes(lanes, W, ew, sw), steps) == want


@pytest.mark.parametrize("seed", range(4))
def test_windowed_lanes(seed):
    rng = random.Random(seed)
    W, ew, lanes, guard = 5, 4, 3, 2
    acc_width = W + 5 + guard            # 20 steps: |sum| < 20 * 2**(W-1) * 2**guard
    # exponents that mostly rise, with falls, so both the rescale and the addend shift are taken
    steps, e = [], 0
    for _ in range(20):
        e = max(0, min(15, e + rng.choice([-3, -1, 0, 1, 2, 4])))
        steps.append((e, [rng.randrange(-15, 16) for _ in range(lanes)]))
    want, _ = windowed_model(steps, lanes, guard, acc_width)
    assert run(WindowedLanes(lanes, W, ew, acc_width, guard), steps) == want
