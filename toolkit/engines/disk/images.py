"""Open what libvirt leaves on disk: qcow2 chains, internal snapshots, raw/vmdk/vhdx/vdi.

libvirt and QEMU record backing files (and XML disk sources) as absolute host
paths that do not exist on an analyst's machine, and dissect.hypervisor 3.21
cannot open an overlay whose backing path is absolute at all. So the chain is
opened here, bottom-up: every layer is a file opened ``rb``, each qcow2 is
parsed by dissect's ``QCow2`` with ``allow_no_backing_file=True`` (it never
touches the path it records) and its ``backing_file`` is then set to the
stream of the layer below, which this module found itself. VMDK extents and
parents and VHDX parents go the same way (:mod:`toolkit.engines.disk.vmdk_vhdx`).
Every file an image names is found under the run's one reference policy
(:mod:`toolkit.references`): inside the evidence roots and search paths, or
outside them only when the user said so, with a warning. Nothing is ever
written; nothing is opened for writing.

Every element of the chain becomes a row (path used, path recorded, how it was
resolved) for the ``disk/chain`` table.

Example::

    policy = reference_policy(roots=["evidence"], search_paths=["/mnt/images"])
    disk = open_disk("evidence/disk.qcow2", references=policy)
    disk["stream"].seek(0); mbr = disk["stream"].read(512)
    close_disk(disk)
"""

from __future__ import annotations

import os
from pathlib import Path

from toolkit.engines.disk.allocation import check_header, validate_tables
from toolkit.engines.disk.vmdk_vhdx import check_vdi, open_vmdk, vhdx_parents
from toolkit.errors import DiskError
from toolkit.references import (
    ReferencePolicy,
    default_policy,
    outside_message,
    resolve_reference,
    unresolved_message,
    wrong_size_message,
)
from toolkit.schemas import diagnostic

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


def _row(state: dict, depth: int, path, recorded, how, fmt, size, snapshot=None, virtual_size=None) -> dict:
    row = {
        "disk": state["disk"],
        "depth": depth,
        "path": None if path is None else str(path),
        "recorded_path": recorded,
        "resolved_by": how,
        "format": fmt,
        "snapshot": snapshot,
        "size": size,
        "virtual_size": virtual_size,
    }
    state["chain"].append(row)
    return row


def _named(recorded, owner: Path, what: str, state: dict) -> dict:
    """The file ``owner`` names as ``recorded``, under the run's policy (toolkit.references);
    a file followed outside the evidence roots gets a warning diagnostic."""
    found = resolve_reference(recorded, owner.parent, state["references"])
    if found["outside"]:
        state["diagnostics"].append(
            diagnostic(
                "warning",
                "evidence outside the roots",
                str(found["path"]),
                outside_message(what, recorded, found, owner),
            )
        )
    return found


def _required(recorded, owner: Path, what: str, state: dict) -> dict:
    found = _named(recorded, owner, what, state)
    if found["path"] is None:
        raise DiskError(f"{owner}: {unresolved_message(what, recorded, found)}")
    return found


def _open_file(path, state: dict):
    fh = open(path, "rb")
    state["handles"].append(fh)
    return fh


def _open_other(path: Path, fmt: str, state: dict, depth: int):
    """A vmdk/vhdx/vdi/vhd layer through dissect, opened on handles of files the policy found."""
    from dissect.target.containers.vdi import VdiContainer
    from dissect.target.containers.vhd import VhdContainer
    from dissect.target.containers.vhdx import VhdxContainer

    def extent(name, size):
        found = _required(name, path, "extent", state)
        actual = found["path"].stat().st_size
        if size is not None and actual != size:
            raise DiskError(f"{path}: {wrong_size_message('extent', name, found['path'], actual, size)}")
        _row(state, depth, found["path"], name, found["how"], "vmdk-extent", actual)
        return _open_file(found["path"], state)

    def below(name):
        found = _required(name, path, "parent", state)
        stream, _size = _open_layer(found["path"], None, None, state, depth + 1, name, found["how"])
        return stream

    try:
        if fmt == "vmdk":
            return open_vmdk(path, _open_file(path, state), extent=extent, below=below)
        if fmt == "vhdx":
            parents = vhdx_parents(path, lambda name, owner: _named(name, owner, "parent", state))
            for n, (parent, name, found) in enumerate(parents, start=1):
                _row(state, depth + n, parent, name, found["how"], "vhdx", parent.stat().st_size)
            # dissect opens the parents itself, by path: vhdx_parents checked that they are these files
            container = VhdxContainer(path)
        elif fmt == "vdi":
            fh = _open_file(path, state)
            check_vdi(path, fh)
            container = VdiContainer(fh)
        else:
            container = VhdContainer(_open_file(path, state))
    except DiskError:
        raise
    except Exception as e:  # dissect raises several types for a malformed image
        raise DiskError(f"{path}: cannot open {fmt} image ({type(e).__name__}: {e})") from None
    state["handles"].append(container)
    return container, container.size


