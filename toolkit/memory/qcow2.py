"""qcow2 internal snapshots: the VM state saved by ``savevm`` /
``virsh snapshot-create-as`` (internal), read through the snapshot's own L1
table and, for clusters the overlay does not hold, its backing chain.

The vmstate lives past the end of the virtual disk, at
``ceil(disk_size / 2^(cluster_bits + l2_bits)) << (cluster_bits + l2_bits)``
(l2_bits = cluster_bits - 3, or - 4 with extended L2 entries), and is a bare
QEVM stream, handed to the migration reader as a seekable source.

>>> hdr = read_header("disk.qcow2")  # doctest: +SKIP
>>> [s["name"] for s in hdr["snapshots"]]  # doctest: +SKIP
['before-implant']
"""

from __future__ import annotations

import builtins
import mmap
import os
import struct
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from toolkit.errors import MemoryFormatError
from toolkit.memory import migration, migration_image
from toolkit.memory.cursor import Cursor
from toolkit.memory.image import FileSource
from toolkit.memory.inflate import inflate
from toolkit.references import ReferencePolicy, default_policy, outside_message, resolve_reference, unresolved_message
from toolkit.schemas import diagnostic

MAGIC = b"QFI\xfb"
OFFSET_MASK = 0x00FFFFFFFFFFFE00
COMPRESSED = 1 << 62
EXTENDED_L2 = 1 << 4
BACKING_FORMAT_EXT = 0xE2792ACA
DATA_FILE_EXT = 0x44415441  # "DATA": name of the external data file
EXTERNAL_DATA_FILE = 1 << 2  # incompatible feature: guest clusters live in another file
MAX_SNAPSHOTS = 65536
MAX_CHAIN = 32
MAX_L1_BYTES = 32 << 20  # QCOW_MAX_L1_SIZE (QEMU block/qcow2.h)


def detect(head):
    return head[:4] == MAGIC


def _hdr(src, path):
    raw = src.pread(0, 112)
    if len(raw) < 72 or raw[:4] != MAGIC:
        raise MemoryFormatError(path, 0, "not a qcow2 image (magic missing)")
    (
        version,
        backing_off,
        backing_size,
        cluster_bits,
        size,
        _crypt,
        l1_size,
        l1_off,
        _rt_off,
        _rt_clusters,
        nb_snap,
        snap_off,
    ) = struct.unpack_from(">IQIIQIIQQIIQ", raw, 4)
    if version not in (2, 3):
        raise MemoryFormatError(path, 4, f"qcow2 version {version} unsupported")
    if not 9 <= cluster_bits <= 21:
        raise MemoryFormatError(path, 20, f"cluster_bits {cluster_bits} out of range")
    h = {
        "version": version,
        "cluster_bits": cluster_bits,
        "virtual_size": size,
        "l1_size": l1_size,
        "l1_table_offset": l1_off,
        "nb_snapshots": nb_snap,
        "snapshots_offset": snap_off,
        "incompatible_features": 0,
        "compression_type": 0,
        "header_length": 72,
        "backing_file": None,
        "backing_format": None,
    }
    if version == 3:
        if len(raw) < 104:
            raise MemoryFormatError(path, len(raw), "qcow2 v3 header truncated")
        h["incompatible_features"] = struct.unpack_from(">Q", raw, 72)[0]
        h["header_length"] = struct.unpack_from(">I", raw, 100)[0]
        if h["header_length"] > 104 and len(raw) > 104:
            h["compression_type"] = raw[104]
    h["extended_l2"] = bool(h["incompatible_features"] & EXTENDED_L2)
    if backing_off:
        if backing_size > 1023 or backing_off + backing_size > src.size:
            raise MemoryFormatError(path, 8, "backing file name lies outside the file")
        h["backing_file"] = src.pread(backing_off, backing_size).decode("utf-8", "replace")
    pos, data_file = h["header_length"], None
    for _ in range(64):  # header extensions, bounded
        ext = src.pread(pos, 8)
        if len(ext) < 8:
            break
        etype, elen = struct.unpack(">II", ext)
        if etype == 0:
            break
        if etype == BACKING_FORMAT_EXT:
            h["backing_format"] = src.pread(pos + 8, elen).decode("utf-8", "replace")
        elif etype == DATA_FILE_EXT:
            data_file = src.pread(pos + 8, min(elen, 4096)).decode("utf-8", "replace")
        pos += 8 + ((elen + 7) & ~7)
    # The data file's name is a reference like a backing file's: discovery follows it
    # (toolkit.references), never this parser.
    h["external_data_file"] = bool(h["incompatible_features"] & EXTERNAL_DATA_FILE)
    h["data_file"] = data_file if h["external_data_file"] else None
    h["snapshots"] = _snapshots(src, path, h)
    return h


