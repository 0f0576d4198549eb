"""Compressed QEVM streams made seekable, and the lzop container.

libvirt compresses the QEMU stream of a save image (gzip, bzip2, xz, lzop,
zstd), and ``virsh dump`` with ``dump_image_format`` compresses a whole bare
stream. None of these formats can be seeked cheaply, so we decompress once,
in one streaming pass, and keep only what a physical address space needs:
non-zero page payloads appended to a compact *spill* file plus one int64 per
page saying where each page is (zero pages cost nothing). With a derived
directory (the case's ``derived/``) spill and index persist, keyed on the
source's path, size, mtime and stream offset, so a re-run reuses them.

>>> codec_of(b"\\x1f\\x8b\\x08"), codec_of(b"(\\xb5/\\xfd"), codec_of(b"QEVM")
('gzip', 'zstd', None)
"""

from __future__ import annotations

import builtins
import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import zstandard

from toolkit.errors import MemoryFormatError
from toolkit.limits import INFLATE_PASSES, INFLATE_PER_INPUT_BYTE, env_name, human, limit
from toolkit.memory import lzo1x, migration
from toolkit.memory.cursor import Cursor
from toolkit.memory.pages import PageMap

LZOP_MAGIC = b"\x89LZO\x00\r\n\x1a\n"
MAGICS = [
    ("gzip", b"\x1f\x8b"),
    ("bzip2", b"BZh"),
    ("xz", b"\xfd7zXZ\x00"),
    ("lzop", LZOP_MAGIC),
    ("zstd", b"\x28\xb5\x2f\xfd"),
]
LZOP_MAX_BLOCK = 64 << 20
INDEX_VERSION = 3  # bump when the page-index encoding changes


def codec_of(head):
    for name, magic in MAGICS:
        if head.startswith(magic):
            return name
    return None


class LzopReader(io.RawIOBase):
    """Streaming reader of an lzop file (header, then LZO1X blocks).

    Block: be32 uncompressed length (0 ends the file), be32 compressed length,
    optional adler32/crc32 checksums per the header flags, data (stored as-is
    when both lengths are equal).
    """

    def __init__(self, fileobj, path=""):
        self.f, self.path = fileobj, path
        self.pos = fileobj.tell()
        self._buf, self._eof = b"", False
        self._header()

    def _take(self, n):
        data = self.f.read(n)
        if len(data) < n:
            raise MemoryFormatError(self.path, self.pos + len(data), "lzop stream truncated")
        self.pos += n
        return data

    def _header(self):
        if self._take(9) != LZOP_MAGIC:
            raise MemoryFormatError(self.path, self.pos - 9, "lzop magic missing")
        version, _lib = struct.unpack(">HH", self._take(4))
        if version >= 0x0940:
            self._take(2)
        method = self._take(1)[0]
        if version >= 0x0940:
            self._take(1)
        (flags,) = struct.unpack(">I", self._take(4))
        if method not in (1, 2, 3):
            raise MemoryFormatError(self.path, self.pos - 5, f"lzop method {method} is not LZO1X")
        if flags & 0x800:
            self._take(4)  # filter
        self._take(12 if version >= 0x0940 else 8)  # mode, mtime low[, mtime high]
        self._take(self._take(1)[0])  # file name
        self._take(4)  # header checksum
        if flags & 0x40:  # extra field
            (n,) = struct.unpack(">I", self._take(4))
            self._take(n + 4)
        self.flags = flags

    def _block(self):
        at = self.pos
        (dst_len,) = struct.unpack(">I", self._take(4))
        if dst_len == 0:
            self._eof = True
            return b""
        (src_len,) = struct.unpack(">I", self._take(4))
        if dst_len > LZOP_MAX_BLOCK or src_len > dst_len:
            raise MemoryFormatError(self.path, at, f"lzop block lengths {src_len}/{dst_len} invalid")
        want = None
        if self.flags & 0x1:
            (want,) = struct.unpack(">I", self._take(4))
        if self.flags & 0x100:
            self._take(4)
        if src_len < dst_len:
            self._take(4 * bool(self.flags & 0x2) + 4 * bool(self.flags & 0x200))
        data = self._take(src_len)
        if src_len < dst_len:
            try:
                data = lzo1x.decompress(data, dst_len)
            except ValueError as exc:
                raise MemoryFormatError(self.path, at, f"lzop block corrupt: {exc}") from None
        if len(data) != dst_len or (want is not None and zlib.adler32(data) != want):
            raise MemoryFormatError(self.path, at, "lzop block fails its length/adler32 check")
        return bytes(data)

    def readable(self):
        return True

    def read(self, n=-1):
        while not self._eof and (n < 0 or len(self._buf) < n):
            self._buf += self._block()
        if n < 0:
            n = len(self._buf)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


def decompressor(codec, fileobj, path=""):
    """A file-like object yielding the decompressed bytes of ``fileobj``."""
    if codec == "gzip":
        return gzip.GzipFile(fileobj=fileobj, mode="rb")
    if codec == "bzip2":
        return bz2.BZ2File(fileobj, "rb")
    if codec == "xz":
        return lzma.LZMAFile(fileobj, "rb")
    if codec == "lzop":
        return LzopReader(fileobj, path)
    if codec == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(fileobj, read_across_frames=True)
    raise MemoryFormatError(path, 0, f"unknown compression {codec!r}")


