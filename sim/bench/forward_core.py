"""The forward core's command plan (plain Python, importable without a simulator) and its cocotb bench.

The first half plans the commands of one configuration from the stimulus of ``sim.bench.stimulus``
(tensors, BFP block streams, edge cases) and runs the golden model (``sim.model.golden_bn.forward``). The cocotb half (below ``# --- cocotb``) drives ``ForwardCore``.
"""

import collections
import math
import random

import numpy as np

from hw.formats import BFPFormat, float_format
from sim.model.golden import Block, float_to_bfp
from sim.model import golden_bn as gbn
from sim.bench.common import fit_count

from sim.bench.stimulus import (bn_config, DISTRIBUTIONS, activations, channel_params, to_blocks, random_blocks,  # noqa: F401
                                flat_lanes, permute_within_chunks, edge_blocks_per_channel as edge_blocks,
                                NO_FLAGS as _NO_FLAGS)

__all__ = ["DISTRIBUTIONS", "activations", "to_blocks", "channel_params"]   # re-exported from sim.bench.stimulus


# --- the command plan of one configuration ----------------------------------------------------

def _whole_chunks(rows, K, max_count):
    """``rows`` repeated cyclically to the smallest count >= ``len(rows)`` that is a multiple of
    ``K`` and at least ``2 K`` (a valid n for any K, also when there are fewer rows than K), cut
    to ``max_count``."""
    n = fit_count(-(-len(rows) // K) * K, K, max_count)
    return [rows[i % len(rows)] for i in range(n)]


class Step(dict):
    """One command of the plan: ``cmd`` (dict), ``bad``, ``x`` (blocks in stream order, both passes),
    ``params`` (records), ``y`` / ``stats`` (expected), ``elements`` (y lanes checked), ``tag``."""


def _saved(cfg, Kmax, params, stats, run_m, run_s, training):
    recs = []
    for c, pr in enumerate(params):
        if training:
            s = stats[c]
            K = len(s.max)
            am = list(s.argmax) + [0] * (Kmax - K)
            an = list(s.argmin) + [0] * (Kmax - K)
            cf = [int(a == b) for a, b in zip(s.max, s.min)] + [0] * (Kmax - K)
        else:
            am = an = cf = [0] * Kmax
        recs.append({"mu": pr.mu, "sigma": pr.sigma, "inv": pr.inv, "a": pr.a, "b": pr.b,
                     "running_mean": run_m[c], "running_sigma": run_s[c], "flat": int(pr.flat),
                     "argmax": am, "argmin": an, "chunk_flat": cf, "overflow": int(bool(pr.flags))})
    return recs


class Planner:
    """Builds the command plan of one configuration and its expected outputs (golden model),
    tracking the running statistics the core keeps between commands."""

    def __init__(self, p, seed):
        self.p = p
        self.bfp = p.bfp
        self.fmt = p.float_format
        self.f = p.internal
        self.C = p.channels
        self.Kmax = p.chunks
        self.rng = np.random.default_rng(seed)
        rm, rs = gbn.running_reset(self.cfg(1))
        self.run_m, self.run_s = [rm] * self.C, [rs] * self.C
        self.steps = []

    def cfg(self, K, c_scale=None):
        return bn_config(self.p, K, c_scale)

    @property
    def elements(self):
        return sum(s["elements"] for s in self.steps)

    def bad(self, count, chunks_log2, tag):
        self.steps.append(Step(cmd={"count": count, "chunks_log2": chunks_log2, "c_scale": 0, "training": 1},
                               bad=True, x=[], params=[], y=[], stats=[], elements=0, tag=tag))

    def good(self, blocks, K, training=True, gamma=None, beta=None, load=None, cfix=None, c_scale=None,
             tag=""):
        """A good command over ``blocks``; ``load``: {channel: (mean bits, sigma bits)}; ``cfix``:
        the constant of C (default: 1 or Banner's 0.540208 at random); ``c_scale``: the command's
        C field itself (``range_scale`` of some ``cfix`` in (0, 4)), overriding ``cfix``."""
        from sim.bench.common import check_blocks, check_count
        check_blocks(self.bfp, blocks, tag)
        cfg0 = self.cfg(K)
        n = len(blocks) // cfg0.groups
        check_count(n, K, self.p.max_count, tag)
        if c_scale is None:
            if cfix is None:
                cfix = float(self.rng.choice([1.0, 0.540208]))
            c_scale = gbn.range_scale(n // K, cfix)
        cfg = self.cfg(K, c_scale)
        if gamma is None:
            gamma, beta = channel_params(cfg, self.rng)
        load = load or {}
        run_m, run_s = list(self.run_m), list(self.run_s)
        for c, (mb, sb) in load.items():
            run_m[c], run_s[c] = mb, sb
        y, stats, params, new_m, new_s = gbn.forward(cfg, blocks, gamma, beta, training, run_m, run_s)
        if not training:
            new_m, new_s = run_m, run_s
        self.run_m, self.run_s = list(new_m), list(new_s)
        prm = [{"gamma": gamma[c], "beta": beta[c],
                "running_mean": load.get(c, (0, 0))[0], "running_sigma": load.get(c, (0, 0))[1],
                "load_running": int(c in load)} for c in range(self.C)]
        step = Step(cmd={"count": n, "chunks_log2": K.bit_length() - 1, "c_scale": c_scale,
                         "training": int(training)},
                    bad=False, x=(blocks + blocks) if training else list(blocks), params=prm, y=y,
                    stats=_saved(cfg, self.Kmax, params, stats, new_m, new_s, training),
                    elements=n * self.C, tag=tag)
        self.steps.append(step)
        return step

    def tensor(self, kind, n, K):
        n = fit_count(n, K, self.p.max_count)
        cfg = self.cfg(K)
        if kind == "random":
            return random_blocks(cfg, n, self.rng)
        if kind == "edge":
            return edge_blocks(cfg, n, self.rng)
        return to_blocks(cfg, self.fmt, activations(kind, n, self.C, self.rng))

    def y_carry_ties(self):
        """Exact ties at the deepest y shift, one target lane at a time: x alternates +X0 and -X0
        (mu = 0, so b = beta), gamma is searched so that ``a X0`` has few significant bits, and
        ``beta = T - a X0`` with ``T = 2**k`` eight to sixteen times ``a X0``: beta is the high
        operand of the lane's window and ``a X0 + beta`` carries into the window's top bit, an exact
        power of two. A partner lane with y = beta' = 2**(W-1) T sets the block's code LSB to 2 T,
        so the target is an exact tie whose guard bit is that carry bit, with nothing below it
        (rounds to even: 0). Every lane that holds a channel is the target once (padding lanes carry none)."""
        from fractions import Fraction
        K, f, bfp = self.Kmax, self.f, self.bfp
        B, M, W = bfp.block, f.frac_bits, bfp.width
        lanes = min(B, self.C)          # lanes that hold a channel in some group
        if lanes < 2:
            return
        n, ex = 2 * K, max(0, bfp.exp_max - 2)
        x0 = 1 << max(0, W - 2)
        blocks = []
        for pos in range(n):
            for _g in range(self.cfg(K).groups):
                blocks.append(Block(ex, [x0 if pos % 2 else -x0] * B, _NO_FLAGS))
        cfg = self.cfg(K, c_scale=gbn.range_scale(n // K, 1.0))
        stat = gbn.forward_stats(cfg, blocks)[0]
        X0 = bfp.code_value(ex, x0)
        gamma_bits = a = None
        for cand in range(1, 1 << M):         # a with at least 4 trailing zero fraction bits
            gb = f.encode(Fraction((1 << M) + cand, 1 << M))
            a = gbn.finalize(cfg, stat, gb, 0).a
            if a and (f.unpack(a)[2] & 15) == 0 and f.unpack(a)[1]:
                gamma_bits = gb
                break
        if gamma_bits is None:
            return
        ax0 = f.decode(a) * X0
        T = Fraction(2) ** (math.floor(math.log2(ax0)) + 4)
        beta_t = f.encode(T - ax0)
        if f.decode(beta_t) != T - ax0:
            return
        for lane in range(lanes):
            partner = (lane + 1) % lanes
            gamma = [gamma_bits if c % B == lane else 0 for c in range(self.C)]
            beta = [beta_t if c % B == lane else f.encode(T * (1 << (W - 1))) if c % B == partner else 0
                    for c in range(self.C)]
            self.good(blocks, K, gamma=gamma, beta=beta, cfix=1.0,
                      tag=f"y carry tie in lane {lane} against lane {partner}")

    def _inference_exact(self, blocks, K, gamma, beta, tag):
        """An inference command with the running statistics loaded as mean 0 and sigma 1 in every
        channel, so inv = 1, a = gamma and b = beta exactly: y = gamma x + beta with the lane's
        a and b chosen directly."""
        f = self.f
        load = {c: (f.encode(0.0), f.encode(1.0)) for c in range(self.C)}
        return self.good(blocks, K, training=False, gamma=gamma, beta=beta, load=load, tag=tag)

    def _lane_blocks(self, K, lanes, rows):
        """Blocks of ``len(rows)`` positions; ``rows[p] = (exponent, code)`` goes to the channels
        in ``lanes`` (lane index within a group, every group), every other channel gets code 0."""
        bfp, B, G = self.bfp, self.bfp.block, self.cfg(K).groups
        out = []
        for e, q in rows:
            for g in range(G):
                codes = [q if (l in lanes and g * B + l < self.C) else 0 for l in range(B)]
                out.append(Block(e, codes, _NO_FLAGS))
        return out

    def datapath_corners(self):
        """Directed steps appended after the bulk (so the commands before them, and their random
        gaps and back-pressure, are unchanged). Each targets logic that the plan above leaves
        unexercised (fault injection survivors of the pipelined netlist, docs/verification.md):

        * C = c_scale at every power of two 2**0 .. 2**17 on channels whose range R is a power of
          two (alternating codes 0 and ``2**min(2, W-2)``): the product C R that finalize
          normalizes has its leading one at every bit of the window with nothing below it (the
          leading-zero count of the LD step); plus random C.
          The rest of the plan only uses ``range_scale`` of cfix 1 and 0.540208 (nine values).
        * y at the bottom of the BFP exponent range: y = x (inference, a = 1, b = 0) with x at
          shared exponents 1..min(8, exp_max), one lane of the group the block maximum at a time (the shared
          exponent's clamp to 1 against keys of exponents 2..4).
        * y = a x + b cancelling to a small exact residue in one lane at a time (the block
          maximum): a x = 48 with x = 1.0 written as codes ``2**(W-2) >> s`` at exponents
          ``bias + s`` for every s the width and the exponent field allow (the product's field
          moves against b's), b = -48 + 2**k / 8, so the residue's leading one
          walks over the low bits of the window (the leading-one position of the quantizer key).
        * internal-float overflow: gamma = the largest value on channels with a tiny range
          (a = gamma / sigma overflows), and in inference sigma loaded as 0, negative (sigma not
          positive: inv = largest, overflow) and tiny with a huge gamma. Nothing else in the plan
          sets the stats ``overflow`` bit.
        """
        f, bfp, K, C = self.f, self.bfp, self.Kmax, self.C
        B, G = bfp.block, self.cfg(K).groups
        rng = np.random.default_rng(12345)
        # --- C at every power of two, R a power of two ---------------------------------------
        n = 2 * K
        r_code = 1 << min(2, bfp.width - 2)     # 4 from W = 4 on; a power of two at every width
        rows = []
        for p in range(n):
            rows.append([(r_code if p % 2 else 0, 1 + (3 * c) % (bfp.exp_max - 1)) for c in range(C)])
        blocks = []
        for p in range(n):
            for g in range(G):
                lanes = [rows[p][c] for c in range(g * B, min((g + 1) * B, C))]
                e = max(ex for _, ex in lanes)
                codes = [q >> (e - ex) for q, ex in lanes] + [0] * (B - len(lanes))
                blocks.append(Block(e, codes, _NO_FLAGS))
        for j in range(18):
            self.good(blocks, K, gamma=[f.encode(1.0)] * C, beta=[0] * C, c_scale=1 << j,
                      tag=f"c_scale = 2**{j}, R a power of two")
        for j in (1, 3, 9, 13):
            self.good(blocks, K, gamma=[f.encode(1.0)] * C, beta=[0] * C, c_scale=3 << j,
                      tag=f"c_scale = 3 * 2**{j}, R a power of two")
        for _ in range(4):
            cs = int(rng.integers(1, 1 << 18))
            self.good(self.tensor("random", 2 * K, K), K, c_scale=cs, tag=f"random c_scale = {cs}")
        # --- y at shared exponents 1..8, one lane the block maximum ----------------------------
        rows = _whole_chunks([(e, q) for q in (bfp.code_max, 1 << (bfp.width - 2))
                              for e in range(1, min(8, bfp.exp_max) + 1)], K, self.p.max_count)
        for lane in range(min(B, C)):    # lanes past the channels are padding
            self._inference_exact(self._lane_blocks(K, {lane}, rows), K, gamma=[f.encode(1.0)] * C,
                                  beta=[0] * C, tag=f"y at shared exponents 1..{rows[-1][0]} in lane {lane}")
        # --- small exact residues of a x + b, one lane the block maximum -----------------------
        x0 = 1 << (bfp.width - 2)
        reps = [(bfp.bias + s, x0 >> s)                                     # x = 1.0 several ways
                for s in range(min(bfp.width - 1, bfp.exp_max - bfp.bias + 1))]
        rows = _whole_chunks(reps, K, self.p.max_count)
        for lane in range(min(B, C)):    # lanes past the channels are padding
            for k in range(0, 8, 3):
                gam = [f.encode(48.0) if c % B == lane else 0 for c in range(C)]
                bet = [f.encode(-48.0 + 2.0 ** k / 8) if c % B == lane else 0 for c in range(C)]
                self._inference_exact(self._lane_blocks(K, {lane}, rows), K, gamma=gam, beta=bet,
                                      tag=f"a x + b residue 2**{k - 3} in lane {lane}")
        # --- ties made by b's jammed bits: b 6-7 binades below a x ------------------------------
        # x = +-1.0 (code 4 at exponent 15), so a x has its leading one 2 bits below the top of
        # its window field; b = 2**e (1 + 2**-M) with e = 1, 0 sits 6 or 7 bits lower (b the
        # low operand) and its LSB falls below the window: b's rounded-to-odd (jammed) image is
        # the only thing that keeps a x + b off an exact tie of the y rounding (the tie without
        # it: 52 = 6.5 LSBs of 8 rounds to even 48, the exact value 52 + 2**-7 rounds up to 56;
        # in the subtracting case -60 + 2**-7 rounds to -56, -60 would round to -64).
        x1 = [(bfp.bias, x0), (bfp.bias, -x0)]
        for lane in range(min(B, C)):    # lanes past the channels are padding
            for sign, g_val, e_b in ((1, 50.0, 1), (1, 51.0, 0), (-1, 62.0, 1), (-1, 61.0, 0)):
                b_val = 2.0 ** e_b * (1 + 2.0 ** -f.frac_bits)
                rows = [x1[0] if sign > 0 else x1[1]] * (2 * K)
                gam = [f.encode(g_val) if c % B == lane else 0 for c in range(C)]
                bet = [f.encode(b_val) if c % B == lane else 0 for c in range(C)]
                self._inference_exact(self._lane_blocks(K, {lane}, rows), K, gamma=gam, beta=bet,
                                      tag=f"jammed b tie in lane {lane}: {sign * g_val} + {b_val}")
        # --- internal-float overflow ----------------------------------------------------------
        gmax = f.pack(0, f.exp_max, (1 << f.frac_bits) - 1)
        tiny = [Block(1, [(1 if (p + l) % 2 else -1) * min(bfp.code_max, 1 + (p * 3 + l) % 3)
                          for l in range(B)], _NO_FLAGS)
                for p in range(2 * K) for _g in range(G)]
        self.good(tiny, K, gamma=[gmax] * C, beta=[f.encode(0.5)] * C, tag="overflow: gamma = max, tiny range")
        sig = [f.encode(0.0), f.encode(-1.0), f.encode(2.0 ** -100), f.encode(1.0), f.encode(2.0 ** -120)]
        load = {c: (f.encode(0.25 * c), sig[c % len(sig)]) for c in range(C)}
        gam = [f.encode(2.0 ** 60) if c % 2 == 0 else f.encode(-3.0) for c in range(C)]
        self.good(self.tensor("gauss", 2 * K, K), K, training=False, gamma=gam, beta=[f.encode(0.5)] * C,
                  load=load, tag="overflow in inference: sigma 0, negative, tiny")

    def build(self, target_elements):
        """The plan: bad counts, minimal n, edge cases, permuted order, running-statistics loads,
        then training/inference commands over every distribution until ``target_elements`` y
        lanes are covered."""
        p, K, C = self.p, self.Kmax, self.C
        cw = p.max_count.bit_length()
        lw = max(1, (K.bit_length() - 1).bit_length())
        if K > 1:
            self.bad(2 * K + 1, K.bit_length() - 1, "n not a multiple of K")
        self.bad(K, K.bit_length() - 1, "n / K = 1")
        self.bad(0, 0, "n = 0")
        if p.max_count + K < (1 << cw):
            self.bad(p.max_count + K, K.bit_length() - 1, "n > max_count")
        if K.bit_length() < (1 << lw) and 4 * K <= p.max_count:
            self.bad(4 * K, K.bit_length(), "K > max chunks")
        self.good(self.tensor("edge", 2 * K, K), K, tag="minimal n = 2K, edge data")
        self.bad(1, 0, "n = 1")
        self.good(self.tensor("edge", 2 * K, K), K, training=False, tag="inference after a dropped command")
        n_edge = min(p.max_count, max(2 * K, 16 * K))
        self.good(self.tensor("edge", n_edge, K), K, tag="edge data")
        mc = p.max_count
        self.good(flat_lanes(self.cfg(K), 2 * K, K), K, tag="every channel flat, distinct constants")
        self.good(flat_lanes(self.cfg(K), fit_count(4 * K, K, mc), K, step=True), K,
                  tag="flat per chunk, distinct constants")
        k = K // 2      # the read port has one max == min compare per possible last chunk
        while k >= 1:
            self.good(flat_lanes(self.cfg(k), fit_count(4 * k, k, mc), k, step=True), k,
                      tag=f"flat per chunk, K = {k}")
            k //= 2
        # huge gamma: a = gamma / sigma_hat overflows the internal float on narrow-range channels
        f = self.f
        gmax = f.pack(0, f.exp_max, (1 << f.frac_bits) - 1)
        gamma = [gmax] * C
        beta = [f.encode(-0.5)] * C
        self.good(self.tensor("edge", 2 * K, K), K, gamma=gamma, beta=beta, tag="overflow: gamma = max")
        # y saturation: gamma large enough that y leaves the BFP exponent range
        big = f.encode(2.0 ** (self.bfp.exp_max - self.bfp.bias + 2))
        self.good(self.tensor("gauss", 4 * K, K), K, gamma=[big] * C, beta=[0] * C, tag="y saturates")
        # y below the smallest BFP exponent: the whole y block underflows
        tiny = f.encode(2.0 ** -(self.bfp.bias + self.bfp.width + 8))
        self.good(self.tensor("gauss", 2 * K, K), K, gamma=[tiny] * C, beta=[tiny] * C, tag="y underflows")
        # exact ties in the y rounding: gamma = 0 makes y = beta exactly; lane 0 of every group is
        # 1.0 (fixes the shared exponent, code LSB 2**-(W-2)), the other lanes are odd multiples of
        # half an LSB, (2k+1) * 2**-(W-1), k even and odd (ties rounded down and up), down to the
        # deepest tie (2**-(W-1): the shifted-out top bit is the guard bit)
        W, B = self.bfp.width, self.bfp.block
        odd = [2 * ((c % B - 1) % max(1, 1 << (W - 2))) + 1 for c in range(C)]
        beta = [f.encode(1.0 if c % B == 0 else (-1) ** c * odd[c] * 2.0 ** -(W - 1)) for c in range(C)]
        self.good(self.tensor("gauss", 2 * K, K), K, gamma=[0] * C, beta=beta, tag="y ties: gamma = 0")
        # near ties: one sticky bit 1..8 binades below the half LSB, above and below the tie
        near = [1.0 if c % B == 0 else (-1) ** c * (odd[c] * 2.0 ** -(W - 1)
                                                     + (-1) ** (c // 2) * 2.0 ** -(W - 1 + 1 + c % 8))
                for c in range(C)]
        self.good(self.tensor("gauss", 2 * K, K), K, gamma=[0] * C, beta=[f.encode(v) for v in near],
                  tag="y near ties: gamma = 0")
        self.y_carry_ties()
        # permuted block order: same statistics
        n_perm = min(p.max_count, 8 * K)
        t = self.tensor("random", n_perm, K)
        gamma, beta = channel_params(self.cfg(K), self.rng)
        self.good(t, K, gamma=gamma, beta=beta, cfix=1.0, tag="permutation A")
        self.good(permute_within_chunks(self.cfg(K), t, K, self.rng), K, gamma=gamma, beta=beta,
                  cfix=1.0, tag="permutation B")
        # running statistics loaded from params, in training and in inference
        load = {c: (f.encode(float(self.rng.normal())), f.encode(float(2.0 ** self.rng.uniform(-3, 3))))
                for c in range(0, C, 2)}
        self.good(self.tensor("gauss", 2 * K, K), K, load=load, tag="load running, training")
        load = {c: (f.encode(float(self.rng.normal())), f.encode(float(2.0 ** self.rng.uniform(-3, 3))))
                for c in range(1, C, 2)} or {0: (f.encode(0.25), f.encode(0.5))}
        self.good(self.tensor("laplace", 2 * K, K), K, training=False, load=load, tag="load running, inference")
        if K > 1:
            self.good(self.tensor("relu", 2 * (K // 2) * 3, K // 2), K // 2, tag="K below max")
        # bulk: cycle over the distributions, training then inference, until the target is met
        kinds = DISTRIBUTIONS + ("random",)
        i = 0
        while self.elements < target_elements:
            kind = kinds[i % len(kinds)]
            left = max(1, (target_elements - self.elements) // (2 * C))
            n = int(min(p.max_count, max(2 * K, left)))
            n -= n % K
            n = max(n, 2 * K)
            t = self.tensor(kind, n, K)
            self.good(t, K, tag=f"{kind} n={n}")
            if self.elements < target_elements:
                self.good(t, K, training=False, tag=f"{kind} n={n} inference")
            i += 1
        self.timing_steps()
        self.datapath_corners()
        return self.steps

    def timing_steps(self):
        """Two commands (training, then inference) after the bulk run with no idle cycles and no
        back-pressure, and the bench checks the documented timing on them
        (docs/forward.md, "Timing"): both passes take one block per cycle, finalize takes
        ``StatsUnit.LATENCY + channels * finalize_cycles_per_channel`` cycles from the last
        statistics block to the first normalize block, and every y block leaves ``latency``
        cycles after its x block."""
        K = self.Kmax
        t = self.tensor("gauss", 4 * K, K)
        self.good(t, K, cfix=1.0, tag="timing: training, no gaps")["timing"] = True
        self.good(t, K, training=False, cfix=1.0, tag="timing: inference, no gaps")["timing"] = True


# --- payload words ----------------------------------------------------------------------------

def block_word(bfp, block, flagged=False):
    """Payload integer of a block (``bfp.block_layout()``, or the flagged layout of ``y``)."""
    from sim.bench.common import pack
    value = {"exponent": block[0], "codes": [bfp.to_bits(q) for q in block[1]]}
    if flagged:
        value["flags"] = {k: int(bool(block[2][k])) for k in ("sat", "special", "flush")}
        return pack(bfp.flagged_block_layout(), value)
    return pack(bfp.block_layout(), value)


# --- cocotb -----------------------------------------------------------------------------------

try:
    import cocotb
except ImportError:         # the plain-Python half above stays importable without cocotb
    cocotb = None


if cocotb is not None:
    @cocotb.test()
    async def forward_core_vs_golden(dut):
        """Drives the plan of the configuration (``sim.bench.common.config()``) and compares every y block
        and every stats record with the golden model; writes a summary JSON."""
        from sim.bench.common import config, write_result
        conf = config()
        failures, result = await run_forward(dut, conf)
        del result["transfer_cycles"]
        write_result(conf["result"], "forward", failures, tests=["forward_core_vs_golden"], **result)
        assert not failures, f"{failures[:3]}"


async def run_forward(dut, conf, *, reset=True, timing=True, timeout_scale=1):
    """The forward bench on ``dut`` (anything with the core's ports as attributes, and ``clk``):
    returns ``(failures, result)`` (``result["transfer_cycles"]``: the cycle of every ``y`` and ``stats`` transfer). ``reset``: start the clock and reset first (a caller that runs
    several benches on one DUT does it once). ``timing``: the core's handshake timing is its own:
    the documented timing of the timing steps counts as a failure. With ``timing=False``
    (``sim.bench.bn_core``: the core shares its units and waits for them) the timing is only
    recorded. ``timeout_scale`` stretches each step's time limit (a core sharing
    its units with another waits for them)."""
    import time
    from cocotb.triggers import RisingEdge
    from gen.units import Params
    from hw.bn_layouts import cmd_layout, params_layout, saved_layout
    from sim.bench.common import StreamDriver, pack, start_clock_and_reset, unpack

    p = Params(**conf["params"])
    t0, c0 = time.time(), time.process_time()
    steps = Planner(p, conf["seed"]).build(conf["elements"])
    t_plan, c_plan = time.time() - t0, time.process_time() - c0
    bfp, f = p.bfp, p.internal
    rng = random.Random(conf["seed"])
    gap, bp = conf.get("gap", 0.2), conf.get("backpressure", 0.2)
    cmd_l = cmd_layout(p.max_count, p.chunks)
    prm_l = params_layout(f)
    sav_l = saved_layout(f, p.max_count, p.chunks)
    y_l = bfp.flagged_block_layout()

    clk = dut.clk
    for port in ("cmd", "x", "params"):
        getattr(dut, f"{port}__valid").value = 0
    for port in ("y", "stats"):
        getattr(dut, f"{port}__ready").value = 0
    if reset:
        await start_clock_and_reset(dut)

    mism = {"y_blocks": 0, "y_lanes": 0, "stats_records": 0, "stats_fields": 0, "status": 0}
    notes, errors = [], []
    y_got, s_got = [], []
    y_next = s_next = 0

    def check_step(i, s):
        nonlocal y_next, s_next
        for want_b in s["y"]:
            got = y_got[y_next]
            want = block_word(bfp, want_b, flagged=True)
            if got != want:
                mism["y_blocks"] += 1
                g, w = unpack(y_l, got), unpack(y_l, want)
                if g["exponent"] != w["exponent"]:
                    mism["y_lanes"] += bfp.block
                else:
                    mism["y_lanes"] += sum(a != b for a, b in zip(g["codes"], w["codes"])) or 1
                if len(notes) < 10:
                    notes.append(f"step {i} ({s['tag']}) y block {y_next}: got {g} want {w}")
            y_next += 1
        for want in s["stats"]:
            rec = unpack(sav_l, s_got[s_next])
            bad = [k for k in want if rec[k] != want[k]]
            if bad:
                mism["stats_records"] += 1
                mism["stats_fields"] += len(bad)
                if len(notes) < 10:
                    notes.append(f"step {i} ({s['tag']}) stats record {s_next}: got "
                                 f"{ {k: rec[k] for k in bad} } want { {k: want[k] for k in bad} }")
            s_next += 1

    from hw.forward_core import ForwardCore
    from hw.stats_unit import StatsUnit
    core = ForwardCore.from_params(p)
    fin_doc = StatsUnit.LATENCY + p.channels * core.finalize_cycles_per_channel

    def check_timing(i, s, tm):
        """The documented timing (docs/forward.md) on a step run without gaps: one block per
        cycle in each pass, finalize = StatsUnit.LATENCY + channels * cycles per channel
        (training), x -> y = latency cycles."""
        nb = len(s["y"])
        xs, ys = tm["x"], tm["y"]
        rec = {"tag": s["tag"], "x_blocks": len(xs), "y_blocks": len(ys)}
        passes = [xs[:nb], xs[nb:]] if s["cmd"]["training"] else [xs]
        norm = passes[-1]
        bad = []
        for k, ps in enumerate(passes):
            if ps and ps[-1] - ps[0] != len(ps) - 1:
                bad.append(f"pass {k}: {len(ps)} blocks in {ps[-1] - ps[0] + 1} cycles")
        lat = sorted({b - a for a, b in zip(norm, ys)})
        rec["x_to_y_latency"] = lat
        if lat != [core.latency]:
            bad.append(f"x -> y latency {lat}, documented {core.latency}")
        if s["cmd"]["training"]:
            rec["finalize_cycles"] = norm[0] - passes[0][-1] - 1
            if rec["finalize_cycles"] != fin_doc:
                bad.append(f"finalize {rec['finalize_cycles']} cycles, documented {fin_doc}")
        else:
            # not documented for inference (no statistics pass): recorded only
            rec["cmd_to_first_x_cycles"] = norm[0] - tm["cmd"]
        rec["documented"] = not bad
        if bad and timing:
            mism["status"] += 1
            notes.append(f"step {i} ({s['tag']}): timing: " + "; ".join(bad))
        return rec

    # sim.bench.common.StreamDriver drives every stream (random gaps on x and params, random
    # back-pressure on y and stats, hold rules checked). The command stream has no gaps: the
    # hook below queues each command when the previous one is done ("issue"), then checks the
    # status the cycle after its transfer ("check") and waits for its outputs ("drain").
    drv = StreamDriver(dut, ("x", "params", "cmd"), ("y", "stats"), idle=gap, backpressure=bp, rng=rng)
    drv.idle_for["cmd"] = 0.0
    for s in steps:
        for b in s["x"]:
            drv.send("x", block_word(bfp, b))
        for r in s["params"]:
            drv.send("params", pack(prm_l, r))
    y_got, s_got = drv.received["y"], drv.received["stats"]
    st = {"step": 0, "phase": "issue", "y_total": 0, "s_total": 0, "x_total": 0, "limit": 0,
          "seen": {"x": 0, "params": 0, "cmd": 0, "y": 0}}
    # Timing steps (Planner.timing_steps): no gaps, no back-pressure; the
    # cycles of their x and y transfers and of the command's acceptance are recorded.
    tm = {"x": [], "y": [], "cmd": None}
    timing_rows = []

    def new(d, name, cycles):
        """Transfer cycles of ``name`` since the previous call."""
        k = st["seen"][name]
        st["seen"][name] = len(cycles)
        return cycles[k:]

    def hook(d):
        nonlocal tm
        step_i = st["step"]
        if step_i >= len(steps):
            return
        in_timing = bool(steps[step_i].get("timing"))
        d.idle, d.backpressure = (0.0, 0.0) if in_timing else (gap, bp)
        xs, ys = new(d, "x", d.sent_cycles["x"]), new(d, "y", d.received_cycles["y"])
        if in_timing:
            tm["x"] += xs
            tm["y"] += ys
        cmd_sent = new(d, "cmd", d.sent_cycles["cmd"])
        s = steps[step_i]
        cycle = d.cycle + 1
        phase = st["phase"]
        if phase == "wait_cmd" and cmd_sent:
            st["phase"] = "check"
            tm["cmd"] = cmd_sent[0]
        elif phase == "check":
            if int(dut.count_error.value) != int(s["bad"]):
                mism["status"] += 1
                notes.append(f"step {step_i} ({s['tag']}): count_error = {int(dut.count_error.value)}")
            busy = int(dut.busy.value)
            if s["bad"]:
                if busy or d.sent["x"] != st["x_total"]:
                    mism["status"] += 1
                    notes.append(f"step {step_i} ({s['tag']}): a dropped command started a pass")
                st["step"], st["phase"] = step_i + 1, "issue"
            else:
                if not busy:
                    mism["status"] += 1
                    notes.append(f"step {step_i} ({s['tag']}): not busy after a good command")
                st["y_total"] += len(s["y"])
                st["s_total"] += len(s["stats"])
                st["x_total"] += len(s["x"])
                st["limit"] = cycle + timeout_scale * (50 * len(s["x"]) + 200 * p.channels + 10000)
                st["phase"] = "drain"
        elif phase == "drain":
            if not int(dut.busy.value) and len(y_got) >= st["y_total"] and len(s_got) >= st["s_total"]:
                check_step(step_i, s)
                if s.get("timing"):
                    timing_rows.append(check_timing(step_i, s, tm))
                tm = {"x": [], "y": [], "cmd": None}
                st["step"], st["phase"] = step_i + 1, "issue"
            elif cycle > st["limit"]:
                errors.append(f"step {step_i} ({s['tag']}): timeout with {len(y_got)}/{st['y_total']} y "
                              f"blocks, {len(s_got)}/{st['s_total']} stats records")
        if st["phase"] == "issue" and st["step"] < len(steps):
            d.send("cmd", pack(cmd_l, steps[st["step"]]["cmd"]))
            st["phase"] = "wait_cmd"
    drv.after.append(hook)
    task = cocotb.start_soon(drv.run())
    while st["step"] < len(steps) and not errors and not drv.errors:
        await RisingEdge(clk)
    task.cancel()
    errors += drv.errors
    y_total, s_total, cycle = st["y_total"], st["s_total"], drv.cycle

    # Permuted order inside chunks: the same per-channel results from the hardware (exact
    # statistics only: a windowed sum depends on the order, by definition).
    tags = [s["tag"] for s in steps]
    if not errors and "permutation A" in tags and p.stats == "exact":
        base = sum(len(s["stats"]) for s in steps[:tags.index("permutation A")])
        for c in range(p.channels):
            a = unpack(sav_l, s_got[base + c])
            b = unpack(sav_l, s_got[base + p.channels + c])
            for k in ("mu", "sigma", "inv", "a", "b", "flat", "overflow"):
                if a[k] != b[k]:
                    mism["status"] += 1
                    notes.append(f"permuted order changed {k} of channel {c}")
    for _ in range(20):
        await RisingEdge(clk)
    if not errors and (len(y_got) != y_total or len(s_got) != s_total):
        errors.append(f"{len(y_got)}/{y_total} y blocks, {len(s_got)}/{s_total} stats records")
    result = {
        "elements": sum(s["elements"] for s in steps), "y_blocks": y_total, "stats_records": s_total,
        "commands": len(steps), "bad_commands": sum(s["bad"] for s in steps),
        "cycles": cycle, "timing": timing_rows, "mismatches": mism, "errors": errors[:20], "notes": notes[:20],
        "transfer_cycles": {k: list(drv.received_cycles[k]) for k in ("y", "stats")},
        "plan_seconds": round(t_plan, 1), "sim_seconds": round(time.time() - t0 - t_plan, 1),
        "plan_cpu_seconds": round(c_plan, 1),
        "sim_cpu_seconds": round(time.process_time() - c0 - c_plan, 1),
    }
    failures = list(errors[:20]) + ([f"mismatches {mism}"] if any(mism.values()) else [])
    for line in notes[:10] + errors[:10]:
        dut._log.error(line)
    return failures, result
