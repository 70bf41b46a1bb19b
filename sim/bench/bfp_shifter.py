# amaranth: UnusedElaboratable=no
"""cocotb regression of ``hw.bfp_shifter`` against ``sim.model.golden`` (run through
``tests/test_bfp_shifter.py``, which passes the configuration in ``LN_CONFIG``).

Configuration keys: ``unit`` (``"shifter"`` or ``"quantizer"``), ``width``, ``block``,
``exp_bits``, for the shifter ``in_format``, for the quantizer ``mag_width``, ``exp_width``,
``exp_signed``, ``exp_offset``, ``normalized``; ``random_blocks`` (count), ``seed`` and
``summary`` (path of the JSON summary to write).

Every output code, exponent and flag is compared with the golden model; mismatches are counted
(the first few logged) and the test fails at the end if there was any.
"""

import json
import random

import cocotb

from hw.bfp_shifter import BFPShifter, BlockQuantizer
from hw.formats import BFPFormat, FLAG_NAMES, float_format
from sim.bench.common import StreamBench, config, write_result
from sim.model.golden import Block, float_to_bfp, quantize_block

_SUMMARY = {}


# --- the unit under test, rebuilt from the configuration ------------------------------------

class Case:
    """DUT description: layouts, latency, vector generators and the golden model."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.bfp = BFPFormat(cfg["width"], cfg["exp_bits"], cfg["block"])
        if cfg["unit"] == "shifter":
            self.fmt = float_format(cfg["in_format"])
            self.dut = BFPShifter(self.fmt, self.bfp)
        else:
            self.dut = BlockQuantizer(self.bfp, cfg["mag_width"], cfg["exp_width"],
                                      exp_signed=cfg["exp_signed"], exp_offset=cfg["exp_offset"],
                                      normalized=cfg["normalized"],
                                      zeros_at_min_exp=cfg.get("zeros_at_min_exp", False))
        self.in_layout, self.out_layout = self.dut.input_layout, self.dut.output_layout
        self.label = label(cfg)

    # Payloads: the shifter takes packed float words, the quantizer lanes + flags.
    def payload(self, vector):
        if self.cfg["unit"] == "shifter":
            return [self.fmt_fields(w) for w in vector]
        lanes, flags = vector
        return {"lanes": [{"sign": s, "mag": m, "exp": e} for s, m, e in lanes], "flags": flags}

    def fmt_fields(self, word):
        sign, exponent, fraction = self.fmt.unpack(word)
        return {"sign": sign, "exponent": exponent, "fraction": fraction}

    def expected(self, vector):
        if self.cfg["unit"] == "shifter":
            return float_to_bfp(self.fmt, self.bfp, vector)
        lanes, flags = vector
        shared, codes, sat = quantize_block(self.bfp, [self.dut.exact_element(*lane) for lane in lanes])
        return Block(shared, codes, {"sat": sat or bool(flags["sat"]), "special": bool(flags["special"]),
                                     "flush": bool(flags["flush"])})

    def elements(self, vector):
        """The vector as golden-model exact elements ``(sign, mag, exp)``."""
        if self.cfg["unit"] == "shifter":
            fmt, out = self.fmt, []
            for word in vector:
                sign, exponent, fraction = fmt.unpack(word)
                out.append((sign, (1 << fmt.frac_bits) | fraction, exponent - fmt.bias - fmt.frac_bits)
                           if exponent else (sign, 0, 0))
            return out
        return [self.dut.exact_element(*lane) for lane in vector[0]]

    def observed(self, out):
        return Block(out["exponent"], [self.bfp.to_signed(c) for c in out["codes"]],
                     {name: bool(out["flags"][name]) for name in FLAG_NAMES})

    def vectors(self, rng, n_random):
        gen = ShifterVectors(self, rng) if self.cfg["unit"] == "shifter" else QuantizerVectors(self, rng)
        directed = gen.directed()
        return directed, [gen.random() for _ in range(n_random)]


def label(cfg):
    b = f"W={cfg['width']} B={cfg['block']}"
    if cfg["unit"] == "shifter":
        return f"bfp_shifter {b} {cfg['in_format']}" + (
            "" if cfg["exp_bits"] == float_format(cfg["in_format"]).exp_bits else f" E={cfg['exp_bits']}")
    return (f"block_quantizer {b} E={cfg['exp_bits']} mag={cfg['mag_width']} "
            f"exp={'s' if cfg['exp_signed'] else 'u'}{cfg['exp_width']}{cfg['exp_offset']:+d}"
            + (" normalized" if cfg["normalized"] else "")
            + (" zeros-at-min-exp" if cfg.get("zeros_at_min_exp") else ""))


# --- vector generators ----------------------------------------------------------------------

class ShifterVectors:
    """Blocks of packed floats: directed corner cases and several random distributions."""

    def __init__(self, case, rng):
        self.fmt, self.bfp, self.rng = case.fmt, case.bfp, rng
        self.B = case.bfp.block

    def word(self, exponent, fraction=None, sign=None):
        rng, fmt = self.rng, self.fmt
        fraction = rng.randrange(1 << fmt.frac_bits) if fraction is None else fraction
        sign = rng.randrange(2) if sign is None else sign
        return fmt.pack(sign, exponent, fraction)

    def fill(self, lanes, filler=None):
        """A block with ``lanes`` = {index: word}; other lanes from ``filler()`` or +0."""
        return [lanes.get(k, filler() if filler else 0) for k in range(self.B)]

    def small(self, e_max, spread=None):
        """A random word at most ``spread`` binades below ``e_max`` (or zero)."""
        fmt, rng = self.fmt, self.rng
        spread = fmt.frac_bits + self.bfp.width + 2 if spread is None else spread
        e = e_max - rng.randint(1, spread)
        return self.word(e) if e >= 1 else 0

    def directed(self):
        fmt, bfp, rng, B = self.fmt, self.bfp, self.rng, self.B
        M, E = fmt.frac_bits, fmt.exp_max
        out = []
        # Zero blocks: +0, -0, subnormals (flush), subnormals next to normals.
        out.append([0] * B)
        out.append([fmt.pack(1, 0, 0)] * B)
        out.append([fmt.pack(rng.randrange(2), 0, rng.randrange(1, 1 << M)) for _ in range(B)])
        out.append(self.fill({0: fmt.pack(0, 0, 1)}, lambda: self.word(rng.randint(1, E))))
        # One lone non-zero lane at every position, at the smallest, a middle and the largest exponent.
        for k in range(B):
            for e in (1, rng.randint(1, E), E):
                out.append(self.fill({k: self.word(e)}, lambda: fmt.pack(rng.randrange(2), 0, 0)))
        # Largest exponent (special): everywhere, and next to much smaller lanes.
        out.append([self.word(E) for _ in range(B)])
        out.append([self.word(E, (1 << M) - 1, k & 1) for k in range(B)])
        out.append(self.fill({rng.randrange(B): self.word(E)}, lambda: self.small(E)))
        out.append(self.fill({rng.randrange(B): self.word(E)}, lambda: fmt.pack(0, 0, rng.randrange(1 << M))))
        # Smallest exponent everywhere; every lane at a different distance from the maximum.
        out.append([self.word(1) for _ in range(B)])
        for e_max in (E, rng.randint(1, E), min(E, M + 3)):
            out.append([self.word(e_max - k) if e_max - k >= 1 else 0 for k in range(B)])
        # Mixed signs, equal magnitudes: codes must be exact negatives.
        w = self.word(rng.randint(1, E), sign=0)
        out.append([w | (k & 1) << (fmt.width - 1) for k in range(B)])
        out.extend(self.ties())
        out.extend(self.saturating())
        return out

    def shared_of(self, word):
        return float_to_bfp(self.fmt, self.bfp, [word] + [0] * (self.B - 1)).exponent

    def ties(self):
        """Exact half-LSB ties at every shift amount a tie can occur at, with even and odd
        truncated codes (so ties go down and up), placed next to a block maximum that fixes the
        shared exponent: lane value (2k+1) * 2**(lsb-1) for every bit length of 2k+1."""
        fmt, bfp, rng, B = self.fmt, self.bfp, self.rng, self.B
        M = fmt.frac_bits
        out = []
        if B == 1:                  # a lone lane is its own maximum: see saturating()
            return out
        for j in range(1, min(M + 1, bfp.width) + 1):          # bit length of 2k+1
            ks = {0} if j == 1 else set()
            if j > 1:
                lo, hi = 1 << (j - 2), (1 << (j - 1)) - 1      # k with bit_length(2k+1) == j
                ks |= {lo, hi, rng.randint(lo, hi)}
                ks |= {k ^ 1 for k in ks if lo <= k ^ 1 <= hi}  # both parities
            for k in sorted(ks):
                hits = 0
                for _ in range(60):                            # find maxima that leave room
                    if hits == 2:
                        break
                    e_max = rng.randint(1, fmt.exp_max)
                    top = self.word(e_max)
                    lsb = bfp.lsb_exponent(self.shared_of(top))
                    e = lsb - 2 + j + fmt.bias
                    if not 1 <= e <= min(e_max, fmt.exp_max):
                        continue
                    m = (2 * k + 1) << (M + 1 - j)
                    tie = fmt.pack(rng.randrange(2), e, m - (1 << M))
                    # The tie goes to every lane in turn (each lane has its own rounding logic),
                    # the maximum to another lane.
                    t_lane = len(out) % B
                    lanes = {t_lane: tie, (t_lane + rng.randrange(1, B)) % B: top}
                    out.append(self.fill(lanes, lambda: self.small(e_max)))
                    hits += 1
        return out

    def saturating(self):
        """Block maxima that round up to 2**(W-1) (saturate) and neighbours that just do not."""
        fmt, bfp, rng = self.fmt, self.bfp, self.rng
        M, W = fmt.frac_bits, bfp.width
        sh0 = M + 2 - W                                       # shift of the maximum lane
        mags = {(1 << (M + 1)) - 1, (1 << (M + 1)) - 2}
        if sh0 >= 1:
            top = (1 << (W - 1)) - 1
            mags |= {(top << sh0) | (1 << (sh0 - 1)),          # tie, odd: rounds up, saturates
                     (top << sh0) | ((1 << (sh0 - 1)) - 1),    # just below the tie
                     ((top - 1) << sh0) | (1 << (sh0 - 1))}    # tie, even: stays
        out = []
        for m in sorted(mags):
            if m >> M != 1:
                continue
            for e in (rng.randint(1, fmt.exp_max), fmt.exp_max):
                out.append(self.fill({self.rng.randrange(self.B): self.word(e, m - (1 << M))},
                                     lambda: self.small(e)))
        return out

    def random(self):
        fmt, rng, B = self.fmt, self.rng, self.B
        kind = rng.random()
        if kind < 0.2:                                        # any bit pattern
            return [rng.randrange(1 << fmt.width) for _ in range(B)]
        e_max = rng.randint(1, fmt.exp_max)
        spread = rng.choice([1, 3, fmt.frac_bits + self.bfp.width + 2])
        lanes = []
        for _ in range(B):
            r = rng.random()
            if r < 0.08:
                lanes.append(fmt.pack(rng.randrange(2), 0, rng.randrange(1 << fmt.frac_bits) if r < 0.02 else 0))
            else:
                e = e_max - rng.randint(0, spread)
                lanes.append(self.word(e) if e >= 1 else 0)
        if kind > 0.8:                                        # tie-like low fraction bits
            t = rng.randint(1, fmt.frac_bits)
            lanes = [(w & ~((1 << t) - 1)) | (1 << (t - 1)) if (w >> fmt.frac_bits) & fmt.exp_max else w
                     for w in lanes]
        return lanes


class QuantizerVectors:
    """Blocks of exact elements ``(sign, mag, exp)`` plus upstream flags."""

    def __init__(self, case, rng):
        self.case, self.bfp, self.rng = case, case.bfp, rng
        q = case.dut
        self.q, self.B = q, case.bfp.block
        self.mw = q.mag_width
        self.lo, self.hi = q.exp_lo, q.exp_hi

    def mag(self, bits=None):
        bits = self.rng.randint(1, self.mw) if bits is None else bits
        if self.q.normalized:
            bits = self.mw
        return (1 << (bits - 1)) | self.rng.randrange(1 << (bits - 1)) if bits > 1 else 1

    def flags(self, p=0.1):
        return {name: int(self.rng.random() < p) for name in FLAG_NAMES}

    def lane(self, exp, bits=None):
        return (self.rng.randrange(2), self.mag(bits), max(self.lo, min(self.hi, exp)))

    def zero(self):
        exp = self.lo if self.q.zeros_at_min_exp else self.rng.randint(self.lo, self.hi)
        return (self.rng.randrange(2), 0, exp)

    def block(self, lanes, flags=None):
        full = [lanes.get(k) or self.zero() for k in range(self.B)]
        return full, flags or {name: 0 for name in FLAG_NAMES}

    def directed(self):
        rng, B, lo, hi = self.rng, self.B, self.lo, self.hi
        out = [self.block({})]
        for name in FLAG_NAMES:
            out.append(self.block({}, {n: int(n == name) for n in FLAG_NAMES}))
        for k in range(B):
            for e in (lo, hi, rng.randint(lo, hi)):
                out.append(self.block({k: self.lane(e)}))
        out.append(self.block({k: self.lane(hi, self.mw) for k in range(B)}))
        out.append(self.block({k: (k & 1, (1 << self.mw) - 1, hi) for k in range(B)}))
        out.append(self.block({k: self.lane(lo) for k in range(B)}))
        out.extend(self.ties())
        return out

    def ties(self):
        """Lanes worth exactly (2k+1)/2 code LSBs next to a maximum lane that fixes the shared
        exponent, for every bit length of 2k+1 that fits the magnitude."""
        bfp, rng, q = self.bfp, self.rng, self.q
        out = []
        for j in range(1, min(self.mw, bfp.width) + 1):
            ks = [0] if j == 1 else [1 << (j - 2), (1 << (j - 1)) - 1, rng.randint(1 << (j - 2), (1 << (j - 1)) - 1)]
            ks += [k ^ 1 for k in ks if j > 1 and (1 << (j - 2)) <= k ^ 1 < (1 << (j - 1))]
            for k in ks:
                top = self.lane(rng.randint(self.lo, self.hi))
                shared = quantize_block(bfp, [q.exact_element(*top)])[0]
                lsb = bfp.lsb_exponent(shared)
                odd = 2 * k + 1
                t_max = self.mw - odd.bit_length()
                t = t_max if q.normalized else rng.randint(0, t_max)
                exp = lsb - 1 - t - q.exp_offset
                if not self.lo <= exp <= self.hi:
                    continue
                tie = (rng.randrange(2), odd << t, exp)
                lanes = {0: top, (1 if self.B > 1 else 0): tie}
                if quantize_block(bfp, [q.exact_element(*tie), q.exact_element(*top)])[0] != shared:
                    continue
                out.append(self.block(lanes))
        return out

    def random(self):
        rng = self.rng
        e0 = rng.randint(self.lo, self.hi)
        spread = rng.choice([0, 2, self.mw + self.bfp.width])
        lanes = {}
        for k in range(self.B):
            if rng.random() < 0.15:
                continue
            if rng.random() < 0.2:
                lanes[k] = self.lane(rng.randint(self.lo, self.hi))
            else:
                lanes[k] = self.lane(e0 - rng.randint(0, spread))
        return self.block(lanes, self.flags())


# --- the tests ------------------------------------------------------------------------------

_FAILURES, _TESTS = [], []


def _write_summary(cfg, test, failures):
    """The bench's result record (``sim.bench.common.write_result``), accumulated over the module's
    cocotb tests: ``_SUMMARY``'s figures and every failure so far."""
    _FAILURES.extend(failures)
    _TESTS.append(test)
    write_result(cfg.get("summary"), cfg.get("unit", "shifter"), _FAILURES, tests=_TESTS, **_SUMMARY)


