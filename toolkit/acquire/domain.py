"""One domain's acquisition: the moment, the copies, and the domain left as it was.

Paused mode (the default), everything inside one pause::

    suspend -> external overlays (a disk-only snapshot without metadata)
            -> memory dump into a pipe, hashed as written
            -> (--disk copy: the disk files copied) -> resume

The overlays come before the memory because a migration-format dump leaves
QEMU's block nodes inactive until the guest resumes. The guest's pause is
measured from QEMU's own STOP and RESUME events (libvirt's monitor event
stream), else from the host's clock around suspend and resume.

Live mode: one libvirt external snapshot with ``--live``: libvirt saves the
memory by a live migration while the guest runs; QEMU stops the guest only
for the last dirty pages, and libvirt switches the disks to their overlays in
that same stop. (QEMU's ``dump-guest-memory`` is no live mode: measured on
QEMU 7.2, the guest stays stopped, status ``save-vm``, for the whole dump,
``detach`` or not.)

After the guest runs again: packet captures stopped, the frozen disk images
(the overlays' backing files, which QEMU no longer writes) copied and hashed,
and with ``--merge`` each overlay committed back into the image under it
(``blockcommit --active --shallow --pivot``) and deleted, so the disk chain is as before. Without ``--merge``
the domain runs on the overlays and the images under them stay read-only
evidence on the host.

Whatever happens (an error, Ctrl-C, a failed step), :func:`acquire_domain`
ends with the guest running if it was running, the captures stopped, and,
unless the acquisition completed, the overlays merged back.

Example::

    result = acquire_domain(ctx)     # ctx: see toolkit.acquire.run
    result["pause"]["seconds"], result["consistency"]
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from toolkit.acquire import capture, record, streams, virsh
from toolkit.acquire.plan import DOMAIN_FILE, MEMORY_FORMATS
from toolkit.case.store import now_iso
from toolkit.errors import AcquireError
from toolkit.evidence.libvirt_xml import parse_domain
from toolkit.hashing import sha256_file
from toolkit.schemas import diagnostic

CONSISTENCY = {
    "pause": "memory and disks at one moment: the guest was stopped from before the disk overlays (or copies) "
    "until after the memory dump, so nothing it did is in one and not the other",
    "live": "memory and disks at one moment, the end of the save: memory was saved by a live migration while the "
    "guest ran, and QEMU stopped the guest for the last dirty pages, in which stop libvirt took the disk overlays; "
    "the image shows the guest at that final stop, not when the save began",
    "already-paused": "memory and disks at one moment: the domain was paused before the acquisition and stayed paused",
    "memory-only": "memory only (--disk none): no disk was captured",
}
# a dump writes at 100 MiB/s and more here; libvirt gets ample time before the job is called stuck
DUMP_BYTES_PER_SECOND = 10 << 20


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def disk_chains(xml_text: str) -> dict[str, list[str]]:
    """{target: [image, backing files...]} of every disk in a domain XML.

    >>> disk_chains("<domain><devices><disk type='file' device='disk'><source file='/i/a.qcow2'/>"
    ...             "<target dev='vda'/></disk></devices></domain>")
    {'vda': ['/i/a.qcow2']}
    """
    facts = parse_domain(xml_text.encode(), "virsh dumpxml")
    return {
        d["target"]: [d["source"]] + [b["source"] for b in d.get("backing") or [] if b.get("source")]
        for d in facts["disks"]
    }


def _state(ctx) -> str:
    return virsh.run(ctx["uri"], "domstate", "--domain", ctx["name"]).stdout.strip()


def _interrupted(ctx) -> None:
    if ctx["stop"].is_set():
        raise KeyboardInterrupt("acquisition interrupted")


def _log(ctx, entry: dict, role: str) -> None:
    """Record a written file; a write that failed is an error once it is recorded."""
    record.log_file(ctx["record"], ctx["name"], entry, role=role)
    if entry.get("error"):
        raise AcquireError(entry["error"])


def _escape_spec(path) -> str:
    # virsh splits --memspec/--diskspec on commas; a comma in a path is written twice
    return str(path).replace(",", ",,")


def _snapshot_args(ctx, *, memory_file: Path | None) -> list[str]:
    """snapshot-create-as arguments: external overlays for the captured disks (none with --disk none),
    the memory file for a live snapshot; no libvirt metadata is left behind."""
    args = ["snapshot-create-as", "--domain", ctx["name"], "--name", f"snapscope-{_stamp()}", "--no-metadata"]
    args += ["--atomic"]
    if memory_file is None:
        args.append("--disk-only")
    else:
        args += ["--memspec", f"file={_escape_spec(memory_file)},snapshot=external"]
        if ctx["plan"]["state"] == "running":
            args.append("--live")
    overlays = []
    if ctx["options"].disk == "external":
        for disk in ctx["plan"]["disks"]:
            image = Path(disk["chain"][0])
            overlay = image.with_name(f"{image.stem}.snapscope-{_stamp()}.qcow2")
            if overlay.exists():
                raise AcquireError(f"{ctx['name']}: {overlay} exists already; not overwriting it")
            overlays.append({"target": disk["target"], "path": str(overlay), "base": str(image), "merged": False})
            args += ["--diskspec", f"{disk['target']},snapshot=external,file={_escape_spec(overlay)}"]
    for disk in ctx["plan"]["disks"] if ctx["options"].disk != "external" else []:
        args += ["--diskspec", f"{disk['target']},snapshot=no"]
    for disk in ctx["plan"]["left_out"]:
        args += ["--diskspec", f"{disk['target']},snapshot=no"]
    ctx["pending_overlays"] = overlays
    return args


def _take_overlays(ctx) -> None:
    virsh.run(ctx["uri"], *_snapshot_args(ctx, memory_file=None), timeout=300)
    ctx["overlays"] = ctx.pop("pending_overlays")


def _dump_memory(ctx) -> None:
    fmt = MEMORY_FORMATS[ctx["options"].memory_format]
    sink = streams.start_sink(ctx["staging"] / f"{ctx['plan']['dir']}-memory", ctx["vm_dir"] / fmt["file"], ctx["stop"])
    timeout = 600 + ctx["plan"]["memory_bytes"] / DUMP_BYTES_PER_SECOND
    proc = virsh.run_until(
        ctx["uri"],
        "dump",
        "--domain",
        ctx["name"],
        "--file",
        sink["fifo"],
        *fmt["args"],
        stop=ctx["stop"],
        on_stop=lambda: streams.abort_sink(sink),
        timeout=timeout,
    )
    entry = streams.finish_sink(sink)
    entry["complete"] = entry["complete"] and proc.returncode == 0
    _log(ctx, entry, "memory")
    _interrupted(ctx)
    if proc.returncode:
        raise AcquireError(f"{ctx['name']}: the memory dump failed: {virsh.error_text(proc)}")


def _copy_disks(ctx) -> None:
    """Copy every captured disk's files (image, then its backing files) into the domain's directory."""
    for disk in ctx["plan"]["disks"]:
        for n, path in enumerate(disk["chain"]):
            entry = streams.copy_file(path, ctx["vm_dir"] / Path(path).name, ctx["stop"])
            _log(ctx, entry, "disk" if n == 0 else "backing")
            _interrupted(ctx)


def _suspend(ctx) -> None:
    ctx["bracket"] = [time.time(), None]
    virsh.run(ctx["uri"], "suspend", "--domain", ctx["name"])
    ctx["paused_by_us"] = True


def _resume(ctx) -> None:
    virsh.run(ctx["uri"], "resume", "--domain", ctx["name"])
    ctx["paused_by_us"] = False
    ctx["bracket"][1] = time.time()


def _paused_moment(ctx) -> None:
    if ctx["plan"]["state"] == "running":
        _suspend(ctx)
    if ctx["options"].disk == "external":
        _take_overlays(ctx)
    _dump_memory(ctx)
    if ctx["options"].disk == "copy":
        _copy_disks(ctx)
    if ctx["paused_by_us"]:
        _resume(ctx)


def _live_moment(ctx) -> None:
    dest = ctx["vm_dir"] / ctx["plan"]["memory_file"]
    args = _snapshot_args(ctx, memory_file=dest)
    ctx["bracket"] = [time.time(), None]
    proc = virsh.run_until(
        ctx["uri"],
        *args,
        stop=ctx["stop"],
        on_stop=lambda: virsh.run(ctx["uri"], "domjobabort", "--domain", ctx["name"], check=False),
        timeout=600 + ctx["plan"]["memory_bytes"] / DUMP_BYTES_PER_SECOND,
    )
    ctx["bracket"][1] = time.time()
    if proc.returncode == 0:
        ctx["overlays"] = ctx.pop("pending_overlays")
    if dest.exists():
        # libvirt rewrites a save image's header once the stream is done: it cannot be read through a pipe
        entry = {
            "path": str(dest),
            "sha256": sha256_file(dest),
            "size": dest.stat().st_size,
            "complete": proc.returncode == 0,
            "how": "hashed when libvirt had closed it (a save image's header is written last)",
            "error": None,
        }
        _log(ctx, entry, "memory")
    _interrupted(ctx)
    if proc.returncode:
        raise AcquireError(f"{ctx['name']}: the live snapshot failed: {virsh.error_text(proc)}")


def _merge(ctx) -> None:
    """Commit each overlay back into the image it was made over (only that one: ``--shallow``; the
    images below may be someone's evidence), switch the disk to it and delete the overlay."""
    for overlay in ctx["overlays"]:
        if overlay["merged"]:
            continue
        proc = virsh.run(
            ctx["uri"],
            "blockcommit",
            "--domain",
            ctx["name"],
            "--path",
            overlay["target"],
            "--active",
            "--shallow",
            "--pivot",
            "--wait",
            timeout=3600,
            check=False,
        )
        chains = disk_chains(virsh.run(ctx["uri"], "dumpxml", "--domain", ctx["name"]).stdout)
        if proc.returncode or (chains.get(overlay["target"]) or [None])[0] != overlay["base"]:
            why = virsh.error_text(proc) if proc.returncode else f"the disk is on {chains.get(overlay['target'])}"
            ctx["diagnostics"].append(
                diagnostic("error", "merge", overlay["path"], f"overlay not merged back, the domain runs on it: {why}")
            )
            continue
        Path(overlay["path"]).unlink(missing_ok=True)
        overlay["merged"] = True


def _restore(ctx, complete: bool) -> None:
    """The domain as it was: running if it was, captures stopped, overlays merged back unless the
    acquisition completed (then --merge decided). Every failure here is a diagnostic, never an exception."""
    steps = []
    if ctx["plan"]["state"] == "running":
        steps.append(("resume", lambda: _state(ctx) == "paused" and _resume_any(ctx)))
    steps.append(("pcap", lambda: _stop_captures(ctx)))
    if ctx["overlays"] and (not complete or ctx["options"].merge):
        steps.append(("merge", lambda: _merge(ctx)))
    for what, step in steps:
        try:
            step()
        except Exception as exc:  # cleanup goes on: the next step may still save the domain
            ctx["diagnostics"].append(diagnostic("error", what, ctx["name"], f"{type(exc).__name__}: {exc}"))


def _resume_any(ctx) -> None:
    """Resume a guest found paused (by us, or by libvirt for a snapshot that failed)."""
    if ctx.get("bracket") is None:
        ctx["bracket"] = [None, None]
    _resume(ctx)


def _stop_captures(ctx) -> None:
    captures, ctx["captures"] = ctx["captures"], []
    entries, warnings = capture.stop_captures(ctx["uri"], ctx["name"], captures)
    ctx["diagnostics"] += warnings
    for entry in entries:
        record.log_file(ctx["record"], ctx["name"], entry, role="pcap")


def _pause(ctx, watch) -> dict:
    if watch is None:
        return {"seconds": None, "source": None, "note": "the domain was paused before and is left paused"}
    intervals = virsh.pause_intervals(virsh.parse_pause_events(virsh.stop_event_watch(watch)))
    if intervals:
        return {
            "seconds": round(sum((b - a).total_seconds() for a, b in intervals), 3),
            "longest": round(max((b - a).total_seconds() for a, b in intervals), 3),
            "stops": len(intervals),
            "stopped_at": intervals[0][0].isoformat(),
            "resumed_at": intervals[-1][1].isoformat(),
            "source": "QEMU's STOP and RESUME events",
        }
    bracket = ctx.get("bracket") or [None, None]
    if bracket[0] is not None and bracket[1] is not None:
        return {"seconds": round(bracket[1] - bracket[0], 3), "source": "host clock around the pause (upper bound)"}
    return {"seconds": None, "source": None, "note": "no pause was observed"}


def _consistency(ctx) -> str:
    if ctx["options"].disk == "none":
        return CONSISTENCY["memory-only"]
    if ctx["plan"]["state"] == "paused":
        return CONSISTENCY["already-paused"]
    return CONSISTENCY["live" if ctx["options"].live else "pause"]


def acquire_domain(ctx: dict) -> dict:
    """Acquire one domain into ``ctx["out_dir"]/<dir>``; returns its result (also in the record).

    ``ctx``: {"uri", "name", "plan", "options", "record", "out_dir", "staging", "stop"} (toolkit.acquire.run).
    Raises AcquireError or KeyboardInterrupt after the domain is restored and the outcome recorded.
    """
    ctx.update(vm_dir=ctx["out_dir"] / ctx["plan"]["dir"], overlays=[], captures=[], diagnostics=[], paused_by_us=False)
    ctx["vm_dir"].mkdir()
    started = now_iso()
    record.update_domain(ctx["record"], ctx["name"], status="acquiring", started=started)
    watch = virsh.start_event_watch(ctx["uri"], ctx["name"]) if ctx["plan"]["state"] == "running" else None
    complete, reason, chains_before = False, None, None
    try:
        xml_text = virsh.run(ctx["uri"], "dumpxml", "--domain", ctx["name"]).stdout
        chains_before = disk_chains(xml_text)
        how = "libvirt's live definition just before the moment, hashed as written"
        _log(ctx, streams.write_bytes(ctx["vm_dir"] / DOMAIN_FILE, xml_text.encode(), how=how), "domain")
        if ctx["options"].pcap_seconds:
            ctx["captures"] = capture.start_captures(
                ctx["uri"], ctx["plan"], ctx["vm_dir"], ctx["staging"], ctx["stop"]
            )
            if ctx["stop"].wait(ctx["options"].pcap_seconds):
                raise KeyboardInterrupt("acquisition interrupted")
        (_live_moment if ctx["options"].live else _paused_moment)(ctx)
        _stop_captures(ctx)
        if ctx["options"].disk == "external":
            _copy_disks(ctx)  # the images under the overlays no longer change: copied with the guest running
        complete = True
    except KeyboardInterrupt:
        reason = "interrupted"
        raise
    except AcquireError as exc:
        reason = str(exc)
        raise
    except Exception as exc:  # a bug: the domain is still restored, and the record says what happened
        reason = f"internal error ({type(exc).__name__}): {exc}"
        raise
    finally:
        _restore(ctx, complete)
        result = {
            "status": "complete" if complete and not _errors(ctx) else "incomplete",
            "reason": reason or ("; ".join(d["why"] for d in _errors(ctx)) or None),
            "started": started,
            "ended": now_iso(),
            "mode": "live" if ctx["options"].live else "pause",
            "memory_format": ctx["options"].memory_format,
            "disk_mode": ctx["options"].disk,
            "consistency": _consistency(ctx),
            "pause": _pause(ctx, watch),
            "chain_before": chains_before,
            "chain_after": _chains_now(ctx),
            "overlays": ctx["overlays"],
            "left_out": ctx["plan"]["left_out"],
            "diagnostics": ctx["diagnostics"],
            "state_after": _state_or_none(ctx),
        }
        record.end_domain(ctx["record"], ctx["name"], result)
    return result


def _errors(ctx) -> list[dict]:
    return [d for d in ctx["diagnostics"] if d["severity"] == "error"]


def _chains_now(ctx) -> dict | None:
    with contextlib.suppress(AcquireError):
        return disk_chains(virsh.run(ctx["uri"], "dumpxml", "--domain", ctx["name"]).stdout)
    return None


def _state_or_none(ctx) -> str | None:
    with contextlib.suppress(AcquireError):
        return _state(ctx)
    return None
