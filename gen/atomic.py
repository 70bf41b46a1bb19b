"""Atomic outputs: the one way every ``gen`` command writes what it produces.

:func:`atomic_dir` yields a fresh temporary directory *beside* the target directory (same parent,
so the final move is a rename on one file system); when the ``with`` block ends normally the
temporary directory replaces the target whole, and when it raises the temporary directory is
removed and the target is left as it was. :func:`atomic_file` does the same for one file (a
temporary directory beside the file holds the new file until it replaces the old one with
``os.replace``). Readers therefore see the old output or the new one, never a mix, and a failed run
leaves nothing half-written.

:func:`check_output_dir` is the validation :func:`atomic_dir` starts with; callers that want bad
output paths reported before any long work call it first. Its errors are ``ParamError`` with one
line naming the path.
"""

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from gen.errors import ParamError

__all__ = ["check_output_dir", "atomic_dir", "atomic_file"]


def check_output_dir(target, make_parents=False):
    """``target`` as a ``Path`` after checking that it can be replaced whole: it is not (and does
    not contain) the current directory, it is a directory if it exists, and its parent exists
    (created when ``make_parents``)."""
    target = Path(target)
    here = Path.cwd().resolve()
    if here == target.resolve() or target.resolve() in here.parents:
        raise ParamError(f"output directory {str(target) or '.'!r} is (or contains) the current directory, "
                         "which cannot be replaced whole; name a subdirectory such as 'out'")
    if target.exists() and not target.is_dir():
        raise ParamError(f"output path {str(target)!r} exists and is not a directory")
    parent = target.resolve().parent
    if not parent.is_dir():
        if not make_parents:
            raise ParamError(f"output directory parent {str(parent)!r} does not exist")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ParamError(f"cannot create output directory parent {str(parent)!r}: {exc.strerror}") from None
    return target


def _mkdtemp_beside(target, kind, what="output directory"):
    parent = target.resolve().parent
    try:
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.{kind}-", dir=parent))
    except OSError as exc:
        raise ParamError(f"cannot write {what} {str(target)!r}: {exc.strerror}") from None


@contextmanager
def atomic_dir(target, make_parents=False):
    """``with atomic_dir("out") as tmp:`` write into ``tmp``; on success ``tmp`` becomes ``out``
    (mode 0755), replacing any old ``out`` whole; on an exception nothing changes."""
    target = check_output_dir(target, make_parents)
    tmp = _mkdtemp_beside(target, "tmp")
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if target.exists():
            old = _mkdtemp_beside(target, "old")
            os.rename(target, old / "d")
            os.rename(tmp, target)
            shutil.rmtree(old)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(path, mode=0o644):
    """``with atomic_file("docs/area.md") as tmp:`` write the new file at path ``tmp``; on success
    it replaces ``path`` (``os.replace``, mode ``mode``); on an exception ``path`` is untouched."""
    path = Path(path)
    if not path.resolve().parent.is_dir():
        raise ParamError(f"directory of {str(path)!r} does not exist")
    if path.is_dir():
        raise ParamError(f"output file {str(path)!r} is a directory")
    tmpdir = _mkdtemp_beside(path, "tmp", "output file")
    try:
        tmp = tmpdir / path.name
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"atomic_file: nothing was written for {str(path)!r}")
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
