"""VMDK and VHDX layers, with every file they name found under the run's reference policy.

dissect opens the files a VMDK descriptor or a VHDX parent locator names by
itself, from the names as recorded: a VMDK's ``parentFileNameHint`` and a
VHDX's ``absolute_win32_path`` may be absolute host paths, so a hostile
descriptor could make it read any file of the analyst's host. Here:

- a VMDK is assembled from dissect's extent readers (``SparseDisk``,
  ``RawDisk``) over handles this module opened on files that
  :mod:`toolkit.references` found (flat extents of exactly the declared size),
  its parent being the layer below that :mod:`toolkit.engines.disk.images`
  opened the same way;
- a differencing VHDX is handed to dissect only when the file dissect will
  open (the parent at its recorded relative path) is the one the policy
  found, at every level of its chain; otherwise it is refused.

dissect also sizes single reads from header fields (a VMDK's grain directory,
a VDI's block map, a VHDX's region table): those sizes are checked against
the file first (:func:`sparse_extent`, :func:`check_vdi`, the region tables
in :func:`vhdx_parents`), so a damaged header is a DiskError, not gigabytes.

Example::

    stream, size = open_vmdk(path, fh, extent=lambda name: open(name, "rb"), below=lambda name: None)
"""

from __future__ import annotations

import os
import struct
from bisect import bisect_right
from pathlib import Path

from dissect.util.stream import AlignedStream, RangeStream

from toolkit.errors import DiskError
from toolkit.evidence.disk_probe import probe_vhdx, probe_vmdk

SECTOR = 512
HEAD = 64 << 10  # a descriptor is a few hundred bytes; probe_vmdk refuses binary data after it
MAX_VHDX_CHAIN = 64
VHDX_REGION_TABLES = (192 << 10, 256 << 10)  # MS-VHDX 2.2: the table and its copy, 64 KiB each
VHDX_MAX_REGIONS = 2047  # MS-VHDX 2.2.3: what fits in the 64 KiB table
VDI_MAX_BLOCK = 64 << 20  # VirtualBox and qemu write 1 MiB blocks; dissect reads a whole block at a time


