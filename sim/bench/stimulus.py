"""Stimulus of the Range-BN core benches (plain Python and NumPy, importable without a simulator):
activation and gradient tensors, their BFP block streams in LightNorm's grouping, BFP blocks made
directly (random, edge cases, flat lanes), per-channel affine parameters.

``sim.bench.forward_core`` and ``sim.bench.backward_core`` both draw from here (and
``tests/test_forward_error.py``, ``sim.verify.measure_throughput``). A ``cfg`` is a
``sim.model.golden_bn`` configuration (``bfp``, ``channels``, ``groups``, ``chunks``, ``internal``);
``rng`` a ``numpy.random.Generator``. Every generator consumes the generator's stream in a fixed
order, so a seed gives the same stimulus on every run.

The two benches keep their own edge-case sets (:func:`edge_blocks_per_channel` for the forward
core, :func:`edge_blocks_per_group` for the backward core): they probe different things (ties and
flat channels across lanes of one block vs. a kind per block, whose shared exponent the kind then
owns), and both are checked against the golden model.
"""

import numpy as np

from hw.formats import float_format
from sim.model.golden import Block, float_to_bfp

__all__ = ["bn_config", "DISTRIBUTIONS", "GRADIENT", "activations", "to_blocks", "channel_params", "random_blocks",
           "CHANNEL_EDGE_KINDS", "GROUP_EDGE_KINDS", "edge_blocks_per_channel", "edge_blocks_per_group",
           "flat_lanes", "permute_within_chunks", "NO_FLAGS"]

def bn_config(p, K, c_scale=None):
    """The golden model's configuration for generator parameters ``p`` (``gen.units.Params``) at
    run-time K: what both core benches compare against."""
    from sim.model import golden_bn
    return golden_bn.BNConfig(p.bfp, p.channels, chunks=K, internal_frac_bits=p.frac_bits, c_scale=c_scale,
                              stats=p.stats, stats_guard=p.stats_guard)


#: Activation distributions of the forward regression and of the error table.
DISTRIBUTIONS = ("gauss", "relu", "laplace", "student", "offset")
#: The gradient distribution of :func:`activations` (the backward bench's g).
GRADIENT = "grad"

#: Flags of a block made directly in BFP (no input float was special, saturated or flushed).
NO_FLAGS = {"sat": False, "special": False, "flush": False}
_NO_FLAGS = NO_FLAGS

#: Kinds of :func:`edge_blocks_per_channel` (channel ``c`` takes ``kinds[c % len]``).
CHANNEL_EDGE_KINDS = ("flat", "ties", "two", "sat", "zero", "tiny", "random")
#: Kinds of :func:`edge_blocks_per_group` (group ``g`` takes ``kinds[(g + offset) % len]``).
GROUP_EDGE_KINDS = ("flat", "ties", "partflat", "stepflat", "two", "sat", "zero", "tiny", "random")


# --- tensors ----------------------------------------------------------------------------------

def activations(kind, n, channels, rng):
    """``n x channels`` float64 data. Every channel gets its own scale (log-uniform over
    2**-6..2**6, always drawn first) and offset, as conv outputs do.

    ``gauss``: normal around an offset of up to 3 sigma; ``relu``: ReLU after a conv (a normal
    with a per-channel bias, then max(0, .); many exact zeros, so min ties); ``laplace`` and
    ``student`` (t, 3 degrees of freedom): heavy tails, with offsets; ``offset``: normal with an
    offset of 10..100 sigma (a badly centred layer: the worst case for the folded ``a x + b``);
    ``grad``: a small zero-mean gradient, per-channel scale 2**-10..2**-2 (instead of the one
    above)."""
    scale = 2.0 ** rng.uniform(-6, 6, size=channels)
    if kind == "gauss":
        x = rng.normal(size=(n, channels)) + rng.uniform(-3, 3, size=channels)
    elif kind == "relu":
        x = np.maximum(rng.normal(size=(n, channels)) + rng.uniform(-1.5, 1.5, size=channels), 0.0)
    elif kind == "laplace":
        x = rng.laplace(size=(n, channels)) + rng.uniform(-3, 3, size=channels)
    elif kind == "student":
        x = rng.standard_t(3, size=(n, channels)) + rng.uniform(-3, 3, size=channels)
    elif kind == "offset":
        x = rng.normal(size=(n, channels)) + rng.choice([-1, 1], size=channels) * rng.uniform(10, 100, size=channels)
    elif kind == GRADIENT:
        return rng.normal(size=(n, channels)) * 2.0 ** rng.uniform(-10, -2, size=channels)
    else:
        raise ValueError(f"unknown distribution {kind!r}; known: {', '.join(DISTRIBUTIONS + (GRADIENT,))}")
    return x * scale


