"""Tampering rules: files whose times lie, logs with holes, and packaged programs that are no
longer what their package installed.

Example::

    hits = list(package_file_modified(tables, build_graph(tables, "s1"), "s1"))
"""

from __future__ import annotations

import posixpath
import re

import pandas as pd

from toolkit.correlate.links import frame, hit, link, value
from toolkit.correlate.vocabulary import after, boot_time, files_by_path, package_owner

STOMP_MARGIN = pd.Timedelta(days=1)  # a file claiming to be older than its inode by more than this
LOG_GAP_RECORDS = 10  # records another log holds inside a silence before the silence counts
LOG_GAP_MIN = pd.Timedelta(minutes=1)  # a text log's silence shorter than this is a rate-limited burst
LOG_START_GRACE = pd.Timedelta(minutes=5)  # a text log's daemon starts after the journal; a late start is not a cut
LOG_EMPTIED_AFTER = pd.Timedelta(minutes=1)  # a log that lived this long before it was emptied held records
LOG_DIR = "/var/log/"
SHARED_OBJECT = re.compile(r"\.so(\.\d+)*$")


def package_file_modified(tables, graph, sid):
    """A file an installed package owns whose content no longer has the md5 the package database
    recorded (the disk walk hashed it): a replaced or patched system binary or library."""
    files = frame(tables, "disk/files")
    if "md5" not in files or not len(files):
        return
    owned = package_owner(tables)
    for i, r in files.iterrows():
        md5, path = value(r, "md5"), value(r, "path")
        entry = owned.get(path)
        if not md5 or not entry or not value(entry, "md5") or value(entry, "md5") == md5:
            continue
        why = (
            f"{path!r} belongs to package {value(entry, 'package')!r}, whose database records md5 "
            f"{value(entry, 'md5')}, but the file on disk has md5 {md5} (sha256 {value(r, 'sha256')}): it was "
            f"replaced or modified after installation."
        )
        links = [link("disk/files", sid, i), link("disk/package_files", sid, entry["_row"])]
        yield hit(f"file:{path}", links, 0.9, why)


def _owning_install(owned: dict, path: str):
    """(package, install time) of the nearest directory above ``path`` that a package owns."""
    d = posixpath.dirname(path)
    while d and d != "/":
        entry = owned.get(d)
        if entry and value(entry, "installed_ts") is not None:
            return value(entry, "package"), value(entry, "installed_ts")
        d = posixpath.dirname(d)
    return None, None


def is_binary(row) -> bool:
    """Compiled code: an ELF build-id the walk read, or a shared-object name."""
    return bool(value(row, "build_id") or SHARED_OBJECT.search(posixpath.basename(str(value(row, "path") or ""))))


def is_program(row) -> bool:
    """Compiled code, or any file with executable bits (scripts too)."""
    mode = value(row, "mode")
    return is_binary(row) or bool(mode is not None and int(mode) & 0o111)


def timestomp(tables, graph, sid):
    """A program or library whose modification time is older, by more than a day, than its inode's
    birth (or last change), that no package installed (or whose packaged content changed), and that
    either appeared while the system was up or (compiled code) claims to predate the package that
    created its directory: times set back by hand (touch -d, touch -r, timestomping). Data files are
    left out: installers copy them keeping their times (skeleton dotfiles, package metadata,
    configuration templates), which looks the same on disk."""
    files = frame(tables, "disk/files")
    if not len(files) or "mtime" not in files:
        return
    owned, boot = package_owner(tables), boot_time(tables)
    for i, r in files.iterrows():
        if value(r, "type") != "file" or not is_program(r):
            continue
        path, mtime = value(r, "path"), value(r, "mtime")
        anchor = value(r, "btime") or value(r, "ctime")
        if mtime is None or anchor is None or mtime >= anchor - STOMP_MARGIN:
            continue
        entry = owned.get(path)
        if entry and (not value(entry, "md5") or value(entry, "md5") == value(r, "md5") or not value(r, "md5")):
            continue  # a packaged file keeps the build's times, as dpkg unpacked it
        package, installed = _owning_install(owned, path)
        reasons = []
        if after(anchor, boot):
            reasons.append(f"its inode appeared at {anchor:%Y-%m-%d %H:%M:%S}Z, while the system was up")
        # package managers write their own scripts (maintainer scripts) with the archive's times: only
        # compiled code claiming to predate its directory's package counts
        if installed is not None and mtime < installed - STOMP_MARGIN and is_binary(r):
            reasons.append(f"it claims to predate {package!r}, which created its directory at {installed:%Y-%m-%d}")
        if not reasons:
            continue
        which = "birth" if value(r, "btime") is not None else "change"
        why = (
            f"{path!r} has mtime {mtime:%Y-%m-%d %H:%M:%S}Z, {(anchor - mtime).days} days before its inode's "
            f"{which} time; " + "; and ".join(reasons) + ": its times were set back."
        )
        yield hit(f"file:{path}", [link("disk/files", sid, i)], 0.75, why)


