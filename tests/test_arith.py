"""``hw.arith``: the widths of the exact channel sums. The accumulators are sized by the exact
bound and the finalize inputs by the closed form; the closed form must never be narrower (the cores
assign an accumulator's sum to a finalize input, which would otherwise drop its top bits), and both
must hold the true extreme sums. (The combinational helpers are covered bit for bit by the RTL
benches of the units that use them and by the lint test.)"""

import pytest

from hw.arith import grad_widths, stats_widths
from hw.formats import BFPFormat

CONFIGS = [(w, e, n, k) for w in (2, 3, 8, 16) for e in (2, 5, 8) for n in (2, 3, 255, 256, 4096, 1 << 24)
           for k in (1, 2, 64) if n >= 2 * k]


def _fits_signed(value, width):
    return -(1 << (width - 1)) <= value < (1 << (width - 1))


@pytest.mark.parametrize("width, exp_bits, max_count, max_chunks", CONFIGS)
def test_sum_widths(width, exp_bits, max_count, max_chunks):
    bfp = BFPFormat(width, exp_bits, 1)
    peak = bfp.code_max << bfp.exp_max                 # largest |q * 2**E| in units u
    value_w, stats_sum_w, range_w = stats_widths(bfp, max_count, max_chunks)
    g_w, gx_w = grad_widths(bfp, max_count)
    # The exact bounds hold the extreme sums, and one bit less would not.
    assert _fits_signed(peak, value_w) and _fits_signed(-peak, value_w) and not _fits_signed(peak, value_w - 1)
    for w in (stats_sum_w, g_w):
        assert _fits_signed(max_count * peak, w) and _fits_signed(-max_count * peak, w)
        assert not _fits_signed(max_count * peak, w - 1)
    assert _fits_signed(max_count * peak * peak, gx_w) and not _fits_signed(max_count * peak * peak, gx_w - 1)
    assert min(max_chunks, max_count // 2) * 2 * peak < (1 << range_w)