def coverage(case, vectors):
    """What the vectors exercise, from the golden model: exact half-LSB ties per right-shift
    amount (``[rounded down, rounded up]``), saturated blocks, zero blocks, flush and special."""
    ties, counts = {}, {"saturated": 0, "zero_blocks": 0, "flush": 0, "special": 0}
    for vector in vectors:
        elements = case.elements(vector)
        shared, _, saturated = quantize_block(case.bfp, elements)
        counts["saturated"] += saturated
        if case.cfg["unit"] == "shifter":
            flags = case.expected(vector).flags
            counts["flush"] += flags["flush"]
            counts["special"] += flags["special"]
        if not shared:
            counts["zero_blocks"] += 1
            continue
        lsb = case.bfp.lsb_exponent(shared)
        for _, mag, exp in elements:
            sh = lsb - exp
            if mag and sh >= 1 and mag % (1 << sh) == 1 << (sh - 1):
                ties.setdefault(sh, [0, 0])[(mag >> sh) & 1] += 1
    counts["ties"] = {str(sh): ties[sh] for sh in sorted(ties)}
    return counts


def _check_coverage(case, cov):
    ties = {int(sh): n for sh, n in cov["ties"].items()}
    assert cov["zero_blocks"] > 0, cov
    if case.cfg["unit"] != "shifter":
        assert sum(n[0] for n in ties.values()) > 0 and sum(n[1] for n in ties.values()) > 0, cov
        return
    M, W = case.fmt.frac_bits, case.bfp.width
    assert cov["flush"] > 0 and cov["special"] > 0, cov
    first = max(1, M + 2 - W)
    last = M + 1 if case.bfp.block > 1 else min(M + 1, first)   # a lone lane is its own maximum
    # A lane sits at most exp_max - 1 binades below the block maximum (exponents 1..exp_max), so
    # its shift is at most that plus M + 2 - W: a 2-bit exponent field at W = 5, M = 1 has no tie.
    last = min(last, case.fmt.exp_max - 1 + M + 2 - W)
    for sh in range(first, last + 1):                 # every shift amount a tie can occur at
        assert sh in ties, f"no tie at shift {sh}: {cov}"
        if sh <= M - 1:                               # truncated code can be even or odd
            assert min(ties[sh]) > 0, f"tie at shift {sh} not rounded both ways: {cov}"
    if W < M + 2 or case.bfp.exp_bits < case.fmt.exp_bits:
        assert cov["saturated"] > 0, cov


