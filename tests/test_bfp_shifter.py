# amaranth: UnusedElaboratable=no
"""cocotb regression of the BFP alignment shifter (and its reusable BlockQuantizer core) against
the golden model, under random input gaps and output back-pressure, plus latency and throughput.

Default matrix: widths {4, 8, 12, 16} x blocks {2, 16} x {fp10, fp16}, plus bf16, fp15, and BFP
exponents narrower than the input's; ``--width/--block/--in-format`` run one configuration.
"""

import json

import pytest

from gen.verilog import emit
from hw.bfp_shifter import BFPShifter, BlockQuantizer
from hw.formats import BFPFormat, float_format
from sim.bench.common import run_cocotb

DEFAULT_MATRIX = [
    {"width": w, "block": b, "in_format": f}
    for f in ("fp10", "fp16") for w in (4, 8, 12, 16) for b in (2, 16)
] + [
    {"width": 8, "block": 4, "in_format": "bf16"},
    {"width": 6, "block": 3, "in_format": "bf16", "exp_bits": 5},   # shared exponent clamps
    {"width": 8, "block": 16, "in_format": "fp15"},    # widest thermometer-code maximum (63 keys)
    {"width": 5, "block": 5, "in_format": "e4m3", "exp_bits": 3},   # thermometer code, clamps
]

#: BlockQuantizer configurations as the Range-BN units will use it: wide, not normalised
#: magnitudes with signed exponents (both clamps reachable), and a narrow one; then two with keys
#: below ``THERMOMETER_KEYS`` (thermometer-code maximum), both clamps reachable.
QUANTIZER_MATRIX = [
    {"width": 8, "block": 4, "exp_bits": 5, "mag_width": 14, "exp_width": 6, "exp_signed": True,
     "exp_offset": -10, "normalized": False},
    {"width": 5, "block": 3, "exp_bits": 4, "mag_width": 22, "exp_width": 7, "exp_signed": True,
     "exp_offset": 3, "normalized": False},
    {"width": 12, "block": 16, "exp_bits": 8, "mag_width": 24, "exp_width": 9, "exp_signed": False,
     "exp_offset": -150, "normalized": True},
    {"width": 6, "block": 4, "exp_bits": 4, "mag_width": 6, "exp_width": 4, "exp_signed": True,
     "exp_offset": -3, "normalized": False},
    {"width": 8, "block": 16, "exp_bits": 5, "mag_width": 5, "exp_width": 6, "exp_signed": False,
     "exp_offset": -40, "normalized": True, "zeros_at_min_exp": True},
]

RANDOM_BLOCKS = 1000


