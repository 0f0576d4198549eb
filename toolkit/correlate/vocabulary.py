"""The vocabulary every rule module shares: what a kernel-thread name, a shell, an interpreter,
a temporary or hidden place, a downloader looks like, and small joins over the tables
(boot time, package ownership, who may write a file).

Every word here describes a behaviour or a class of program (a shell is a shell whatever its
path), never a name a particular intrusion used.

Example::

    is_hidden_or_temp("/var/tmp/.cache/x")     # True
    interpreter_script(["python3", "-u", "/opt/app/run.py"])   # '/opt/app/run.py'
"""

from __future__ import annotations

import posixpath
import re

import pandas as pd

from toolkit.correlate.links import frame, pid_of, value

KERNEL_THREAD_NAME = re.compile(
    r"^\[?(kworker/|ksoftirqd/|kthreadd|migration/|rcu_|kswapd|watchdog/|cpuhp/|khugepaged|kcompactd|"
    r"jbd2/|kauditd|oom_reaper|writeback|kblockd|irq/|idle_inject/|scsi_eh_|ext4-rsv|kdevtmpfs|netns|"
    r"kintegrityd|ksmd|kthrotld|ipv6_addrconf|mm_percpu_wq|khungtaskd)"
)
# Directories anyone may write to, where droppers land.
TEMP_DIRS = ("/tmp/", "/var/tmp/", "/dev/shm/", "/run/shm/", "/var/run/", "/run/user/", "/var/crash/", "/dev/mqueue/")
HOME_DIRS = ("/root/", "/home/")
# Programs whose job is to pipe a network connection into a program.
RELAYS = frozenset({"nc", "ncat", "netcat", "nc.traditional", "nc.openbsd", "socat", "telnet", "cryptcat"})
DOWNLOADERS = re.compile(r"(?:^|[\s;|&(`$])(wget|curl|tftp|scp|sftp|ftp|fetch|lwp-download|aria2c)(?:\s|$)")
PIPE_TO_SHELL = re.compile(
    r"\|\s*(?:sudo\s+)?(?:/\S*/)?(?:ba|da|z|k)?sh\b|\|\s*(?:/\S*/)?python[\d.]*\b|\|\s*(?:/\S*/)?perl\b"
)
NET_REDIRECT = re.compile(r"/dev/(tcp|udp)/|\b(nc|ncat|netcat)\b[^|;]*\s-[a-z]*e\s|\bsocat\b[^|;]*\bexec:")
SETUID_BITS = 0o6000


def is_hidden_or_temp(path: str | None) -> bool:
    """memfd, a temporary directory, a hidden directory anywhere, or a hidden
    file outside home directories (where dotfiles such as .bashrc are normal).

    >>> is_hidden_or_temp("/usr/lib/.x/libz.so"), is_hidden_or_temp("/root/.bashrc")
    (True, False)
    """
    if not path:
        return False
    if path.startswith(("memfd:", "/memfd:")):
        return True
    if any(path.startswith(d) for d in TEMP_DIRS):
        return True
    parts = [p for p in path.split("/") if p]
    if any(p.startswith(".") and p not in (".", "..") for p in parts[:-1]):
        return True
    return bool(parts) and parts[-1].startswith(".") and not path.startswith(HOME_DIRS)


def cmdline_words(args) -> list[str]:
    """The words of a ``memory/cmdlines`` ``args`` string (Volatility joins argv with spaces)."""
    return str(args or "").split()


def boot_time(tables) -> pd.Timestamp | None:
    """When the guest booted, as its own memory says: the earliest process start time.

    Used to tell what changed while this system was up (a file created after boot).
    """
    procs = frame(tables, "memory/processes")
    if "start_ts" not in procs or not procs["start_ts"].notna().any():
        return None
    return procs["start_ts"].min()


def after(ts, moment) -> bool:
    """ts is known and later than moment (both known)."""
    return ts is not None and moment is not None and not pd.isna(ts) and not pd.isna(moment) and ts > moment


def files_by_path(tables) -> dict[str, dict]:
    """``disk/files`` rows by path (as dicts with their row number under ``_row``)."""
    files = frame(tables, "disk/files")
    if not len(files):
        return {}
    return {r["path"]: {**r, "_row": i} for i, r in zip(files.index, files.to_dict("records"))}


def package_owner(tables) -> dict[str, dict]:
    """path -> ``disk/package_files`` row (dict with ``_row``) for every path the package database lists,
    under each name the disk gives it through a top-level directory link.

    On a merged-/usr system ``/lib`` is a link to ``usr/lib``: dpkg may list a unit as
    ``/usr/lib/systemd/system/x.service`` while systemd (and the disk walk) names it
    ``/lib/systemd/system/x.service``. Both are the packaged file.
    """
    pf = frame(tables, "disk/package_files")
    if not len(pf):
        return {}
    owned = {r["path"]: {**r, "_row": i} for i, r in zip(pf.index, pf.to_dict("records"))}
    aliases = top_level_links(tables)
    for path, row in list(owned.items()):
        for link_path, target in aliases.items():
            for one, other in ((target, link_path), (link_path, target)):
                if path.startswith(one + "/"):
                    owned.setdefault(other + path[len(one) :], row)
    return owned


