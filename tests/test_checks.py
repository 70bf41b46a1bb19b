# amaranth: UnusedElaboratable=no
"""``hw.checks``: the one argument-check helper of the ``hw`` constructors.

The helper's messages, then every constructor that uses it with a bad value: the message must be
exactly the one line the constructor gave before the checks were shared (the strings below are
copied from the old code), naming the parameter, the allowed range and the bad value. Finally, no
``hw`` module other than ``hw/checks.py`` spells the integer check out by hand.
"""

import gc
import re
from pathlib import Path

import pytest

from hw.checks import check_instance, check_int, is_int
from hw.formats import BFPFormat, FloatFormat, internal_format

REPO = Path(__file__).resolve().parent.parent
BFP = BFPFormat(8, 5, 4)
INTERNAL = internal_format(12)


@pytest.mark.parametrize("args, kwargs, message", [
    (("n", 0, 1, 4), {}, "n must be an integer in 1..4, not 0"),
    (("n", 5, 1, 4), {}, "n must be an integer in 1..4, not 5"),
    (("n", 0, 1), {}, "n must be a positive integer, not 0"),
    (("n", 1, 2), {}, "n must be an integer >= 2, not 1"),
    (("n", 3, 8), {"lo_text": "2 * k = 8"}, "n must be an integer >= 2 * k = 8, not 3"),
    (("n", 9, None, 8), {}, "n must be an integer <= 8, not 9"),
    (("n", 1.5), {}, "n must be an integer, not 1.5"),
    (("n", 3, 1, 64), {"power_of_two": True}, "n must be a power of two in 1..64, not 3"),
    (("n", 0, 1), {"power_of_two": True}, "n must be a power of two >= 1, not 0"),
    (("n", 6, 1), {"power_of_two": True}, "n must be a power of two >= 1, not 6"),
    (("n", 2, 4, 8), {"unit": "bit times"}, "n must be an integer in 4..8 bit times, not 2"),
    (("n", True, 0, 4), {}, "n must be an integer in 0..4, not True"),
    (("n", "3", 0, 4), {}, "n must be an integer in 0..4, not '3'"),
    (("n", 4.0, 0, 4), {}, "n must be an integer in 0..4, not 4.0"),
])
def test_check_int_messages(args, kwargs, message):
    with pytest.raises(ValueError) as info:
        check_int(*args, **kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize("args, kwargs", [
    (("n", 1, 1, 4), {}), (("n", 4, 1, 4), {}), (("n", -7), {}), (("n", 64, 1, 64), {"power_of_two": True}),
    (("n", 1, 1), {"power_of_two": True}), (("n", 10 ** 30, 1), {}),
])
def test_check_int_accepts_and_returns(args, kwargs):
    assert check_int(*args, **kwargs) == args[1]


def test_is_int_and_check_instance():
    assert is_int(3) and not is_int(True) and not is_int(3.0)
    assert check_instance("bfp", BFP, BFPFormat) is BFP
    assert check_instance("fmt", "fp16", FloatFormat, alternative="a format name") == "fp16"
    with pytest.raises(ValueError) as info:
        check_instance("bfp", (8, 5, 16), BFPFormat)
    assert str(info.value) == "bfp must be a hw.formats.BFPFormat, not (8, 5, 16)"
    with pytest.raises(ValueError) as info:
        check_instance("fmt", 10, FloatFormat, alternative="a format name")
    assert str(info.value) == "fmt must be a hw.formats.FloatFormat or a format name, not 10"
    with pytest.raises(ValueError, match=r"^bfp must be a hw.formats.BFPFormat, not 'x'$"):
        check_instance("bfp", "x", BFPFormat)


def _forward(**kw):
    from hw.forward_core import ForwardCore
    a = dict(bfp=BFP, internal=INTERNAL, channels=4, max_count=64, max_chunks=4) | kw
    return ForwardCore(**a)


def _backward(**kw):
    from hw.backward_core import BackwardCore
    a = dict(bfp=BFP, internal=INTERNAL, channels=4, max_count=64, max_chunks=4) | kw
    return BackwardCore(**a)


def _stats(**kw):
    from hw.stats_unit import StatsUnit
    return StatsUnit(**(dict(bfp=BFP, channels=4, max_count=64, max_chunks=4) | kw))


def _reduce(**kw):
    from hw.grad_reduce import GradReduce
    return GradReduce(**(dict(bfp=BFP, channels=4, max_count=64) | kw))


def _ffinal(**kw):
    from hw.finalize import ForwardFinalize
    return ForwardFinalize(**(dict(bfp=BFP, internal=INTERNAL, max_count=64, max_chunks=4) | kw))


def _bfinal(**kw):
    from hw.finalize import BackwardFinalize
    return BackwardFinalize(**(dict(bfp=BFP, internal=INTERNAL, max_count=64, max_chunks=4) | kw))


def _affine(**kw):
    from hw.bfp_affine import BFPAffine
    return BFPAffine(**(dict(bfp=BFP, internal=INTERNAL) | kw))


def _quant(**kw):
    from hw.bfp_shifter import BlockQuantizer
    return BlockQuantizer(**(dict(bfp=BFP, mag_width=8, exp_width=6) | kw))


def _shifter(**kw):
    from hw.bfp_shifter import BFPShifter
    return BFPShifter(**(dict(in_format="fp10", bfp=BFP) | kw))


def _float_add(**kw):
    from hw.float_units import FloatAdd
    return FloatAdd(**(dict(fmt="bf16") | kw))


def _float_bn(**kw):
    from hw.float_bn import FloatBNForward
    return FloatBNForward(**(dict(fmt="bf16", block=4, channels=8, max_count=64) | kw))


def _uart_rx(**kw):
    from hw.uart import UARTRx
    return UARTRx(**(dict(divisor=16) | kw))


def _board_top(**kw):
    from hw.board_top import BoardTop, attachment_for
    from gen.units import Params
    a = dict(attachment=None, divisor=16) | kw
    if a["attachment"] is None:
        a["attachment"] = attachment_for("shifter", Params(width=4, block=2, channels=2))
    return BoardTop(**a)


BAD = [
    (_forward, {"bfp": 8}, "bfp must be a hw.formats.BFPFormat, not 8"),
    (_forward, {"internal": "e8m12"}, "internal must be a hw.formats.FloatFormat, not 'e8m12'"),
    (_forward, {"channels": 0}, "channels must be a positive integer, not 0"),
    (_forward, {"channels": True}, "channels must be a positive integer, not True"),
    (_forward, {"max_chunks": 3}, "max_chunks must be a power of two in 1..64, not 3"),
    (_forward, {"max_chunks": 128}, "max_chunks must be a power of two in 1..64, not 128"),
    (_forward, {"max_count": 7}, "max_count must be an integer >= 2 * max_chunks = 8, not 7"),
    (_backward, {"bfp": 8}, "bfp must be a hw.formats.BFPFormat, not 8"),
    (_backward, {"channels": -1}, "channels must be a positive integer, not -1"),
    (_backward, {"max_chunks": 0}, "max_chunks must be a power of two in 1..64, not 0"),
    (_backward, {"max_count": 64.0}, "max_count must be an integer >= 2 * max_chunks = 8, not 64.0"),
    (_stats, {"bfp": None}, "bfp must be a hw.formats.BFPFormat, not None"),
    (_stats, {"channels": 0}, "channels must be a positive integer, not 0"),
    (_stats, {"max_chunks": 6}, "max_chunks must be a power of two >= 1, not 6"),
    (_stats, {"max_count": 3}, "max_count must be an integer >= 2 * max_chunks = 8, not 3"),
    (_reduce, {"channels": "4"}, "channels must be a positive integer, not '4'"),
    (_reduce, {"max_count": 0}, "max_count must be a positive integer, not 0"),
    (_ffinal, {"bfp": 8}, "bfp must be a hw.formats.BFPFormat, not 8"),
    (_ffinal, {"internal": 12}, "internal must be a hw.formats.FloatFormat, not 12"),
    (_ffinal, {"max_count": 1}, "max_count must be an integer >= 2, not 1"),
    (_ffinal, {"max_chunks": 3}, "max_chunks must be a power of two in 1..64, not 3"),
    (_ffinal, {"eps_log2": 0.5}, "eps_log2 must be an integer in -200..200, not 0.5"),
    (_ffinal, {"momentum_shift": 17}, "momentum_shift must be an integer in 0..16, not 17"),
    (_bfinal, {"max_count": 1}, "max_count must be an integer >= 2, not 1"),
    (_affine, {"bfp": 8}, "bfp must be a hw.formats.BFPFormat, not 8"),
    (_affine, {"internal": 8}, "internal must be a hw.formats.FloatFormat, not 8"),
    (_quant, {"mag_width": 0}, "magnitude width must be an integer in 1..128, not 0"),
    (_quant, {"exp_width": 1}, "exponent width must be an integer in 2..32, not 1"),
    (_quant, {"exp_width": 33, "exp_signed": False}, "exponent width must be an integer in 1..32, not 33"),
    (_quant, {"exp_offset": 1.5}, "exponent offset must be an integer, not 1.5"),
    (_shifter, {"in_format": 10}, "in_format must be a hw.formats.FloatFormat or a format name, not 10"),
    (_shifter, {"bfp": "bfp"}, "bfp must be a hw.formats.BFPFormat, not 'bfp'"),
    (_float_add, {"fmt": 32}, "fmt must be a hw.formats.FloatFormat or a format name, not 32"),
    (_float_bn, {"block": 0}, "block must be an integer in 1..64, not 0"),
    (_float_bn, {"channels": 5000}, "channels must be an integer in 1..4096, not 5000"),
    (_float_bn, {"max_count": 0}, "max-count must be an integer in 1..16777216, not 0"),
    (_uart_rx, {"divisor": 3}, "UART divisor must be an integer in 4..16777216 (clock cycles per bit), not 3"),
    (_uart_rx, {"break_bits": 10}, "break length must be an integer in 11..1024 bit times, not 10"),
    (_board_top, {"attachment": "shifter"}, "attachment must be a hw.board_top.Attachment, not 'shifter'"),
    (_board_top, {"rx_fifo_depth": 100}, "receive FIFO depth must be a power of two in 16..65536, not 100"),
    (lambda **kw: FloatFormat("x", **(dict(exp_bits=5, frac_bits=10) | kw)), {"exp_bits": 12},
     "float exponent bits must be an integer in 2..11, not 12"),
    (lambda **kw: FloatFormat("x", **(dict(exp_bits=5, frac_bits=10) | kw)), {"frac_bits": 0},
     "float fraction bits must be an integer in 1..52, not 0"),
    (lambda **kw: BFPFormat(**(dict(width=8, exp_bits=5, block=4) | kw)), {"width": 17},
     "BFP width must be an integer in 2..16, not 17"),
    (lambda **kw: BFPFormat(**(dict(width=8, exp_bits=5, block=4) | kw)), {"block": 65},
     "block size must be an integer in 1..64, not 65"),
    (lambda **kw: internal_format(**(dict(frac_bits=12) | kw)), {"frac_bits": 24}, "internal float fraction bits must be an integer in 4..23, not 24"),
]


# Sub-units built by a constructor are never elaborated here.
NOT_ELABORATED = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


@NOT_ELABORATED
@pytest.mark.parametrize("make, kwargs, message", BAD, ids=[f"{i}-{m[:40]}" for i, (_, _, m) in enumerate(BAD)])
def test_constructor_messages_unchanged(make, kwargs, message):
    with pytest.raises(ValueError) as info:
        make(**kwargs)
    assert str(info.value) == message
    del info
    gc.collect()        # inside the warning filter: the half-built sub-units go now


@NOT_ELABORATED
def test_good_arguments_construct():
    """The defaults above are valid, so every rejection above is caused by the one bad value."""
    for make in {m for m, _, _ in BAD}:
        make()
    gc.collect()


HAND_WRITTEN = re.compile(r"isinstance\(\s*\w+\s*,\s*bool\s*\)\s*or\s+not\s+isinstance\(\s*\w+\s*,\s*int\s*\)")


def test_no_hand_written_integer_checks_left_in_hw():
    assert HAND_WRITTEN.search("if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:")
    offenders = []
    for path in sorted((REPO / "hw").glob("*.py")):
        if path.name != "checks.py":
            text = path.read_text()
            offenders += [f"{path.name}:{text[:m.start()].count(chr(10)) + 1}" for m in HAND_WRITTEN.finditer(text)]
    assert not offenders, offenders
