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
import os
import stat
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
    # Never through a symbolic link, never a FIFO (opening one blocks): a case copied from elsewhere
    # may hold anything under a lock file's name.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        raise CaseError(f"{path}: cannot be used as a lock file ({exc.strerror or exc}; a symbolic link?)") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CaseError(f"{path}: is not a regular file; cannot be used as a lock file")
    with os.fdopen(fd, "a") as fh:
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