def _open_layer(path: Path, fmt: str | None, snapshot, state: dict, depth: int, recorded: str | None, how: str):
    """Open one layer and, recursively, everything below it; return (stream, virtual size)."""
    if depth >= MAX_CHAIN:
        raise DiskError(f"{path}: backing chain deeper than {MAX_CHAIN} (a loop?)")
    real = path.resolve()
    if real in state["seen"]:
        raise DiskError(f"{path}: backing chain loops back to {real}")
    state["seen"].add(real)
    fmt = fmt or detect_format(path)
    file_size = path.stat().st_size
    row = _row(state, depth, path, recorded, how, fmt, file_size, snapshot)
    layer = {"path": real, "format": fmt, "snapshot": None, "qcow2": None, "l1": None, "file_size": file_size}

    if fmt != "qcow2":
        if snapshot:
            raise DiskError(f"{path}: internal snapshots need qcow2, this is {fmt}")
        state["layers"].append(layer)
        if fmt == "raw":
            row["virtual_size"] = file_size
            return _open_file(path, state), file_size
        stream, size = _open_other(path, fmt, state, depth)
        row["virtual_size"] = size
        return stream, size

    fh = _open_file(path, state)
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
    data_size = None
    if q.needs_data_file:
        # the guest's clusters live in another file, named inside this one: found like a backing file
        if not q.image_data_file:
            raise DiskError(f"{where}: qcow2 needs an external data file but does not name one")
        found = _required(q.image_data_file, path, "external data file", state)
        q.data_file = _open_file(found["path"], state)
        data_size = found["path"].stat().st_size
        layer["data_file"] = str(found["path"])
        _row(state, depth, found["path"], q.image_data_file, found["how"], "qcow2-data-file", data_size)
    # Every pointer checked once, up front: later reads can then trust them.
    validate_tables(q, l1, file_size, where, data_size)
    layer.update(snapshot=row["snapshot"], qcow2=q, l1=l1)
    state["layers"].append(layer)

    if q.header.backing_file_offset:
        wanted = q.auto_backing_file
        found = _named(wanted, path, "backing file", state)
        if found["path"] is None and (found["how"] != "missing" or not state["allow_missing"]):
            hint = "; pass --search-path DIR, or --allow-missing-backing to read it as zeros"
            raise DiskError(
                f"{where}: {unresolved_message('backing file', wanted, found)}"
                + (hint if found["how"] == "missing" else "")
            )
        if found["path"] is None:
            state["diagnostics"].append(
                diagnostic(
                    "warning",
                    f"backing file {wanted}",
                    where,
                    "not found; its clusters read as zeros (allow_missing_backing)",
                )
            )
            _row(state, depth + 1, None, wanted, "missing-zeros", None, None)
            q.backing_file = None
        else:
            bfmt = (q.backing_format or "").lower() or None
            if bfmt not in (None, "qcow2", "raw"):
                bfmt = None  # let the magic decide for vmdk & co.
            q.backing_file, _ = _open_layer(found["path"], bfmt, None, state, depth + 1, wanted, found["how"])

    from dissect.hypervisor.disk.qcow2 import QCow2Stream

    return QCow2Stream(q, l1), q.header.size


def open_disk(
    path,
    *,
    fmt: str | None = None,
    snapshot=None,
    references: ReferencePolicy | None = None,
    allow_missing_backing: bool = False,
) -> dict:
    """Open a disk image and its whole backing chain read-only.

    ``snapshot`` selects a qcow2 internal snapshot by name or id instead of the
    active layer. ``references`` is the run's policy for files the image names
    (backing and data files, extents, parents: :mod:`toolkit.references`); by
    default only the image's own directory. Returns a dict: ``stream``
    (seekable, ``size``), ``size``, ``chain`` (rows for ``disk/chain``, top
    first), ``layers`` (top first: path, format, snapshot, qcow2 object, L1
    table, file size, data file), ``diagnostics``, ``handles`` (closed by
    :func:`close_disk`). Raises DiskError with one line.

    >>> policy = reference_policy(roots=["vm"], search_paths=["images"])  # doctest: +SKIP
    >>> d = open_disk("vm/overlay.qcow2", references=policy)  # doctest: +SKIP
    >>> [r["resolved_by"] for r in d["chain"]]  # doctest: +SKIP
    ['given', 'search-path:/abs/images']
    """
    path = Path(path)
    if not path.exists():
        raise DiskError(f"{path}: disk image not found")
    if not path.is_file():
        raise DiskError(f"{path}: not a regular file")
    state = {
        "disk": str(path),
        "chain": [],
        "layers": [],
        "handles": [],
        "diagnostics": [],
        "seen": set(),
        "references": references or default_policy([path]),
        "allow_missing": allow_missing_backing,
    }
    try:
        stream, size = _open_layer(path, fmt, snapshot, state, 0, None, "given")
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
