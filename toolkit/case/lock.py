"""Locks between processes: one run per case, one builder per shared cache entry.

A case takes an exclusive lock for a whole ``analyze`` or ``audit`` run, so
two runs into one case cannot lose each other's manifest updates: the second
waits (``wait=True``) or stops with a clear message. Audit workers write only
their own table files and do not take it; the parent run holds it for them.

Example::

    with case_lock(case_dir):
        manifest = init_case(case_dir)
        ...
"""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path

from toolkit.errors import CaseError

LOCK_NAME = ".lock"


@contextlib.contextmanager
def file_lock(path: Path, *, wait: bool = True):
    """An exclusive flock on ``path`` (created if needed) for the duration of the block.

    With ``wait=False`` a lock held elsewhere raises BlockingIOError at once.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def case_lock(case_dir: Path, *, wait: bool = False):
    """Hold the case's run lock; CaseError when another run holds it and ``wait`` is False."""
    try:
        with file_lock(Path(case_dir) / LOCK_NAME, wait=wait):
            yield
    except BlockingIOError:
        raise CaseError(
            f"{case_dir}: another snapscope run is using this case; wait for it to finish (or use another --case)"
        ) from None
