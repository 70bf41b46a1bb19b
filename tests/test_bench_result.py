"""The one result record of the cocotb benches (``sim.bench.common.write_result`` /
``check_result``), which ``sim.verify.fault_inject`` reads for every unit."""

import json

import pytest

from sim.bench.common import check_result, write_result


def test_record_round_trip(tmp_path):
    path = tmp_path / "result.json"
    rec = write_result(str(path), "forward", [], tests=["t1", "t2"], cycles=12, mismatches={"y": 0})
    assert rec["passed"] and json.loads(path.read_text()) == rec
    assert check_result(path, ("t1",))["cycles"] == 12


def test_failures_and_missing_tests_fail(tmp_path):
    path = tmp_path / "result.json"
    write_result(str(path), "shifter", ["latency [4] != attribute 3", "x"], tests=["t1"])
    with pytest.raises(AssertionError, match="latency"):
        check_result(path)
    write_result(str(path), "shifter", [], tests=["t1"])
    with pytest.raises(AssertionError, match="without a verdict"):
        check_result(path, ("t1", "t2"))


def test_fault_inject_judges_every_unit_one_way():
    from sim.verify import fault_inject as fi
    assert {b.module for b in fi.UNIT_BENCHES.values()} == {
        "sim.bench.bfp_shifter", "sim.bench.forward_core", "sim.bench.backward_core"}
    for bench in fi.UNIT_BENCHES.values():
        assert bench.tests and type(bench).judge is fi.UnitBench.judge
