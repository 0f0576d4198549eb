"""Identify an ELF image from its first bytes: header fields and GNU build-id.

Used on both sides of the process <-> file join: the memory engine reads the
first pages of a process's mapped image, the disk engine the first bytes of a
file. A running program whose file was deleted is matched to a copy on disk
by build-id and by the sha256 of its first page (4096 bytes).

Example::

    info = elf_identity(open("/bin/ls", "rb").read(65536))
    info["build_id"], info["first_page_sha256"]
"""

from __future__ import annotations

import hashlib
import struct

PAGE = 4096
PT_NOTE = 4
NT_GNU_BUILD_ID = 3


def parse_build_id(data: bytes) -> str | None:
    """The GNU build-id (hex) from an ELF image's leading bytes, or None.

    Only notes inside ``data`` are read: the build-id note sits near the start
    of every toolchain's output, so 64 KiB is plenty.
    """
    if len(data) < 64 or data[:4] != b"\x7fELF":
        return None
    is64, endian = data[4] == 2, "<" if data[5] == 1 else ">"
    try:
        if is64:
            (phoff,) = struct.unpack_from(endian + "Q", data, 0x20)
            phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x36)
        else:
            (phoff,) = struct.unpack_from(endian + "I", data, 0x1C)
            phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x2A)
        for i in range(min(phnum, 256)):
            off = phoff + i * phentsize
            if off + phentsize > len(data):
                break
            (p_type,) = struct.unpack_from(endian + "I", data, off)
            if p_type != PT_NOTE:
                continue
            if is64:
                (p_offset,) = struct.unpack_from(endian + "Q", data, off + 8)
                (p_filesz,) = struct.unpack_from(endian + "Q", data, off + 32)
            else:
                (p_offset,) = struct.unpack_from(endian + "I", data, off + 4)
                (p_filesz,) = struct.unpack_from(endian + "I", data, off + 16)
            found = _build_id_in_notes(data[p_offset : p_offset + p_filesz], endian)
            if found:
                return found
    except struct.error:
        return None
    return None


def _build_id_in_notes(notes: bytes, endian: str) -> str | None:
    pos = 0
    while pos + 12 <= len(notes):
        namesz, descsz, ntype = struct.unpack_from(endian + "III", notes, pos)
        name_end = pos + 12 + ((namesz + 3) & ~3)
        desc_end = name_end + ((descsz + 3) & ~3)
        if desc_end > len(notes) or namesz > 256 or descsz > 1024:
            return None
        if ntype == NT_GNU_BUILD_ID and notes[pos + 12 : pos + 12 + namesz].rstrip(b"\0") == b"GNU":
            return notes[name_end : name_end + descsz].hex()
        pos = desc_end
    return None


def elf_identity(data: bytes) -> dict:
    """{'is_elf', 'build_id', 'first_page_sha256'} of an image's leading bytes."""
    is_elf = data[:4] == b"\x7fELF"
    return {
        "is_elf": is_elf,
        "build_id": parse_build_id(data) if is_elf else None,
        "first_page_sha256": hashlib.sha256(data[:PAGE]).hexdigest() if is_elf and len(data) >= PAGE else None,
    }
