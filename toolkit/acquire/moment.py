"""The moment of one domain's acquisition: paused (the default) or live.

Paused mode, everything inside one pause::

    suspend -> external overlays (a disk-only snapshot without metadata)
            -> memory dump into a pipe, hashed as written
            -> (--disk copy: the disk files copied) -> resume

The overlays come before the memory because a migration-format dump leaves
QEMU's block nodes inactive until the guest resumes.

Live mode: one libvirt external snapshot with ``--live``: libvirt saves the
memory by a live migration while the guest runs; QEMU stops the guest only
for the last dirty pages, and libvirt switches the disks to their overlays in
that same stop. (QEMU's ``dump-guest-memory`` is no live mode: measured on
QEMU 7.2, the guest stays stopped, status ``save-vm``, for the whole dump,
``detach`` or not.)

Each function takes the domain's acquisition context (see
:func:`toolkit.acquire.domain.acquire_domain`) and records in it what it
changed (``overlays``, ``paused_by_us``, ``bracket``: host clock around the
pause), so that whatever happens next the domain can be restored.

Example::

    (live_moment if options.live else paused_moment)(ctx)
    copy_disks(ctx)        # external mode: the frozen images, with the guest running
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from toolkit.acquire import record, streams, virsh
from toolkit.acquire.plan import MEMORY_FORMATS
from toolkit.errors import AcquireError
from toolkit.hashing import sha256_file

# a dump writes at 100 MiB/s and more here; libvirt gets ample time before the job is called stuck
DUMP_BYTES_PER_SECOND = 10 << 20


@contextlib.contextmanager
def _timed(steps: dict, name: str):
    """Seconds each step of the moment took, host clock (where a pause goes)."""
    t0 = time.monotonic()
    try:
        yield
    finally:
        steps[name] = round(time.monotonic() - t0, 3)


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def domain_state(ctx) -> str:
    return virsh.run(ctx["uri"], "domstate", "--domain", ctx["name"]).stdout.strip()


def interrupted(ctx) -> None:
    if ctx["stop"].is_set():
        raise KeyboardInterrupt("acquisition interrupted")


def log_file(ctx, entry: dict, role: str) -> None:
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
    dest = ctx["vm_dir"] / fmt["file"]
    # flushed to disk once the guest runs again: a paused guest does not wait for the host's writeback
    sink = streams.start_sink(ctx["staging"] / f"{ctx['plan']['dir']}-memory", dest, ctx["stop"], sync=False)
    ctx["unsynced"].append(dest)
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
    log_file(ctx, entry, "memory")
    interrupted(ctx)
    if proc.returncode:
        raise AcquireError(f"{ctx['name']}: the memory dump failed: {virsh.error_text(proc)}")


def copy_disks(ctx, *, paused: bool = False) -> None:
    """Copy every captured disk's files (image, then its backing files) into the domain's directory;
    ``paused``: the guest waits, so flushing them to disk is left for after the resume."""
    for disk in ctx["plan"]["disks"]:
        for n, path in enumerate(disk["chain"]):
            dest = ctx["vm_dir"] / Path(path).name
            entry = streams.copy_file(path, dest, ctx["stop"], sync=not paused)
            if paused:
                ctx["unsynced"].append(dest)
            log_file(ctx, entry, "disk" if n == 0 else "backing")
            interrupted(ctx)


def _suspend(ctx) -> None:
    ctx["bracket"] = [time.time(), None]
    virsh.run(ctx["uri"], "suspend", "--domain", ctx["name"])
    ctx["paused_by_us"] = True


def resume(ctx) -> None:
    virsh.run(ctx["uri"], "resume", "--domain", ctx["name"])
    ctx["paused_by_us"] = False
    ctx["bracket"][1] = time.time()


def paused_moment(ctx) -> None:
    """Suspend, overlays, memory, (copies), resume: memory and disks at one paused moment."""
    interrupted(ctx)
    steps = ctx["steps"]
    if ctx["plan"]["state"] == "running":
        with _timed(steps, "suspend"):
            _suspend(ctx)
    if ctx["options"].disk == "external":
        with _timed(steps, "overlays"):
            _take_overlays(ctx)
    with _timed(steps, "memory"):
        _dump_memory(ctx)
    if ctx["options"].disk == "copy":
        with _timed(steps, "disk copies"):
            copy_disks(ctx, paused=True)
    if ctx["paused_by_us"]:
        with _timed(steps, "resume"):
            resume(ctx)


def live_moment(ctx) -> None:
    """One live external snapshot: memory saved while the guest runs, overlays in its final stop."""
    dest = ctx["vm_dir"] / ctx["plan"]["memory_file"]
    args = _snapshot_args(ctx, memory_file=dest)
    ctx["bracket"] = [time.time(), None]
    with _timed(ctx["steps"], "live snapshot"):
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
        log_file(ctx, entry, "memory")
    interrupted(ctx)
    if proc.returncode:
        raise AcquireError(f"{ctx['name']}: the live snapshot failed: {virsh.error_text(proc)}")
