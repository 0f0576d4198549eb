"""Open what libvirt leaves on disk: qcow2 chains, internal snapshots, raw/vmdk/vhdx/vdi.

libvirt and QEMU record backing files (and XML disk sources) as absolute host
paths that do not exist on an analyst's machine, and dissect.hypervisor 3.21
cannot open an overlay whose backing path is absolute at all. So the chain is
opened here, bottom-up: every layer is a file opened ``rb``, each qcow2 is
parsed by dissect's ``QCow2`` with ``allow_no_backing_file=True`` (it never
touches the path it records) and its ``backing_file`` is then set to the
stream of the layer below, which this module found itself. Nothing is ever
written; nothing is opened for writing.

Every element of the chain becomes a row (path used, path recorded, how it was
resolved) for the ``disk/chain`` table.

Example::

    disk = open_disk("evidence/disk.qcow2", search_paths=["/mnt/images"])
    disk["stream"].seek(0); mbr = disk["stream"].read(512)
    close_disk(disk)
"""

from __future__ import annotations

import os
from pathlib import Path

from toolkit.engines.disk.allocation import check_header, validate_tables
from toolkit.errors import DiskError
from toolkit.references import resolve_reference

QCOW2_MAGIC = b"QFI\xfb"
MAX_CHAIN = 64  # a loop in backing references must end in an error, not a hang


def detect_format(path: Path) -> str:
    """Identify a disk image by its magic bytes (raw when nothing matches).

    >>> detect_format(Path("base.qcow2"))  # doctest: +SKIP
    'qcow2'
    """
    with open(path, "rb") as fh:
        head = fh.read(0x48)
        if head[:4] == QCOW2_MAGIC:
            return "qcow2"
        if head[:4] == b"KDMV" or head.startswith(b"# Disk DescriptorFile"):
            return "vmdk"
        if head[:8] == b"vhdxfile":
            return "vhdx"
        if len(head) >= 0x44 and head[0x40:0x44] == b"\x7f\x10\xda\xbe":
            return "vdi"
        if head[:8] == b"conectix":
            return "vhd"
        fh.seek(0, os.SEEK_END)
        if fh.tell() >= 512:
            fh.seek(-512, os.SEEK_END)
            if fh.read(8) == b"conectix":
                return "vhd"
    return "raw"


def _qcow2_layer(path: Path, fh, where: str):
    from dissect.hypervisor.disk.qcow2 import QCow2

    try:
        q = QCow2(fh, allow_no_backing_file=True, allow_no_data_file=True)
    except UnicodeDecodeError:
        raise DiskError(f"{where}: backing file name is not valid UTF-8: corrupt qcow2 header") from None
    except EOFError:
        raise DiskError(f"{where}: corrupt qcow2 header (file truncated)") from None
    except NotImplementedError as e:
        raise DiskError(f"{where}: unsupported qcow2 feature: {e}") from None
    except Exception as e:  # dissect raises several types for a bad header
        raise DiskError(f"{where}: corrupt qcow2 header ({type(e).__name__}: {e})") from None
    return q


def _find_snapshot(q, wanted: str, where: str):
    for snap in q.snapshots:
        if wanted in (snap.name, snap.id):
            return snap
    have = ", ".join(f"{s.id}:{s.name}" for s in q.snapshots) or "none"
    raise DiskError(f"{where}: no internal snapshot named or numbered {wanted!r} (has: {have})")


def describe_snapshots(path) -> list[dict]:
    """Internal snapshots of a qcow2 file: id, name, date, vm_state_size, disk_size.

    >>> describe_snapshots("disk.qcow2")  # doctest: +SKIP
    [{'id': '1', 'name': 'lab-savevm', ...}]
    """
    path = Path(path)
    with open(path, "rb") as fh:
        q = _qcow2_layer(path, fh, str(path))
        return [
            {
                "id": s.id,
                "name": s.name,
                "date": s.header.date_sec,
                "vm_state_size": s.header.vm_state_size,
                "disk_size": s.extra.disk_size,
            }
            for s in q.snapshots
        ]


