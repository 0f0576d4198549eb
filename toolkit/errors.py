"""Errors that mean "bad input", reported to the user as one clear line.

The CLI catches :class:`SnapscopeError` (and subclasses raised by the evidence,
memory and disk layers), prints ``str(error)`` and exits with code 2. Anything
else is a bug and is reported as such.
"""


class SnapscopeError(Exception):
    """Base for every expected, user-facing failure."""


class CaseError(SnapscopeError):
    """The case directory is unusable (not a case, corrupt, refused)."""
