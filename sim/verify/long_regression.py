"""Opt-in long regression: >= 10**7 random elements through the emitted BFP shifter (Verilator +
cocotb), every output block compared with ``sim.model.golden.float_to_bfp``, plus a JSON record of
which edge-case classes were hit and how often.

Usage::

    python -m sim.verify.long_regression                          # 10**7 elements over CONFIGS
    python -m sim.verify.long_regression --elements 200000        # scaled-down run
    pytest --long tests/test_reset.py -k long_regression   # the same from pytest (10**7)

The record goes to ``build/long_regression/shifter.json`` (``--out``): per configuration the
elements and blocks checked, mismatches (with the first few), cycles, seconds, and the count of
every edge-case class:

* per lane: ``tie_t<t>_up`` / ``tie_t<t>_down`` (an exact half-LSB tie at right shift ``t``,
  rounded up to even or down to even), ``inexact`` (rounded, not a tie), ``exact_right``,
  ``left_shift`` (exact left shift, W > M + 2), ``underflow_to_zero`` (non-zero input, code 0),
  ``below_lsb`` (shift beyond the guard bit), ``saturated`` (clamped to the largest code),
  ``saturated_by_rounding`` (truncated code was the largest, rounding carried out),
  ``negative``, ``negative_zero_input``, ``subnormal_input``, ``special_input``;
* per block: ``zero_block``, ``flush_block``, ``special_block``, ``sat_block``,
  ``single_nonzero_lane``, ``all_lanes_equal_exponent``, ``shared_exponent_min`` (E = 1),
  ``shared_exponent_max``, ``mixed_signs``.

Blocks come from a mixture of generators (uniform words, clustered exponents, constructed ties at
every shift amount, saturating maxima, zero / subnormal / special blocks); the stream has random
idle cycles and back-pressure (about 2 % each) so the handshake is exercised throughout.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
OUT = REPO_ROOT / "build" / "long_regression" / "shifter.json"

#: (input format, width, block) of the long regression; elements are split evenly.
CONFIGS = [
    ("fp10", 8, 16),
    ("fp10", 4, 16),
    ("fp16", 16, 4),
    ("e4m3", 6, 8),
    ("e5m2", 3, 32),
    ("fp15", 12, 64),
    ("bf16", 8, 16),
    ("e2m2", 2, 5),
]
CHUNK = 2048          # blocks generated, checked and classified at a time


# --------------------------------------------------------------------------------------------
# Stimulus and classification (numpy, no simulator)
# --------------------------------------------------------------------------------------------

def generate(fmt, bfp, n, rng):
    """``n`` blocks of ``bfp.block`` packed ``fmt`` words (numpy int64 array ``n x B``)."""
    import numpy as np
    B, E, M = bfp.block, fmt.exp_bits, fmt.frac_bits
    emax = fmt.exp_max
    W = bfp.width
    mode = rng.choice(9, size=n, p=[0.16, 0.28, 0.22, 0.08, 0.05, 0.07, 0.05, 0.05, 0.04])
    sign = rng.integers(0, 2, size=(n, B))
    frac = rng.integers(0, 1 << M, size=(n, B))
    # mode 0: uniform exponents
    exp = rng.integers(0, emax + 1, size=(n, B))
    # mode 1: clustered below a block maximum (small shifts dominate)
    top = rng.integers(1, emax + 1, size=(n, 1))
    spread = np.minimum(rng.geometric(0.45, size=(n, B)) - 1, emax)
    clustered = np.maximum(top - spread, 0)
    exp = np.where((mode == 1)[:, None], clustered, exp)
    # mode 2: ties: lane 0 is the maximum; other lanes get a remainder of exactly one half at
    # their shift t = d + M + 2 - W (d = distance to the maximum), for t in 1..M+1
    d_lo = max(0, W - M - 1)                       # smallest d with t >= 1
    d = rng.integers(d_lo, d_lo + M + 1, size=(n, B))
    t = d + M + 2 - W
    tie_exp = np.maximum(top - d, 0)
    m = (1 << M) | frac
    low_mask = (1 << t) - 1
    tie_m = (m & ~low_mask) | (1 << (t - 1))
    tie_frac = tie_m & ((1 << M) - 1)
    is2 = (mode == 2)[:, None] & (np.arange(B) > 0)[None, :]
    exp = np.where(is2, tie_exp, exp)
    frac = np.where(is2, tie_frac, frac)
    exp[:, 0] = np.where(mode == 2, top[:, 0], exp[:, 0])
    # mode 3: saturating maximum: lane 0 fraction all ones at the top exponent
    is3 = mode == 3
    exp[:, 0] = np.where(is3, top[:, 0], exp[:, 0])
    frac[:, 0] = np.where(is3, (1 << M) - 1, frac[:, 0])
    exp = np.where((is3[:, None]) & (np.arange(B) > 0)[None, :], np.maximum(top - rng.integers(0, 3, size=(n, B)), 0), exp)
    # mode 4: zero blocks (+0, -0, some subnormals)
    is4 = (mode == 4)[:, None]
    exp = np.where(is4, 0, exp)
    frac = np.where(is4 & (rng.random((n, B)) < 0.7), 0, frac)
    # mode 5: subnormals among normals
    is5 = (mode == 5)[:, None] & (rng.random((n, B)) < 0.4)
    exp = np.where(is5, 0, exp)
    # mode 6: special exponent (all ones) in some lanes
    is6 = (mode == 6)[:, None] & (rng.random((n, B)) < 0.5)
    exp = np.where(is6, emax, exp)
    # mode 7: one lone non-zero lane
    is7 = (mode == 7)[:, None] & (np.arange(B)[None, :] != rng.integers(0, B, size=(n, 1)))
    exp = np.where(is7, 0, exp)
    frac = np.where(is7, 0, frac)
    # mode 8: every lane at the same exponent (no shift differences)
    exp = np.where((mode == 8)[:, None], top, exp)
    return (sign << (E + M)) | (exp << M) | frac


def possible_classes(fmt, bfp):
    """Names of the classes that can occur for this format pair (others are not reported):
    a tie at shift t needs 1 <= t <= M + 1 and t >= M + 2 - W; at t = M + 1 the truncated code
    is 0 (ties only round down), at t = M it is 1 (ties only round up); left shifts need
    W > M + 2; saturation needs W < M + 2 (otherwise the block maximum is exact)."""
    M, W = fmt.frac_bits, bfp.width
    names = set()
    for t in range(max(1, M + 2 - W), M + 2):
        if t < M + 1:
            names.add(f"tie_t{t}_up")
        if t != M:
            names.add(f"tie_t{t}_down")
    names |= {"inexact", "exact_right", "underflow_to_zero", "below_lsb", "negative",
              "negative_zero_input", "subnormal_input", "special_input", "zero_block", "flush_block",
              "special_block", "single_nonzero_lane", "shared_exponent_min", "shared_exponent_max"}
    if W > M + 2:
        names.add("left_shift")
    if W < M + 2:
        names |= {"saturated", "saturated_by_rounding", "sat_block"}
    if bfp.block > 1:
        names |= {"all_lanes_equal_exponent", "mixed_signs"}
    return names


def classify(fmt, bfp, words, counts):
    """Add the edge-case classes of ``words`` (``n x B``) to ``counts`` (a dict)."""
    import numpy as np
    E, M, W = fmt.exp_bits, fmt.frac_bits, bfp.width
    s = (words >> (E + M)) & 1
    e = (words >> M) & ((1 << E) - 1)
    f = words & ((1 << M) - 1)
    nz = e != 0
    m = np.where(nz, (1 << M) | f, 0)
    Eb = np.where(nz, e, 0).max(axis=1, keepdims=True)
    sh = (Eb - e) + (M + 2 - W)
    right = nz & (sh > 0)
    t = np.clip(sh, 1, M + 2)
    q0 = np.where(right, m >> t, 0)
    guard = np.where(right, (m >> (t - 1)) & 1, 0)
    sticky = np.where(right, (m & ((1 << (t - 1)) - 1)) != 0, False)
    tie = right & (guard == 1) & ~sticky & (sh <= M + 1)
    up = guard & (sticky | (q0 & 1))
    q = np.where(right, q0 + up, np.where(nz, m << np.clip(-sh, 0, None), 0))
    code_max = (1 << (W - 1)) - 1

    allowed = possible_classes(fmt, bfp)

    def add(name, value):
        if name in allowed:
            counts[name] = counts.get(name, 0) + int(value)
        elif value:
            raise AssertionError(f"class {name} hit although impossible for {fmt.name} W={W}")

    for tt in range(1, M + 2):
        sel = tie & (sh == tt)
        add(f"tie_t{tt}_up", (sel & ((q0 & 1) == 1)).sum())
        add(f"tie_t{tt}_down", (sel & ((q0 & 1) == 0)).sum())
    add("inexact", (right & (guard | sticky).astype(bool) & ~tie).sum())
    add("exact_right", (right & (guard == 0) & ~sticky).sum())
    add("left_shift", (nz & (sh < 0)).sum())
    add("underflow_to_zero", (nz & (q == 0)).sum())
    add("below_lsb", (right & (sh > M + 1)).sum())
    sat = nz & (q > code_max)
    add("saturated", sat.sum())
    add("saturated_by_rounding", (right & (q0 == code_max) & (up == 1)).sum())
    add("negative", (nz & (s == 1) & (q > 0)).sum())
    add("negative_zero_input", ((e == 0) & (f == 0) & (s == 1)).sum())
    add("subnormal_input", ((e == 0) & (f != 0)).sum())
    add("special_input", (e == fmt.exp_max).sum())
    add("zero_block", (~nz.any(axis=1)).sum())
    add("flush_block", ((e == 0) & (f != 0)).any(axis=1).sum())
    add("special_block", (e == fmt.exp_max).any(axis=1).sum())
    add("sat_block", sat.any(axis=1).sum())
    add("single_nonzero_lane", (nz.sum(axis=1) == 1).sum())
    if bfp.block > 1:
        add("all_lanes_equal_exponent", (nz.all(axis=1) & (e == e[:, :1]).all(axis=1)).sum())
        pos = (nz & (s == 0)).any(axis=1)
        neg = (nz & (s == 1)).any(axis=1)
        add("mixed_signs", (pos & neg).sum())
    add("shared_exponent_min", (nz.any(axis=1) & (Eb[:, 0] == 1)).sum())
    add("shared_exponent_max", (Eb[:, 0] == fmt.exp_max).sum())


# --------------------------------------------------------------------------------------------
# cocotb side
# --------------------------------------------------------------------------------------------

try:
    import cocotb
except ImportError:
    cocotb = None


def _expected_bits(fmt, bfp, words):
    from sim.model.golden import float_to_bfp
    b = float_to_bfp(fmt, bfp, words)
    bits = b.exponent
    pos = bfp.exp_bits
    for q in b.codes:
        bits |= (q & ((1 << bfp.width) - 1)) << pos
        pos += bfp.width
    for name in ("sat", "special", "flush"):
        bits |= int(bool(b.flags[name])) << pos
        pos += 1
    return bits


if cocotb is not None:
    @cocotb.test()
    async def long_shifter(dut):
        import collections
        import numpy as np
        from cocotb.clock import Clock
        from cocotb.triggers import FallingEdge, RisingEdge
        from hw.formats import BFPFormat, float_format
        from sim.bench.common import config
        cfg = config()
        fmt = float_format(cfg["fmt"])
        bfp = BFPFormat.for_float(fmt, cfg["width"], cfg["block"])
        rng = np.random.default_rng(cfg["seed"])
        prng = __import__("random").Random(cfg["seed"])
        gap, bp = cfg.get("gap", 0.02), cfg.get("backpressure", 0.02)
        total = cfg["blocks"]
        Clock(dut.clk, 10, unit="ns").start()
        dut.rst.value = 1
        dut.i__valid.value = 0
        dut.o__ready.value = 0
        for _ in range(3):
            await RisingEdge(dut.clk)
        dut.rst.value = 0
        counts, mism, notes = {}, 0, []
        t0 = time.time()
        pending = collections.deque()         # (expected bits, words) in order
        ivalid = False
        sent = received = cycles = 0
        fw = fmt.width
        gen_blocks = []
        h_iv, h_ir, h_ip = dut.i__valid, dut.i__ready, dut.i__payload
        h_ov, h_or, h_op = dut.o__valid, dut.o__ready, dut.o__payload
        oready = True
        h_or.value = 1
        while received < total:
            if not gen_blocks and sent < total:
                n = min(CHUNK, total - sent)
                arr = generate(fmt, bfp, n, rng)
                classify(fmt, bfp, arr, counts)
                gen_blocks = [[int(w) for w in row] for row in arr][::-1]
            await FallingEdge(dut.clk)
            # handshakes of the coming edge
            if ivalid and h_ir.value:
                ivalid = False
                sent += 1
            if oready and h_ov.value:
                got = h_op.value.to_unsigned()
                want, words = pending.popleft()
                received += 1
                if got != want:
                    mism += 1
                    if len(notes) < 10:
                        notes.append(f"block {received - 1} words {[hex(w) for w in words]}: got {got:#x} want {want:#x}")
            await RisingEdge(dut.clk)
            cycles += 1
            if not ivalid and gen_blocks and not (gap and prng.random() < gap):
                words = gen_blocks.pop()
                bits = 0
                for k, w in enumerate(words):
                    bits |= w << (k * fw)
                h_ip.value = bits
                pending.append((_expected_bits(fmt, bfp, words), words))
                ivalid = True
                h_iv.value = 1
            elif not ivalid:
                h_iv.value = 0
            new_ready = not (bp and prng.random() < bp)
            if new_ready != oready:
                h_or.value = int(new_ready)
                oready = new_ready
            if cycles > 4 * total + 1000:
                notes.append("timeout")
                mism += 1
                break
        result = {"fmt": fmt.name, "width": bfp.width, "block": bfp.block, "blocks": received,
                  "elements": received * bfp.block, "mismatches": mism, "notes": notes,
                  "cycles": cycles, "seconds": round(time.time() - t0, 1), "classes": counts}
        with open(cfg["result"], "w") as fh:
            json.dump(result, fh, indent=1, sort_keys=True)
        assert mism == 0, notes[:3]


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

def run(elements=10 ** 7, configs=None, seed=1, out=OUT, log=print):
    from gen.verilog import emit
    from hw.bfp_shifter import BFPShifter
    from hw.formats import BFPFormat, float_format
    from sim.bench.common import run_cocotb
    configs = configs or CONFIGS
    per = elements // len(configs)
    results, t_all = [], time.time()
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    for k, (fmt_name, width, block) in enumerate(configs):
        fmt = float_format(fmt_name)
        bfp = BFPFormat.for_float(fmt, width, block)
        blocks = max(1, -(-per // block))
        text = emit(BFPShifter(fmt, bfp), "ln_bfp_shifter")
        res_file = out.parent / f"part-{fmt_name}-w{width}-b{block}-{os.getpid()}.json"
        cfg = {"fmt": fmt_name, "width": width, "block": block, "blocks": blocks, "seed": seed + k,
               "result": str(res_file)}
        t0 = time.time()
        error = None
        try:
            run_cocotb(text, "ln_bfp_shifter", "sim.verify.long_regression",
                       name=f"long-shifter-{fmt_name}-w{width}-b{block}", config=cfg)
        except AssertionError as exc:
            error = str(exc)[:500]
        res = json.loads(res_file.read_text()) if res_file.exists() else {"error": error}
        res_file.unlink(missing_ok=True)
        res["wall_seconds"] = round(time.time() - t0, 1)
        if error:
            res["error"] = error
        results.append(res)
        log(f"{fmt_name} W={width} B={block}: {res.get('elements')} elements, "
            f"{res.get('mismatches')} mismatches, {res.get('cycles')} cycles, {res['wall_seconds']} s")
    classes = {}
    for r in results:
        for name, v in r.get("classes", {}).items():
            classes[name] = classes.get(name, 0) + v
    record = {
        "unit": "ln_bfp_shifter", "elements_requested": elements, "seed": seed,
        "elements": sum(r.get("elements", 0) for r in results),
        "mismatches": sum(r.get("mismatches", 0) for r in results),
        "seconds": round(time.time() - t_all, 1),
        "classes_total": dict(sorted(classes.items())),
        # per configuration: a class possible there but never hit there
        "classes_never_hit": sorted(f"{r.get('fmt')} W={r.get('width')} B={r.get('block')}: {n}"
                                    for r in results for n, v in r.get("classes", {}).items() if v == 0)
                             + [f"{r.get('fmt', '?')}: no result ({r.get('error', '')[:80]})"
                                for r in results if "classes" not in r],
        "configurations": results,
    }
    out.write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sim.verify.long_regression", description=__doc__.split("\n\n")[0])
    ap.add_argument("--elements", type=int, default=10 ** 7, help="total elements (default 10**7)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    if args.elements < 1:
        ap.error(f"--elements must be a positive integer, not {args.elements}")
    from sim.bench.common import verilator_path
    vp = verilator_path()
    if vp:
        os.environ["PATH"] = str(vp) + os.pathsep + os.environ.get("PATH", "")
    rec = run(args.elements, seed=args.seed, out=args.out)
    print(f"{rec['elements']} elements, {rec['mismatches']} mismatches, {rec['seconds']} s; "
          f"classes never hit: {rec['classes_never_hit'] or 'none'}; record: {args.out}")
    return 1 if rec["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
