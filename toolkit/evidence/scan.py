"""Listing an evidence directory without following symbolic links.

A directory the analyst names is scanned: its regular files and those of its
immediate subdirectories. A symlink met there is never followed, to a file
or a directory: inside an evidence folder it could lead anywhere on the
analyst's host (another VM's disks, ``/etc``). It is reported as skipped with
its reason instead; naming the file itself uses it.

Example::

    >>> files, skipped = scan_directory(Path("/evidence/web01"))  # doctest: +SKIP
    >>> skipped[0]["reason"]  # doctest: +SKIP
    "symbolic link to '/var/lib/libvirt/images': not followed while scanning"
"""

from __future__ import annotations

import os
from pathlib import Path

from toolkit.errors import EvidenceError


def symlink_skip(path: Path) -> dict:
    """The ``skipped`` entry for a symlink met while scanning: the link's own text, never its target's."""
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return {"path": os.path.abspath(path), "reason": f"symbolic link to {target!r}: not followed while scanning"}


def regular_files(directory: Path) -> tuple[list[Path], list[Path], list[dict]]:
    """(regular files, subdirectories, skipped symlinks) of one directory, sorted; a
    symlink is never followed here: it could lead anywhere on the analyst's host."""
    files, dirs, skipped = [], [], []
    for child in sorted(directory.iterdir()):
        if child.is_symlink():
            skipped.append(symlink_skip(child))
        elif child.is_dir():
            dirs.append(child)
        elif child.is_file():
            files.append(child)
    return files, dirs, skipped


def scan_directory(directory: Path) -> tuple[list[Path], list[dict]]:
    """(regular files in ``directory`` and in its immediate subdirectories, skipped symlinks)."""
    try:
        files, dirs, skipped = regular_files(directory)
    except OSError as exc:
        raise EvidenceError(directory, f"cannot list directory: {exc.strerror}") from None
    for child in dirs:
        try:
            more, _, links = regular_files(child)
        except OSError:
            continue  # an unreadable subdirectory is not this snapshot's business
        files += more
        skipped += links
    return files, skipped
