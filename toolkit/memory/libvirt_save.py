"""libvirt save images (``virsh save``, managedsave, external snapshot memory).

Header (92 bytes, host byte order, little-endian on x86): 16-byte magic
``LibvirtQemudSave`` (``LibvirtQemudPart`` while libvirt is still writing),
u32 version, u32 data_len, u32 was_running, u32 format (0 raw, 1 gzip,
2 bzip2, 3 xz, 4 lzop, 5 zstd, 6 sparse/mapped-ram), u32 cookieOffset, unused
words. Then the domain XML (NUL-terminated), an optional cookie XML at
0x5C + cookieOffset, and the QEMU stream at 0x5C + data_len, compressed by
``format`` (the header and XML never are).

>>> detect(b"LibvirtQemudSave"), detect(b"LibvirtQemudPart")
(True, True)
"""

from __future__ import annotations

import struct

from toolkit.errors import MemoryFormatError
from toolkit.memory import migration, migration_image, streams
from toolkit.memory.cursor import Cursor
from toolkit.memory.image import FileSource
from toolkit.schemas import diagnostic

MAGIC, PART_MAGIC = b"LibvirtQemudSave", b"LibvirtQemudPart"
HEADER_SIZE = 0x5C
FORMATS = {0: "raw", 1: "gzip", 2: "bzip2", 3: "xz", 4: "lzop", 5: "zstd", 6: "sparse"}
MAX_XML = 16 << 20  # the domain XML and cookie area: a few KiB from libvirt; read whole, so bounded


def detect(head):
    return head[:16] in (MAGIC, PART_MAGIC)


def read_header(src, path):
    """Header fields, domain XML and cookie of a save image."""
    raw = src.pread(0, HEADER_SIZE)
    if len(raw) < HEADER_SIZE or not detect(raw):
        raise MemoryFormatError(path, 0, "not a libvirt save image (magic/header missing)")
    order = "<"
    version = struct.unpack_from("<I", raw, 16)[0]
    if version > 0xFFFF:  # written on a host of the other byte order
        order = ">"
        version = struct.unpack_from(">I", raw, 16)[0]
    version, data_len, was_running, fmt, cookie_off = struct.unpack_from(order + "5I", raw, 16)
    if data_len > MAX_XML or HEADER_SIZE + data_len > src.size:
        raise MemoryFormatError(path, 0x14, f"data_len {data_len} runs past the end of the file")
    if fmt not in FORMATS:
        raise MemoryFormatError(path, 0x1C, f"unknown stream format {fmt}")
    if cookie_off and cookie_off >= data_len:
        raise MemoryFormatError(path, 0x20, f"cookieOffset {cookie_off} outside the XML area")
    area = src.pread(HEADER_SIZE, data_len)
    xml_end = cookie_off if cookie_off else data_len
    xml = area[:xml_end].split(b"\0")[0].decode("utf-8", "replace")
    cookie = area[cookie_off:].split(b"\0")[0].decode("utf-8", "replace") if cookie_off else None
    return {
        "complete": raw[:16] == MAGIC,
        "version": version,
        "was_running": bool(was_running),
        "compression": FORMATS[fmt],
        "byte_order": "little" if order == "<" else "big",
        "domain_xml": xml,
        "cookie": cookie,
        "stream_offset": HEADER_SIZE + data_len,
    }


def _part_diag(path, hdr):
    if hdr["complete"]:
        return []
    return [
        diagnostic(
            "warning",
            "incomplete evidence",
            f"{path}@0x0",
            "magic is LibvirtQemudPart: libvirt had not finished writing this "
            "save image; the memory it holds may be partial",
        )
    ]


def probe(path):
    src = FileSource(path)
    try:
        hdr = read_header(src, path)
        facts = {"format": "libvirt-save"}
        facts.update(hdr)
        if hdr["compression"] in ("raw", "sparse"):
            try:
                cur = Cursor(path, source=src, start=hdr["stream_offset"])
                facts.update(migration_image.probe_preamble(cur, src))
            except MemoryFormatError as exc:
                facts["stream_error"] = str(exc)
        return facts
    finally:
        src.close()


def open(path, *, derived_dir=None, **_opts):
    """Open the memory in a libvirt save image.

    A compressed stream is decompressed once into ``derived_dir`` (see
    ``streams``); without one, into an anonymous temporary file.

    >>> with open("vm.save", derived_dir="case/derived") as img:  # doctest: +SKIP
    ...     img.info["compression"], img.info["domain_xml"][:8]
    ('zstd', '<domain ')
    """
    src = FileSource(path)
    try:
        hdr = read_header(src, path)
        diags = _part_diag(path, hdr)
        if hdr["compression"] in ("raw", "sparse"):
            st = migration.index_stream(
                Cursor(path, source=src, start=hdr["stream_offset"]),
                source=src,
                spill_factory=migration_image._temp_spill,
            )
            closers, source = [src.close], src
        else:
            src.close()
            st = streams.index_compressed(path, hdr["stream_offset"], hdr["compression"], derived_dir)
            closers, source = [], None
            hdr["derived"] = st.get("derived")
            if derived_dir is None:
                diags.append(
                    diagnostic(
                        "info",
                        "decompressed to a temporary file",
                        path,
                        "no derived directory given; the index is not kept",
                    )
                )
        return migration_image.build_image(
            path, st, fmt="libvirt-save", info=hdr, diagnostics=diags, closers=closers, source=source
        )
    except BaseException:
        src.close()
        raise
