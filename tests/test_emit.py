"""``gen.verilog.normalize_widths`` changes how operators are written, never what they compute:
Yosys proves the normalized netlist equivalent to the one it came from (``equiv_make``,
``equiv_simple``, ``equiv_status -assert``), on a component built to hit every rewrite (signed
and unsigned comparisons of unequal widths, narrow operands of wide sums and products, results cut
below their operands, variable right shifts wider than their result, ``x == 0`` on a vector) and on
real units. The RTL regressions check the emitted text bit for bit as well; this test localizes a
rewrite bug to the rewrite.
"""

import pytest
from amaranth.hdl import Array, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from gen.verilog import _ensure_yosys, _read, flat_rtlil, normalize_widths


class Mixed(wiring.Component):
    a: In(signed(5))
    b: In(signed(9))
    u: In(7)
    v: In(3)
    words: In(48)
    lt: Out(1)
    ge: Out(1)
    eq: Out(1)
    zero: Out(1)
    total: Out(signed(12))
    diff: Out(signed(4))
    prod: Out(6)
    word: Out(12)
    shifted: Out(5)
    neg: Out(signed(10))
    picked: Out(7)

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [
            self.lt.eq(self.a < self.b),
            self.ge.eq(self.u >= 5),
            self.eq.eq(self.v == 3),
            self.zero.eq(self.u == 0),
            self.total.eq(self.a + self.b + 1),
            self.diff.eq(self.b - self.a),
            self.prod.eq(self.u * self.v),
            self.word.eq(self.words.word_select(self.v[:2], 12)),
            self.shifted.eq(self.words >> self.v),
            self.neg.eq(-self.a),
            self.picked.eq(Array([self.u, self.u + 1, self.u ^ 0x55, 3])[self.v[:2]]),
        ]
        return m


def _units():
    from gen.units import Params, all_units
    units = dict(all_units())
    return [("mixed", lambda: Mixed()),
            ("ln_bfp_shifter", lambda: units["ln_bfp_shifter"](Params(width=5, block=3)))]


@pytest.mark.parametrize("name,factory", _units(), ids=[n for n, _ in _units()])
def test_normalization_is_equivalent(name, factory):
    from amaranth._toolchain.yosys import find_yosys
    from amaranth.back import rtlil
    _ensure_yosys()
    yosys = find_yosys(lambda ver: ver >= (0, 40))
    text = rtlil.convert(factory(), name="top", emit_src=False)
    gold = flat_rtlil(yosys, text)
    gate = normalize_widths(gold)
    assert gate != gold, "nothing was rewritten: the test exercises no rewrite"
    script = [_read(gold), "rename top gold", _read(gate), "rename top gate",
              "equiv_make gold gate equiv", "hierarchy -top equiv", "equiv_simple -seq 2",
              "equiv_status -assert"]
    yosys.run(["-q", "-"], "\n".join(script), ignore_warnings=True)


def test_rewrites_are_counted():
    """Every kind of rewrite of :func:`normalize_widths` appears in the Mixed component."""
    from amaranth.back import rtlil
    from amaranth._toolchain.yosys import find_yosys
    _ensure_yosys()
    yosys = find_yosys(lambda ver: ver >= (0, 40))
    text = rtlil.convert(Mixed(), name="top", emit_src=False)
    gold = flat_rtlil(yosys, text)
    gate = normalize_widths(gold)
    assert "$lint_norm$" in gate                       # sign extension or cut through a helper wire
    assert "cell $shiftx" in gate                      # a right shift became a part-select
    assert gate.count("cell $logic_not") < gold.count("cell $logic_not") or "cell $logic_not" not in gold