def _run(cfg, dut, name):
    result = run_cocotb(emit(dut, name), name, "sim.bench.bfp_shifter", name=name, config=cfg)
    summary = json.loads((result["test_dir"] / "summary.json").read_text())
    (result["build_dir"] / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    print(summary["line"], f"(latency {summary['latency']}, throughput {summary['throughput']})")
    return summary


def _check(summary, dut, random_blocks=RANDOM_BLOCKS):
    assert summary["mismatches"] == 0, summary["line"]
    assert summary["blocks"] >= random_blocks
    assert summary["latency"] == [dut.latency]
    assert summary["throughput"] == 1.0
    assert summary["throughput_cycles"] == summary["throughput_blocks"] + dut.latency
    assert summary["hold_checks"] > 0


def test_bfp_shifter(unit_config):
    fmt = float_format(unit_config["in_format"])
    bfp = BFPFormat(unit_config["width"], unit_config.get("exp_bits", fmt.exp_bits), unit_config["block"])
    dut = BFPShifter(fmt, bfp)
    cfg = {"unit": "shifter", "in_format": fmt.name, "width": bfp.width, "block": bfp.block,
           "exp_bits": bfp.exp_bits, "random_blocks": RANDOM_BLOCKS, "seed": 1,
           "summary": "summary.json"}
    name = f"bfp_shifter_w{bfp.width}_b{bfp.block}_{fmt.name}_e{bfp.exp_bits}"
    _check(_run(cfg, dut, name), dut)


@pytest.mark.matrix(QUANTIZER_MATRIX)
def test_block_quantizer(unit_config):
    c = unit_config
    bfp = BFPFormat(c["width"], c["exp_bits"], c["block"])
    dut = BlockQuantizer(bfp, c["mag_width"], c["exp_width"], exp_signed=c["exp_signed"],
                         exp_offset=c["exp_offset"], normalized=c["normalized"],
                         zeros_at_min_exp=c.get("zeros_at_min_exp", False))
    cfg = dict(c, unit="quantizer", random_blocks=RANDOM_BLOCKS, seed=2, summary="summary.json")
    name = (f"block_quantizer_w{bfp.width}_b{bfp.block}_e{bfp.exp_bits}_m{c['mag_width']}"
            f"_x{c['exp_width']}{'s' if c['exp_signed'] else 'u'}"
            f"{'_z' if c.get('zeros_at_min_exp') else ''}")
    _check(_run(cfg, dut, name), dut)


# --- fast checks: parameter validation and the bench's payload packing --------------------

@pytest.mark.parametrize("kwargs,message", [
    ({"mag_width": 0}, "magnitude width must be an integer in 1..128, not 0"),
    ({"mag_width": 129}, "magnitude width must be an integer in 1..128, not 129"),
    ({"exp_width": 1}, "exponent width must be an integer in 2..32, not 1"),
    ({"exp_width": 33, "exp_signed": False}, "exponent width must be an integer in 1..32, not 33"),
    ({"exp_width": "6"}, "exponent width must be an integer in 2..32, not '6'"),
    ({"exp_offset": 1.5}, "exponent offset must be an integer, not 1.5"),
    ({"bfp": (8, 5, 16)}, "bfp must be a hw.formats.BFPFormat, not (8, 5, 16)"),
])
def test_block_quantizer_validation(kwargs, message):
    args = {"bfp": BFPFormat(8, 5, 4), "mag_width": 12, "exp_width": 6}
    args.update(kwargs)
    with pytest.raises(ValueError) as info:
        BlockQuantizer(args.pop("bfp"), args.pop("mag_width"), args.pop("exp_width"), **args)
    assert str(info.value) == message


def test_bfp_shifter_validation():
    bfp = BFPFormat(8, 5, 4)
    with pytest.raises(ValueError, match=r"^unknown float format 'fp9'"):
        BFPShifter("fp9", bfp)
    with pytest.raises(ValueError, match=r"^in_format must be a hw.formats.FloatFormat or a format name, not 10$"):
        BFPShifter(10, bfp)
    with pytest.raises(ValueError, match=r"^bfp must be a hw.formats.BFPFormat, not 'bfp'$"):
        BFPShifter("fp10", "bfp")
    dut = BFPShifter("fp10", bfp)
    assert dut.latency == BlockQuantizer.LATENCY == 3


def test_pack_unpack_round_trip():
    from sim.bench.common import flatten, pack, unpack
    q = BlockQuantizer(BFPFormat(6, 4, 3), 9, 5, exp_signed=True)
    value = {"lanes": [{"mag": 511, "exp": -16, "sign": 1}, {"mag": 0, "exp": 15, "sign": 0},
                       {"mag": 5, "exp": -1, "sign": 1}],
             "flags": {"sat": 0, "special": 1, "flush": 0}}
    bits = pack(q.input_layout, value)
    assert unpack(q.input_layout, bits) == value
    leaves = flatten(q.input_layout)
    assert leaves[0] == ((("lanes", 0, "mag"), 0, 9, False))
    assert leaves[1] == ((("lanes", 0, "exp"), 9, 5, True))
    assert sum(width for _, _, width, _ in leaves) == 3 * 15 + 3
    out = BFPFormat(6, 4, 3).flagged_block_layout()
    assert unpack(out, pack(out, {"exponent": 9, "codes": [31, 0, 33]}))["codes"] == [31, 0, 33]
    assert pack(out, {"codes": [0, 0, 1]}) == 1 << (4 + 12)
    with pytest.raises(KeyError, match="unknown fields"):
        pack(out, {"exponents": 1})
    with pytest.raises(ValueError, match="does not fit"):
        pack(out, {"exponent": 16})
    with pytest.raises(ValueError, match="array of 3 elements, got 2"):
        pack(out, {"codes": [1, 2]})