def to_blocks(cfg, fmt, x):
    """Float64 ``x[n, channels]`` -> packed ``fmt`` words (``FloatFormat.encode``, vectorized by
    ``sim.model.fast_bn.encode_fields``, same bits) -> the BFP block stream (golden
    ``float_to_bfp`` per position and group; padding lanes are zero words)."""
    from sim.model.fast_bn import encode_fields
    fmt = float_format(fmt)
    B, C = cfg.bfp.block, cfg.channels
    sign, expo, frac = encode_fields(fmt, x)
    words = (sign << (fmt.exp_bits + fmt.frac_bits)) | (expo << fmt.frac_bits) | frac
    blocks = []
    pad = [0] * (cfg.groups * B - C)
    for row in words.tolist():
        row = row + pad
        for g in range(cfg.groups):
            blocks.append(float_to_bfp(fmt, cfg.bfp, row[g * B:(g + 1) * B]))
    return blocks


def channel_params(cfg, rng):
    """Per-channel gamma and beta (internal-float bits): gamma log-uniform in 2**-2..2**2 with a
    random sign now and then, beta normal."""
    f = cfg.internal
    gamma = [f.encode(float(v)) for v in
             2.0 ** rng.uniform(-2, 2, size=cfg.channels) * rng.choice([1, 1, 1, -1], size=cfg.channels)]
    beta = [f.encode(float(v)) for v in rng.normal(size=cfg.channels)]
    return gamma, beta


# --- blocks made directly in BFP -----------------------------------------------------------------

def random_blocks(cfg, n, rng, exp_range=None, padding="zero"):
    """Blocks straight in BFP: shared exponents uniform over ``exp_range`` (default the whole
    range: stress for the exact compare across exponents), codes uniform with +-code_max and 0
    pinned now and then (5 % each). Padding lanes (channels >= ``cfg.channels`` in the last group)
    are code 0 and draw nothing (``padding="zero"``, the forward bench) or get random codes like
    the others (``padding="random"``, the backward bench: the core must ignore them)."""
    if padding not in ("zero", "random"):
        raise ValueError(f"padding must be 'zero' or 'random', not {padding!r}")
    bfp, B = cfg.bfp, cfg.bfp.block
    lo, hi = exp_range or (0, bfp.exp_max)
    out = []
    for _p in range(n):
        for g in range(cfg.groups):
            e = int(rng.integers(lo, hi + 1))
            codes = []
            for l in range(B):
                if padding == "zero" and g * B + l >= cfg.channels:
                    codes.append(0)
                    continue
                r = rng.random()
                codes.append(bfp.code_max if r < 0.05 else -bfp.code_max if r < 0.1 else 0 if r < 0.15
                             else int(rng.integers(-bfp.code_max, bfp.code_max + 1)))
            out.append(Block(e, codes, _NO_FLAGS))
    return out