def _snapshots(src, path, h):
    n = h["nb_snapshots"]
    if n > MAX_SNAPSHOTS:
        raise MemoryFormatError(path, 60, f"nb_snapshots {n} exceeds {MAX_SNAPSHOTS}")
    out, pos = [], h["snapshots_offset"]
    l2_bits = h["cluster_bits"] - (4 if h["extended_l2"] else 3)
    for _ in range(n):
        fixed = src.pread(pos, 40)
        if len(fixed) < 40:
            raise MemoryFormatError(path, pos, "snapshot table truncated")
        l1_off, l1_size, id_len, name_len, dsec, dnsec, clock, vm32, extra_len = struct.unpack(">QIHHIIQII", fixed)
        if extra_len > 1024:
            raise MemoryFormatError(path, pos + 36, f"snapshot extra data size {extra_len} implausible")
        extra = src.pread(pos + 40, extra_len)
        vm_size = struct.unpack_from(">Q", extra, 0)[0] if len(extra) >= 8 else vm32
        disk_size = struct.unpack_from(">Q", extra, 8)[0] if len(extra) >= 16 else h["virtual_size"]
        names = src.pread(pos + 40 + extra_len, id_len + name_len)
        if len(names) < id_len + name_len:
            raise MemoryFormatError(path, pos, "snapshot table truncated")
        out.append(
            {
                "id": names[:id_len].decode("utf-8", "replace"),
                "name": names[id_len:].decode("utf-8", "replace"),
                "date": datetime.fromtimestamp(dsec + dnsec / 1e9, UTC).isoformat(),
                "vm_clock_ns": clock,
                "vm_state_size": vm_size,
                "disk_size": disk_size,
                "l1_table_offset": l1_off,
                "l1_size": l1_size,
                "vm_state_offset": -(-disk_size >> (h["cluster_bits"] + l2_bits)) << (h["cluster_bits"] + l2_bits),
                "table_offset": pos,
            }
        )
        pos += (40 + extra_len + id_len + name_len + 7) & ~7
    return out


def read_header(path):
    """Header facts and snapshot list of a qcow2 image (no data read).

    >>> read_header("disk.qcow2")["cluster_bits"]  # doctest: +SKIP
    16
    """
    src = FileSource(path)
    try:
        h = _hdr(src, path)
    finally:
        src.close()
    keep = ("id", "name", "date", "vm_state_size", "disk_size", "vm_clock_ns")
    h["snapshots"] = [{k: s[k] for k in keep} for s in h["snapshots"]]
    return h


def resolve_backing(path, name, references: ReferencePolicy) -> dict:
    """Where a recorded backing file name lives on this machine, under the run's
    reference policy: see :func:`toolkit.references.resolve_reference`."""
    return resolve_reference(name, Path(os.path.abspath(path)).parent, references)


def _magic(path):
    with builtins.open(path, "rb") as fh:
        return fh.read(4)


