"""The one error type for bad evidence.

Every problem with an input file — missing, empty, truncated, of no known
format, naming a disk that is not there — becomes an ``EvidenceError`` whose
text is one line naming the file and the problem. The CLI prints that line and
exits 2; nothing about bad input should ever surface as a traceback.

Example::

    >>> str(EvidenceError("/srv/vm.core", "truncated ELF header (40 of 64 bytes)"))
    '/srv/vm.core: truncated ELF header (40 of 64 bytes)'
"""
from __future__ import annotations

import os

from toolkit.errors import SnapscopeError


class EvidenceError(SnapscopeError):
    """Bad evidence input: ``path`` is the file concerned, ``message`` the problem."""

    def __init__(self, path, message: str):
        self.path = os.fspath(path) if path is not None else None
        # Hostile file contents may end up in messages (a name from an XML);
        # keep the message on one line so a crafted value cannot forge output.
        self.message = " ".join(str(message).split())
        super().__init__(f"{self.path}: {self.message}" if self.path else self.message)