def peek_decompressed(codec, head, n=4):
    """First bytes of a compressed head, or None when the head is too short to tell."""
    try:
        if codec == "gzip":
            return zlib.decompressobj(31).decompress(head, n)
        if codec == "xz":
            return lzma.LZMADecompressor().decompress(head, n)
        if codec == "zstd":
            return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(head)).read(n)
        if codec == "lzop":
            return LzopReader(io.BytesIO(head)).read(n)
    except Exception:
        return None
    return None  # bzip2 needs a whole 100-900 kB block before the first byte


def _cache_key(path, offset, codec):
    st = os.stat(path)
    raw = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{offset}|{codec}|{INDEX_VERSION}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def inflate_cap(st, compressed_bytes):
    """(bytes a compressed stream may inflate to, why) for the state indexed so far.

    A stream holds each page of the RAM it declares, sent again a few times at
    most by a live migration: ``limits.max_inflate`` plus INFLATE_PASSES times
    the declared RAM, and never more than INFLATE_PER_INPUT_BYTE per compressed
    byte (time is linear in what is inflated).
    """
    declared = sum(b["length"] for b in st["blocks"].values())
    most = limit("max_inflate") + min(INFLATE_PASSES * declared, INFLATE_PER_INPUT_BYTE * compressed_bytes)
    return most, (
        f"the compressed stream inflates past {human(most)} ({INFLATE_PASSES}x the {human(declared)} of RAM it "
        f"declares, at most {INFLATE_PER_INPUT_BYTE}x its {human(compressed_bytes)}, plus "
        f"{env_name('max_inflate')})"
    )


def index_compressed(path, offset, codec, derived_dir=None):
    """Index a compressed QEVM stream starting at ``offset`` of ``path``.

    Returns the migration state dict (see ``migration.index_stream``) with a
    spill file attached, plus ``st["derived"]`` naming the files it created or
    reused.

    >>> st = index_compressed("save.img", 0x1000, "zstd", "case/derived")  # doctest: +SKIP
    """
    base = None
    if derived_dir is not None:
        Path(derived_dir).mkdir(parents=True, exist_ok=True)
        base = Path(derived_dir) / f"{Path(path).name}.{_cache_key(path, offset, codec)}"
        cached = _load(base)
        if cached is not None:
            return cached
    if base is None:
        spill_file = tempfile.TemporaryFile()
    else:
        spill_file = builtins.open(f"{base}.pages.tmp", "w+b")
    raw = builtins.open(path, "rb")
    try:
        raw.seek(offset)
        stream = decompressor(codec, raw, path)
        compressed = os.fstat(raw.fileno()).st_size - offset
        st = migration.index_stream(
            Cursor(path, stream=stream, start=0),
            spill_factory=lambda: migration.Spill(spill_file),
            cap=lambda st: inflate_cap(st, compressed),
        )
        if st["spill_obj"] is None:
            st["spill_obj"] = migration.Spill(spill_file)
    except BaseException:
        spill_file.close()
        if base is not None:
            os.unlink(f"{base}.pages.tmp")
        raise
    finally:
        raw.close()
    st["derived"] = None
    if base is not None:
        spill_file.flush()
        os.replace(f"{base}.pages.tmp", f"{base}.pages")
        _save(base, st)
        st["derived"] = {"pages": f"{base}.pages", "index": f"{base}.npz", "meta": f"{base}.json", "reused": False}
    return st


_META_KEYS = ("machine", "page_size", "capabilities", "complete", "mapped_ram", "stream_end", "uuid")


def _save(base, st):
    # The chunks that exist, not a dense array over the declared RAM: a stream
    # declaring a terabyte writes a few KiB of index, not 2 GiB.
    arrays = {f"b{i}.{k}": v for i, b in enumerate(st["blocks"].values()) for k, v in b["map"].export().items()}
    np.savez(f"{base}.npz", **arrays)
    meta = {k: st.get(k) for k in _META_KEYS}
    meta["version"] = INDEX_VERSION
    meta["blocks"] = [[n, b["length"]] for n, b in st["blocks"].items()]
    meta["diagnostics"] = st["diagnostics"]
    tmp = f"{base}.json.tmp"
    with builtins.open(tmp, "w") as fh:
        json.dump(meta, fh)
    os.replace(tmp, f"{base}.json")  # written last: its presence marks a complete index


def _load(base):
    try:
        with builtins.open(f"{base}.json") as fh:
            meta = json.load(fh)
        if meta.get("version") != INDEX_VERSION:
            return None
        arrays = np.load(f"{base}.npz")
        st = {k: meta.get(k) for k in _META_KEYS}
        st["diagnostics"] = meta["diagnostics"]
        st["blocks"] = {}
        ps = st["page_size"]
        for i, (name, length) in enumerate(meta["blocks"]):
            parts = {k: arrays[f"b{i}.{k}"] for k in ("keys", "data", "fill_keys", "fill_values")}
            st["blocks"][name] = {"length": length, "map": PageMap.restore((length + ps - 1) // ps, ps, parts)}
        st["spill_obj"] = migration.Spill(builtins.open(f"{base}.pages", "rb"))
    except (OSError, ValueError, KeyError):
        return None
    st["derived"] = {"pages": f"{base}.pages", "index": f"{base}.npz", "meta": f"{base}.json", "reused": True}
    return st
