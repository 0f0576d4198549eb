"""Every expected, user-facing failure of snapscope, in one module.

The CLI catches :class:`SnapscopeError` (and every class below), prints
``str(error)`` on one line and exits 2. Anything else is a bug and is
reported as such. Messages may quote hostile evidence (a name from an XML, a
path from a qcow2 header): the classes that take such text keep it on one
line, and every renderer escapes it again before it reaches a terminal.

Example::

    >>> str(EvidenceError("/srv/vm.core", "truncated ELF header (40 of 64 bytes)"))
    '/srv/vm.core: truncated ELF header (40 of 64 bytes)'
    >>> str(MemoryFormatError("dump.elf", 0x40, "bad program header"))
    'dump.elf: at offset 0x40: bad program header'
"""

from __future__ import annotations

import os


def one_line(text) -> str:
    """``text`` with every run of whitespace (newlines included) as one space."""
    return " ".join(str(text).split())


class SnapscopeError(Exception):
    """Base for every expected, user-facing failure."""


class CaseError(SnapscopeError):
    """The case directory is unusable (not a case, corrupt, locked, refused)."""


class EvidenceError(SnapscopeError):
    """Bad evidence input: ``path`` is the file concerned, ``message`` the problem."""

    def __init__(self, path, message: str):
        self.path = os.fspath(path) if path is not None else None
        # Hostile file contents may end up in messages: one line, so a crafted value cannot forge output.
        self.message = one_line(message)
        super().__init__(f"{self.path}: {self.message}" if self.path else self.message)


class MemoryFormatError(SnapscopeError, ValueError):
    """A memory artefact cannot be read: names the file and the byte offset."""

    def __init__(self, path, offset, message):
        self.path = str(path)
        self.offset = offset
        self.message = one_line(message)
        where = f"at offset {offset:#x}" if isinstance(offset, int) else f"at {offset}"
        super().__init__(f"{self.path}: {where}: {self.message}")


class QueryError(SnapscopeError):
    """A SQL query over a case that snapscope refuses to run (it would write or reach outside the case)."""


class SealError(SnapscopeError):
    """A signing key or a case seal that cannot be used (missing, wrong type, unreadable)."""


class DiskError(SnapscopeError):
    """A disk image cannot be opened or read; the message is one line for the analyst."""


class AcquireError(SnapscopeError):
    """A live acquisition that cannot start or cannot finish: libvirt unreachable, an
    unknown domain, a disk that cannot be captured, no space for the output."""


class ProfileError(SnapscopeError, ValueError):
    """A profile that cannot be used; the message names the offending entry."""


class RuleError(SnapscopeError):
    """A YARA or Sigma rule file that cannot be used: one line naming the file, line and problem."""


class ExportError(SnapscopeError):
    """A report or export that cannot be produced or delivered (e.g. a Timesketch server unreachable)."""


class SymbolsError(SnapscopeError):
    """No usable ISF; ``diagnostics`` says what was tried and why each failed."""

    def __init__(self, message: str, diagnostics: list[dict]):
        super().__init__(message)
        self.diagnostics = diagnostics


class VolatilityError(SnapscopeError):
    """A memory image Volatility could not open; ``details`` lists Volatility's reasons."""

    def __init__(self, message: str, details: list[str] | None = None):
        super().__init__(message)
        self.details = details or []
