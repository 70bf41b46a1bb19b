"""Board targets: what the bitstream flow needs beyond amaranth-boards.

amaranth-boards already provides, and the flow uses unchanged:

* pins of the FTDI UART (``uart`` 0: iCEBreaker rx 6 / tx 9; ULX3S rx M1 / tx L4) and of the LEDs;
* the board clock and its frequency constraint (iCEBreaker ``clk12``, pin 35, 12 MHz, written to
  the PCF as ``set_frequency``; ULX3S ``clk25``, pin G2, 25 MHz, written to the LPF as
  ``FREQUENCY PORT``). The design runs directly on that clock (no PLL), so it is also the timing
  target: nextpnr's Fmax of the one clock domain must reach it.

This module adds only:

* ``clock_hz``: the target the flow checks nextpnr's Fmax against (the same number as the
  platform's ``Clock``; checked by ``gen.bitstream`` so the two cannot drift apart);
* ``extra_resources`` / ``drive_high``: ULX3S pin L2 (ESP32 GPIO0) driven high. The ESP32 on the
  ULX3S samples GPIO0 at its reset; driven low it enters its serial bootloader. Every ULX3S
  example design ties it high ("keeps the board from rebooting"); amaranth-boards only has it
  inside the whole ``esp32`` resource, so a one-pin resource is added here;
* ``leds``: which LEDs show ``busy`` and ``error``;
* ``presets``: the sizes that fit each board (``gen.bitstream`` defaults), and the default baud;
* ``resources``: the nextpnr cell types reported as utilization, with the device totals.
"""

from dataclasses import dataclass, field

__all__ = ["BoardTarget", "BOARDS", "board_target", "divisor_for"]


@dataclass(frozen=True)
class BoardTarget:
    name: str
    description: str
    platform_class: str            # amaranth_boards module:class
    clock_hz: float
    bitstream: str                 # product file name
    leds: tuple                    # ((resource, number) for busy, (resource, number) for error)
    resources: tuple               # nextpnr cell types to report, most important first
    presets: dict                  # unit -> generator parameter overrides
    default_unit: str = "shifter"
    default_baud: int = 115200
    extra_resources: tuple = ()    # (name, pin, attrs dict)
    drive_high: tuple = ()         # (resource name, value)
    synth_opts: str = ""           # options of synth_<family> (as python -m gen area uses them)
    script_after_read: str = ""    # Yosys commands between reading the design and synth_<family> (idem)
    notes: tuple = field(default=())

    def platform(self):
        """A fresh amaranth-boards platform with this target's extra resources added."""
        import importlib
        from amaranth.build import Attrs, Pins, Resource
        module, cls = self.platform_class.split(":")
        platform = getattr(importlib.import_module(module), cls)()
        platform.add_resources([
            Resource(name, 0, Pins(pin, dir="o"), Attrs(**attrs)) for name, pin, attrs in self.extra_resources])
        return platform


BOARDS = {
    "icebreaker": BoardTarget(
        name="icebreaker",
        description="1BitSquared iCEBreaker: Lattice iCE40UP5K-SG48, 12 MHz clock, FTDI FT2232H UART",
        platform_class="amaranth_boards.icebreaker:ICEBreakerPlatform",
        clock_hz=12e6,
        bitstream="top.bin",
        leds=(("led_g", 0), ("led_r", 0)),
        resources=("ICESTORM_LC", "ICESTORM_RAM", "ICESTORM_DSP", "ICESTORM_SPRAM", "SB_IO", "SB_GB"),
        # The SB_MAC16 blocks take the multipliers (off by default in synth_ice40). The ln_bn_core
        # netlist passes the gate-level check with it (python -m sim.verify.gate_level --target
        # ice40) since its multiplier registers have a reset again (docs/boards.md).
        synth_opts="-dsp",
        # Every memory in block RAM (SB_RAM40_4K): the iCE40 has no LUT RAM, so the alternative
        # Yosys picks for the cores' small per-channel stores (a few rows, a row holding every
        # lane) is flip-flops and read multiplexers, and logic cells are what the UP5K is short
        # of, not its 30 EBR. The "bn" preset below fits only with it (4968 logic cells and 9 EBR;
        # 5418 logic cells without it). ECP5 keeps Yosys' choice: LUT RAM is cheaper there than block
        # RAM plus the bypass logic of a transparent read port (docs/boards.md).
        script_after_read='setattr -set ram_style "block" m:*',
        presets={
            "shifter": {"width": 8, "block": 8, "in_format": "fp10"},
            # The training unit (forward + backward) at the size that fits the UP5K's 5280 logic
            # cells: FP4 (e2m1) in, 4-bit codes, one lane, 4 channels (their stores in block RAM),
            # M = 4, n <= 16, low statistics with one guard bit (docs/boards.md).
            "bn": {"width": 4, "block": 1, "channels": 4, "in_format": "e2m1", "internal_frac_bits": 4,
                   "stats": "low", "stats_guard": 1, "max_count": 16},
        },
    ),
    "ulx3s": BoardTarget(
        name="ulx3s",
        description="Radiona ULX3S 85F: Lattice ECP5 LFE5U-85F-6BG381C, 25 MHz clock, FTDI FT231X UART",
        platform_class="amaranth_boards.ulx3s:ULX3S_85F_Platform",
        clock_hz=25e6,
        bitstream="top.bit",
        leds=(("led", 0), ("led", 1)),
        resources=("TRELLIS_COMB", "TRELLIS_FF", "TRELLIS_RAMW", "DP16KD", "MULT18X18D", "TRELLIS_IO", "DCCA"),
        presets={
            "shifter": {"width": 8, "block": 16, "in_format": "fp10"},
        },
        extra_resources=(("esp32_gpio0_high", "L2", {"IO_TYPE": "LVCMOS33", "PULLMODE": "UP"}),),
        drive_high=(("esp32_gpio0_high", 1),),
    ),
}


def board_target(name):
    if name not in BOARDS:
        raise ValueError(f"unknown board {name!r}; known: {', '.join(BOARDS)}")
    return BOARDS[name]


def divisor_for(clock_hz, baud):
    """Clock cycles per UART bit and the resulting baud error (relative)."""
    divisor = round(clock_hz / baud)
    return divisor, (clock_hz / divisor - baud) / baud
