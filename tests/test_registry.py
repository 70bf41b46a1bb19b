"""The unit registry (``gen.registry``) is the one list of units: the CLI, the manifest, area,
bitstream, lint and the benches read it."""

import importlib.util

from gen import registry
from gen.registry import REGISTRY, Unit


def test_names_unique_and_kinds_known():
    names = [u.name for u in REGISTRY]
    assert len(names) == len(set(names))
    assert {u.kind for u in REGISTRY} == set(registry.KINDS)
    assert all(u.doc and "\n" not in u.doc for u in REGISTRY)


def test_every_consumer_reads_the_registry():
    from gen.area import PARTS, all_area_units
    from gen.baselines import baseline_names
    from gen.units import all_units
    from test_lint import lint_units
    from sim.verify.fault_inject import UNIT_BENCHES
    assert [n for n, _ in all_units()] == registry.names(target="gen") == registry.names(kind="lightnorm")
    assert baseline_names() == registry.names(kind="baseline")
    assert [n for n, _ in PARTS] == registry.names(kind="part", target="area")
    assert [n for n, _, _ in all_area_units(True, True)] == registry.names(target="area")
    assert [n for n, _ in lint_units()] == registry.names(target="lint")
    for name, bench in UNIT_BENCHES.items():
        assert bench.module == registry.unit(name).bench


def test_benches_and_attachments_exist():
    from hw.board_top import ATTACHMENTS
    for u in registry.units(kind="lightnorm"):
        assert u.bench and importlib.util.find_spec(u.bench) is not None, u.name
        assert u.short, u.name
    named = {a for u in REGISTRY for a in u.attachments}
    assert named == set(ATTACHMENTS)
    # the backward core reaches a board inside ln_bn_core
    assert registry.hosted_by("bn") == ["ln_bn_core"]


def test_bad_entry_is_refused():
    import pytest
    with pytest.raises(ValueError, match="kind"):
        Unit("x", "nope", lambda p: None, "x")
    with pytest.raises(ValueError, match="targets"):
        Unit("x", "part", lambda p: None, "x", frozenset({"fly"}))
    with pytest.raises(KeyError, match="unknown unit 'nope'"):
        registry.unit("nope")


def test_list_units_cli(capsys):
    from gen.__main__ import main
    assert main(["--list-units"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(REGISTRY) + 1 and out[1].startswith("ln_bfp_shifter")
