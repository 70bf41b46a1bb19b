"""The backward core's command plan (plain Python, importable without a simulator) and its cocotb bench.

The first half builds the command plan of one configuration from ``sim.bench.stimulus``: x and g
tensors (BFP block streams in LightNorm's grouping), the forward statistics of x from the *golden* forward pass
(``sim.model.golden_bn.forward`` -> ``ChannelStats`` / ``ChannelParams`` -> ``saved_layout`` records, so
this bench does not depend on the forward core) and the expected outputs of
``sim.model.golden_bn.backward`` (grads records and dx blocks, flags included), all packed into integers.
The cocotb half (below ``# --- cocotb``) drives ``BackwardCore`` with the rules of ``sim.bench.common``'s
sources (random idle cycles), sinks (random back-pressure) and stream monitors, implemented for
speed in one coroutine (``sim.bench.common.StreamDriver``), and compares bit for bit.

Run it through ``tests/test_backward_core.py`` (pytest) or ``sim/verify/measure_backward.py``.
"""

import collections
import random

import numpy as np

from hw.formats import float_format
from sim.model import golden_bn as gbn
from sim.bench.common import fit_count
from sim.model.golden import Block, float_to_bfp  # noqa: F401
from sim.bench import stimulus as _stimulus
from sim.bench.stimulus import (bn_config, activations, channel_params, to_blocks, NO_FLAGS as _NO_FLAGS,  # noqa: F401
                                GROUP_EDGE_KINDS as EDGE_KINDS, edge_blocks_per_group as edge_blocks)

__all__ = ["BackwardPlan", "Step", "saved_record", "activations", "to_blocks", "random_blocks",
           "edge_blocks", "EDGE_KINDS", "build_core"]


def random_blocks(cfg, n, rng, exp_range=None):
    """``sim.bench.stimulus.random_blocks`` with random codes in the padding lanes (the core must
    ignore them)."""
    return _stimulus.random_blocks(cfg, n, rng, exp_range, padding="random")


def saved_record(cfg, max_chunks, stat, param):
    """The forward core's ``saved_layout`` record of one channel, from the golden forward pass
    (running statistics are not used by the backward core and left 0)."""
    K = len(stat.max)
    pad = [0] * (max_chunks - K)
    return {"mu": param.mu, "sigma": param.sigma, "inv": param.inv, "a": param.a, "b": param.b,
            "running_mean": 0, "running_sigma": 0, "flat": int(param.flat),
            "argmax": list(stat.argmax) + pad, "argmin": list(stat.argmin) + pad,
            "chunk_flat": [int(a == b) for a, b in zip(stat.max, stat.min)] + pad,
            "overflow": int(bool(param.flags))}


# --- the plan ---------------------------------------------------------------------------------

class Step(dict):
    """One command: ``cmd`` (dict), ``bad``, ``tag``, ``elements`` (n * channels, 0 if bad) and the
    packed words ``stats``, ``xg``, ``g`` (inputs) and ``grads``, ``dx`` (expected outputs)."""


