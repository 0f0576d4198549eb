"""One domain's acquisition: the moment, the copies, and the domain left as it was.

:func:`acquire_domain` writes the domain XML, starts the packet captures,
takes the moment (:mod:`toolkit.acquire.moment`: paused, or live), stops the
captures, and in external mode copies the frozen disk images (the overlays'
backing files, which QEMU no longer writes) with the guest running. With
``--merge`` each overlay is then committed back into the image under it
(``blockcommit --active --shallow --pivot``) and deleted, so the disk chain
is as before; without it the domain runs on the overlays and the images under
them stay read-only evidence on the host.

The guest's pause is measured from QEMU's own STOP and RESUME events
(libvirt's monitor event stream), else from the host's clock around the
pause (an upper bound).

Whatever happens (an error, Ctrl-C, a failed step), :func:`acquire_domain`
ends with the guest running if it was running, the captures stopped, and,
unless the acquisition completed, the overlays merged back; the outcome is
recorded before it returns or raises.

Example::

    result = acquire_domain(ctx)     # ctx: see toolkit.acquire.run
    result["pause"]["seconds"], result["consistency"]
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from toolkit.acquire import capture, record, streams, virsh
from toolkit.acquire.moment import copy_disks, domain_state, live_moment, log_file, paused_moment, resume
from toolkit.acquire.plan import DOMAIN_FILE
from toolkit.case.store import now_iso
from toolkit.errors import AcquireError
from toolkit.evidence.libvirt_xml import parse_domain
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
        steps.append(("resume", lambda: domain_state(ctx) == "paused" and _resume_any(ctx)))
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
    resume(ctx)


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
            "steps": ctx["steps"],
            "seconds": round(sum((b - a).total_seconds() for a, b in intervals), 3),
            "longest": round(max((b - a).total_seconds() for a, b in intervals), 3),
            "stops": len(intervals),
            "stopped_at": intervals[0][0].isoformat(),
            "resumed_at": intervals[-1][1].isoformat(),
            "source": "QEMU's STOP and RESUME events",
        }
    bracket = ctx.get("bracket") or [None, None]
    if bracket[0] is not None and bracket[1] is not None:
        return {
            "seconds": round(bracket[1] - bracket[0], 3),
            "source": "host clock around the pause (upper bound)",
            "steps": ctx["steps"],
        }
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
    ctx.update(
        vm_dir=ctx["out_dir"] / ctx["plan"]["dir"],
        overlays=[],
        captures=[],
        diagnostics=[],
        paused_by_us=False,
        steps={},
        unsynced=[],
    )
    ctx["vm_dir"].mkdir()
    started = now_iso()
    record.update_domain(ctx["record"], ctx["name"], status="acquiring", started=started)
    watch = virsh.start_event_watch(ctx["uri"], ctx["name"]) if ctx["plan"]["state"] == "running" else None
    complete, reason, chains_before = False, None, None
    try:
        xml_text = virsh.run(ctx["uri"], "dumpxml", "--domain", ctx["name"]).stdout
        chains_before = disk_chains(xml_text)
        how = "libvirt's live definition just before the moment, hashed as written"
        log_file(ctx, streams.write_bytes(ctx["vm_dir"] / DOMAIN_FILE, xml_text.encode(), how=how), "domain")
        if ctx["options"].pcap_seconds:
            ctx["captures"] = capture.start_captures(
                ctx["uri"], ctx["plan"], ctx["vm_dir"], ctx["staging"], ctx["stop"]
            )
            if ctx["stop"].wait(ctx["options"].pcap_seconds):
                raise KeyboardInterrupt("acquisition interrupted")
        (live_moment if ctx["options"].live else paused_moment)(ctx)
        streams.sync_files(ctx["unsynced"])
        _stop_captures(ctx)
        if ctx["options"].disk == "external":
            copy_disks(ctx)  # the images under the overlays no longer change: copied with the guest running
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
        return domain_state(ctx)
    return None
