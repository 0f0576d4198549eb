"""A dissect Target over disk streams snapscope opened itself.

Example::

    target = open_target([disk["stream"]], "snapshot web01")
    target.hostname, target.os
"""

from __future__ import annotations

from toolkit.errors import DiskError


def open_target(streams: list, where: str):
    """A dissect Target over already-opened disk streams (no loader, no paths)."""
    from dissect.target import Target
    from dissect.target.containers.raw import RawContainer

    t = Target()
    for s in streams:
        t.disks.add(RawContainer(s))
    try:
        t.apply()
    except Exception as e:
        raise DiskError(f"{where}: no readable volume or filesystem ({type(e).__name__}: {e})") from None
    if not len(t.filesystems):
        raise DiskError(f"{where}: no known filesystem found on the disk (unknown or encrypted filesystem)")
    return t