TOP_LEVEL_LINKS = 16  # merged /usr has six (/bin /sbin /lib /lib32 /lib64 /libx32); a crafted disk gets no more


def top_level_links(tables) -> dict[str, str]:
    """``{"/lib": "/usr/lib", ...}``: the top-level directories the disk walk saw as symbolic links
    (merged /usr), each with the absolute directory it names."""
    files = frame(tables, "disk/files")
    if not len(files) or "link_target" not in files:
        return {}
    top = files[files["path"].str.count("/").eq(1) & files["type"].eq("symlink")]
    links = {}
    for path, target in sorted(zip(top["path"], top["link_target"])):
        if isinstance(target, str) and target.strip("/"):
            resolved = posixpath.normpath(target if target.startswith("/") else "/" + target)
            if resolved.startswith("/usr/") and len(links) < TOP_LEVEL_LINKS:
                links[path] = resolved
    return links


def has_package_database(tables) -> bool:
    return len(frame(tables, "disk/package_files")) > 0


SYMLINK_HOPS = 40  # as the kernel's limit: a loop of links in hostile evidence ends here


def real_path(files: dict, path: str) -> str:
    """``path`` with every symbolic link the disk walk saw resolved (``disk/files`` link_target).

    A link's own mode (0777) says nothing about who can write what it points to: on a merged-/usr
    system ``/sbin/x`` is ``/usr/sbin/x``.

    >>> real_path({"/sbin": {"type": "symlink", "link_target": "usr/sbin"}}, "/sbin/quotaon")
    '/usr/sbin/quotaon'
    """
    parts, done, hops = [p for p in path.split("/") if p], "", 0
    while parts:
        step = parts.pop(0)
        candidate = posixpath.normpath(f"{done}/{step}") if step != ".." else posixpath.dirname(done)
        row = files.get(candidate)
        target = value(row, "link_target") if row and value(row, "type") == "symlink" else None
        if target and hops < SYMLINK_HOPS:
            hops += 1
            parts = [p for p in target.split("/") if p] + parts
            done = "" if target.startswith("/") else done  # a relative target starts from the link's directory
            continue
        done = candidate if candidate != "/" else ""
    return done or "/"


def user_writable(files: dict, path: str | None) -> str | None:
    """Why a non-root user could replace ``path`` (the file or its directory is owned by a
    non-root uid or writable by group/others), or None when the disk says root alone can.
    Symbolic links are followed first: a link's own mode is no permission."""
    if not path:
        return None
    path = real_path(files, path)
    checks = [(path, "the file"), (posixpath.dirname(path.rstrip("/")) or "/", "its directory")]
    for p, what in checks:
        row = files.get(p)
        if not row:
            continue
        mode, uid = value(row, "mode"), value(row, "uid")
        if uid is not None and int(uid) != 0:
            return f"{what} {p!r} belongs to uid {int(uid)}"
        if mode is not None and int(mode) & 0o002 and not (p != path and int(mode) & 0o1000):
            return f"{what} {p!r} is writable by everyone"
        if mode is not None and int(mode) & 0o020 and value(row, "gid") not in (None, 0):
            return f"{what} {p!r} is writable by group {int(value(row, 'gid'))}"
    return None


def process_index(tables) -> dict[int, dict]:
    """pid -> ``memory/processes`` row (dict with ``_row``) for listed processes."""
    procs = frame(tables, "memory/processes")
    out = {}
    for i, r in zip(procs.index, procs.to_dict("records")):
        pid = pid_of(r)
        if pid is not None and pid not in out:
            out[pid] = {**r, "_row": i}
    return out


def cmdline_index(tables) -> dict[int, tuple[int, list[str]]]:
    """pid -> (row number, argv words) from ``memory/cmdlines``."""
    cmd = frame(tables, "memory/cmdlines")
    out = {}
    for i, r in zip(cmd.index, cmd.to_dict("records")):
        pid = pid_of(r)
        if pid is not None and pid not in out:
            out[pid] = (i, cmdline_words(value(r, "args")))
    return out


def is_inet(row) -> bool:
    """An IPv4/IPv6 socket row (a unix, netlink or packet socket is no network connection)."""
    family = str(value(row, "family") or "").upper()
    if family:
        return family in ("AF_INET", "AF_INET6")
    return value(row, "proto") in ("tcp", "udp") and value(row, "src_ip") is not None


def is_loopback(ip) -> bool:
    text = str(ip or "")
    return text.startswith("127.") or text in ("::1", "::ffff:127.0.0.1") or text.startswith("::ffff:127.")


def is_unspecified(ip) -> bool:
    return str(ip or "") in ("", "0.0.0.0", "::", "None")
