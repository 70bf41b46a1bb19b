"""cocotb bench of ``hw.bn_core.BNCore``: the forward and the backward bench at the same time.

Both cores' plans (``sim.bench.forward_core.Planner``, ``sim.bench.backward_core.BackwardPlan``) run
concurrently on one DUT, each through its own prefixed ports (``fwd_``, ``bwd_``) with its own
random gaps and back-pressure, so the two cores contend for the shared affine throughout: every
``y`` block, ``stats`` record, ``grads`` record and ``dx`` block is checked bit for bit against the
golden model, as in the separate benches. The forward plan's timing steps are recorded but not
enforced (the other core may hold the affine; ``sim.bench.forward_core`` enforces them on the
forward core alone). The result records how often the
affine and the finalize engine changed hands (``hand_overs``), so a test can check that the
cores did contend for both.

Configuration (``LN_CONFIG``): ``params``, ``seed``, ``elements`` (per core), ``result``.
"""

try:
    import cocotb
except ImportError:         # importable without cocotb
    cocotb = None


def run_bench(verilog, params, elements, *, seed=3, name="bn_core"):
    """Pytest side: build ``verilog`` (an ``ln_bn_core``: the emitted RTL or a gate-level netlist)
    and run this bench on it for ``gen.units.Params`` ``params``; returns the bench's summary (the
    JSON it writes) plus ``failed_cocotb_tests``. Raises ``AssertionError`` if it wrote none."""
    from sim.bench.backward_core import MODEL_OPT
    from sim.bench.common import run_summary_bench
    conf = {"params": params.as_dict(), "seed": seed, "elements": elements}
    return run_summary_bench(verilog, "ln_bn_core", "sim.bench.bn_core", name=name,
                             stem=f"{name}-s{seed}-e{elements}", config=conf, make_vars=MODEL_OPT)


#: How much longer than alone a core may take (each waits for the shared units: a finalize channel
#: for up to two of the other core's, the affine for a burst and a drain).
TIMEOUT_SCALE = 4


class Prefixed:
    """A view of a DUT whose ports are ``prefix + name``; ``clk``, ``rst`` and private attributes
    (``_log``) are the DUT's own."""

    def __init__(self, dut, prefix):
        self._dut, self._prefix = dut, prefix

    def __getattr__(self, name):
        if name in ("clk", "rst") or name.startswith("_"):
            return getattr(self._dut, name)
        return getattr(self._dut, self._prefix + name)


def hand_overs(fwd_cycles, bwd_cycles):
    """How often a shared unit's outputs changed hands: alternations between the forward core's
    and the backward core's outputs of that unit (``y`` / ``dx``, ``stats`` / ``grads``) in the
    merged order of their transfer cycles (a share hands over only when the unit is empty, so
    each alternation is one hand-over with both cores active)."""
    merged = sorted([(c, 0) for c in fwd_cycles] + [(c, 1) for c in bwd_cycles])
    return sum(a[1] != b[1] for a, b in zip(merged, merged[1:]))


if cocotb is not None:
    @cocotb.test()
    async def bn_core_vs_golden(dut):
        """Forward and backward plans at once, bit for bit against the golden model."""
        from gen.units import Params
        from sim.bench import backward_core, forward_core
        from sim.bench.common import config, start_clock_and_reset, write_result

        conf = config()
        fwd, bwd = Prefixed(dut, "fwd_"), Prefixed(dut, "bwd_")
        for port in ("cmd", "x", "params"):
            getattr(fwd, f"{port}__valid").value = 0
        for port in ("y", "stats"):
            getattr(fwd, f"{port}__ready").value = 0
        for port in ("cmd", "stats", "xg", "g"):
            getattr(bwd, f"{port}__valid").value = 0
        for port in ("grads", "dx"):
            getattr(bwd, f"{port}__ready").value = 0
        await start_clock_and_reset(dut)
        steps = backward_core.BackwardPlan(Params(**conf["params"]), conf["seed"]).build(conf["elements"])
        f_task = cocotb.start_soon(forward_core.run_forward(fwd, conf, reset=False, timing=False,
                                                                   timeout_scale=TIMEOUT_SCALE))
        b_task = cocotb.start_soon(backward_core.run_plan(bwd, conf, steps, 0.3, 0.3, conf["seed"] + 1,
                                                          reset=False, timeout_scale=TIMEOUT_SCALE))
        f_failures, f_result = await f_task
        b_result = await b_task
        fc, bc = f_result.pop("transfer_cycles"), b_result.pop("transfer_cycles")
        switches = {"affine": hand_overs(fc["y"], bc["dx"]), "finalize": hand_overs(fc["stats"], bc["grads"])}
        failures = [f"forward: {x}" for x in f_failures]
        failures += [f"backward: {x}" for x in backward_core.plan_problems(b_result)]
        write_result(conf["result"], "bn", failures, tests=["bn_core_vs_golden"],
                     forward=f_result, backward=b_result, hand_overs=switches)
        assert not failures, "\n".join(failures[:5])
