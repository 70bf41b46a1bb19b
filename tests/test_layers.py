"""Layering: ``hw/`` (the hardware) imports nothing from ``sim/`` (the model, the benches) or
``gen/`` (the generator). Constants both sides need live in ``hw/`` and the model imports them.

The static check walks every ``hw/*.py`` with :mod:`ast` and reports every import of ``sim`` or
``gen``, wherever it sits (module level or inside a function), in every spelling (``import``,
``from ... import``, relative imports that climb out of ``hw``, ``importlib.import_module`` /
``__import__`` with a literal name). The planted-import tests show that the check can fail. The
dynamic check imports every ``hw`` module in a fresh interpreter in which ``sim`` and ``gen``
cannot be imported at all.
"""

import ast
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HW = REPO / "hw"
FORBIDDEN = ("sim", "gen")


def _top(name):
    return name.split(".", 1)[0]


def forbidden_imports(source, filename="<string>"):
    """``[(line, text)]`` for every import of a forbidden package in ``source`` (a module of ``hw``)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names if _top(a.name) in FORBIDDEN]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and _top(node.module) in FORBIDDEN:
                found.append((node.lineno, f"from {node.module} import ..."))
            elif node.level >= 2:
                # ``hw`` is a top-level package: two or more dots climb out of it.
                names = [node.module] if node.module else [a.name for a in node.names]
                if any(_top(n) in FORBIDDEN for n in names):
                    found.append((node.lineno, f"from {'.' * node.level}{node.module or ''} import ..."))
        elif isinstance(node, ast.Call) and node.args:
            f = node.func
            called = f.attr if isinstance(f, ast.Attribute) else (f.id if isinstance(f, ast.Name) else None)
            arg = node.args[0]
            if (called in ("import_module", "__import__") and isinstance(arg, ast.Constant)
                    and isinstance(arg.value, str) and _top(arg.value) in FORBIDDEN):
                found.append((node.lineno, f"{called}({arg.value!r})"))
    return found


def layer_violations(directory):
    """``["path:line: text"]`` over every ``*.py`` directly in ``directory``."""
    out = []
    for path in sorted(Path(directory).glob("*.py")):
        for line, text in forbidden_imports(path.read_text(), str(path)):
            out.append(f"{path.name}:{line}: {text}")
    return out


def test_hw_imports_nothing_from_sim_or_gen():
    files = sorted(HW.glob("*.py"))
    assert len(files) > 10, f"expected the hw modules in {HW}, found {len(files)} files"
    bad = layer_violations(HW)
    assert not bad, "hw/ must not import sim/ or gen/:\n" + "\n".join(bad)


@pytest.mark.parametrize("planted", [
    "from sim.model.golden_bn import C_FRAC_BITS",
    "import sim.model.float_golden",
    "import gen",
    "import numpy, gen.units as u",
    "def f():\n    from gen.area import main\n    return main",
    "from .. import sim",
    "from ..gen import units",
    "import importlib\nm = importlib.import_module('sim.model.golden')",
    "m = __import__('gen.units')",
])
def test_check_catches_a_planted_import(planted):
    assert forbidden_imports(planted), planted


@pytest.mark.parametrize("innocent", [
    "from hw.formats import C_FRAC_BITS",
    "from . import formats",
    "import simplejson, generic",
    "from simulation import x",
    "'''implements ``sim.model.golden_bn.forward``'''",
    "from amaranth.sim import Simulator",
])
def test_check_passes_innocent_code(innocent):
    assert forbidden_imports(innocent) == []


def test_check_fails_on_a_temp_copy_of_hw_with_a_planted_import(tmp_path):
    copy = tmp_path / "hw"
    shutil.copytree(HW, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert layer_violations(copy) == []
    target = copy / "finalize.py"
    target.write_text(target.read_text() + "\n\ndef _late():\n    from sim.model.golden_bn import finalize\n")
    bad = layer_violations(copy)
    assert len(bad) == 1 and bad[0].startswith("finalize.py:") and "sim.model.golden_bn" in bad[0], bad


BLOCKER = textwrap.dedent("""
    import importlib, pkgutil, sys
    sys.path.insert(0, {repo!r})

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("sim", "gen"):
                raise ImportError(f"hw imported {{name}}")
            return None

    sys.meta_path.insert(0, Block())
    import hw
    names = sorted(m.name for m in pkgutil.iter_modules(hw.__path__))
    for n in names:
        importlib.import_module("hw." + n)
    print(len(names))