class Qcow2:
    """Guest-offset reads through one L1 table, falling through to a backing chain."""

    def __init__(self, path, *, references: ReferencePolicy | None = None, depth=0, diagnostics=None):
        self.path = str(path)
        self.src = FileSource(path)
        self.diagnostics = diagnostics if diagnostics is not None else []
        references = references or default_policy([path])
        try:
            self.h = _hdr(self.src, self.path)
            if self.h["external_data_file"]:
                # QEMU refuses internal snapshots on such images, and the guest clusters
                # live in the data file: nothing here can be VM state.
                raise MemoryFormatError(self.path, 72, "qcow2 with an external data file cannot hold VM state")
            self.backing = None
            if self.h["backing_file"]:
                if depth >= MAX_CHAIN:
                    raise MemoryFormatError(self.path, 8, "backing chain deeper than 32 (a loop?)")
                self.backing = self._open_backing(references, depth)
        except BaseException:
            self.src.close()
            raise
        cb = self.h["cluster_bits"]
        self.cluster = 1 << cb
        self.entry = 16 if self.h["extended_l2"] else 8
        self.l2_entries = self.cluster // self.entry
        self.l1 = self.load_l1(self.h["l1_table_offset"], self.h["l1_size"])
        self._l2_cache, self._zcache = {}, (None, b"")
        self.size = None

    def _open_backing(self, references: ReferencePolicy, depth: int):
        """The layer below, found under the run's policy; a file not found or refused
        (outside the evidence roots) reads as zeros, and a diagnostic says so."""
        name = self.h["backing_file"]
        found = resolve_backing(self.path, name, references)
        if found["path"] is None:
            why = unresolved_message("backing file", name, found)
            self.diagnostics.append(
                diagnostic("error", "backing file not used", f"{self.path}@0x8", f"{why}; its clusters read as zeros")
            )
            return None
        if found["outside"]:
            self.diagnostics.append(
                diagnostic(
                    "warning",
                    "evidence outside the roots",
                    str(found["path"]),
                    outside_message("backing file", name, found, self.path),
                )
            )
        if self.h["backing_format"] in (None, "qcow2") and _magic(found["path"]) == MAGIC:
            return Qcow2(found["path"], references=references, depth=depth + 1, diagnostics=self.diagnostics)
        return FileSource(found["path"])

    def load_l1(self, offset, n):
        if 8 * n > MAX_L1_BYTES:
            raise MemoryFormatError(self.path, offset, f"L1 table of {n} entries is larger than QEMU allows")
        if offset + 8 * n > self.src.size:
            raise MemoryFormatError(self.path, offset, f"L1 table of {n} entries lies outside the file")
        # An array, not a tuple of ints: 32 MiB of L1 stays 32 MiB.
        return np.frombuffer(self.src.pread(offset, 8 * n), dtype=">u8")

    def _l2(self, off):
        t = self._l2_cache.get(off)
        if t is None:
            t = self.src.pread(off, self.cluster)
            if len(t) < self.cluster:
                raise MemoryFormatError(self.path, off, "L2 table lies past the end of the file")
            if len(self._l2_cache) > 64:
                self._l2_cache.clear()
            self._l2_cache[off] = t
        return t

    def pread_l1(self, l1, offset, n):
        """Bytes at guest ``offset`` through L1 table ``l1`` (zeros past the chain)."""
        out = bytearray()
        while n > 0:
            within = offset & (self.cluster - 1)
            step = min(n, self.cluster - within)
            out += self._cluster_bytes(l1, offset, within, step)
            offset += step
            n -= step
        return bytes(out)

    def _fallthrough(self, offset, n):
        if self.backing is None:
            return bytes(n)
        if isinstance(self.backing, Qcow2):
            return self.backing.pread_l1(self.backing.l1, offset, n)
        return self.backing.pread(offset, n).ljust(n, b"\0")

    def _cluster_bytes(self, l1, offset, within, n):
        cb = self.h["cluster_bits"]
        l1_idx = offset >> (cb + cb - (4 if self.entry == 16 else 3))
        l2_off = (int(l1[l1_idx]) & OFFSET_MASK) if l1_idx < len(l1) else 0
        if not l2_off:
            return self._fallthrough(offset, n)
        t = self._l2(l2_off)
        i = ((offset >> cb) & (self.l2_entries - 1)) * self.entry
        (e,) = struct.unpack_from(">Q", t, i)
        if e & COMPRESSED:
            return self._compressed(e)[within : within + n]
        host = e & OFFSET_MASK
        if self.entry == 8:
            if e & 1:
                return bytes(n)
            return self._host(host + within, n) if host else self._fallthrough(offset, n)
        (bitmap,) = struct.unpack_from(">Q", t, i + 8)
        sub = self.cluster // 32
        out = bytearray()
        while n > 0:  # extended L2: each 1/32 subcluster has its own state
            k, w = within // sub, within % sub
            step = min(n, sub - w)
            if bitmap >> (32 + k) & 1:
                out += bytes(step)
            elif bitmap >> k & 1 and host:
                out += self._host(host + within, step)
            else:
                out += self._fallthrough(offset, step)
            within, offset, n = within + step, offset + step, n - step
        return bytes(out)

    def host_run(self, l1, offset, n):
        """(host offset, length) of plain allocated data at guest ``offset``,
        extended over clusters that follow on in the file; (None, length to the
        cluster end) for anything else (zero, compressed, unallocated,
        extended-L2), which pread_l1 handles."""
        cb, within = self.h["cluster_bits"], offset & (self.cluster - 1)
        l1_idx = offset >> (cb + cb - (4 if self.entry == 16 else 3))
        l2_off = (int(l1[l1_idx]) & OFFSET_MASK) if l1_idx < len(l1) else 0
        first = min(n, self.cluster - within)
        if not l2_off or self.entry != 8:
            return None, first
        t = self._l2(l2_off)
        i = (offset >> cb) & (self.l2_entries - 1)
        (e,) = struct.unpack_from(">Q", t, i * 8)
        host = e & OFFSET_MASK
        if e & (COMPRESSED | 1) or not host:
            return None, first
        run = first
        while run < n and i + 1 < self.l2_entries:  # the next entry of the same L2 table
            i += 1
            (e,) = struct.unpack_from(">Q", t, i * 8)
            if e & (COMPRESSED | 1) or e & OFFSET_MASK != host + within + run:
                break
            run = min(n, run + self.cluster)
        return host + within, run

    def _host(self, off, n):
        data = self.src.pread(off, n)
        if len(data) < n:
            raise MemoryFormatError(self.path, off, "data cluster lies past the end of the file")
        return data

    def _compressed(self, e):
        cb = self.h["cluster_bits"]
        x = 62 - (cb - 8)
        host = e & ((1 << x) - 1)
        if self._zcache[0] == host:
            return self._zcache[1]
        sectors = ((e >> x) & ((1 << (cb - 8)) - 1)) + 1
        raw = self.src.pread(host, sectors * 512 - (host & 511))
        codec = "zstd" if self.h["compression_type"] == 1 else "deflate"
        try:
            # A compressed cluster inflates to one cluster: never ask for more.
            # QEMU stops deflate at the cluster end and calls longer zstd an error.
            data = inflate(codec, raw, self.cluster, allow_longer=codec == "deflate")
        except ValueError as exc:
            raise MemoryFormatError(self.path, host, f"compressed cluster: {exc}") from None
        self._zcache = (host, data)
        return data

    def close(self):
        self.src.close()
        if self.backing is not None:
            self.backing.close()


