"""The torch tests are opt-in: torch is an optional extra (``pip install -e .[torch]``) that the
default regression does not install. They are collected only when this directory is named on the
command line (``pytest tests/torch``); a plain ``pytest`` run does not collect them at all (they are
not skipped: they are not part of that run)."""

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _named(config):
    for arg in config.args:
        path = Path(str(arg).split("::")[0]).resolve()
        if path == _HERE or _HERE in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path, config):
    if Path(collection_path).resolve().parent == _HERE and not _named(config):
        return True
    return None