ROTATION_SUFFIX = re.compile(r"(\.\d+|-\d{8})?(\.(gz|xz|bz2|zst))?$")  # syslog.1, auth.log.2.gz, syslog-20261201


def text_log_family(path: str) -> str | None:
    """The text log a file belongs to with its rotations (``/var/log/syslog.1`` -> ``/var/log/syslog``),
    or None for journal files: those are the reference the text logs are read against, and a
    per-user journal only holds what that user's services said."""
    if "/journal/" in path or path.endswith((".journal", ".journal~")):
        return None
    return ROTATION_SUFFIX.sub("", path)


def _records_by(logs, key) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, r in logs.iterrows():
        if value(r, "ts") is not None and value(r, "path") and (name := key(str(value(r, "path")))):
            out.setdefault(name, []).append(i)
    return out


def _silences(times, other_times, boot):
    """(start, end, where) of each silence of a text log worth reading: between two of its records
    for at least LOG_GAP_MIN (a burst the daemon rate-limited is shorter), after its last record,
    and before its first one only when that came LOG_START_GRACE after boot (a logging daemon
    starts after the journal; what an earlier boot or a removed rotation held is not this boot's)."""
    if boot is not None and times[0] > boot + LOG_START_GRACE:
        yield (max(other_times[0], boot), times[0], "before its first record")
    yield from ((a, b, "between two of its records") for a, b in zip(times, times[1:]) if b - a >= LOG_GAP_MIN)
    yield (times[-1], other_times[-1], "after its last record")


def _emptied_logs(tables, sid, boot):
    """Empty files under /var/log that were written, then emptied while the system was up: the file
    is older than this boot, or lived LOG_EMPTIED_AFTER before its last change, and no rotation of
    it was made around that change (logrotate's copytruncate empties a log too, beside its copy)."""
    files = frame(tables, "disk/files")
    if not len(files) or "path" not in files:
        return
    births = files["btime"] if "btime" in files else [None] * len(files)
    rotations: dict[str, list] = {}  # a log -> birth times of its rotated copies (one pass over the walk)
    for p, b in zip(files["path"].astype(str), births):
        if p.startswith(LOG_DIR) and (family := text_log_family(p)) and family != p and not pd.isna(b):
            rotations.setdefault(family, []).append(b)
    for i, r in files.iterrows():
        path = str(value(r, "path") or "")
        if value(r, "type") != "file" or not path.startswith(LOG_DIR) or value(r, "size") not in (0,):
            continue
        born, changed = value(r, "btime"), value(r, "mtime") or value(r, "ctime")
        if not after(changed, boot):
            continue
        lived = born is None or not after(born, boot) or changed - born >= LOG_EMPTIED_AFTER
        rotated = any(abs(b - changed) <= LOG_EMPTIED_AFTER for b in rotations.get(path, []))
        if not lived or rotated:
            continue
        why = f"{path!r} is empty, and was emptied at {changed:%Y-%m-%d %H:%M:%S}Z while the system was up " + (
            f"(the file exists since {born:%Y-%m-%d %H:%M:%S}Z; no rotated copy was made then)."
            if born is not None
            else "(truncated)."
        )
        yield hit(f"file:{path}", [link("disk/files", sid, i)], 0.7, why)


def log_tampering(tables, graph, sid):
    """A log file emptied or cut while the system was up: a file under /var/log emptied after boot,
    or a text log (with its rotations) whose records stop, start late or break while another log
    (the journal) kept recording the same services in that time."""
    boot = boot_time(tables)
    yield from _emptied_logs(tables, sid, boot)
    logs = frame(tables, "disk/logs")
    if not len(logs):
        return
    families = _records_by(logs, text_log_family)
    sources = _records_by(logs, lambda p: p)
    for family, rows in families.items():
        services = {value(logs.loc[j], "service") for j in rows} - {None}
        others = [
            j
            for p, rs in sources.items()
            if text_log_family(p) != family
            for j in rs
            if value(logs.loc[j], "service") in services
        ]
        if not services or len(others) < LOG_GAP_RECORDS:
            continue
        times = sorted(logs.loc[j, "ts"] for j in rows)
        other_times = sorted(logs.loc[j, "ts"] for j in others)
        for start, end, where in _silences(times, other_times, boot):
            inside = [t for t in other_times if start < t < end]
            if len(inside) < LOG_GAP_RECORDS or not after(end, boot):
                continue
            why = (
                f"{family!r} holds nothing {where} ({start:%H:%M:%S}-{end:%H:%M:%S}Z), while other logs recorded "
                f"{len(inside)} entries of the same services ({', '.join(sorted(services))[:120]}) in that time: "
                f"records were removed or logging was stopped."
            )
            yield hit(f"file:{family}", [link("disk/logs", sid, rows[0]), link("disk/logs", sid, rows[-1])], 0.65, why)
            break


