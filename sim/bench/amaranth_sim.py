"""Stream drivers for the Amaranth simulator (``amaranth.sim``), the unit tests' counterpart of the
cocotb driver in ``sim.bench.common``: a producer with random input gaps and a consumer with random
back-pressure, by the Amaranth stream rules (``valid`` never waits for ``ready``; the payload holds
until it is taken).

:func:`run_stream` runs one input stream and one output stream of a DUT; :func:`producer` and
:func:`consumer` are its two testbench factories, for benches with more streams. Both draw from one
``random.Random`` in a fixed order (producer added first), so a seed gives the same run every time.
Transfer cycles count rising edges since the start, so ``out - in`` is the latency in cycles.
"""

import random

__all__ = ["producer", "consumer", "run_stream"]


def producer(port, payloads, rng, gap=0.0, cycles=None, offers=None):
    """Testbench: every payload of ``payloads`` (values ``ctx.set`` accepts) on stream ``port``,
    each preceded by idle cycles while ``rng.random() < gap``; appends each transfer's cycle to
    ``cycles`` and the cycle of the first edge that sees it offered to ``offers``."""
    async def bench(ctx):
        cycle = 0
        for value in payloads:
            while rng.random() < gap:
                await ctx.tick()
                cycle += 1
            ctx.set(port.payload, value)
            ctx.set(port.valid, 1)
            if offers is not None:
                offers.append(cycle + 1)
            while True:
                _, _, ready = await ctx.tick().sample(port.ready)
                cycle += 1
                if ready:
                    break
            if cycles is not None:
                cycles.append(cycle)
            ctx.set(port.valid, 0)
    return bench


def consumer(port, count, convert, outputs, rng, stall=0.0, cycles=None):
    """Testbench: takes ``count`` transfers from stream ``port``, ``ready`` low in a cycle with
    probability ``stall``; appends ``convert(payload)`` to ``outputs`` and each transfer's cycle
    to ``cycles``."""
    async def bench(ctx):
        cycle = 0
        while len(outputs) < count:
            ready = rng.random() >= stall
            ctx.set(port.ready, ready)
            _, _, valid, value = await ctx.tick().sample(port.valid, port.payload)
            cycle += 1
            if ready and valid:
                outputs.append(convert(value))
                if cycles is not None:
                    cycles.append(cycle)
    return bench


def run_stream(dut, payloads, convert, *, seed=0, gap=0.0, stall=0.0, i="i", o="o", clock=1e-8,
               offers=None):
    """Run ``payloads`` through ``dut``'s stream ``i`` and collect as many outputs from stream
    ``o`` (each through ``convert``). Returns ``(outputs, in_cycles, out_cycles)``; ``offers``, a
    list, gets the cycle at which each input was first offered (see :func:`producer`)."""
    from amaranth.sim import Simulator
    rng = random.Random(seed)
    payloads = list(payloads)
    outputs, in_cycles, out_cycles = [], [], []
    sim = Simulator(dut)
    sim.add_clock(clock)
    sim.add_testbench(producer(getattr(dut, i), payloads, rng, gap, in_cycles, offers))
    sim.add_testbench(consumer(getattr(dut, o), len(payloads), convert, outputs, rng, stall, out_cycles))
    sim.run()
    return outputs, in_cycles, out_cycles