def sparse_extent(path: Path, fh, parent):
    """dissect's ``SparseDisk`` on ``fh``, once the tables its header sizes are known to fit in the file.

    dissect reads the grain directory, a grain table and the embedded
    descriptor with one ``read(n)`` each, ``n`` taken from the header: a
    flipped byte in ``capacity`` asks for petabytes of grain directory
    (MemoryError, found by the disk fuzz target). Each table lies inside the
    extent file, so none can be larger than it. Example::

        sparse_extent(Path("d.vmdk"), open("d.vmdk", "rb"), None).size
    """
    import ctypes

    from dissect.hypervisor.disk import vmdk

    size = os.fstat(fh.fileno()).st_size
    at = 0
    fh.seek(0)
    hdr = vmdk.SparseExtentHeader(fh)
    if hdr.magic == vmdk.VMDK_MAGIC and ctypes.c_int64(hdr.primary_grain_directory_offset).value == -1:
        at = size - 1024  # the real header is the footer (streamOptimized)
        fh.seek(max(at, 0))
        hdr = vmdk.SparseExtentHeader(fh)
    if hdr.magic == vmdk.VMDK_MAGIC:
        if not hdr.num_grain_table_entries or not hdr.grain_size:
            raise DiskError(f"{path}: VMDK sparse header at offset {at}: grain size or grain table entries is 0")
        coverage = hdr.num_grain_table_entries * hdr.grain_size
        tables = {
            "grain directory": -(-hdr.capacity // coverage) * 4,
            "grain table": hdr.num_grain_table_entries * 4,
            "descriptor": hdr.descriptor_size * SECTOR,
        }
    elif hdr.magic == vmdk.SESPARSE_MAGIC:
        tables = {"grain directory": hdr.grain_directory_size * SECTOR, "grain table": hdr.grain_table_size * SECTOR}
    else:
        tables = {"grain directory": hdr.num_grain_directory_entries * 4}
    for what, nbytes in tables.items():
        if nbytes > size:
            raise DiskError(
                f"{path}: VMDK sparse header at offset {at}: a {what} of {nbytes} bytes cannot fit in a file of {size}"
            )
    fh.seek(0)
    return vmdk.SparseDisk(fh, parent=parent)


def check_vdi(path: Path, fh) -> None:
    """Refuse a VDI whose header sizes dissect's reads beyond the file.

    dissect reads the whole block map (4 bytes per block of the virtual disk)
    at once and every read a whole block at a time. Example::

        check_vdi(Path("d.vdi"), open("d.vdi", "rb"))  # raises DiskError on a damaged header
    """
    from dissect.hypervisor.disk import vdi

    size = os.fstat(fh.fileno()).st_size
    hdr = vdi.VDI(fh)
    if hdr.blocks_offset + 4 * hdr.number_of_blocks > size:
        raise DiskError(
            f"{path}: VDI block map at offset {hdr.blocks_offset} of {hdr.number_of_blocks} blocks "
            f"runs past the end of the file ({size} bytes)"
        )
    if not 0 < hdr.block_size <= VDI_MAX_BLOCK:
        raise DiskError(f"{path}: VDI block size {hdr.block_size} (header at offset 0) is not 1 to {VDI_MAX_BLOCK}")


class _ParentSectors:
    """The layer below as dissect's extent readers want it: ``read_sectors(sector, count)``."""

    def __init__(self, stream):
        self.stream = stream

    def read_sectors(self, sector: int, count: int) -> bytes:
        self.stream.seek(sector * SECTOR)
        return self.stream.read(count * SECTOR).ljust(count * SECTOR, b"\0")


class _ZeroExtent:
    """A ZERO extent of a descriptor: declared sectors that read as zeros, backed by no file."""

    def __init__(self, sectors: int):
        self.sector_count, self.sector_offset, self.offset = sectors, 0, 0

    def read_sectors(self, sector: int, count: int) -> bytes:
        return bytes(count * SECTOR)


class ExtentStream(AlignedStream):
    """The extents of one VMDK one after the other, as one disk (dissect's VMDK reads the same way).

    Extents number sectors from the start of the whole disk (``sector_offset``),
    as dissect's ``SparseDisk``/``RawDisk`` expect.
    """

    def __init__(self, extents: list):
        self.extents, self.starts, sectors = extents, [], 0
        for ext in extents:
            ext.sector_offset, ext.offset = sectors, sectors * SECTOR
            self.starts.append(sectors)
            sectors += ext.sector_count
        super().__init__(sectors * SECTOR)

    def _read(self, offset: int, length: int) -> bytes:
        sector, count = offset // SECTOR, (length + SECTOR - 1) // SECTOR
        out, i = [], bisect_right(self.starts, sector) - 1
        while count > 0 and 0 <= i < len(self.extents):
            ext = self.extents[i]
            n = min(count, ext.sector_count - (sector - ext.sector_offset))
            if n > 0:
                out.append(ext.read_sectors(sector, n))
                sector, count = sector + n, count - n
            i += 1
        return b"".join(out)


def open_vmdk(path: Path, fh, *, extent, below) -> tuple[ExtentStream, int]:
    """A VMDK (descriptor with its extents, or a monolithic sparse file) as one stream.

    ``extent(name)`` returns a read-only handle on the extent file the
    descriptor names (found under the policy; DiskError otherwise);
    ``below(name)`` the stream of the parent layer named by
    ``parentFileNameHint``. Returns (stream, size).
    """
    from dissect.hypervisor.disk import vmdk

    fh.seek(0)
    facts = probe_vmdk(path, fh.read(HEAD))
    fh.seek(0)
    if facts.get("variant") == "esx-cowd":
        raise DiskError(f"{path}: ESX COWD sparse VMDK is not supported")
    parent = None
    if facts.get("parent_cid") not in (None, "ffffffff"):
        if not facts.get("parent_file"):
            raise DiskError(f"{path}: differencing VMDK names no parent file")
        parent = _ParentSectors(below(facts["parent_file"]))
    if facts.get("variant") != "descriptor":
        extents = [sparse_extent(path, fh, parent)]
    else:
        extents = []
        for ext in facts.get("extents") or []:
            size = ext["sectors"] * SECTOR
            if ext["type"] == "ZERO":
                extents.append(_ZeroExtent(ext["sectors"]))
            elif not ext.get("file"):
                raise DiskError(f"{path}: {ext['type']} extent names no file")
            elif ext["type"] in ("FLAT", "VMFS"):
                handle = extent(ext["file"], (ext["offset"] * SECTOR) + size)
                extents.append(vmdk.RawDisk(RangeStream(handle, ext["offset"] * SECTOR, size), size))
            elif ext["type"] in ("SPARSE", "VMFSSPARSE", "SESPARSE"):
                handle = extent(ext["file"], None)
                extents.append(sparse_extent(Path(getattr(handle, "name", ext["file"])), handle, parent))
            else:
                raise DiskError(f"{path}: VMDK extent type {ext['type']!r} is not supported")
        if not extents:
            raise DiskError(f"{path}: VMDK descriptor lists no extents")
    stream = ExtentStream(extents)
    return stream, stream.size


def vhdx_parents(path: Path, locate) -> list[tuple[Path, str, dict]]:
    """The parents of a differencing VHDX, top first, each checked to be the file dissect will open.

    ``locate(recorded, referrer)`` returns the policy's answer for a name
    (:func:`toolkit.references.resolve_reference`); dissect opens a parent at
    ``<directory>/<relative_path>`` first and falls back to the recorded
    absolute path, so a parent is accepted only when the former exists and is
    the file the policy found. Returns [(parent path, recorded name, found)].
    """
    out, current = [], Path(path)
    for _ in range(MAX_VHDX_CHAIN):
        with open(current, "rb") as fh:
            facts = probe_vhdx(current, fh.read(HEAD))
            for at in VHDX_REGION_TABLES:  # dissect reads entry_count entries of 32 bytes at once
                head = os.pread(fh.fileno(), 16, at)
                count = struct.unpack_from("<I", head, 8)[0] if len(head) == 16 else 0
                if count > VHDX_MAX_REGIONS:
                    raise DiskError(f"{current}: VHDX region table at offset {at} lists {count} regions (at most 2047)")
        if not facts.get("has_parent"):
            return out
        relative = (facts.get("parent_paths") or {}).get("relative_path")
        if not relative:
            raise DiskError(
                f"{current}: differencing VHDX without a relative parent path (refused: dissect would "
                "open its recorded absolute path)"
            )
        relative = relative.replace("\\", "/")
        found = locate(relative, current)
        dissect_opens = current.parent / relative
        if found["path"] is None or not dissect_opens.is_file() or not os.path.samefile(dissect_opens, found["path"]):
            raise DiskError(
                f"{current}: differencing VHDX parent {relative!r} is not at its recorded relative path inside "
                "the evidence roots (dissect would open its recorded absolute path instead): refused"
            )
        out.append((dissect_opens, relative, found))
        current = dissect_opens
    raise DiskError(f"{path}: VHDX parent chain deeper than {MAX_VHDX_CHAIN} (a loop?)")
