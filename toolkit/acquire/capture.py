"""Packet capture of a running domain's network backends: QEMU's ``filter-dump``.

A stock libvirtd has no packet-capture API and its network filters do not
record frames, so the capture is QEMU's own ``filter-dump`` object, added and
removed through libvirt's QMP passthrough (``virsh qemu-monitor-command``;
libvirt marks the domain "tainted: custom-monitor" in its log, which is all
the passthrough changes). QEMU 7.2 opens the capture file by name (no file
descriptor passing for this object), so the file is a named pipe in a
private staging directory, owned by the user QEMU runs as, and snapscope
copies what arrives into ``net-<netdev>.pcap``, hashing it as it comes.
On a host whose QEMU is confined (AppArmor, SELinux) QEMU may not be allowed
to open the pipe: the capture is then reported as a warning, the rest of the
acquisition goes on.

Example::

    caps = start_captures(uri, plan, vm_dir, staging, stop)
    ...                                   # the guest runs, frames are recorded
    entries, warnings = stop_captures(uri, plan["name"], caps)
"""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.acquire import streams, virsh
from toolkit.schemas import diagnostic


def _qmp(uri: str, domain: str, command: str, **arguments) -> str | None:
    """Run one QMP command through libvirt; the error text, or None when it worked."""
    request = {"execute": command, "arguments": arguments}
    proc = virsh.run(uri, "qemu-monitor-command", "--domain", domain, "--cmd", json.dumps(request), check=False)
    if proc.returncode:
        return virsh.error_text(proc)
    try:
        reply = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return f"unexpected reply: {proc.stdout.strip()[:200]}"
    error = reply.get("error")
    return f"{error.get('class')}: {error.get('desc')}" if isinstance(error, dict) else None


def filter_id(netdev: str) -> str:
    """The QOM id of snapscope's capture on ``netdev``: ``filter_id("hostnet0")`` -> ``'snapscope-pcap-hostnet0'``"""
    return f"snapscope-pcap-{netdev}"


def start_captures(uri: str, plan: dict, vm_dir: Path, staging: Path, stop) -> list[dict]:
    """Start recording every network backend of the domain; each capture is a dict for :func:`stop_captures`.
    A backend QEMU would not record gets a capture with ``warning`` set and no sink."""
    captures = []
    for netdev in plan["netdevs"]:
        dest = vm_dir / f"net-{netdev}.pcap"
        sink = streams.start_sink(staging / f"{plan['dir']}-{netdev}.pcap", dest, stop, owner=plan["qemu_owner"])
        arguments = {"qom-type": "filter-dump", "id": filter_id(netdev), "netdev": netdev, "file": str(sink["fifo"])}
        error = _qmp(uri, plan["name"], "object-add", **arguments)
        capture = {"netdev": netdev, "sink": sink, "warning": None}
        if error:
            streams.abort_sink(sink)
            entry = streams.finish_sink(sink)
            Path(entry["path"]).unlink(missing_ok=True)  # nothing was recorded: no empty file as evidence
            capture.update(sink=None, warning=diagnostic("warning", "pcap", netdev, f"QEMU did not record: {error}"))
        else:
            streams.writer_done(sink)  # QEMU holds the pipe now: its close ends the capture
        captures.append(capture)
    return captures


def stop_captures(uri: str, domain: str, captures: list[dict]) -> tuple[list[dict], list[dict]]:
    """Remove the capture objects and drain the pipes: (file entries, warnings)."""
    entries, warnings = [], []
    for capture in captures:
        if capture["sink"] is None:
            warnings.append(capture["warning"])
            continue
        error = _qmp(uri, domain, "object-del", id=filter_id(capture["netdev"]))
        if error:
            # QEMU still holds the pipe: stop reading, which ends its writes to it
            streams.abort_sink(capture["sink"])
            warnings.append(diagnostic("warning", "pcap", capture["netdev"], f"could not remove the capture: {error}"))
        entries.append(streams.finish_sink(capture["sink"]))
        capture["sink"] = None
    return entries, warnings
