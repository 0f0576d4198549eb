"""The acquisition's own record: ``acquisition.json`` and its custody log, from the first byte.

The output directory of ``snapscope acquire`` holds, beside one directory
per domain, two files:

- ``custody.jsonl``: the hash-chained log of :mod:`toolkit.case.custody`,
  started before the first byte is written: ``acquire.start`` (who, when,
  which host, libvirt and QEMU versions, the options), one ``acquire.file``
  per file written (its sha256 as written, complete or not), one
  ``acquire.domain`` per domain (pause, consistency, disk chain before and
  after) and ``acquire.end`` (complete or incomplete, and why). When the
  directory is analysed, the case continues this chain
  (:mod:`toolkit.case.adopt`).
- ``acquisition.json``: the same as one document, rewritten atomically
  after every step. Its ``status`` is ``incomplete`` from the start and
  becomes ``complete`` only at the end, so an acquisition that was
  interrupted, failed or killed is marked incomplete whatever happened.

File paths in both are relative to the output directory, so the evidence
can move to another machine and still be checked.

Example::

    record = open_record(out, options, versions, domains)
    log_file(record, "web01", entry, role="memory")
    close_record(record, "complete")
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import platform
import socket
import sys
import threading
from pathlib import Path

from toolkit.case import custody
from toolkit.case.store import atomic_write_bytes, now_iso
from toolkit.versions import __version__

MANIFEST = "acquisition.json"
FORMAT = "snapscope-acquisition/1"


def who_and_where() -> dict:
    """Who runs the acquisition, on which host (custody's first facts)."""
    machine_id = None
    with contextlib.suppress(OSError):  # containers often have none: None says so, the host names say where
        machine_id = Path("/etc/machine-id").read_text().strip() or None
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = None
    return {
        "user": user,
        "uid": os.getuid(),
        "sudo_user": os.environ.get("SUDO_USER"),
        "host": socket.gethostname(),
        "fqdn": socket.getfqdn(),
        "machine_id": machine_id,
        "kernel": platform.release(),
        "argv": sys.argv,
    }


def _save(record: dict) -> None:
    atomic_write_bytes(
        record["dir"] / MANIFEST, json.dumps(record["doc"], indent=2, sort_keys=True, default=str).encode()
    )


def open_record(out_dir: Path, options, versions: dict, domains: list[dict]) -> dict:
    """Create the output directory, start its custody log and write ``acquisition.json`` (incomplete)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = who_and_where()
    doc = {
        "format": FORMAT,
        "status": "incomplete",
        "reason": "in progress",
        "started": now_iso(),
        "ended": None,
        "who": started,
        "libvirt": versions,
        "snapscope": __version__,
        "options": {
            "uri": options.uri,
            "memory": options.memory_format,
            "disk": options.disk,
            "merge": options.merge,
            "pcap_seconds": options.pcap_seconds,
            "mode": "live" if options.live else "pause",
            "io_slots": options.io_slots,
        },
        "domains": {d["name"]: {"dir": d["dir"], "uuid": d["uuid"], "status": "waiting"} for d in domains},
    }
    record = {"dir": out_dir, "doc": doc, "lock": threading.Lock()}
    custody.append_event(
        out_dir,
        action="acquire.start",
        detail={
            "who": started,
            "libvirt": versions,
            "snapscope": __version__,
            "options": doc["options"],
            "domains": [d["name"] for d in domains],
        },
    )
    _save(record)
    return record


def relative(record: dict, path) -> str:
    """``path`` relative to the output directory (how the record names files)."""
    return os.path.relpath(path, record["dir"])


def log_file(record: dict, domain: str, entry: dict, *, role: str) -> dict:
    """Record one written file (complete or not) in custody and the manifest; returns the stored entry."""
    stored = {**entry, "path": relative(record, entry["path"]), "role": role}
    with record["lock"]:
        custody.append_event(
            record["dir"],
            action="acquire.file",
            path=stored["path"],
            sha256=stored["sha256"],
            size=stored["size"],
            detail={
                "domain": domain,
                "role": role,
                "complete": stored["complete"],
                "how": stored["how"],
                "error": stored.get("error"),
            },
        )
        record["doc"]["domains"][domain].setdefault("files", []).append(stored)
        _save(record)
    return stored


def update_domain(record: dict, domain: str, **fields) -> None:
    """Merge ``fields`` into a domain's entry and save the manifest (after each step)."""
    with record["lock"]:
        record["doc"]["domains"][domain].update(fields)
        _save(record)


def end_domain(record: dict, domain: str, result: dict) -> None:
    """The domain's outcome: in custody (one event) and in the manifest."""
    summary = {k: v for k, v in result.items() if k != "files"}
    with record["lock"]:
        custody.append_event(record["dir"], action="acquire.domain", detail={"domain": domain, **summary})
        record["doc"]["domains"][domain].update(summary)
        _save(record)


def close_record(record: dict, status: str, reason: str | None = None) -> dict:
    """End the acquisition: ``complete``, or ``incomplete`` with the reason; returns the manifest."""
    with record["lock"]:
        record["doc"].update({"status": status, "reason": reason, "ended": now_iso()})
        custody.append_event(record["dir"], action="acquire.end", detail={"status": status, "reason": reason})
        _save(record)
    return record["doc"]
