"""The survivor classification of ``sim.fault_inject`` (no simulator: Yosys only, a few seconds).

``comb_equivalent`` must prove a rewrite that changes nothing, and must not prove a mutant that
changes a register's reset value (visible only in the next state) or an output."""

import re

import pytest

from sim import fault_inject as fi


@pytest.fixture(scope="module")
def shifter_text():
    text, _ = fi.emit(fi.UNIT_BENCHES["ln_bfp_shifter"])
    return text


def _first(text, pattern):
    m = re.search(pattern, text, re.M)
    assert m, pattern
    return m


def test_state_free_equivalence_proves_a_neutral_rewrite(shifter_text):
    # a & b -> (a & b) | (a & ~a): a different netlist, the same function
    m = _first(shifter_text, r"^(\s*assign\s+\S+\s*=\s*)(\S+) & (\S+);$")
    new = f"{m[1]}({m[2]} & {m[3]}) | ({m[2]} & ~{m[2]});"
    mutated = shifter_text.replace(m[0], new, 1)
    assert mutated != shifter_text
    assert fi.comb_equivalent(shifter_text, mutated, "ln_bfp_shifter") is True


def test_state_free_equivalence_rejects_a_reset_value(shifter_text):
    # rst ? 0 : d -> rst ? 1 : d on a data register: same outputs, different next state
    m = _first(shifter_text, r"^(\s*assign\s+\S+\s*=\s*rst \? )(\d+)'h0+( : \S+;)$")
    mutated = shifter_text.replace(m[0], f"{m[1]}{m[2]}'h1{m[3]}", 1)
    assert fi.comb_equivalent(shifter_text, mutated, "ln_bfp_shifter") is False


def test_state_free_equivalence_rejects_an_output_change(shifter_text):
    m = _first(shifter_text, r"^(\s*assign\s+i__ready\s*=\s*)(.+);$")
    mutated = shifter_text.replace(m[0], f"{m[1]}~({m[2]});", 1)
    assert fi.comb_equivalent(shifter_text, mutated, "ln_bfp_shifter") is False
