"""The golden model, its NumPy twin and the generator refuse the same input formats (exponent
fields wider than ``hw.formats.BN_MAX_EXP_BITS``), through one check with one message
(``hw.formats.check_bn_format``). The PyTorch layer's refusal is in tests/torch."""

import numpy as np
import pytest

from gen.units import ParamError, Params
from hw.formats import BN_MAX_EXP_BITS, BFPFormat, FloatFormat, check_bn_format, float_format
from sim.model import fast_bn as fb
from sim.model import golden_bn as gb

REFUSED = ["bf16", "fp32", "e7m2", "e8m0", "e11m4"]
ACCEPTED = ["fp10", "fp16", "fp15", "e4m3", "e5m2", "e2m1", "e6m10"]


def _message(name):
    with pytest.raises(ParamError) as info:
        Params(in_format=name)
    return str(info.value)


@pytest.mark.parametrize("name", [n for n in REFUSED if n != "e8m0"])
def test_one_message_everywhere(name):
    """Generator, the shared check, the twin's input converter: the same line, naming the format,
    its exponent bits and the accepted range."""
    fmt = float_format(name)
    want = _message(name)
    assert want == (f"in-format {name!r} has {fmt.exp_bits} exponent bits; the Range-BN units "
                    f"accept 2..{BN_MAX_EXP_BITS} (fp10, fp16, fp15, e4m3, e5m2, e<E>m<M>)")
    for call in (lambda: check_bn_format(name), lambda: check_bn_format(fmt)):
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value) == want
    cfg = gb.BNConfig(bfp=BFPFormat(8, 5, 4), channels=2)
    x = np.ones((4, 2))
    for call in (lambda: fb.quantize_input(cfg, fmt, x),
                 lambda: fb.words_to_blocks(cfg, fmt, [[0, 0]] * 4)):
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value) == want


@pytest.mark.parametrize("exp_bits", [7, 8, 11])
def test_golden_config_refuses_wide_bfp(exp_bits):
    """``BNConfig`` (golden model and twin) refuses a BFP format with the wide exponent field: the
    same message, naming the BFP format instead of a float format."""
    with pytest.raises(ValueError) as info:
        gb.BNConfig(bfp=BFPFormat(8, exp_bits, 16), channels=3)
    assert str(info.value) == (f"in-format of the BFP format (W=8, B=16) has {exp_bits} exponent bits; "
                               f"the Range-BN units accept 2..{BN_MAX_EXP_BITS} "
                               "(fp10, fp16, fp15, e4m3, e5m2, e<E>m<M>)")
    with pytest.raises(ValueError):
        gb.BNConfig(bfp=BFPFormat.for_float(float_format("bf16"), 8, 16), channels=3)


def test_bf16_no_longer_reaches_finalize():
    """The issue's case: bf16 data used to be accepted by the golden model, where 1/sigma_hat could
    underflow and y became beta with no flag. Now the configuration itself is refused."""
    with pytest.raises(ValueError, match="has 8 exponent bits"):
        gb.BNConfig(bfp=BFPFormat.for_float(float_format("bf16"), 8, 16), channels=16, chunks=8)


@pytest.mark.parametrize("name", ACCEPTED)
def test_accepted_everywhere(name):
    fmt = float_format(name)
    assert check_bn_format(name) == fmt and Params(in_format=name).float_format == fmt
    cfg = gb.BNConfig(bfp=BFPFormat.for_float(fmt, 6, 3), channels=2)
    blocks = fb.quantize_input(cfg, fmt, np.arange(8.0).reshape(4, 2))
    assert blocks.n == 4


def test_limit_is_the_generators():
    """gen.units re-exports the one constant; the check is the one gen uses."""
    import gen.units
    assert gen.units.BN_MAX_EXP_BITS is BN_MAX_EXP_BITS
    assert gen.units.check_bn_format is check_bn_format
    assert isinstance(check_bn_format(FloatFormat("e6m1", 6, 1)), FloatFormat)
