"""Golden forward y against float64 Range BN (``sim.model.reference.range_bn_forward``, same C = cfg.c(n),
K and eps), in ulps of the output BFP block (ulp = 2**lsb_exponent(block exponent)).

Stated bound (docs/forward.md), per element, with M = internal fraction bits and u = 2**-(M+1):

    |y_golden - y_ref| <= 1 ulp + u * (3.01 |a (x - mu)| + 2.01 |a mu| + 1.01 |b|)

where a = gamma / sigma_hat and b = beta - mu a are the exact (float64) coefficients. The 1 ulp is
the final rounding into the block (0.5 ulp, or up to 1 ulp where the block maximum rounds up and
saturates); the rest is the one rounding each of sigma_hat, 1/sigma_hat and a (3 u relative on a),
of mu (u relative) and of b (u relative), carried through ``a x + b``. It assumes no result leaves
the BFP exponent range (the data here stays far inside).

``python tests/test_forward_error.py [--n N]`` prints the table of docs/forward.md.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hw.formats import BFPFormat, float_format                        # noqa: E402
from sim.model import golden_bn as gbn                                      # noqa: E402
from sim.model.reference import range_bn_forward                            # noqa: E402
from sim.bench.stimulus import DISTRIBUTIONS, activations, channel_params, to_blocks  # noqa: E402

WIDTHS = (4, 6, 8, 10, 12, 16)
IN_FORMAT = "fp10"


def default_frac_bits(width):
    """The generator's default internal fraction bits (gen.units.Params.frac_bits)."""
    return min(23, width + 4)


def measure(width, kind, n=256, channels=24, block=16, chunks=8, seed=0):
    """Returns ``(elements, max error in ulps, max error / bound, share of elements above 0.5 ulp)``."""
    fmt = float_format(IN_FORMAT)
    bfp = BFPFormat.for_float(fmt, width, block)
    cfg = gbn.BNConfig(bfp, channels, chunks=chunks, internal_frac_bits=default_frac_bits(width))
    rng = np.random.default_rng([seed, width, DISTRIBUTIONS.index(kind)])
    x = activations(kind, n, channels, rng)
    blocks = to_blocks(cfg, fmt, x)
    gamma, beta = channel_params(cfg, rng)
    y, _stats, _params, _rm, _rs = gbn.forward(cfg, blocks, gamma, beta)

    f = cfg.internal
    xv = np.array([[float(v) for v in row] for row in gbn.blocks_to_values(cfg, blocks)])
    gv = np.array([float(f.decode(g)) for g in gamma])
    bv = np.array([float(f.decode(b)) for b in beta])
    c = float(cfg.c(n))
    y_ref, cache = range_bn_forward(xv, gv, bv, chunks, c, float(cfg.eps))
    a = gv * cache["s"]
    b = bv - cache["mu"] * a
    u = 2.0 ** -(cfg.internal_frac_bits + 1)

    y_gold = np.array([[float(v) for v in row] for row in gbn.blocks_to_values(cfg, y)])
    ulp = np.empty_like(y_gold)
    for j, blk in enumerate(y):
        p, g = divmod(j, cfg.groups)
        lo, hi = g * block, min((g + 1) * block, channels)
        ulp[p, lo:hi] = 2.0 ** bfp.lsb_exponent(blk.exponent)
    err = np.abs(y_gold - y_ref) / ulp
    bound = 1.0 + u * (3.01 * np.abs(a * (xv - cache["mu"])) + 2.01 * np.abs(a * cache["mu"])
                       + 1.01 * np.abs(b)) / ulp + 1e-9
    return err.size, float(err.max()), float((err / bound).max()), float((err > 0.5 + 1e-12).mean())


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("kind", DISTRIBUTIONS)
def test_forward_error_bound(width, kind):
    elements, worst, ratio, _ = measure(width, kind, n=128)
    assert elements == 128 * 24
    assert ratio <= 1.0, f"W={width} {kind}: error {worst:.3f} ulp exceeds the stated bound (ratio {ratio:.3f})"
    if kind != "offset":
        # Centred-enough data: the coefficient roundings add at most a few hundredths of an ulp.
        assert worst <= 1.25, f"W={width} {kind}: {worst:.3f} ulp"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1024, help="positions per tensor (default 1024)")
    parser.add_argument("--seeds", type=int, default=2, help="tensors per cell (default 2)")
    args = parser.parse_args(argv)
    print(f"| W | M | " + " | ".join(DISTRIBUTIONS) + " | worst / bound | share > 0.5 ulp |")
    print("|---|---|" + "---|" * len(DISTRIBUTIONS) + "---|---|")
    for width in WIDTHS:
        cells, ratios, shares, total = [], [], [], 0
        for kind in DISTRIBUTIONS:
            worst = 0.0
            for seed in range(args.seeds):
                elements, w, r, s = measure(width, kind, n=args.n, seed=seed)
                worst = max(worst, w)
                ratios.append(r)
                shares.append(s * elements)
                total += elements
            cells.append(f"{worst:.3f}")
        print(f"| {width} | {default_frac_bits(width)} | " + " | ".join(cells)
              + f" | {max(ratios):.3f} | {sum(shares) / total:.2e} |")
    print(f"\n{args.seeds} tensors of {args.n} positions x 24 channels per cell, B = 16, K = 8, {IN_FORMAT} in")


if __name__ == "__main__":
    main()


@pytest.mark.parametrize("chunks", [1, 2])
def test_flat_rule_follows_the_range_estimate(chunks):
    """R = 0 is the flat rule, for every K (docs/numerics.md, "Flat channel"). With K = 2 and the
    channel [1, 1, 2, 2] every chunk is constant, so R = 0 although the channel varies: the golden
    model flags it flat and returns y = beta, where float64 Range BN would give
    y = gamma (x - mu) / eps + beta (+-2**15 gamma: saturated). With K = 1 R = 1 and y is normalized."""
    bfp = BFPFormat(8, 5, 1)
    cfg = gbn.BNConfig(bfp=bfp, channels=1, chunks=chunks, internal_frac_bits=12)
    e = bfp.bias + (bfp.width - 2) - 4           # code LSB 2**-4: codes 16 and 32 are 1 and 2
    blocks = gbn.tensor_to_blocks(cfg, [[16], [16], [32], [32]], [[e]] * 4)
    gamma, beta = cfg.internal.encode(1), cfg.internal.encode(0.25)
    y, stats, params, _, _ = gbn.forward(cfg, blocks, [gamma], [beta], training=True,
                                         running_mean=[gbn.running_reset(cfg)[0]],
                                         running_sigma=[gbn.running_reset(cfg)[1]])
    out = [v[0] for v in gbn.blocks_to_values(cfg, y)]
    if chunks == 2:
        assert params[0].flat and out == [0.25] * 4
    else:
        assert not params[0].flat
        assert out[0] < 0.25 < out[3] and out[0] == out[1] and out[2] == out[3]
