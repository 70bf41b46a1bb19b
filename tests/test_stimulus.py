"""``sim.bench.stimulus``: the one stimulus module of the core benches."""

import numpy as np
import pytest

from gen.units import Params
from sim.bench import stimulus as st
from sim.model import golden_bn as gbn


def _cfg(**kw):
    p = Params(**kw)
    return gbn.BNConfig(p.bfp, p.channels, chunks=p.chunks, internal_frac_bits=p.frac_bits), p


def test_benches_draw_from_the_one_module():
    import sim.bench.backward_core as bwd
    import sim.bench.forward_core as fwd
    for name in ("activations", "to_blocks", "channel_params"):
        assert getattr(fwd, name) is getattr(st, name) is getattr(bwd, name)
    assert fwd.edge_blocks is st.edge_blocks_per_channel and bwd.edge_blocks is st.edge_blocks_per_group
    assert fwd.random_blocks is st.random_blocks


@pytest.mark.parametrize("fmt", ["fp10", "e4m3", "fp16"])
def test_to_blocks_encodes_like_the_golden_format(fmt):
    """The vectorized encoder gives ``FloatFormat.encode``'s words (the forward bench used that)."""
    from hw.formats import float_format
    from sim.model.golden import float_to_bfp
    cfg, p = _cfg(width=6, block=4, channels=6, in_format=fmt)
    rng = np.random.default_rng(3)
    f = float_format(fmt)
    for kind in st.DISTRIBUTIONS + (st.GRADIENT,):
        x = st.activations(kind, 20, cfg.channels, rng)
        slow = []
        for row in x:
            words = [f.encode(float(v)) for v in row] + [0] * (cfg.groups * 4 - cfg.channels)
            slow += [float_to_bfp(f, cfg.bfp, words[g * 4:(g + 1) * 4]) for g in range(cfg.groups)]
        assert st.to_blocks(cfg, fmt, x) == slow, kind


def test_random_blocks_padding():
    cfg, _ = _cfg(width=4, block=4, channels=5)
    zero = st.random_blocks(cfg, 50, np.random.default_rng(1))
    assert all(tuple(b.codes[1:]) == (0, 0, 0) for b in zero[1::2])
    garbage = st.random_blocks(cfg, 50, np.random.default_rng(1), padding="random")
    assert any(any(b.codes[1:]) for b in garbage[1::2])
    with pytest.raises(ValueError):
        st.random_blocks(cfg, 1, np.random.default_rng(1), padding="nope")
    with pytest.raises(ValueError, match="unknown distribution"):
        st.activations("nope", 2, 2, np.random.default_rng(1))
