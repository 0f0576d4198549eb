"""Finding the files that evidence names: backing and data files, disks and memory files of
libvirt XMLs, VMDK extents and parents, VHDX parents. One policy for all of them.

A name inside evidence comes from a hostile file and often records a path on
another host (``/var/lib/libvirt/images/base.qcow2``). It is only ever looked
up as a path, in a fixed order that prefers what was shipped with the
evidence, and a file found counts only when its *real* path (``..`` and
symlinks resolved) lies inside an evidence root (a directory the user gave,
or the directory of a file the user gave) or a ``--search-path`` directory.
Anywhere else — another VM's disk on the analyst's host, ``/etc/passwd`` — is
refused, unless the user passed ``--follow-recorded-paths``; then it is read
and the caller reports a warning naming it. Whatever is found is identified,
hashed and logged like any input.

The policy is a value (:class:`ReferencePolicy`) built once per run and passed
down explicitly: discovery, the disk engine and the memory readers all resolve
with the same one.

Example::

    >>> policy = reference_policy(roots=["/cases/web01"], search_paths=["/mnt/images"])  # doctest: +SKIP
    >>> resolve_reference("/var/lib/libvirt/images/base.qcow2", Path("/cases/web01"), policy)["path"]  # doctest: +SKIP
    PosixPath('/cases/web01/base.qcow2')
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

FOLLOW_FLAG = "--follow-recorded-paths"


@dataclass(frozen=True)
class ReferencePolicy:
    """Where files named inside evidence may be read from (real paths), and whether a
    path as recorded may be followed outside them. Picklable: it travels to workers."""

    roots: tuple[str, ...] = ()  # evidence roots: directories given, directories of files given
    search_paths: tuple[str, ...] = ()  # --search-path directories, looked in by name
    follow_recorded: bool = False  # --follow-recorded-paths: read outside the above, with a warning


def _real(path) -> str:
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def evidence_roots(paths) -> tuple[str, ...]:
    """The evidence roots of the inputs a user named: a directory itself, a file's directory.

    >>> evidence_roots(["/"])
    ('/',)
    """
    roots = []
    for path in paths:
        path = os.path.abspath(os.fspath(path))
        root = _real(path) if os.path.isdir(path) else _real(os.path.dirname(path))
        if root not in roots:
            roots.append(root)
    return tuple(roots)


def reference_policy(*, roots=(), search_paths=(), follow_recorded: bool = False) -> ReferencePolicy:
    """The policy for one run: ``roots`` (see :func:`evidence_roots`) and ``search_paths``
    are stored as real paths, so ``..`` and symlinks cannot widen them later.

    >>> reference_policy(roots=["/"], follow_recorded=True).follow_recorded
    True
    """
    return ReferencePolicy(
        roots=tuple(dict.fromkeys(_real(r) for r in roots)),
        search_paths=tuple(dict.fromkeys(_real(p) for p in search_paths)),
        follow_recorded=bool(follow_recorded),
    )


def default_policy(paths) -> ReferencePolicy:
    """The policy when a caller gives nothing else: the named files' own directories are the
    roots, no search paths, nothing followed outside them (a library call on one disk)."""
    return reference_policy(roots=evidence_roots(paths))


def is_inside(path, policy: ReferencePolicy) -> bool:
    """True when the real path of ``path`` lies in one of the policy's roots or search paths.

    >>> is_inside("/etc/passwd", reference_policy(roots=["/srv/evidence"]))
    False
    """
    real = _real(path)
    for top in policy.roots + policy.search_paths:
        if real == top or real.startswith(top.rstrip(os.sep) + os.sep):
            return True
    return False


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a hostile name: too long, a NUL, a loop of links
        return False


def _candidates(recorded: str, referrer_dir: Path, policy: ReferencePolicy) -> list[tuple[Path, str]]:
    rec = Path(recorded)
    out: list[tuple[Path, str]] = []
    if not rec.is_absolute():
        out.append((referrer_dir / rec, "relative"))
    if rec.name:
        out.append((referrer_dir / rec.name, "basename-beside"))
    for sp in policy.search_paths:
        if not rec.is_absolute():
            out.append((Path(sp) / rec, f"search-path:{sp}"))
        if rec.name:
            out.append((Path(sp) / rec.name, f"search-path:{sp}"))
    if rec.is_absolute():
        # a copied host tree (an audit of /etc/libvirt + /var/lib/libvirt): the path under each root
        for top in policy.roots + policy.search_paths:
            out.append((Path(top) / rec.relative_to(rec.anchor), f"re-rooted:{top}"))
        out.append((rec, "as-recorded"))
    return out


def resolve_reference(recorded: str | None, referrer_dir: Path, policy: ReferencePolicy) -> dict:
    """Find the file a recorded (often absolute, host-side) path means on this machine.

    Order, evidence first: the recorded path relative to the referring file;
    its base name beside the referring file; each search path (the recorded
    relative path, then the base name); an absolute path under each root and
    search path (a copied host tree); last, the path as recorded. The first
    candidate that is a file *and* whose real path is inside the policy's
    roots or search paths wins. A candidate outside them is refused; when none
    is inside and ``policy.follow_recorded`` is set, the first outside one is
    used and ``outside`` is True (the caller warns).

    Returns ``{"path": Path or None, "how": str, "tried": [str], "outside": bool,
    "refused": [real path of each file found outside]}``; ``how`` is
    ``relative``, ``basename-beside``, ``search-path:DIR``, ``re-rooted:DIR``, ``as-recorded``
    (prefixed ``outside:`` when followed outside), ``missing`` or ``refused``.

    >>> r = resolve_reference("../passwd", Path("/etc/ssl"), reference_policy(roots=["/etc/ssl"]))
    >>> r["path"], r["how"], r["refused"]
    (None, 'refused', ['/etc/passwd'])
    """
    result = {"path": None, "how": "missing", "tried": [], "outside": False, "refused": []}
    if not recorded or "\0" in recorded:
        result["how"] = "invalid"
        return result
    first_outside = None
    for cand, how in _candidates(recorded, Path(referrer_dir), policy):
        result["tried"].append(str(cand))
        if not _is_file(cand):
            continue
        if is_inside(cand, policy):
            return {**result, "path": Path(os.path.abspath(cand)), "how": how}
        if _real(cand) not in result["refused"]:
            result["refused"].append(_real(cand))
        first_outside = first_outside or (cand, how)
    if first_outside is not None:
        if policy.follow_recorded:
            cand, how = first_outside
            return {**result, "path": Path(os.path.abspath(cand)), "how": f"outside:{how}", "outside": True}
        result["how"] = "refused"
    return result


def unresolved_message(what: str, recorded, result: dict) -> str:
    """One line saying why ``what`` (e.g. "backing file") named ``recorded`` was not used.

    >>> unresolved_message("backing file", "x", {"how": "missing", "tried": ["/a/x"], "refused": []})
    "backing file 'x' not found (tried: /a/x)"
    """
    if result["how"] == "invalid":
        return f"{what} {recorded!r} is not a usable file name"
    if result["how"] == "refused":
        return (
            f"{what} {recorded!r} resolves outside the evidence roots and search paths "
            f"({', '.join(result['refused'])}): refused; copy it beside the evidence, pass --search-path DIR, "
            f"or {FOLLOW_FLAG} to read it where it is"
        )
    return f"{what} {recorded!r} not found (tried: {', '.join(result['tried'])})"


def wrong_size_message(what: str, recorded, path, actual: int, declared: int) -> str:
    """One line refusing a file found for ``recorded`` whose size is not what its referrer declares
    (a flat VMDK extent: a host file named as one is not read as a disk).

    >>> wrong_size_message("extent", "/etc/passwd", "/etc/passwd", 1353, 512)
    "extent '/etc/passwd' (/etc/passwd) is 1353 bytes but the descriptor declares 512: not this disk's extent, refused"
    """
    return (
        f"{what} {recorded!r} ({os.fspath(path)}) is {actual} bytes but the descriptor declares {declared}: "
        f"not this disk's {what}, refused"
    )


def outside_message(what: str, recorded, result: dict, owner) -> str:
    """The warning for a file read outside the evidence roots because the user allowed it.

    >>> outside_message("backing file", "/b", {"path": Path("/b"), "how": "outside:as-recorded"}, "/ev/d.qcow2")
    "read /b outside the evidence roots: backing file '/b' of /ev/d.qcow2 (as-recorded, --follow-recorded-paths)"
    """
    how = result["how"].removeprefix("outside:")
    return (
        f"read {result['path']} outside the evidence roots: {what} {recorded!r} of {os.fspath(owner)} "
        f"({how}, {FOLLOW_FLAG})"
    )
