"""Crafted hostile memory and disk artefacts: small files whose headers make a
naive reader allocate, write or loop far beyond what the file holds (issue 13).

Each builder writes one file from the format's spec (with the writers in
``memory_writers``) and returns what a test needs to know about it. The
figures in the docstrings are what the readers did before they were bounded.

Example::

    bomb = qcow2_zstd_bomb(tmp / "bomb.qcow2")   # 32 KiB cluster -> 1 GiB of zeros
"""

from __future__ import annotations

import struct

import zstandard

from tests.helpers import memory_writers as W
from tests.helpers.memory_samples import PS, page

GIB = 1 << 30
TIB = 1 << 40
# For tests measuring a reader in a child (tests/helpers/bounded.py): every
# reader imported before the measure starts, and what opening a crafted file
# may add to the child's own peak RSS.
SETUP = "import toolkit.memory as M, toolkit.memory.registry"
GROWTH_MB = 64


def zstd_rle_frame(total: int) -> bytes:
    """A zstd frame of RLE blocks that inflates to ``total`` zero bytes (RFC 8878).

    4 bytes per 128 KiB block, no content size in the header: the size is only
    known by decompressing. 1 GiB costs 32 KiB.

    >>> zstandard.ZstdDecompressor().decompressobj().decompress(zstd_rle_frame(5))
    b'\\x00\\x00\\x00\\x00\\x00'
    """
    block = 128 << 10
    # Frame_Header_Descriptor 0: no content size, no checksum, a Window_Descriptor;
    # window exponent 7 -> 2^17 bytes, the largest block.
    out = bytearray(b"\x28\xb5\x2f\xfd\x00\x38")
    left = total
    while left > 0:
        n = min(block, left)
        left -= n
        out += ((n << 3) | (1 << 1) | (left == 0)).to_bytes(3, "little") + b"\x00"
    return bytes(out)


def qcow2_zstd_bomb(path, inflated: int = GIB) -> dict:
    """qcow2 (64 KiB clusters, zstd) whose snapshot vmstate's first cluster is a
    32 KiB zstd frame of ``inflated`` zeros: 1 GiB RSS in the reader before."""
    stream = W.Qevm().start_ram([("pc.ram", 16 * PS)]).eos().end().eos().bytes()
    vmstate = stream.ljust(1 << 16, b"\0")
    W.qcow2(
        path,
        cluster_bits=16,
        snapshots=[{"id": "1", "name": "bomb", "vmstate": vmstate, "packed": {0: zstd_rle_frame(inflated)}}],
        compress="zstd",
    )
    return {"path": path}


