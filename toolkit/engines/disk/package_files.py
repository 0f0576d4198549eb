"""``disk/package_files``: every path the package database says an installed package owns, with
the md5 it recorded and when the package's file list was written (its install or upgrade).

Read from dpkg's own files (``/var/lib/dpkg/info/<package>.list`` and ``.md5sums``), which
dissect has no function for. Paths are given as they lie on this disk: on a merged-/usr system
(``/lib`` a symlink to ``usr/lib``) ``/lib/x`` is listed as ``/usr/lib/x``, so the table joins
``disk/files`` on ``path``. Bounded: each list file is read up to ``MAX_LIST_BYTES`` and the
table holds at most ``MAX_ROWS`` paths (a diagnostic says when more were skipped).

Example::

    rows, diags = package_file_rows(target)
    rows[0]   # {'package': 'bash', 'path': '/usr/bin/bash', 'md5': '...', 'installed_ts': Timestamp(...)}
"""

from __future__ import annotations

import re

from toolkit.engines.disk.walk import ts_ns
from toolkit.schemas import diagnostic

INFO_DIR = "/var/lib/dpkg/info"
MAX_LIST_BYTES = 16 << 20
MAX_ROWS = 2_000_000
MERGED_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
MD5_LINE = re.compile(r"^([0-9a-f]{32})\s+(.+)$")


def merged_usr_aliases(fs, diags: list) -> dict[str, str]:
    """Top-level directories that are symlinks into /usr on this disk: {'/lib': '/usr/lib', ...}."""
    out = {}
    for d in MERGED_DIRS:
        try:
            p = fs.path(d)
            if p.is_symlink():
                target = str(p.readlink()).rstrip("/")
                out[d] = target if target.startswith("/") else "/" + target
        except (FileNotFoundError, NotADirectoryError):
            continue
        except Exception as exc:  # dissect raises many types for a damaged inode
            diags.append(diagnostic("warning", "merged /usr link", d, f"unreadable: {type(exc).__name__}: {exc}"))
    return out


def on_disk(path: str, aliases: dict[str, str]) -> str:
    """The path as it lies on disk: ``on_disk('/lib/x', {'/lib': '/usr/lib'})`` -> ``'/usr/lib/x'``."""
    for short, long in aliases.items():
        if path == short or path.startswith(short + "/"):
            return long + path[len(short) :]
    return path


def _read(fs, path: str, diags: list) -> str | None:
    try:
        with fs.path(path).open("rb") as fh:
            data = fh.read(MAX_LIST_BYTES + 1)
    except Exception as exc:  # dissect raises many types for damaged files
        diags.append(diagnostic("warning", "package file list", path, f"unreadable: {type(exc).__name__}: {exc}"))
        return None
    if len(data) > MAX_LIST_BYTES:
        diags.append(diagnostic("warning", "package file list", path, f"larger than {MAX_LIST_BYTES} bytes: cut"))
        data = data[:MAX_LIST_BYTES]
    return data.decode("utf-8", "surrogateescape")


def package_file_rows(target) -> tuple[list[dict], list[dict]]:
    """(rows for ``disk/package_files``, diagnostics); no rows when the disk has no dpkg database."""
    fs = target.fs
    diags: list[dict] = []
    try:
        entries = sorted(fs.path(INFO_DIR).iterdir(), key=lambda p: p.name)
    except (FileNotFoundError, NotADirectoryError):
        return [], []
    except Exception as exc:
        return [], [diagnostic("warning", "package database", INFO_DIR, f"not listed: {type(exc).__name__}: {exc}")]
    aliases = merged_usr_aliases(fs, diags)
    rows: dict[str, dict] = {}
    skipped = 0
    lists = [p for p in entries if p.name.endswith(".list")]
    for lst in lists:
        package = lst.name[: -len(".list")].split(":")[0]
        try:
            installed = ts_ns(lst.lstat().st_mtime_ns)
        except Exception as exc:  # a list we cannot stat still says what the package owns
            installed = None
            diags.append(diagnostic("info", "package install time", lst.name, f"{type(exc).__name__}: {exc}"))
        text = _read(fs, f"{INFO_DIR}/{lst.name}", diags)
        sums = _read(fs, f"{INFO_DIR}/{lst.name[:-5]}.md5sums", []) if text is not None else None
        md5 = {}
        for line in (sums or "").splitlines():
            m = MD5_LINE.match(line.strip())
            if m:
                md5[on_disk("/" + m.group(2).lstrip("/"), aliases)] = m.group(1)
        for line in (text or "").splitlines():
            path = line.strip()
            if not path.startswith("/") or path == "/.":
                continue
            path = on_disk(path, aliases)
            if path in rows:
                if package not in rows[path]["package"].split(","):
                    rows[path]["package"] += f",{package}"  # directories are shared by many packages
                continue
            if len(rows) >= MAX_ROWS:
                skipped += 1
                continue
            rows[path] = {"package": package, "path": path, "md5": md5.get(path), "installed_ts": installed}
    if skipped:
        diags.append(
            diagnostic("warning", "package database", INFO_DIR, f"{skipped} paths beyond {MAX_ROWS} not listed")
        )
    return list(rows.values()), diags