class BackwardPlan:
    """The command plan of one configuration (``gen.units.Params``) with expected outputs."""

    def __init__(self, p, seed):
        from hw.bn_layouts import (backward_cmd_layout, backward_saved_layout, grads_layout,
                                   pair_layout, saved_layout)
        self.p = p
        self.bfp = p.bfp
        self.fmt = p.float_format
        self.f = p.internal
        self.C = p.channels
        self.Kmax = p.chunks
        self.rng = np.random.default_rng(seed)
        self.cmd_layout = backward_cmd_layout(p.max_count, p.chunks)
        self.saved_layout = saved_layout(p.internal, p.max_count, p.chunks)
        self.stats_mask = (1 << backward_saved_layout(p.internal, p.max_count, p.chunks).size) - 1
        self.grads_layout = grads_layout(p.internal)
        self.pair_layout = pair_layout(p.bfp)
        self._block_offsets = None
        self.steps = []

    def cfg(self, K, c_scale=None):
        return bn_config(self.p, K, c_scale)

    @property
    def elements(self):
        return sum(s["elements"] for s in self.steps)

    @property
    def dx_elements(self):
        return sum(s["elements"] for s in self.steps if not s["cmd"]["params_only"])

    # packing (blocks are many: offsets from the layouts once, then plain integer shifts; the
    # records are few and go through sim.bench.common.pack)
    def _block(self, block):
        lay = self._block_offsets
        if lay is None:
            bl, fl = self.bfp.block_layout(), self.bfp.flagged_block_layout()
            flags = fl["flags"].shape
            lay = self._block_offsets = (
                bl["exponent"].offset, bl["codes"].offset,
                fl["exponent"].offset, fl["codes"].offset,
                {k: fl["flags"].offset + flags[k].offset for k in ("sat", "special", "flush")})
        e_off, c_off = lay[0], lay[1]
        W, mask = self.bfp.width, (1 << self.bfp.width) - 1
        word = block[0] << e_off
        for i, q in enumerate(block[1]):
            word |= (q & mask) << (c_off + i * W)
        return word

    def _flagged(self, block):
        self._block(Block(0, [], {}))
        _, _, e_off, c_off, f_off = self._block_offsets
        W, mask = self.bfp.width, (1 << self.bfp.width) - 1
        word = block[0] << e_off
        for i, q in enumerate(block[1]):
            word |= (q & mask) << (c_off + i * W)
        for k, off in f_off.items():
            word |= int(bool(block[2][k])) << off
        return word

    def bad(self, count, chunks_log2, tag):
        from sim.bench.common import pack
        cmd = {"count": count, "chunks_log2": chunks_log2, "c_scale": 0, "params_only": 0}
        self.steps.append(Step(cmd=cmd, word=pack(self.cmd_layout, cmd), bad=True, tag=tag, elements=0,
                               stats=[], xg=[], g=[], grads=[], dx=[]))

    def good(self, x, g, K, params_only=False, gamma=None, beta=None, c_scale=None, tag=""):
        """One command over the tensors ``x`` and ``g`` (block streams); the saved records come
        from the golden forward pass of ``x`` with ``gamma``, ``beta`` (random by default) and C
        ``c_scale`` (default ``range_scale(n / K)`` with CFIX 1 or 0.540208 at random)."""
        from sim.bench.common import check_blocks, check_count, pack
        check_blocks(self.bfp, x, f"{tag} (x)")
        check_blocks(self.bfp, g, f"{tag} (g)")
        n = len(x) // self.cfg(K).groups
        check_count(n, K, self.p.max_count, tag)
        if c_scale is None:
            c_scale = gbn.range_scale(n // K, float(self.rng.choice([1.0, 0.540208])))
        cfg = self.cfg(K, c_scale)
        if gamma is None:
            gamma, beta = channel_params(cfg, self.rng)
        # The golden forward pass without its normalize step (y is not needed here).
        stats = gbn.forward_stats(cfg, x)
        params = [gbn.finalize(cfg, stats[c], gamma[c], beta[c]) for c in range(self.C)]
        dx, gparams = gbn.backward(cfg, x, g, stats, params, params_only=params_only)
        cmd = {"count": n, "chunks_log2": K.bit_length() - 1, "c_scale": c_scale,
               "params_only": int(params_only)}
        step = Step(
            cmd=cmd, word=pack(self.cmd_layout, cmd), bad=False, tag=tag, elements=n * self.C,
            # The forward record as the forward core stores it; the backward port takes its low bits.
            stats=[pack(self.saved_layout, saved_record(cfg, self.Kmax, stats[c], params[c]))
                   & self.stats_mask for c in range(self.C)],
            xg=[(self._block(a) << self.pair_layout["x"].offset) | (self._block(b) << self.pair_layout["g"].offset)
                for a, b in zip(x, g)],
            g=[] if params_only else [self._block(b) for b in g],
            grads=[pack(self.grads_layout, {"dgamma": gp.dgamma, "dbeta": gp.dbeta,
                                            "overflow": int(bool(gp.flags))}) for gp in gparams],
            dx=[] if params_only else [self._flagged(b) for b in dx],
            overflow=sum(bool(gp.flags) for gp in gparams),
            sat=0 if params_only else sum(bool(b[2]["sat"]) for b in dx),
        )
        self.steps.append(step)
        return step

    def tensor(self, kind, n, K, **kw):
        n = fit_count(n, K, self.p.max_count)
        cfg = self.cfg(K)
        if kind == "random":
            return random_blocks(cfg, n, self.rng, **kw)
        if kind == "edge":
            return edge_blocks(cfg, n, self.rng, **kw)
        return to_blocks(cfg, self.fmt, activations(kind, n, self.C, self.rng))

    def _blocks(self, n, K, fn):
        """A block stream whose block ``(p, group)`` is ``Block(*fn(p, channel_of_lane))``:
        ``fn(p, channels) -> (exponent, codes)``."""
        B, groups = self.bfp.block, self.cfg(K).groups
        out = []
        for p in range(n):
            for grp in range(groups):
                e, codes = fn(p, list(range(grp * B, (grp + 1) * B)))
                out.append(Block(e, codes, _NO_FLAGS))
        return out

    def finalize_extremes(self):
        """Commands aimed at the extremes of the finalize datapath (every leading-one position its
        normalizer sees, deep cancellation in ``dgamma``) and of the dx rounding:

        * tiny sums: x and g at shared exponent 0, one non-zero g per channel at position 0 (or a
          +1 / -1 pair), so ``sum g`` and ``sum g x`` are +-1, +-2, +-3 or 0 units;
        * large sums: +-code_max at the largest exponent everywhere (n up to 64 K);
        * powers of two (see below): every leading-one position of ``sum g x`` with zeros below it,
          and C = 2**b for every bit b of its field (and C = 0) times a power-of-two ``dgamma``;
        * nearly constant g (``dgamma`` = inv (sum g x - mu sum g) cancels to the rounding error of
          mu), with 0-4 perturbed positions per channel;
        * skewed g (mostly -v, one position in eight +v): dx = a (g - gbar) carries into the top
          bit of the dx window."""
        from hw.bn_layouts import C_WIDTH
        p, K, rng = self.p, self.Kmax, self.rng
        cmax, emax = self.bfp.code_max, self.bfp.exp_max
        n2 = 2 * K

        def tiny_x(pos, chans):
            return 0, [(1 if c % 2 else -1) if pos == 0 else int(rng.integers(-cmax, cmax + 1)) for c in chans]

        def tiny_g(pos, chans):
            codes = []
            for c in chans:
                if c % 4 == 3:          # +1 / -1 pair: sum g = 0, sum g x = x0 - x1
                    codes.append(1 if pos == 0 else -1 if pos == 1 else 0)
                else:
                    codes.append((min(1 + c % 3, cmax) * (1 if (c // 3) % 2 else -1)) if pos == 0 else 0)
            return 0, codes
        self.good(self._blocks(n2, K, tiny_x), self._blocks(n2, K, tiny_g), K, tag="tiny sums")

        n_big = max(n2, min(p.max_count, 64 * K) // K * K)
        m_big = n_big // K

        def big_x(pos, chans):
            return emax, [(cmax - 1 if pos % m_big == 0 else cmax) * (1 if c % 3 else -1) for c in chans]

        def big_g(pos, chans):
            return emax, [cmax * (1 if c % 2 else -1) for c in chans]
        self.good(self._blocks(n_big, K, big_x), self._blocks(n_big, K, big_g), K, tag="large sums")

        # Large powers of two: x = g = 2**(W-2) at the largest exponent at the first t positions
        # (t = 1, 2, 4, ... per channel), x = 0 elsewhere: sum g x = t * 2**(2 emax + 2 (W-2)).
        top = max(0, self.bfp.width - 2)
        t_of = {c: 1 << (c % max(1, (n_big // 2).bit_length())) for c in range(self.C + self.bfp.block)}

        def bigpow_x(pos, chans):
            return emax, [(1 << top) * (1 if c % 2 else -1) if pos < t_of[c] else 0 for c in chans]

        def bigpow_g(pos, chans):
            return emax, [(1 << top) if pos < t_of[c] else 0 for c in chans]
        self.good(self._blocks(n_big, K, bigpow_x), self._blocks(n_big, K, bigpow_g), K,
                  tag="large powers of two")

        # Powers of two: x alternates 0 and 2**r per chunk (every chunk range, mu, sigma and
        # 1 / sigma a power of two when C is), g is one code 2**d at position 1, so sum g, sum g x
        # and dgamma are single powers of two: the normalizer sees a lone leading one with zeros
        # below it. Over the commands the shared exponents and the lanes' r + d sweep every
        # position of sum g x; C = 2**b sweeps every position of the product C dgamma.
        B, groups = self.bfp.block, self.cfg(K).groups
        span, s = 2 * emax + 1, 0
        for j, b in enumerate(range(-1, C_WIDTH)):
            c_scale = 0 if b < 0 else 1 << b
            ex_of, eg_of = {}, {}
            for grp in range(groups):
                ex_of[grp] = min(s, emax)
                eg_of[grp] = s - ex_of[grp]
                s = (s + min(B, self.C - grp * B, 2 * top + 1)) % span

            def split(c):
                d = (c % B) % (2 * top + 1)
                return min(d, top), d - min(d, top), 1 if (c + j) % 2 else -1

            def pow_x(pos, chans):
                return ex_of[chans[0] // B], [(1 << r) * sign if pos % 2 else 0
                                              for r, _d, sign in map(split, chans)]

            def pow_g(pos, chans):
                return eg_of[chans[0] // B], [(1 << split(c)[1]) * (1 if c % 3 else -1) if pos == 1 else 0
                                              for c in chans]
            self.good(self._blocks(n2, K, pow_x), self._blocks(n2, K, pow_g), K, c_scale=c_scale,
                      tag=f"powers of two, C = 2**{b}" if b >= 0 else "powers of two, C = 0")

        n_c = max(n2, min(p.max_count, 16 * K) // K * K)
        g_code = {c: int(rng.integers(max(1, cmax // 2), cmax + 1)) * int(rng.choice([-1, 1]))
                  for c in range(self.C + self.bfp.block)}
        g_exp = int(rng.integers(max(0, emax - 8), emax + 1))
        perturbed = {c: set(rng.choice(n_c, size=min(n_c, c % 5), replace=False).tolist())
                     for c in g_code}

        def near_const_g(pos, chans):
            return g_exp, [max(-cmax, min(cmax, g_code[c] + (1 if pos in perturbed[c] else 0)))
                           for c in chans]
        self.good(self.tensor("gauss", n_c, K), self._blocks(n_c, K, near_const_g), K,
                  tag="nearly constant g (dgamma cancels)")

        n_s = max(n2, min(p.max_count, 8 * K) // K * K)

        def skew_g(pos, chans):
            return g_exp, [g_code[c] * (-1 if pos % 8 == 3 else 1) for c in chans]
        self.good(self.tensor("laplace", n_s, K), self._blocks(n_s, K, skew_g), K,
                  tag="skewed g (dx carries)")

    def dx_residues(self):
        """dx lanes that are pure rounding residues, one target lane at a time (every lane that holds a
        channel): x makes sigma and 1 / sigma powers of two (chunks alternate codes 0 and 1, C = 1), so
        ``a = gamma / sigma`` is exact; g is the constant code ``code_max``, so ``gbar = g`` and
        ``dx = a g + rnd(-a g)``: the rounding error of the product ``code_max * ma``. gamma's
        fraction is solved so that the error is one product LSB: the lane's window holds a lone 1
        two bits above its bottom. Two commands per target lane:

        * alone (every other channel has gamma = 0, dx = 0): the residue is the block maximum, so
          its leading-one position decides the shared exponent;
        * with a partner lane whose gamma is 2**(W-1) times larger: the block's code LSB falls two
          bits above the target's window bottom, and the target is an exact tie there (guard bit 1,
          nothing below it), which must round to even.

        Positions where the chunk's argmax/argmin select b_max/b_min are ordinary values."""
        from fractions import Fraction
        from sim.model.golden_bn import C_FRAC_BITS
        K, f = self.Kmax, self.f
        bfp, B, M = self.bfp, self.bfp.block, self.f.frac_bits
        q = bfp.code_max
        if q < 3:
            return                      # |g| = 1: the product is exact, no residue
        # gamma's significand ma = 2**M + frac with q * ma = 1 modulo the dropped low bits.
        frac = None
        for cand in range(1 << M):
            prod = q * ((1 << M) + cand)
            d = prod.bit_length() - (M + 1)
            if d >= 1 and prod % (1 << d) == 1:
                frac = cand
                break
        if frac is None:
            return
        n, ex = 2 * K, max(0, bfp.exp_max - 2)
        eg = bfp.exp_max // 2
        sigma = Fraction(2) ** bfp.lsb_exponent(ex)        # chunk range one code, C = 1
        base = Fraction((1 << M) + frac, 1 << M) * sigma     # a = gamma / sigma = 1.frac
        x = self._blocks(n, K, lambda pos, chans: (ex, [pos % 2] * len(chans)))
        g = self._blocks(n, K, lambda pos, chans: (eg, [q] * len(chans)))
        lanes = min(B, self.C)          # lanes past the channels are padding
        for lane in range(lanes):
            for partner in (None, (lane + 1) % lanes):
                if partner == lane:
                    continue
                gamma = []
                for c in range(self.C):
                    if c % B == lane:
                        gamma.append(f.encode(base))
                    elif partner is not None and c % B == partner:
                        gamma.append(f.encode(base * (1 << (bfp.width - 1))))
                    else:
                        gamma.append(0)
                self.good(x, g, K, gamma=gamma, beta=[0] * self.C, c_scale=1 << C_FRAC_BITS,
                          tag=f"dx residue in lane {lane}" + ("" if partner is None else f", tie against lane {partner}"))

    def build(self, target_elements):
        """Bad counts (``count_error``), n = 2K, edge data (flat channels, ties, max == min chunks,
        saturated codes, zeros, tiny ranges), internal-float overflow, dx saturation, a smaller
        run-time K, parameters-only commands, then Gaussian / ReLU / Laplace / offset / random BFP
        data until ``target_elements`` (n * channels summed over good commands) are covered."""
        p, K, C = self.p, self.Kmax, self.C
        cw = p.max_count.bit_length()
        lw = max(1, (K.bit_length() - 1).bit_length())
        log2k = K.bit_length() - 1
        if K > 1:
            self.bad(2 * K + 1, log2k, "n not a multiple of K")
        self.bad(K, log2k, "n / K = 1")
        self.bad(0, 0, "n = 0")
        if p.max_count + K < (1 << cw):
            self.bad(p.max_count + K, log2k, "n > max_count")
        if K.bit_length() < (1 << lw) and 4 * K <= p.max_count:
            self.bad(4 * K, K.bit_length(), "K > max chunks")
        self.good(self.tensor("edge", 2 * K, K), self.tensor("random", 2 * K, K), K,
                  tag="minimal n = 2K, edge data")
        self.bad(1, 0, "n = 1")
        self.good(self.tensor("edge", 2 * K, K, offset=1), self.tensor("grad", 2 * K, K), K,
                  params_only=True, tag="parameters only after a dropped command")
        n_edge = min(p.max_count, 8 * K)
        for offset in range(len(EDGE_KINDS)):       # every kind in every group position
            self.good(self.tensor("edge", n_edge, K, offset=offset),
                      self.tensor("random" if offset % 2 else "grad", n_edge, K), K,
                      tag=f"edge data, kinds from {EDGE_KINDS[offset]}")
        # internal-float overflow: gamma = max gives a huge a (b_mid, corr overflow)
        f = self.f
        gmax = f.pack(0, f.exp_max, (1 << f.frac_bits) - 1)
        self.good(self.tensor("edge", 4 * K, K), self.tensor("random", 4 * K, K), K,
                  gamma=[gmax] * C, beta=[0] * C, tag="overflow: gamma = max")
        # dx saturation: large g against narrow channels
        hi = self.bfp.exp_max
        self.good(self.tensor("gauss", 8 * K, K),
                  self.tensor("random", 8 * K, K, exp_range=(max(0, hi - 3), hi)), K,
                  tag="dx saturates")
        if K > 1:
            k2 = K // 4 if K >= 4 else 1
            for kk in sorted({1, k2, K // 2}):
                n = fit_count(kk * 6, kk, p.max_count)
                self.good(self.tensor("relu", n, kk), self.tensor("grad", n, kk), kk,
                          tag=f"run-time K = {kk} below max")
        n_po = min(p.max_count, 64 * K)
        self.good(self.tensor("random", n_po, K), self.tensor("random", n_po, K), K, params_only=True,
                  tag="parameters only, random")
        self.finalize_extremes()
        self.dx_residues()
        kinds = ("gauss", "relu", "laplace", "random", "offset", "gauss")
        i = 0
        while self.elements < target_elements:
            kind = kinds[i % len(kinds)]
            left = max(1, (target_elements - self.elements) // C)
            n = int(min(p.max_count, max(2 * K, left)))
            n -= n % K
            n = max(n, 2 * K)
            g = self.tensor("random" if kind == "random" else "grad", n, K)
            self.good(self.tensor(kind, n, K), g, K, params_only=(i % 6 == 5),
                      tag=f"{kind} n={n}" + (" parameters only" if i % 6 == 5 else ""))
            i += 1
        return self.steps


# --- building -----------------------------------------------------------------------------------

#: C++ optimisation of the Verilator model. ``sim.bench.common`` builds at -O0 (fast to compile, and the
#: Python bench sets the pace for small units); this core is large enough that -O0 evaluates about
#: 700 cycles/s against 8,000 at -O1 (W = 8, B = 4, K = 8), so its benches build at -O1.
MODEL_OPT = {"OPT_FAST": "-O1", "OPT_SLOW": "-O0"}


def queue_step(drv, step):
    """Queue one planned command's words on the bench's stream driver: the command, its stats
    records, its x / g pairs and its g blocks (each stream in order)."""
    drv.send("cmd", step["word"])
    for name in ("stats", "xg", "g"):
        for w in step[name]:
            drv.send(name, w)


def build_core(verilog, label, toplevel="ln_backward_core"):
    """Build ``verilog`` at ``MODEL_OPT`` (``sim.bench.common.build``, cached per text) and return the
    build directory, ready for ``run_cocotb(..., build_dir=...)``."""
    from sim.bench import common as bench
    return bench.build(verilog, toplevel, name=label, make_vars=MODEL_OPT)


# --- cocotb -----------------------------------------------------------------------------------

try:
    import cocotb
    from cocotb.triggers import FallingEdge, RisingEdge
except ImportError:         # the plain-Python half above stays importable without cocotb
    cocotb = None


from sim.bench.common import StreamDriver  # noqa: E402  (the one multi-stream driver)


def _params(conf):
    from gen.units import Params
    return Params(**conf["params"])


async def run_plan(dut, conf, steps, idle, backpressure, seed, *, reset=True, timeout_scale=1):
    """Drive ``steps`` through the core (``dut``: anything with the core's ports as attributes, and
    ``clk``); returns a result dict (counts, mismatches, cycles). ``reset``: start the clock and
    reset first (``sim.bench.bn_core`` does it once for both cores); ``timeout_scale`` stretches
    the time limit (a core sharing its units waits for them)."""
    from sim.bench import common as bench
    if reset:
        await bench.start_clock_and_reset(dut)
    drv = StreamDriver(dut, ("cmd", "stats", "xg", "g"), ("grads", "dx"), idle=idle,
                       backpressure=backpressure, seed=seed)
    status_errors = []
    state = {"index": 0, "pending": None}
    cmd_bus = drv.src["cmd"]

    def status_watch(d):
        """The cycle after every command transfer: ``count_error`` = bad, ``busy`` = good."""
        if state["pending"] is not None:
            step = steps[state["pending"]]
            ce, busy = int(dut.count_error.value), int(dut.busy.value)
            if ce != int(step["bad"]) or busy != int(not step["bad"]):
                status_errors.append(f"command {state['pending']} ({step['tag']}): "
                                     f"count_error={ce} busy={busy}")
            state["pending"] = None
        if d.active["cmd"] and cmd_bus.ready.value:
            state["pending"] = state["index"]
            state["index"] += 1
    drv.watchers.append(status_watch)

    for step in steps:
        queue_step(drv, step)
    want_grads = [w for s in steps for w in s["grads"]]
    want_dx = [w for s in steps for w in s["dx"]]
    blocks = sum(len(s["xg"]) + len(s["g"]) for s in steps)
    finalize = 200 * len(want_grads)
    limit = 200 + int(timeout_scale * (blocks + finalize + 20 * len(steps)) * 4
                      / max(0.05, (1 - idle) * (1 - backpressure)))
    task = cocotb.start_soon(drv.run())
    clk = dut.clk
    while (len(drv.received["grads"]) < len(want_grads) or len(drv.received["dx"]) < len(want_dx)
           or state["index"] < len(steps)):
        await RisingEdge(clk)
        if drv.cycle > limit:
            raise AssertionError(f"timeout after {drv.cycle} cycles: grads {len(drv.received['grads'])}"
                                 f"/{len(want_grads)}, dx {len(drv.received['dx'])}/{len(want_dx)}, "
                                 f"commands {state['index']}/{len(steps)}")
    for _ in range(8):
        await RisingEdge(clk)
    await FallingEdge(clk)
    idle_at_end = int(dut.busy.value) == 0
    task.cancel()
    extra = (len(drv.received["grads"]) - len(want_grads), len(drv.received["dx"]) - len(want_dx))
    got_g, got_dx = drv.received["grads"], drv.received["dx"]
    cycles = drv.cycle

    # compare, per command
    p = _params(conf)
    from sim.bench.common import unpack
    from hw.bn_layouts import grads_layout
    report, gi, di, first = [], 0, 0, []
    for index, step in enumerate(steps):
        ng, nd = len(step["grads"]), len(step["dx"])
        bad_g = [k for k in range(ng) if got_g[gi + k] != step["grads"][k]]
        bad_dx = [k for k in range(nd) if got_dx[di + k] != step["dx"][k]]
        if (bad_g or bad_dx) and len(first) < 6:
            for k in bad_g[:2]:
                first.append(f"command {index} ({step['tag']}) channel {k}: got "
                             f"{unpack(grads_layout(p.internal), got_g[gi + k])}, want "
                             f"{unpack(grads_layout(p.internal), step['grads'][k])}")
            for k in bad_dx[:2]:
                first.append(f"command {index} ({step['tag']}) dx block {k}: got "
                             f"{unpack(p.bfp.flagged_block_layout(), got_dx[di + k])}, want "
                             f"{unpack(p.bfp.flagged_block_layout(), step['dx'][k])}")
        report.append({"tag": step["tag"], "bad": step["bad"], "elements": step["elements"],
                       "grads_mismatches": len(bad_g), "dx_mismatches": len(bad_dx)})
        gi += ng
        di += nd
    return {
        "cycles": cycles,
        "transfer_cycles": {k: list(drv.received_cycles[k]) for k in ("dx", "grads")},
        "commands": report,
        "elements": sum(s["elements"] for s in steps),
        "dx_elements": sum(s["elements"] for s in steps if s["dx"]),
        "grads_records": len(want_grads),
        "dx_blocks": len(want_dx),
        "grads_mismatches": sum(r["grads_mismatches"] for r in report),
        "dx_mismatches": sum(r["dx_mismatches"] for r in report),
        "overflow_records": sum(s.get("overflow", 0) for s in steps),
        "sat_blocks": sum(s.get("sat", 0) for s in steps),
        "status_errors": status_errors,
        "extra_outputs": extra,
        "idle_at_end": idle_at_end,
        "first_mismatches": first,
        "protocol_errors": drv.errors[:10],
    }


def plan_problems(result):
    """The failures in a :func:`run_plan` result, one line each."""
    problems = []
    if result["grads_mismatches"] or result["dx_mismatches"]:
        problems.append(f"{result['grads_mismatches']} grads and {result['dx_mismatches']} dx "
                        f"mismatches: " + "; ".join(result["first_mismatches"]))
    if result["protocol_errors"]:
        problems.append("stream protocol: " + "; ".join(result["protocol_errors"]))
    if result["status_errors"]:
        problems.append("status: " + "; ".join(result["status_errors"][:5]))
    if result["extra_outputs"] != (0, 0):
        problems.append(f"extra outputs (grads, dx): {result['extra_outputs']}")
    if not result["idle_at_end"]:
        problems.append("busy still high after the last output")
    return problems


if cocotb is not None:
    @cocotb.test()
    async def backward_regression(dut):
        """The plan of the configuration, bit for bit against ``golden_bn.backward``."""
        from sim.bench import common as bench
        conf = bench.config()
        p = _params(conf)
        steps = BackwardPlan(p, conf["seed"]).build(conf["elements"])
        result = await run_plan(dut, conf, steps, conf.get("idle", 0.3), conf.get("backpressure", 0.3),
                                conf["seed"])
        problems = plan_problems(result)
        del result["transfer_cycles"]
        bench.write_result(conf.get("result_file"), "backward", problems, tests=["backward_regression"],
                           **result)
        assert not problems, "\n".join(problems)