""")


def test_every_hw_module_imports_without_sim_and_gen():
    r = subprocess.run([sys.executable, "-c", BLOCKER.format(repo=str(REPO))], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.strip()) == len([p for p in HW.glob("*.py") if p.name != "__init__.py"])


# --- gen/: no import cycles ------------------------------------------------------------------

GEN = REPO / "gen"


def gen_imports(source, filename="<string>"):
    """Names of the ``gen`` modules that ``source`` imports, anywhere in it (lazy imports and
    ``importlib.import_module`` / ``__import__`` included: in a module that calls either, every
    string constant that is a ``gen`` module name counts as an import, since the name may reach
    the call through a table)."""
    found, names, dynamic = set(), set(), False
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"gen(\.\w+)+", node.value):
            names.add(node.value)
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if _top(a.name) == "gen"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "gen":
                found |= {f"gen.{a.name}" for a in node.names}
            elif _top(node.module) == "gen":
                found.add(node.module)
        elif isinstance(node, ast.Call) and node.args:
            f = node.func
            called = f.attr if isinstance(f, ast.Attribute) else (f.id if isinstance(f, ast.Name) else None)
            dynamic |= called in ("import_module", "__import__")
    if dynamic:
        found |= names
    return found - {"gen"}


def import_cycle(graph):
    """One cycle of ``graph`` (``{module: {imported modules}}``) as a list of modules, or ``None``."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def gen_graph(directory):
    return {f"gen.{p.stem}": gen_imports(p.read_text(), str(p)) for p in sorted(Path(directory).glob("*.py"))}


def test_gen_has_no_import_cycle():
    graph = gen_graph(GEN)
    assert "gen.cli" in graph["gen.area"] and "gen.area" in graph["gen.__main__"], graph
    assert import_cycle(graph) is None, " -> ".join(import_cycle(graph))


def test_cycle_check_catches_planted_cycles(tmp_path):
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert import_cycle({"a": {"b"}, "b": set(), "c": {"b"}}) is None
    # The old shape: __main__ loads gen.area by importlib, gen.area imports gen.__main__ back lazily.
    assert gen_imports("import importlib\nimportlib.import_module('gen.area')") == {"gen.area"}
    assert gen_imports("def main():\n    from gen.__main__ import _Parser") == {"gen.__main__"}
    assert gen_imports("from gen import area, bitstream") == {"gen.area", "gen.bitstream"}
    assert gen_imports("import importlib\nT = {'a': 'gen.area'}\nimportlib.import_module(T['a'])") == {"gen.area"}
    assert gen_imports("'''see gen.area'''\nT = {'a': 'gen.area'}") == set()
    # The old shape of gen/ (before gen/cli.py) has the cycle.
    old = tmp_path / "old"
    old.mkdir()
    (old / "__main__.py").write_text("import importlib\nSUBCOMMANDS = {'area': 'gen.area'}\n"
                                     "def main(argv):\n    return importlib.import_module(SUBCOMMANDS[argv[0]]).main()\n")
    (old / "area.py").write_text("def main():\n    from gen.__main__ import _Parser\n")
    assert import_cycle(gen_graph(old)) == ["gen.__main__", "gen.area", "gen.__main__"]
    copy = tmp_path / "gen"
    shutil.copytree(GEN, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "cli.py").write_text((copy / "cli.py").read_text() + "\n\ndef _late():\n    from gen.area import main\n")
    cycle = import_cycle(gen_graph(copy))
    assert cycle and "gen.cli" in cycle and "gen.area" in cycle, cycle