class VmStateSource:
    """A snapshot's vmstate as a pread-able byte range."""

    def __init__(self, img, snap):
        self.img = img
        self.l1 = img.load_l1(snap["l1_table_offset"], snap["l1_size"])
        self.base = snap["vm_state_offset"]
        self.size = snap["vm_state_size"]
        self._scratch = b""

    def pread(self, offset, n):
        # Through readinto and a page-aligned scratch buffer: the index pass
        # reads the whole vmstate this way, and joining per-cluster bytes cost
        # ~1.5 s per GiB.
        n = max(0, min(n, self.size - offset))
        if n == 0:
            return b""
        if n > len(self._scratch):
            self._scratch = mmap.mmap(-1, n + 0xFFFFF & ~0xFFFFF)
        with memoryview(self._scratch) as mv, mv[:n] as part:
            self.readinto(offset, part)
            return bytes(part)

    def readinto(self, offset, mv):
        """Fill memoryview ``mv`` from ``offset`` (zeros past the vmstate): plain
        clusters go from the file into ``mv`` with one preadv per host-contiguous
        run, so a bulk copy (convert.to_elf) builds no bytes per cluster."""
        n = max(0, min(len(mv), self.size - offset))
        mv[n:] = bytes(len(mv) - n)
        pos = 0
        while pos < n:
            host, step = self.img.host_run(self.l1, self.base + offset + pos, n - pos)
            if host is None:
                mv[pos : pos + step] = self.img.pread_l1(self.l1, self.base + offset + pos, step)
            elif os.preadv(self.img.src.fd, [mv[pos : pos + step]], host) < step:
                raise MemoryFormatError(self.img.path, host, "data cluster lies past the end of the file")
            pos += step
        return len(mv)


def pick_snapshot(path, snaps, wanted):
    with_state = [s for s in snaps if s["vm_state_size"] > 0]
    if wanted is not None:
        for s in snaps:
            if wanted in (s["name"], s["id"]):
                if not s["vm_state_size"]:
                    raise MemoryFormatError(path, s["table_offset"], f"snapshot {wanted!r} has no VM state")
                return s
        raise MemoryFormatError(
            path, 64, f"no snapshot named or numbered {wanted!r}; have {[s['name'] for s in snaps]}"
        )
    if len(with_state) == 1:
        return with_state[0]
    if not with_state:
        raise MemoryFormatError(path, 60, "no internal snapshot with VM state in this qcow2")
    raise MemoryFormatError(
        path, 64, f"several snapshots hold VM state, choose one with snapshot=: {[s['name'] for s in with_state]}"
    )


def probe(path):
    facts = {"format": "qcow2-snapshot"}
    facts.update(read_header(path))
    return facts


def open(path, *, snapshot=None, references: ReferencePolicy | None = None, **_opts):
    """Open the VM state of an internal snapshot (chosen by name or id).

    >>> with open("disk.qcow2", snapshot="before-implant") as img:  # doctest: +SKIP
    ...     img.info["snapshot"]["name"]
    'before-implant'
    """
    diags = []
    img = Qcow2(path, references=references, diagnostics=diags)
    try:
        snap = pick_snapshot(path, img.h["snapshots"], snapshot)
        src = VmStateSource(img, snap)
        st = migration.index_stream(
            Cursor(f"{path} [vmstate of snapshot {snap['name']!r}]", source=src),
            source=src,
            spill_factory=migration_image._temp_spill,
        )
        info = {
            "snapshot": {k: snap[k] for k in ("id", "name", "date", "vm_state_size", "disk_size")},
            "backing_file": img.h["backing_file"],
        }
        return migration_image.build_image(
            path, st, fmt="qcow2-snapshot", info=info, diagnostics=diags, closers=[img.close], source=src
        )
    except BaseException:
        img.close()
        raise
