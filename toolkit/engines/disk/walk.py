"""Walk a dissect filesystem: one stat row per entry, sha256 where the profile asks.

Used for the ``disk/files`` table and as the full-walk fallback of the
snapshot diff (both trees walked and every regular file hashed). Names from
inside the guest are kept exactly as dissect decodes them (surrogateescape),
never cleaned up: the table is evidence.

Example::

    rows, problems = walk_tree(target.fs, "/", should_hash=lambda p, st: True, max_size=None)
"""

from __future__ import annotations

import fnmatch
import stat as statmod

from toolkit.elfinfo import elf_identity
from toolkit.hashing import stream_digests
from toolkit.schemas import diagnostic

TYPES = {
    statmod.S_IFREG: "file",
    statmod.S_IFDIR: "dir",
    statmod.S_IFLNK: "symlink",
    statmod.S_IFCHR: "chardev",
    statmod.S_IFBLK: "blockdev",
    statmod.S_IFIFO: "fifo",
    statmod.S_IFSOCK: "socket",
}

# Where an intruder drops things, and places a user hides them; the profile
# may replace this list (profile["disk"]["hash"]["paths"]).
DEFAULT_HASH_GLOBS = [
    "/tmp/*",
    "/var/tmp/*",
    "/dev/shm/*",
    "/run/*",
    "/var/spool/cron/*",
    "/etc/cron*",
    "/etc/systemd/system/*",
    "/home/*",
    "/root/*",
    "*/.*",
]


def ts_ns(value):
    """Integer nanoseconds since the epoch -> UTC Timestamp (exact; a float would round)."""
    import pandas as pd

    return None if value is None else pd.Timestamp(value, unit="ns", tz="UTC")


def file_type(mode: int) -> str:
    return TYPES.get(statmod.S_IFMT(mode), "unknown")


def hash_policy(hash_cfg: dict | None):
    """Turn profile["disk"]["hash"] into should_hash(path, stat) and max_size.

    >>> should, max_size = hash_policy({"max_size": 1 << 20, "paths": ["/tmp/*"], "executables": True})
    """
    cfg = hash_cfg or {}
    # profile entries are directory prefixes ("/tmp") or globs ("*/.*")
    globs = [
        g if any(ch in g for ch in "*?[") else g.rstrip("/") + "/*" for g in cfg.get("paths") or DEFAULT_HASH_GLOBS
    ]
    executables = cfg.get("executables", True)
    everything = cfg.get("all", False)

    def should_hash(path: str, st) -> bool:
        if everything:
            return True
        if executables and st.st_mode & 0o111:
            return True
        return any(fnmatch.fnmatchcase(path, g) for g in globs)

    return should_hash, cfg.get("max_size", 64 << 20)


def _stat_row(path: str, st) -> dict:
    def ns(name):
        v = getattr(st, name + "_ns", None)
        if v is None and getattr(st, name, None) is not None:
            v = int(getattr(st, name) * 1e9)  # filesystems without ns fields (fat, some ntfs paths)
        return ts_ns(v)

    return {
        "path": path,
        "type": file_type(st.st_mode),
        "size": st.st_size,
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mode": st.st_mode & 0o7777,
        "inode": st.st_ino,
        "mtime": ns("st_mtime"),
        "atime": ns("st_atime"),
        "ctime": ns("st_ctime"),
        "btime": ns("st_birthtime"),
    }


ELF_HEAD = 65536


def skipped(path: str, skip_prefixes) -> bool:
    """True when path is one of skip_prefixes or lies below one."""
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in skip_prefixes)


def entry_row(
    path: str, get_entry, *, should_hash=None, max_size: int | None = None, problems: list, known: dict | None = None
):
    """(row, stat) for one path, or (None, None) when it cannot be stat'ed.

    ``get_entry()`` returns the dissect FilesystemEntry (lstat, open, readlink):
    ``dir_entry.get`` in a walk, ``lambda: fs.get(path)`` for a single path.
    ``known`` ({sha256, md5, build_id, first_page_sha256}) stands in for reading a
    file whose bytes are proven unchanged since those were computed.

    The one place a ``disk/files`` row is made: the full walk and the
    overlay re-walk of changed paths (disk.files) must produce identical rows.
    """
    try:
        entry = get_entry()
        st = entry.lstat()
    except Exception as e:
        problems.append(diagnostic("warning", f"file {path}", "disk/files", f"cannot stat: {type(e).__name__}: {e}"))
        return None, None
    row = _stat_row(path, st)
    kind = row["type"]
    if kind == "symlink":
        try:
            row["link_target"] = entry.readlink()
        except Exception as e:  # dissect raises many types for a damaged inode
            problems.append(
                diagnostic("warning", f"symlink {path}", "disk/files", f"target unreadable: {type(e).__name__}: {e}")
            )
    elif kind == "file" and should_hash and should_hash(path, st) and (max_size is None or st.st_size <= max_size):
        if known is not None:
            row.update(known)
            return row, st
        try:
            with entry.open() as fh:
                # md5 beside sha256, in the same read: package databases (dpkg) record md5
                digests = stream_digests(fh, max_size) or {}
                row["sha256"], row["md5"] = digests.get("sha256"), digests.get("md5")
                fh.seek(0)
                # build-id and first-page hash let correlation tie a
                # running (possibly deleted) program to this file
                ident = elf_identity(fh.read(ELF_HEAD))
                row["build_id"], row["first_page_sha256"] = ident["build_id"], ident["first_page_sha256"]
        except Exception as e:
            problems.append(
                diagnostic("warning", f"file {path}", "disk/files", f"cannot read for hashing: {type(e).__name__}: {e}")
            )
    return row, st


def walk_tree(
    root_fs,
    start: str = "/",
    *,
    should_hash=None,
    max_size: int | None = None,
    skip_prefixes=("/proc", "/sys", "/$fs$/"),
) -> tuple[list[dict], list[dict]]:
    """Every entry below start (no symlink following) -> (rows, diagnostics).

    Rows carry times as integer nanoseconds (UTC epoch); ``sha256`` is filled for
    regular files where ``should_hash(path, stat)`` says so and size <= max_size.
    """
    rows: list[dict] = []
    problems: list[dict] = []
    stack = [start]
    seen_dirs: set = set()
    while stack:
        dirpath = stack.pop()
        try:
            entries = list(root_fs.get(dirpath).scandir())
        except Exception as e:  # an unreadable directory is data, not a crash
            problems.append(
                diagnostic("warning", f"directory {dirpath}", "disk/files", f"cannot list: {type(e).__name__}: {e}")
            )
            continue
        for entry in entries:
            path = dirpath.rstrip("/") + "/" + entry.name
            if skipped(path, skip_prefixes):
                continue
            row, st = entry_row(path, entry.get, should_hash=should_hash, max_size=max_size, problems=problems)
            if row is None:
                continue
            if row["type"] == "dir":
                key = (st.st_dev, st.st_ino)
                if key not in seen_dirs:  # a corrupt fs can loop; never walk a dir twice
                    seen_dirs.add(key)
                    stack.append(path)
            rows.append(row)
    return rows, problems