def _compare(case, vectors, outputs, log, limit=5):
    mismatches = 0
    for vector, out in zip(vectors, outputs):
        want, got = case.expected(vector), case.observed(out)
        if tuple(want) != tuple(got):
            mismatches += 1
            if mismatches <= limit:
                log.error("mismatch: input %r\n  want %r\n  got  %r", vector, tuple(want), tuple(got))
    return mismatches


@cocotb.test()
async def throughput_and_latency(dut):
    """No idle input cycles, no back-pressure: one block per cycle, first output ``latency``
    cycles after the first input, N blocks in N + latency cycles."""
    cfg = config()
    case = Case(cfg)
    rng = random.Random(cfg.get("seed", 1))
    n = 64
    vectors = [ShifterVectors(case, rng).random() if cfg["unit"] == "shifter"
               else QuantizerVectors(case, rng).random() for _ in range(n)]
    bench = StreamBench(dut, case.in_layout, case.out_layout, seed=rng.random())
    await bench.start()
    outputs = await bench.run([case.payload(v) for v in vectors])
    ins, outs = bench.in_transfers, bench.out_transfers
    latencies = {o - i for i, o in zip(ins, outs)}
    span = outs[-1] - ins[0] + 1
    throughput = n / (outs[-1] - outs[0] + 1)
    mismatches = _compare(case, vectors, outputs, dut._log)
    _SUMMARY["latency"] = sorted(latencies)
    _SUMMARY["latency_attribute"] = case.dut.latency
    _SUMMARY["throughput"] = throughput
    _SUMMARY["throughput_blocks"] = n
    _SUMMARY["throughput_cycles"] = span
    _SUMMARY["throughput_mismatches"] = mismatches
    checks = [(latencies == {case.dut.latency}, f"latency {sorted(latencies)} != attribute {case.dut.latency}"),
              (all(b - a == 1 for a, b in zip(ins, ins[1:])), "input stalled without back-pressure"),
              (throughput == 1.0, f"throughput {throughput} blocks/cycle"),
              (span == n + case.dut.latency, f"{n} blocks took {span} cycles, not {n} + {case.dut.latency}"),
              (mismatches == 0, f"{mismatches} mismatches")]
    _write_summary(cfg, "throughput_and_latency", [msg for ok, msg in checks if not ok])
    dut._log.info("%s: latency %s cycles, %d blocks in %d cycles (%.3f blocks/cycle)",
                  case.label, sorted(latencies), n, span, throughput)
    assert latencies == {case.dut.latency}, f"latency {sorted(latencies)} != attribute {case.dut.latency}"
    assert all(b - a == 1 for a, b in zip(ins, ins[1:])), "input stalled without back-pressure"
    assert throughput == 1.0, f"throughput {throughput} blocks/cycle"
    assert span == n + case.dut.latency, f"{n} blocks took {span} cycles, not {n} + {case.dut.latency}"
    assert mismatches == 0, f"{mismatches} mismatches"