RSYSLOG_DISCARD = re.compile(r"^(?P<selector>[a-z0-9*,]+\.[a-z*!=]+(\s*;\s*[a-z0-9*,]+\.[a-z*!=]+)*)\s+(stop|~)$", re.I)
JOURNALD_DISCARD = re.compile(
    r"^(Storage\s*=\s*(none|volatile)|MaxLevelStore\s*=\s*(0|1|2|emerg|alert|crit))\s*$", re.I
)


def logging_config(tables, graph, sid):
    """A logging setting that throws records away, in a file no package installed: rsyslog told to
    stop (discard) whole facilities, or journald told to keep nothing on disk (Storage=none or
    volatile) or only emergencies."""
    files, owned, boot = files_by_path(tables), package_owner(tables), boot_time(tables)
    for i, r in frame(tables, "disk/persistence").iterrows():
        if value(r, "kind") != "log_config":
            continue
        path, line = str(value(r, "path") or ""), str(value(r, "command") or "").strip()
        if path in owned:
            continue  # the distribution's own choice (a cloud image's volatile journal)
        if m := RSYSLOG_DISCARD.match(line):
            what = f"rsyslog discards every record of {m.group('selector')!r}"
        elif JOURNALD_DISCARD.match(line):
            what = "journald keeps " + (
                "only the most severe records" if "maxlevel" in line.lower() else "no log on disk"
            )
        else:
            continue
        row = files.get(path) or {}
        changed = next((value(row, c) for c in ("btime", "ctime", "mtime") if value(row, c) is not None), None)
        recent = after(changed, boot)
        why = f"{path!r} says {line!r}: {what}; no package installed the file" + (
            f", and it was written at {changed:%Y-%m-%d %H:%M:%S}Z while the system was up." if recent else "."
        )
        yield hit(f"file:{path}", [link("disk/persistence", sid, i)], 0.8, why, severity="high" if recent else "medium")


RULES: dict[str, dict] = {
    "tamper.package_file_modified": {
        "title": "Packaged file differs from the package database",
        "attack_id": "T1554",
        "severity": "high",
        "confidence": 0.9,
        "keys_on": "the md5 of a file the disk walk hashed (executables and the profile's hash paths) against "
        "the md5 dpkg recorded for that path when its package was installed",
        "joins": ["disk/files", "disk/package_files"],
        "grading": "high: a system binary or library replaced outside the package manager is a trojan or a "
        "hand patch; 0.9 (conffiles have no recorded md5 and never match)",
        "chain": "the file -> processes running it -> persistence that runs it",
        "fn": package_file_modified,
    },
    "tamper.timestomp": {
        "title": "File times set back (timestomping)",
        "attack_id": "T1070.006",
        "severity": "medium",
        "confidence": 0.75,
        "keys_on": "a program or library (executable bits, ELF build-id, shared-object name) not installed by a "
        "package (or changed since) whose mtime is more than a day older than its inode's birth (else change) "
        "time, and whose inode appeared after this boot, or compiled code (ELF, shared object) that claims to "
        "predate the package that created its directory",
        "joins": ["disk/files", "disk/package_files", "memory/processes"],
        "grading": "medium (0.75): copies that keep times (cp -p, tar) look alike, but not inside a package "
        "directory they predate or in a file born while the system ran; data files are left out because "
        "installers copy them with their times (skeleton dotfiles, dpkg metadata, ucf templates)",
        "chain": "the file -> processes running it or mapping it",
        "fn": timestomp,
    },
    "tamper.log_tampering": {
        "title": "Log emptied or cut while the system was up",
        "attack_id": "T1070.002",
        "severity": "medium",
        "confidence": 0.65,
        "keys_on": "a file under /var/log emptied after boot (its inode older than its last change), or a text "
        f"log (with its rotations) silent after its last record, for a minute or more between two records, or "
        f"before a first record that came 5+ minutes after boot, while another log (the journal) recorded "
        f"{LOG_GAP_RECORDS}+ entries of the same services in that time; journal files are the reference, never "
        f"the suspect",
        "joins": ["disk/files", "disk/logs", "memory/processes"],
        "grading": "medium (0.65): rotations are read as one log, a rate-limited burst is shorter than a minute "
        "and a daemon's late start is within minutes of boot; what remains is a silence while the journal kept "
        "recording the same services",
        "chain": "the log file",
        "fn": log_tampering,
    },
    "tamper.logging_config": {
        "title": "Logging configured to throw records away",
        "attack_id": "T1562.006",
        "severity": "medium",
        "confidence": 0.8,
        "keys_on": "a setting line of rsyslog (rsyslog.conf, rsyslog.d) or journald (journald.conf, its .d "
        "directories) in a file no package installed that discards whole facilities (`<facility>.<priority> "
        "stop` or `~`) or keeps no journal on disk (Storage=none|volatile, MaxLevelStore=crit or less)",
        "joins": ["disk/persistence", "disk/files", "disk/package_files", "memory/processes"],
        "grading": "high (0.8) when the file was written while the system was up, medium before; property "
        "filters (`:msg, contains, ... stop`) are left out: they trim noise, they do not silence a facility",
        "chain": "the configuration file",
        "fn": logging_config,
    },
}