def kdump_zlib_bomb(path, block_size: int = 64 << 10) -> dict:
    """kdump (64 KiB blocks) whose page 1 is zlib data of 2 blocks' size that
    inflates to ~130 MiB (the descriptor size check allows 2 * block_size)."""
    import zlib

    co = zlib.compressobj(9)
    body, chunk = b"", bytes(1 << 20)
    while len(body) < 2 * block_size - 4096:  # ~1 KiB of deflate per MiB of zeros
        body += co.compress(chunk)
    body += co.flush()
    assert len(body) <= 2 * block_size and len(zlib.decompress(body)) > 100 << 20
    keep = {0: bytes(range(256)) * (block_size // 256)}
    W.kdump(path, keep, 8, flattened=False, block_size=block_size, packed={1: (0x1, body)})
    return {"path": path, "block_size": block_size, "bomb_pfn": 1}


def elf_repeated_notes(path, total: int = 1 << 20) -> dict:
    """A ``total``-byte ELF core whose program headers are all PT_NOTE over the
    same note bytes: concatenated, 1 MiB became ~1 GiB of notes and a minute."""
    notes = W.qemu_cpu_note(0x1000) + W.note("CORE", 1, bytes(336))
    note_area = 256 << 10
    nph = (total - 64 - note_area - PS) // 56
    data_off = 64 + nph * 56
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    hdr = ident + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, nph, 0, 0, 0)
    out = bytearray(hdr)
    load_at = data_off + note_area
    out += struct.pack("<IIQQQQQQ", 1, 0, load_at, 0, 0, PS, PS, 0)  # one page of RAM at gpa 0
    for _ in range(nph - 1):
        out += struct.pack("<IIQQQQQQ", 4, 0, data_off, 0, 0, note_area, note_area, 0)
    out += notes.ljust(note_area, b"\0") + page(7)
    with open(path, "wb") as fh:
        fh.write(out)
    return {"path": path, "note_headers": nph - 1, "ram": page(7)}


def qevm_huge_ram(path, declared: int = TIB) -> dict:
    """A ~4 KiB bare migration stream whose MEM_SIZE list declares ``declared``
    bytes of pc.ram and then sends three pages: run computation over a dense
    per-page array took 912 MiB for 1 TiB."""
    q = W.Qevm().start_ram([("pc.ram", declared)]).eos().part()
    q.page("pc.ram", 0, page(1)).zero("pc.ram", PS).page("pc.ram", declared - PS, page(2))
    q.eos().end().eos().devices()
    data = q.bytes()
    with open(path, "wb") as fh:
        fh.write(data)
    return {"path": path, "declared": declared, "pages": {0: page(1), declared - PS: page(2)}}


def flattened(records: list[tuple[int, bytes]]) -> bytes:
    """A makedumpfile flattened file of (raw offset, data) records."""
    out = bytearray(PS)
    out[0:12] = b"makedumpfile"
    struct.pack_into(">qq", out, 16, 1, 1)
    for off, blob in records:
        out += struct.pack(">qq", off, len(blob)) + blob
    return bytes(out + struct.pack(">qq", -1, -1))


def kdump_flat_huge(path, declared_pages: int = TIB // PS) -> dict:
    """A flattened kdump of a few KiB declaring ``declared_pages`` pages: its
    records place the bitmaps far apart in the raw layout, where nothing is."""
    bs = PS
    half = -(-declared_pages // 8 // bs) * bs
    bitmap_blocks = 2 * half // bs
    hdr = bytearray(bs)
    hdr[0:8] = b"KDUMP   "
    struct.pack_into("<i", hdr, 8, 6)
    struct.pack_into("<IIIII", hdr, 428, bs, 1, bitmap_blocks, 0, 0)
    sub = bytearray(bs)
    struct.pack_into("<Q", sub, 96, declared_pages)
    bitmap_at = 2 * bs
    desc_at = bitmap_at + 2 * half
    data_at = desc_at + bs
    records = [
        (0, bytes(hdr[:464])),
        (bs, bytes(sub[:104])),
        (bitmap_at + half, b"\x01"),  # pfn 0 dumped
        (desc_at, struct.pack("<qIIQ", data_at, bs, 0, 0)),
        (data_at, page(3)),
    ]
    with open(path, "wb") as fh:
        fh.write(flattened(records))
    return {"path": path, "declared_pages": declared_pages, "page0": page(3)}


def zstd_save_resending_one_page(path, times: int = 10000) -> dict:
    """A zstd libvirt save image whose stream sends the same page ``times``
    times: each copy was appended to the spill (4.4 KiB of zstd -> 40 MiB)."""
    q = W.Qevm().start_ram([("pc.ram", 16 * PS)]).eos().part()
    head = q.bytes()
    q.b = bytearray()
    q.page("pc.ram", 0, page(5))
    first = q.bytes()
    q.b = bytearray()
    q.page("pc.ram", 0, page(5))  # the block is now the last one: CONTINUE records
    again = q.bytes()
    q.b = bytearray()
    tail = q.eos().end().eos().devices().bytes()
    co = zstandard.ZstdCompressor(level=19).compressobj()
    z = co.compress(head + first)
    for _ in range(times - 1):
        z += co.compress(again)
    z += co.compress(tail) + co.flush()
    save = W.libvirt_save(b"", "zstd")[: -len(W.COMPRESS["zstd"](b""))] + z
    with open(path, "wb") as fh:
        fh.write(save)
    return {"path": path, "page": page(5), "times": times}


def qcow2_shared_l2(path, l1_entries: int = 40960, cluster_bits: int = 12, backing=None, every: int = 1) -> dict:
    """A qcow2 (4 KiB clusters) whose ``l1_entries`` L1 entries all point at one
    L2 table allocating every ``every``-th cluster (all with 1): 320 KiB of L1
    made an allocation dict of L1 x L2 entries (894 MiB) on every open.
    ``backing`` records a backing file name (an overlay)."""
    c = 1 << cluster_bits
    l2_entries = c // 8
    size = l1_entries * l2_entries * c
    l1_off = 3 * c
    l2_off = -(-(l1_off + 8 * l1_entries) // c) * c
    data_off = l2_off + c
    out = bytearray(data_off + c)
    name = (backing or "").encode()
    struct.pack_into(
        ">4sIQIIQIIQQIIQ",
        out,
        0,
        b"QFI\xfb",
        3,
        112 if name else 0,  # backing file name right after the header
        len(name),
        cluster_bits,
        size,
        0,
        l1_entries,
        l1_off,
        c,
        1,
        0,
        0,
    )
    struct.pack_into(">QQQII", out, 72, 0, 0, 0, 4, 104)
    out[112 : 112 + len(name)] = name
    struct.pack_into(">Q", out, c, 2 * c)  # refcount table -> one refcount block
    for i in range(l1_entries):
        struct.pack_into(">Q", out, l1_off + 8 * i, l2_off | (1 << 63))
    for j in range(0, l2_entries, every):
        struct.pack_into(">Q", out, l2_off + 8 * j, data_off | (1 << 63))
    with open(path, "wb") as fh:
        fh.write(out)
    return {"path": path, "virtual_size": size, "allocated": l1_entries * len(range(0, l2_entries, every))}


def elf_many_loads(path, n: int = 200_000) -> dict:
    """An ELF core (PN_XNUM) of ``n`` one-byte PT_LOADs 8 KiB apart, all over
    the same file byte: a segment dict and two closures each made 10 MiB of
    headers 260 MiB of Python objects."""
    shoff = 64 + n * 56
    data_off = shoff + 64
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    out = bytearray(ident + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, shoff, 0, 64, 56, 0xFFFF, 64, 1, 0))
    phdr = struct.Struct("<IIQQQQQQ")
    for i in range(n):
        out += phdr.pack(1, 0, data_off, 0, i * 8192, 1, 1, 0)
    sh = bytearray(64)
    struct.pack_into("<I", sh, 44, n)  # sh_info: the real e_phnum
    out += sh + b"\x5a"
    with open(path, "wb") as fh:
        fh.write(out)
    return {"path": path, "loads": n}


def flattened_tiny_records(path, n: int = 1_000_000, overlapping: bool = False) -> dict:
    """A flattened kdump of ``n`` one-byte records (17 bytes each in the file),
    after a valid header: apart, or all overwriting the same 1000 bytes."""
    bs = PS
    hdr = bytearray(bs)
    hdr[0:8] = b"KDUMP   "
    struct.pack_into("<i", hdr, 8, 6)
    struct.pack_into("<IIIII", hdr, 428, bs, 1, 2, 8, 0)
    sub = bytearray(104)
    struct.pack_into("<Q", sub, 96, 8)
    records = [(0, bytes(hdr[:464])), (bs, bytes(sub))]
    base = 16 * bs
    records += [(base + (i % 1000 if overlapping else 2 * i), b"\x01") for i in range(n)]
    with open(path, "wb") as fh:
        fh.write(flattened(records))
    return {"path": path, "records": n}
