"""The survivor classification of ``sim.verify.fault_inject`` (no simulator: Yosys only, a few seconds).

``comb_equivalent`` must prove a rewrite that changes nothing, and must not prove a mutant that
changes a register's reset value (visible only in the next state) or an output.
``pipeline_equivalent`` must prove an output payload register's reset value (a sink never sees
it: o.valid is low) and must not prove a valid bit's reset value or a payload change."""

import re

import pytest

from sim.verify import fault_inject as fi


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


def _payload_reset(text, value):
    # the reset value of one field of the shifter's output payload register
    m = _first(text, r"^\s*o__payload <= \{ (_\d+_),")
    d = _first(text, rf"^(\s*assign {m[1]} = rst \? )(\d+)'h0( : \S+;)$")
    return text.replace(d[0], f"{d[1]}{d[2]}'h{value}{d[3]}", 1)


def test_pipeline_equivalence_proves_a_payload_reset_value(shifter_text):
    # visible on o.payload only while o.valid is low (after reset): a stream sink cannot see it,
    # the state-free check (next state differs) cannot prove it
    mutated = _payload_reset(shifter_text, 1)
    assert fi.comb_equivalent(shifter_text, mutated, "ln_bfp_shifter") is False
    assert fi.pipeline_equivalent(shifter_text, mutated, "ln_bfp_shifter", payload="o__payload",
                                  valid="o__valid", seq=3) is True


def test_pipeline_equivalence_rejects_a_valid_reset_value(shifter_text):
    # o.valid high after reset: a sink sees a block
    m = _first(shifter_text, r"^\s*o__valid <= (_\d+_);$")
    d = _first(shifter_text, rf"^(\s*assign {m[1]} = rst \? )1'h0( : \S+;)$")
    mutated = shifter_text.replace(d[0], f"{d[1]}1'h1{d[2]}", 1)
    assert fi.pipeline_equivalent(shifter_text, mutated, "ln_bfp_shifter", payload="o__payload",
                                  valid="o__valid", seq=3) is False


def test_pipeline_equivalence_rejects_a_payload_change(shifter_text):
    m = _first(shifter_text, r"^\s*o__payload <= \{ (_\d+_),")
    d = _first(shifter_text, rf"^(\s*assign {m[1]} = rst \? 1'h0 : )(\S+);$")
    mutated = shifter_text.replace(d[0], f"{d[1]}~{d[2]};", 1)
    assert fi.pipeline_equivalent(shifter_text, mutated, "ln_bfp_shifter", payload="o__payload",
                                  valid="o__valid", seq=3) is False


def test_timeout_kills_the_worker_and_its_children(tmp_path, monkeypatch):
    """A hung mutant: the worker and the simulator it started both go when the timeout fires."""
    import os
    import sys
    import time
    from sim.verify import fault_inject
    pidfile = tmp_path / "child.pid"
    fake = tmp_path / "fake_python"
    fake.write_text(f"#!/bin/sh\nsleep 120 &\necho $! > {pidfile}\nsleep 120\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    status, message, _ = fault_inject._spawn({}, tmp_path / "w", timeout=1)
    assert status == "timeout", (status, message)
    child = int(pidfile.read_text())
    time.sleep(0.2)
    try:
        os.kill(child, 0)
        state = open(f"/proc/{child}/stat").read().split()[2]
        alive = state != "Z"
    except (ProcessLookupError, FileNotFoundError):
        alive = False
    assert not alive, "the worker's child outlived the timeout"