@cocotb.test()
async def regression(dut):
    """Directed corner cases and random blocks under random input gaps and output back-pressure,
    in three phases (both, back-pressure heavy, gap heavy); every output checked."""
    cfg = config()
    case = Case(cfg)
    rng = random.Random(cfg.get("seed", 1) * 7919 + 1)
    directed, randoms = case.vectors(rng, cfg.get("random_blocks", 2000))
    vectors = directed + randoms
    bench = StreamBench(dut, case.in_layout, case.out_layout, idle=0.3, backpressure=0.3,
                        seed=rng.random())
    await bench.start()
    third = len(vectors) // 3
    phases = [(0.3, 0.3, vectors[:third]), (0.05, 0.75, vectors[third:2 * third]),
              (0.75, 0.05, vectors[2 * third:])]
    outputs = []
    for idle, backpressure, part in phases:
        bench.driver.idle, bench.driver.backpressure = idle, backpressure
        outputs += await bench.run([case.payload(v) for v in part])
    mismatches = _compare(case, vectors, outputs, dut._log)
    cov = coverage(case, vectors)
    line = f"{case.label}: {len(vectors)} blocks, {mismatches} mismatches"
    _SUMMARY.update({
        "label": case.label, "blocks": len(vectors), "directed": len(directed),
        "random": len(randoms), "mismatches": mismatches, "line": line,
        "cycles": bench.driver.cycle,
        "in_stall_cycles": bench.driver.stalls["i"], "out_stall_cycles": bench.driver.stalls["o"],
        "hold_checks": bench.driver.checked["o"], "protocol_errors": bench.driver.errors[:10],
        "coverage": cov,
    })
    checks = [(len(outputs) == len(vectors), f"{len(outputs)} outputs for {len(vectors)} blocks"),
              (bench.driver.stalls["o"] > 0 and bench.driver.stalls["i"] > 0, "back-pressure never exercised"),
              (not bench.driver.errors, "; ".join(bench.driver.errors[:2])),
              (_SUMMARY["hold_checks"] > 0, "no hold checks"),
              (mismatches == 0, line)]
    failures = [msg for ok, msg in checks if not ok]
    try:
        _check_coverage(case, cov)
    except AssertionError as exc:
        failures.append(f"coverage: {exc}")
    _write_summary(cfg, "regression", failures)
    dut._log.info(line)
    assert len(outputs) == len(vectors)
    assert bench.driver.stalls["o"] > 0 and bench.driver.stalls["i"] > 0, "back-pressure never exercised"
    assert not bench.driver.errors, bench.driver.errors[:2]
    assert mismatches == 0, line
    _check_coverage(case, cov)