def edge_blocks_per_channel(cfg, n, rng):
    """The forward bench's edge cases, one kind per *channel*, cycling over the channels
    (:data:`CHANNEL_EDGE_KINDS`): all-equal (flat), max and min ties
    (repeated extreme values), two-valued, saturated codes at the largest exponent, zeros,
    alternating sign at tiny exponents. Every chunk repeats the pattern so ties span chunks."""
    bfp, B = cfg.bfp, cfg.bfp.block
    cmax, e4 = bfp.code_max, min(4, bfp.exp_max)        # every width from 2, every exponent field
    rows = []
    kinds = CHANNEL_EDGE_KINDS
    for p in range(n):
        rows.append([])
        for c in range(cfg.channels):
            kind = kinds[c % len(kinds)]
            if kind == "flat":
                v = (min(3, cmax), bfp.exp_max // 2)
            elif kind == "ties":
                v = ((cmax, e4) if p % 3 == 0 else (-cmax, e4) if p % 3 == 1 else (1, e4))
            elif kind == "two":
                v = (1, 2) if p % 2 else (min(2, cmax), 1)  # equal values, different exponents (W >= 3)
            elif kind == "sat":
                v = ((bfp.code_max if p % 2 else -bfp.code_max), bfp.exp_max)
            elif kind == "zero":
                v = (0, 0)
            elif kind == "tiny":
                v = ((1 if p % 2 else -1), 1)
            else:
                v = (int(rng.integers(-bfp.code_max, bfp.code_max + 1)), int(rng.integers(0, bfp.exp_max + 1)))
            rows[-1].append(v)
    # A block has one exponent: build each block at the largest exponent of its lanes, scaling the
    # codes exactly when possible (otherwise keep the lane value as close as the grid allows).
    out = []
    for p in range(n):
        for g in range(cfg.groups):
            lanes = [rows[p][c] for c in range(g * B, min((g + 1) * B, cfg.channels))]
            e = max(ex for _, ex in lanes)
            codes = []
            for q, ex in lanes:
                codes.append(q >> (e - ex) if q >= 0 else -((-q) >> (e - ex)))
            codes += [0] * (B - len(codes))
            out.append(Block(e, codes, _NO_FLAGS))
    return out


def edge_blocks_per_group(cfg, n, rng, offset=0):
    """The backward bench's edge cases, one kind per *group* of ``B`` channels (so a block's shared exponent belongs to
    its kind and does not wipe out the other lanes), group ``g`` taking ``GROUP_EDGE_KINDS[(g + offset)
    % len]``; lanes of a group differ in their constants and phases.

    ``flat``: all-equal channels (R = 0); ``ties``: the max and the min repeat (first occurrence
    wins); ``partflat``: constant in the even chunks, random in the odd ones (``chunk_flat`` set in
    some chunks of a channel that is not flat); ``stepflat``: constant within every chunk, a
    different constant per chunk (every chunk has max == min, so R = 0); ``two``: one value
    written alternately as code 1 at exponent 5 and code 2 at exponent 4; ``sat``: +-code_max at
    the largest exponent; ``zero``; ``tiny``: +-1 at exponent 1 (a huge 1 / sigma_hat);
    ``random``: random codes at a random exponent."""
    bfp, B = cfg.bfp, cfg.bfp.block
    m = max(1, n // cfg.chunks)
    cmax = bfp.code_max
    emax = bfp.exp_max              # >= 3 (two exponent bits): exponents above it are clamped
    out = []
    for p in range(n):
        k = p // m
        for g in range(cfg.groups):
            kind = GROUP_EDGE_KINDS[(g + offset) % len(GROUP_EDGE_KINDS)]
            e = min(4, emax)
            if kind == "flat":
                codes = [1 + (l % cmax) for l in range(B)]
                e = min(bfp.exp_max, 15)
            elif kind == "ties":
                codes = [(cmax, -cmax, 1)[(p + l) % 3] for l in range(B)]
            elif kind == "partflat":
                codes = ([1 + (l % cmax) for l in range(B)] if k % 2 == 0 else
                         [int(rng.integers(-cmax, cmax + 1)) for _ in range(B)])
                e = 3
            elif kind == "stepflat":
                codes = [1 + ((k + l) % cmax) for l in range(B)]
                e = 3
            elif kind == "two":
                e = min(5, emax) if p % 2 else min(4, emax) - (emax < 5)
                codes = [min(cmax, 1 if p % 2 else 2) * (1 if l % 2 else -1) for l in range(B)]
            elif kind == "sat":
                e = bfp.exp_max
                codes = [cmax if (p + l) % 2 else -cmax for l in range(B)]
            elif kind == "zero":
                codes, e = [0] * B, 0
            elif kind == "tiny":
                e = 1
                codes = [1 if (p + l) % 2 else -1 for l in range(B)]
            else:
                e = int(rng.integers(0, bfp.exp_max + 1))
                codes = [int(rng.integers(-cmax, cmax + 1)) for _ in range(B)]
            out.append(Block(e, codes, _NO_FLAGS))
    return out


def flat_lanes(cfg, n, K, step=False):
    """Every channel constant (``step``: constant within each chunk, a different constant per
    chunk), a different constant in every lane: the read port's per-lane ``max == min`` must
    compare a lane with itself, not with a neighbour (the edge data's one flat channel per seven
    does not tell lanes apart)."""
    bfp, B = cfg.bfp, cfg.bfp.block
    m = max(1, n // K)
    e = max(1, bfp.exp_max // 2)
    out = []
    for p in range(n):
        k = p // m if step else 0
        for g in range(cfg.groups):
            codes = []
            for l in range(B):
                c = g * B + l
                q = 1 + (c + 2 * k) % bfp.code_max if c < cfg.channels else 0
                codes.append(q if (c + k) % 2 == 0 else -q)
            out.append(Block(e, codes, _NO_FLAGS))
    return out


def permute_within_chunks(cfg, blocks, K, rng):
    """The same tensor with positions shuffled inside each chunk (so every per-chunk max, min, the
    sum and hence mu, sigma, inv, a, b are unchanged; only positions move)."""
    G = cfg.groups
    n = len(blocks) // G
    m = n // K
    order = []
    for k in range(K):
        idx = list(range(k * m, (k + 1) * m))
        rng.shuffle(idx)
        order += idx
    return [blocks[p * G + g] for p in order for g in range(G)]
