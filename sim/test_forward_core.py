"""Stimulus for the forward core (plain Python, importable without a simulator) and its cocotb bench.

The first half builds realistic activation tensors, turns them into the BFP block stream of
LightNorm's grouping and runs the golden model (``sim.golden_bn.forward``); ``tests/`` uses it for
the error table too. The cocotb half (below ``# --- cocotb``) drives ``ForwardCore``.
"""

import math
import random

import numpy as np

from hw.formats import BFPFormat, float_format
from sim.golden import float_to_bfp
from sim import golden_bn as gbn

__all__ = ["DISTRIBUTIONS", "activations", "to_blocks", "channel_params"]

#: Activation distributions of the default regression and of the error table.
DISTRIBUTIONS = ("gauss", "relu", "laplace", "student", "offset")


def activations(kind, n, channels, rng):
    """``n x channels`` float64 activations. Every channel gets its own scale (log-uniform over
    2**-6..2**6) and offset, as conv outputs do.

    ``gauss``: normal around an offset of up to 3 sigma; ``relu``: ReLU after a conv (a normal
    with a per-channel bias, then max(0, .); many exact zeros, so min ties); ``laplace`` and
    ``student`` (t, 3 degrees of freedom): heavy tails, with offsets; ``offset``: normal with an
    offset of 10..100 sigma (a badly centred layer: the worst case for the folded ``a x + b``)."""
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
    else:
        raise ValueError(f"unknown distribution {kind!r}; known: {', '.join(DISTRIBUTIONS)}")
    return x * scale


_ENCODE_CACHE = {}


def _encode(fmt, value):
    key = (fmt.name, value)
    word = _ENCODE_CACHE.get(key)
    if word is None:
        if len(_ENCODE_CACHE) > 1 << 20:
            _ENCODE_CACHE.clear()
        word = _ENCODE_CACHE[key] = fmt.encode(value)
    return word


def to_blocks(cfg, fmt, x):
    """Float64 ``x[n, channels]`` -> packed ``fmt`` words -> the BFP block stream (golden
    ``float_to_bfp`` per position and group; padding lanes are zero words)."""
    fmt = float_format(fmt)
    B, C = cfg.bfp.block, cfg.channels
    blocks = []
    for row in np.asarray(x, dtype=np.float64):
        words = [_encode(fmt, float(v)) for v in row] + [0] * (cfg.groups * B - C)
        for g in range(cfg.groups):
            blocks.append(float_to_bfp(fmt, cfg.bfp, words[g * B:(g + 1) * B]))
    return blocks


def channel_params(cfg, rng, flat_beta=False):
    """Per-channel gamma and beta (internal-float bits): gamma log-uniform in 2**-2..2**2 with a
    random sign now and then, beta normal."""
    f = cfg.internal
    gamma = [f.encode(float(v)) for v in
             2.0 ** rng.uniform(-2, 2, size=cfg.channels) * rng.choice([1, 1, 1, -1], size=cfg.channels)]
    beta = [f.encode(float(v)) for v in rng.normal(size=cfg.channels)]
    return gamma, beta
