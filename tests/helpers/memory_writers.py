"""Tiny spec-following writers for synthetic memory artefacts (tests only).

Each writer follows the byte layout in /work/shared/reference/formats.md and
the upstream format descriptions, independently of the readers under test.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import subprocess
import zlib

import cramjam
import zstandard

PS = 4096


# ---------------------------------------------------------------- ELF core
def note(name, ntype, desc):
    n = name.encode() + b"\0"

    def pad(b):
        return b + bytes(-len(b) % 4)

    return struct.pack("<III", len(n), len(desc), ntype) + pad(n) + pad(desc)


def qemu_cpu_note(cr3):
    desc = bytearray(440)
    struct.pack_into("<II", desc, 0, 1, 440)
    struct.pack_into("<Q", desc, 416, cr3)
    return note("QEMU", 0, bytes(desc))


def elf_core(path, segments, notes=b"", cls=64, xnum=False, filesz_cut=None):
    """segments: [(gpa, bytes, memsz or None)]."""
    if cls == 64:
        eh, ph, phsize, shsize = 64, "<IIQQQQQQ", 56, 64
    else:
        eh, ph, phsize, shsize = 52, "<IIIIIIII", 32, 40
    nph = len(segments) + (1 if notes else 0)
    phoff = eh
    shoff = phoff + nph * phsize if xnum else 0
    data_off = phoff + nph * phsize + (shsize if xnum else 0)
    phdrs, blobs, off = [], [], data_off
    if notes:
        phdrs.append((4, off, 0, 0, len(notes), len(notes)))
        blobs.append(notes)
        off += len(notes)
    for gpa, data, memsz in segments:
        phdrs.append((1, off, 0, gpa, len(data), memsz or len(data)))
        blobs.append(data)
        off += len(data)
    ident = b"\x7fELF" + bytes([2 if cls == 64 else 1, 1, 1]) + bytes(9)
    phnum = 0xFFFF if xnum else nph
    if cls == 64:
        hdr = ident + struct.pack(
            "<HHIQQQIHHHHHH",
            4,
            62,
            1,
            0,
            phoff,
            shoff,
            0,
            eh,
            phsize,
            phnum,
            shsize if xnum else 0,
            1 if xnum else 0,
            0,
        )
    else:
        hdr = ident + struct.pack(
            "<HHIIIIIHHHHHH", 4, 3, 1, 0, phoff, shoff, 0, eh, phsize, phnum, shsize if xnum else 0, 1 if xnum else 0, 0
        )
    out = bytearray(hdr)
    for t, o, va, pa, fs, ms in phdrs:
        if cls == 64:
            out += struct.pack(ph, t, 0, o, va, pa, fs, ms, 0)
        else:
            out += struct.pack(ph, t, o, va, pa, fs, ms, 0, 0)
    if xnum:
        sh = bytearray(shsize)
        struct.pack_into("<I", sh, 44 if cls == 64 else 28, nph)
        out += sh
    for b in blobs:
        out += b
    if filesz_cut is not None:
        out = out[:filesz_cut]
    with open(path, "wb") as fh:
        fh.write(out)
    return bytes(out)


# ---------------------------------------------------------------- LZO1X
def lzo1x_literal(data):
    """LZO1X stream holding ``data`` as one literal run (+ end marker).

    First instruction 0000LLLL in the initial state: L>0 copies L+3 literals,
    L=0 is followed by zero bytes (each +255) and a non-zero byte (+15+byte).
    End of stream: M4 instruction 0x11 0x00 0x00.
    """
    n = len(data)
    assert n >= 4
    if n - 3 <= 15:
        head = bytes([n - 3])
    else:
        r = n - 18
        zeros, last = divmod(r, 255)
        if last == 0:
            zeros, last = zeros - 1, 255
        head = b"\0" + b"\0" * zeros + bytes([last])
    return head + data + b"\x11\x00\x00"


# ---------------------------------------------------------------- kdump
def kdump(
    path,
    pages,
    max_mapnr,
    comp=None,
    flattened=True,
    notes=b"",
    vmcoreinfo=b"",
    shuffle=False,
    version=6,
    block_size=PS,
    packed=None,
):
    """pages: {pfn: block_size bytes}; zero pages share one data page.

    packed: {pfn: (flags, bytes)} stored as that page's data as given (crafted pages).
    """
    bs = block_size
    packed = packed or {}
    pages = {**pages, **{p: None for p in packed}}
    hdr = bytearray(bs)
    hdr[0:8] = b"KDUMP   "
    struct.pack_into("<i", hdr, 8, version)
    for i, s in enumerate([b"Linux", b"guest", b"6.1.0-test", b"#1 SMP", b"x86_64", b""]):
        hdr[12 + 65 * i : 12 + 65 * i + len(s)] = s
    bitmap_len = max(bs, -(-max_mapnr // 8 // bs) * bs)
    bitmap_blocks = 2 * bitmap_len // bs
    struct.pack_into("<IIIII", hdr, 428, bs, 1, bitmap_blocks, max_mapnr if version < 6 else 0, 0)
    struct.pack_into("<I", hdr, 460, 1)
    sub = bytearray(bs)
    extra = notes + vmcoreinfo
    pfns = sorted(pages)
    desc_at = bs * (2 + bitmap_blocks)
    data_at = desc_at + 24 * len(pfns)
    notes_at = data_at
    data_at += len(extra)
    struct.pack_into(
        "<QIIQQQQQQQQQQQ",
        sub,
        0,
        0,
        31,
        0,
        0,
        0,
        notes_at + len(notes) if vmcoreinfo else 0,
        len(vmcoreinfo),
        notes_at if notes else 0,
        len(notes),
        0,
        0,
        0,
        max_mapnr,
        max_mapnr,
    )
    bm1 = bytearray(bitmap_len)
    bm2 = bytearray(bitmap_len)
    for p in pfns:
        bm1[p // 8] |= 1 << (p % 8)
        bm2[p // 8] |= 1 << (p % 8)
    descs, data = bytearray(), bytearray()
    zero_at = data_at
    data += bytes(bs)  # the shared zero page, written first as QEMU does
    for p in pfns:
        page = pages[p]
        if p in packed:
            flag, body = packed[p]
            descs += struct.pack("<qIIQ", data_at + len(data), len(body), flag, 0)
            data += body
            continue
        if page == bytes(bs):
            descs += struct.pack("<qIIQ", zero_at, bs, 0, 0)
            continue
        flag, body = 0, page
        if comp == "zlib":
            flag, body = 1, zlib.compress(page)
        elif comp == "lzo":
            flag, body = 2, lzo1x_literal(page)
        elif comp == "snappy":
            flag, body = 4, bytes(cramjam.snappy.compress_raw(page))
        if len(body) >= bs and comp != "lzo":  # literal-only LZO is always a bit larger
            flag, body = 0, page
        descs += struct.pack("<qIIQ", data_at + len(data), len(body), flag, 0)
        data += body
    regions = [
        (0, bytes(hdr)),
        (bs, bytes(sub)),
        (2 * bs, bytes(bm1) + bytes(bm2)),
        (desc_at, bytes(descs)),
        (notes_at, extra),
        (data_at, bytes(data)),
    ]
    if not flattened:
        out = bytearray()
        for off, blob in regions:
            out += bytes(off - len(out)) + blob
        with open(path, "wb") as fh:
            fh.write(out)
        return
    flat = bytearray(PS)
    flat[0:12] = b"makedumpfile"
    struct.pack_into(">qq", flat, 16, 1, 1)
    recs = []
    for off, blob in regions:  # records of at most 3 pages, like QEMU's data cache
        for i in range(0, len(blob), 3 * PS):
            recs.append((off + i, blob[i : i + 3 * PS]))
    if shuffle:  # QEMU interleaves descriptor and data writes: order is not by offset
        recs = recs[::2] + recs[1::2]
        recs.append((0, bytes(hdr[:8]) + bytes(8)))  # an overlapping rewrite...
        recs.append((0, bytes(hdr[:16])))  # ...then the final one wins
    for off, blob in recs:
        flat += struct.pack(">qq", off, len(blob)) + blob
    flat += struct.pack(">qq", -1, -1)
    with open(path, "wb") as fh:
        fh.write(flat)


# ---------------------------------------------------------------- QEVM
class Qevm:
    """Builder for a QEMU migration stream (version 3)."""

    def __init__(
        self, machine="pc-i440fx-7.2", caps=(), footer=True, uuid=False, page_bits=None, unknown_subsection=False
    ):
        self.footer = footer
        b = bytearray(b"QEVM" + struct.pack(">I", 3))
        b += b"\x07" + struct.pack(">I", len(machine)) + machine.encode()
        if page_bits is not None:
            b += self._sub("configuration/target-page-bits") + struct.pack(">I", page_bits)
        if caps:
            b += self._sub("configuration/capabilities") + struct.pack(">I", len(caps))
            for c in caps:
                b += bytes([len(c)]) + c.encode()
        if uuid:
            b += self._sub("configuration/uuid") + bytes(range(16))
        if unknown_subsection:
            b += self._sub("configuration/future-thing") + b"\x00\x00\x00\x07xyz"
        self.b = b
        self.last_block = None

    @staticmethod
    def _sub(name):
        return b"\x05" + bytes([len(name)]) + name.encode() + struct.pack(">I", 1)

    def start_ram(self, blocks, sid=2, mapped_ram=None):
        total = sum(length for _, length in blocks)
        self.b += b"\x01" + struct.pack(">I", sid) + b"\x03ram" + struct.pack(">II", 0, 4)
        self.b += struct.pack(">Q", total | 0x04)
        for name, length in blocks:
            self.b += bytes([len(name)]) + name.encode() + struct.pack(">Q", length)
            if mapped_ram is not None:
                self.b += mapped_ram(self, name, length)
        self.sid = sid
        return self

    def _addr(self, block, off, flags):
        if block == self.last_block:
            self.b += struct.pack(">Q", off | flags | 0x20)
        else:
            self.b += struct.pack(">Q", off | flags) + bytes([len(block)]) + block.encode()
            self.last_block = block

    def page(self, block, off, data):
        self._addr(block, off, 0x08)
        self.b += data
        return self

    def zero(self, block, off, fill=0):
        self._addr(block, off, 0x02)
        self.b += bytes([fill])
        return self

    def compressed(self, block, off, data):
        z = zlib.compress(data)
        self._addr(block, off, 0x100)
        self.b += struct.pack(">I", len(z)) + z
        return self

    def xbzrle(self, block, off, encoded):
        self._addr(block, off, 0x40)
        self.b += b"\x01" + struct.pack(">H", len(encoded)) + encoded
        return self

    def flush(self):
        self.b += struct.pack(">Q", 0x200)
        return self

    def eos(self, forget_block=True):
        self.b += struct.pack(">Q", 0x10)
        if self.footer:
            self.b += b"\x7e" + struct.pack(">I", self.sid)
        if forget_block:  # QEMU itself keeps it: the next section may start with CONTINUE
            self.last_block = None
        return self

    def part(self):
        self.b += b"\x02" + struct.pack(">I", self.sid)
        return self

    def end(self):
        self.b += b"\x03" + struct.pack(">I", self.sid)
        return self

    def devices(self):
        # A device FULL section whose payload we cannot skip, then EOF + JSON.
        self.b += b"\x04" + struct.pack(">I", 3) + b"\x06timer\x00" + struct.pack(">II", 0, 2)
        self.b += bytes(range(40))
        self.b += b"\x00\x06" + struct.pack(">I", 2) + b"{}"
        return self

    def bytes(self):
        return bytes(self.b)


def xbzrle_encode(old, new):
    """Encode new against old: (unchanged-run, changed-run, bytes) with ULEB128."""

    def uleb(v):
        out = bytearray()
        while True:
            b = v & 0x7F
            v >>= 7
            out.append(b | (0x80 if v else 0))
            if not v:
                return bytes(out)

    out, i, n = bytearray(), 0, len(old)
    while i < n:
        z = i
        while i < n and old[i] == new[i]:
            i += 1
        if i == n:
            break
        nz = i
        while i < n and old[i] != new[i]:
            i += 1
        out += uleb(nz - z) + uleb(i - nz) + new[nz:i]
    return bytes(out)


# ---------------------------------------------------------------- libvirt save
COMPRESS = {
    "raw": lambda b: b,
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
    "lzop": lambda b: subprocess.run(["lzop", "-c"], input=b, capture_output=True, check=True).stdout,
}
FORMAT_NO = {"raw": 0, "gzip": 1, "bzip2": 2, "xz": 3, "lzop": 4, "zstd": 5, "sparse": 6}


def libvirt_save(
    stream,
    compression="raw",
    part=False,
    xml="<domain type='qemu'><name>g</name></domain>",
    cookie="<qemu-migration/>",
    big_endian=False,
):
    area = bytearray(xml.encode() + b"\0")
    cookie_off = 0
    if cookie:
        cookie_off = len(area)
        area += cookie.encode() + b"\0"
    area += bytes(-len(area) % 512 + 100)  # libvirt pads the XML area
    order = ">" if big_endian else "<"
    hdr = (
        (b"LibvirtQemudPart" if part else b"LibvirtQemudSave")
        + struct.pack(order + "5I", 2, len(area), 1, FORMAT_NO[compression], cookie_off)
        + bytes(4 * 14)
    )
    assert len(hdr) == 0x5C
    return hdr + bytes(area) + COMPRESS[compression](stream)


# ---------------------------------------------------------------- qcow2
def qcow2(
    path,
    *,
    cluster_bits=12,
    virtual_size=1 << 20,
    snapshots=(),
    active=None,
    backing=None,
    backing_format="qcow2",
    compress=None,
    extended_l2=False,
    version=3,
):
    """A minimal qcow2 (no refcounts needed by readers of snapshots).

    snapshots: [{"id", "name", "vmstate": bytes, "skip": set(cluster numbers
    left unallocated), "zero": set(cluster numbers marked all-zero)}].
    active: {guest_offset: bytes} written through the active L1 (cluster-aligned).
    compress: None, "zlib" (raw deflate) or "zstd" for vmstate clusters.
    A snapshot's "packed": {cluster number: bytes} stores those bytes as that
    cluster's compressed data as given (crafted streams).
    """
    C = 1 << cluster_bits
    esz = 16 if extended_l2 else 8
    l2_entries = C // esz
    span = C * l2_entries
    out = bytearray(4 * C)  # header, snapshot table, refcount table, spare

    def alloc(n, align=C):
        start = -(-len(out) // align) * align
        out.extend(bytes(start + n - len(out)))
        return start

    def build_l1(mapping, nl1):
        """mapping: {cluster_index_in_guest: ('data'|'zero'|'zlib'|'zstd', bytes)}"""
        l1 = [0] * nl1
        l2s = {}
        for gcl, (kind, blob) in sorted(mapping.items()):
            li, l2i = divmod(gcl, l2_entries)
            if li not in l2s:
                l2s[li] = alloc(C)
                l1[li] = l2s[li] | (1 << 63)
            at = l2s[li] + l2i * esz
            bitmap = 0
            if kind == "data":
                host = alloc(C)
                out[host : host + len(blob)] = blob
                entry = host | (1 << 63)
                bitmap = 0xFFFFFFFF
            elif kind == "zero":
                entry = 1 if not extended_l2 else 0
                bitmap = 0xFFFFFFFF << 32
            else:
                if kind == "packed":
                    z = blob
                elif kind == "zlib":
                    co = zlib.compressobj(9, zlib.DEFLATED, -12)
                    z = co.compress(blob) + co.flush()
                else:
                    z = zstandard.ZstdCompressor().compress(blob)
                host = alloc(len(z), 512)
                out[host : host + len(z)] = z
                x = 62 - (cluster_bits - 8)
                sectors = -(-((host & 511) + len(z)) // 512)
                entry = (1 << 62) | ((sectors - 1) << x) | host
            struct.pack_into(">Q", out, at, entry)
            if extended_l2 and kind not in ("zlib", "zstd", "packed"):
                struct.pack_into(">Q", out, at + 8, bitmap)
        l1_off = alloc(8 * nl1)
        for i, e in enumerate(l1):
            struct.pack_into(">Q", out, l1_off + 8 * i, e)
        return l1_off

    vm_off = -(-virtual_size // span) * span
    nl1 = vm_off // span + 1 + max([len(s["vmstate"]) // span + 1 for s in snapshots] or [0])
    table = bytearray()
    for s in snapshots:
        data = s["vmstate"]
        mapping = {}
        for k in range(0, -(-len(data) // C)):
            chunk = data[k * C : (k + 1) * C].ljust(C, b"\0")
            if k in s.get("skip", ()):
                continue
            if k in s.get("packed", {}):
                mapping[vm_off // C + k] = ("packed", s["packed"][k])
            elif k in s.get("zero", ()):
                mapping[vm_off // C + k] = ("zero", b"")
            else:
                mapping[vm_off // C + k] = (compress or "data", chunk)
        l1_off = build_l1(mapping, nl1)
        ident, name = s["id"].encode(), s["name"].encode()
        extra = struct.pack(">QQQ", len(data), virtual_size, 0)
        ent = (
            struct.pack(
                ">QIHHIIQII",
                l1_off,
                nl1,
                len(ident),
                len(name),
                1700000000 + len(table),
                5,
                123456789,
                len(data) & 0xFFFFFFFF,
                len(extra),
            )
            + extra
            + ident
            + name
        )
        table += ent + bytes(-len(ent) % 8)
    act = {off // C: ("data", blob.ljust(C, b"\0")) for off, blob in (active or {}).items()}
    active_l1 = build_l1(act, nl1)
    out[C : C + len(table)] = table
    hdr = bytearray(C)
    incompat = (8 if compress == "zstd" else 0) | (16 if extended_l2 else 0)
    struct.pack_into(
        ">4sIQIIQIIQQIIQ",
        hdr,
        0,
        b"QFI\xfb",
        version,
        0,
        0,
        cluster_bits,
        virtual_size,
        0,
        nl1,
        active_l1,
        2 * C,
        1,
        len(snapshots),
        C,
    )
    pos = 72
    if version == 3:
        struct.pack_into(">QQQII", hdr, 72, incompat, 0, 0, 4, 112)
        hdr[104] = 1 if compress == "zstd" else 0
        pos = 112
    if backing:
        bf = backing_format.encode()
        struct.pack_into(">II", hdr, pos, 0xE2792ACA, len(bf))
        hdr[pos + 8 : pos + 8 + len(bf)] = bf
        pos += 8 + (-(-len(bf) // 8) * 8)
    struct.pack_into(">II", hdr, pos, 0, 0)
    pos += 8
    if backing:
        b = backing.encode()
        struct.pack_into(">QI", hdr, 8, pos, len(b))
        hdr[pos : pos + len(b)] = b
    out[0:C] = hdr
    with open(path, "wb") as fh:
        fh.write(out)
    return vm_off