def _open_layer(
    path: Path,
    fmt: str | None,
    snapshot,
    search_paths,
    allow_missing: bool,
    state: dict,
    depth: int,
    recorded: str | None,
    how: str,
):
    """Open one layer and, recursively, everything below it; return its stream."""
    if depth >= MAX_CHAIN:
        raise DiskError(f"{path}: backing chain deeper than {MAX_CHAIN} (a loop?)")
    real = path.resolve()
    if real in state["seen"]:
        raise DiskError(f"{path}: backing chain loops back to {real}")
    state["seen"].add(real)
    fmt = fmt or detect_format(path)
    file_size = path.stat().st_size
    row = {
        "disk": state["disk"],
        "depth": depth,
        "path": str(path),
        "recorded_path": recorded,
        "resolved_by": how,
        "format": fmt,
        "snapshot": snapshot,
        "size": file_size,
    }
    state["chain"].append(row)

    if fmt != "qcow2":
        if snapshot:
            raise DiskError(f"{path}: internal snapshots need qcow2, this is {fmt}")
        if fmt == "raw":
            fh = open(path, "rb")
            state["handles"].append(fh)
            row["virtual_size"] = file_size
            state["layers"].append(
                {"path": real, "format": fmt, "snapshot": None, "qcow2": None, "l1": None, "file_size": file_size}
            )
            return fh, file_size
        from dissect.target import container

        try:
            c = container.open(path)
        except Exception as e:
            raise DiskError(f"{path}: cannot open {fmt} image ({type(e).__name__}: {e})") from None
        state["handles"].append(c)
        row["virtual_size"] = c.size
        state["layers"].append(
            {"path": real, "format": fmt, "snapshot": None, "qcow2": None, "l1": None, "file_size": file_size}
        )
        return c, c.size

    fh = open(path, "rb")
    state["handles"].append(fh)
    where = str(path)
    q = _qcow2_layer(path, fh, where)
    check_header(q, file_size, where)
    row["virtual_size"] = q.header.size
    l1 = q.l1_table
    if snapshot is not None:
        snap = _find_snapshot(q, str(snapshot), where)
        if snap.header.l1_table_offset + snap.header.l1_size * 8 > file_size:
            raise DiskError(f"{where}: snapshot {snap.name!r} L1 table lies outside the file")
        l1 = snap.l1_table
        row["snapshot"] = f"{snap.id}:{snap.name}"
    # Every pointer checked once, up front: later reads can then trust them.
    validate_tables(q, l1, file_size, where)
    layer = {"path": real, "format": "qcow2", "snapshot": row["snapshot"], "qcow2": q, "l1": l1, "file_size": file_size}
    state["layers"].append(layer)

    if q.needs_data_file:
        if not q.image_data_file:  # the feature bit without the header extension naming the file
            raise DiskError(f"{where}: needs an external data file but names none: corrupt qcow2 header")
        data_path, data_how, tried = resolve_reference(q.image_data_file, path.parent, search_paths)
        if data_path is None:
            raise DiskError(f"{where}: external data file {q.image_data_file!r} not found (tried: {', '.join(tried)})")
        q.data_file = open(data_path, "rb")
        state["handles"].append(q.data_file)

    if q.header.backing_file_offset:
        wanted = q.auto_backing_file
        below, below_how, tried = resolve_reference(wanted, path.parent, search_paths)
        if below is None:
            if not allow_missing:
                raise DiskError(
                    f"{where}: backing file {wanted!r} not found (tried: {', '.join(tried)}); "
                    f"pass --search-path DIR, or --allow-missing-backing to read it as zeros"
                )
            state["diagnostics"].append(
                {
                    "severity": "warning",
                    "what": f"backing file {wanted}",
                    "where": where,
                    "why": "not found; its clusters read as zeros (allow_missing_backing)",
                }
            )
            state["chain"].append(
                {
                    "disk": state["disk"],
                    "depth": depth + 1,
                    "path": None,
                    "recorded_path": wanted,
                    "resolved_by": "missing-zeros",
                    "format": None,
                    "snapshot": None,
                    "size": None,
                    "virtual_size": None,
                }
            )
            q.backing_file = None
        else:
            bfmt = (q.backing_format or "").lower() or None
            if bfmt not in (None, "qcow2", "raw"):
                bfmt = None  # let the magic decide for vmdk & co.
            q.backing_file, _ = _open_layer(
                below, bfmt, None, search_paths, allow_missing, state, depth + 1, wanted, below_how
            )

    from dissect.hypervisor.disk.qcow2 import QCow2Stream

    return QCow2Stream(q, l1), q.header.size


def open_disk(
    path, *, fmt: str | None = None, snapshot=None, search_paths=(), allow_missing_backing: bool = False
) -> dict:
    """Open a disk image and its whole backing chain read-only.

    ``snapshot`` selects a qcow2 internal snapshot by name or id instead of the
    active layer. Returns a dict: ``stream`` (seekable, ``size``), ``size``,
    ``chain`` (rows for ``disk/chain``, top first), ``layers`` (top first:
    path, format, snapshot, qcow2 object, L1 table, file size), ``diagnostics``,
    ``handles`` (closed by :func:`close_disk`). Raises DiskError with one line.

    >>> d = open_disk("overlay.qcow2", search_paths=["images"])  # doctest: +SKIP
    >>> [r["resolved_by"] for r in d["chain"]]  # doctest: +SKIP
    ['given', 'search-path:images']
    """
    path = Path(path)
    if not path.exists():
        raise DiskError(f"{path}: disk image not found")
    if not path.is_file():
        raise DiskError(f"{path}: not a regular file")
    state = {"disk": str(path), "chain": [], "layers": [], "handles": [], "diagnostics": [], "seen": set()}
    try:
        stream, size = _open_layer(
            path, fmt, snapshot, list(search_paths), allow_missing_backing, state, 0, None, "given"
        )
    except DiskError:
        _close(state["handles"])
        raise
    except OSError as e:
        _close(state["handles"])
        raise DiskError(f"{path}: {e.strerror or e}") from None
    return {
        "path": path,
        "stream": stream,
        "size": size,
        "chain": state["chain"],
        "layers": state["layers"],
        "diagnostics": state["diagnostics"],
        "handles": state["handles"],
        "snapshot": snapshot,
    }


def _close(handles) -> None:
    for h in handles:
        try:
            h.close()
        except Exception:  # closing a read-only handle cannot lose data
            pass


def close_disk(disk: dict) -> None:
    """Close every file handle that :func:`open_disk` opened."""
    _close(disk.get("handles", []))
