"""QEMU ELF core (``dump-guest-memory``, ``virsh dump --memory-only``).

One PT_NOTE (per-vCPU ``CORE``/NT_PRSTATUS and ``QEMU`` notes, optional
``VMCOREINFO``), then PT_LOAD segments whose p_paddr is the guest-physical
address. More than 0xfffe segments use PN_XNUM: e_phnum = 0xffff and the real
count in section header 0's sh_info.

>>> from toolkit.memory import elf_core
>>> elf_core.detect(b"\\x7fELF\\x02\\x01\\x01" + bytes(9) + b"\\x04\\x00")
True
"""

from __future__ import annotations

import struct

import numpy as np

from toolkit.errors import MemoryFormatError
from toolkit.limits import env_name, human, limit
from toolkit.memory import elf_loads
from toolkit.memory.image import FileSource, MemoryImage, merge_runs
from toolkit.schemas import diagnostic

PT_LOAD, PT_NOTE = 1, 4
PN_XNUM = 0xFFFF
QEMU_CR3_OFFSET = 416  # QEMUCPUState: version, size, 16 GPRs, rip, rflags, 10 segments, cr[0..4]
MAX_PHNUM = 1 << 22  # a bound so a lying count cannot make us allocate forever


def detect(head):
    # ET_CORE only: an ELF executable is not a memory image.
    return (
        len(head) >= 18
        and head[:4] == b"\x7fELF"
        and head[4] in (1, 2)
        and head[5] == 1
        and struct.unpack_from("<H", head, 16)[0] == 4
    )


def _layout(cls):
    if cls == 2:
        return {"ehdr": "<16sHHIQQQIHHHHHH", "phdr": "<IIQQQQQQ", "phsize": 56, "sh_info_at": 44, "shsize": 64}
    return {"ehdr": "<16sHHIIIIIHHHHHH", "phdr": "<IIIIIIII", "phsize": 32, "sh_info_at": 28, "shsize": 40}


PHDR = {
    2: np.dtype(
        [("type", "<u4"), ("flags", "<u4"), ("offset", "<u8"), ("vaddr", "<u8"), ("paddr", "<u8")]
        + [("filesz", "<u8"), ("memsz", "<u8"), ("align", "<u8")]
    ),
    1: np.dtype(
        [("type", "<u4"), ("offset", "<u4"), ("vaddr", "<u4"), ("paddr", "<u4"), ("filesz", "<u4")]
        + [("memsz", "<u4"), ("flags", "<u4"), ("align", "<u4")]
    ),
}


def read_headers(src, path):
    """ELF header and program headers (a numpy structured array, PN_XNUM resolved)."""
    head = src.pread(0, 64)
    if len(head) < 52 or not detect(head):
        raise MemoryFormatError(path, 0, "not an ELF core file (ELF magic / ET_CORE missing)")
    cls = head[4]
    lay = _layout(cls)
    size = struct.calcsize(lay["ehdr"])
    if len(head) < size:
        raise MemoryFormatError(path, len(head), "truncated ELF header")
    (_, e_type, e_machine, _, _, e_phoff, e_shoff, _, _, e_phentsize, e_phnum, e_shentsize, _, _) = struct.unpack_from(
        lay["ehdr"], head
    )
    if e_phnum == PN_XNUM:
        sh0 = src.pread(e_shoff, lay["shsize"])
        if e_shoff == 0 or len(sh0) < lay["shsize"]:
            raise MemoryFormatError(path, e_shoff, "PN_XNUM set but section header 0 is missing")
        e_phnum = struct.unpack_from("<I", sh0, lay["sh_info_at"])[0]
    if e_phentsize != lay["phsize"] and e_phnum:
        raise MemoryFormatError(path, 0x36 if cls == 2 else 0x2A, f"e_phentsize {e_phentsize} is not {lay['phsize']}")
    if e_phnum > MAX_PHNUM or e_phoff + e_phnum * lay["phsize"] > src.size:
        raise MemoryFormatError(path, e_phoff, f"{e_phnum} program headers do not fit in the file")
    # A structured array, not a dict per header: a core may hold millions.
    phdrs = np.frombuffer(src.pread(e_phoff, e_phnum * lay["phsize"]), dtype=PHDR[cls])
    return {"class": cls, "machine": e_machine, "phoff": e_phoff, "phdrs": phdrs}


def parse_notes(data, path="", base=0):
    """Split ELF note bytes into dicts {name, type, desc, offset}.

    At most ``limits.limit("max_elf_notes")`` notes (QEMU writes two per vCPU).

    >>> [n["name"] for n in parse_notes(b"\\x05\\0\\0\\0\\0\\0\\0\\0\\x01\\0\\0\\0CORE\\0\\0\\0\\0")]
    ['CORE']
    """
    notes, pos = [], 0
    cap = limit("max_elf_notes")
    while pos + 12 <= len(data):
        if len(notes) >= cap:
            raise MemoryFormatError(
                path, base + pos, f"more than {cap} ELF notes (raise {env_name('max_elf_notes')} if this is real)"
            )
        namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
        name_at = pos + 12
        desc_at = name_at + ((namesz + 3) & ~3)
        end = desc_at + ((descsz + 3) & ~3)
        if end > len(data) + 3 or namesz > 4096:
            raise MemoryFormatError(path, base + pos, "ELF note runs past its segment")
        name = data[name_at : name_at + namesz].rstrip(b"\0").decode("ascii", "replace")
        notes.append({"name": name, "type": ntype, "desc": data[desc_at : desc_at + descsz], "offset": base + pos})
        pos = end
    return notes


def vmcoreinfo_table(raw: bytes) -> dict:
    """The ``KEY=value`` lines of a VMCOREINFO note's text as a dict (values as written).

    >>> vmcoreinfo_table(b"OSRELEASE=6.1.0\\nPAGESIZE=4096\\n\\0\\0")
    {'OSRELEASE': '6.1.0', 'PAGESIZE': '4096'}
    """
    text = raw.decode("utf-8", "replace").rstrip("\0")
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def note_facts(notes):
    """vCPU CR3s and VMCOREINFO out of QEMU-written notes."""
    facts = {"vcpus": 0, "cr3": []}
    for n in notes:
        if n["name"] == "CORE" and n["type"] == 1:
            facts["vcpus"] += 1
        elif n["name"] == "QEMU" and len(n["desc"]) >= QEMU_CR3_OFFSET + 8:
            facts["cr3"].append(struct.unpack_from("<Q", n["desc"], QEMU_CR3_OFFSET)[0])
        elif n["name"] == "VMCOREINFO":
            facts["vmcoreinfo"] = vmcoreinfo_table(n["desc"])
    return facts


def note_ranges(src, hdr):
    """(file offset, length) of the note bytes, each byte of the file once, and
    whether PT_NOTE headers overlapped (many headers over the same bytes
    would otherwise multiply the notes: 1 MiB of core, a gigabyte of notes)."""
    notes = hdr["phdrs"][(hdr["phdrs"]["type"] == PT_NOTE) & (hdr["phdrs"]["offset"] < src.size)]
    ranges = [(off, min(n, src.size - off)) for off, n in zip(notes["offset"].tolist(), notes["filesz"].tolist())]
    merged = merge_runs(ranges)
    return merged, sum(n for _, n in ranges if n > 0) > sum(n for _, n in merged)


def _scan(path):
    src = FileSource(path)
    try:
        hdr = read_headers(src, path)
        ranges, hdr["notes_overlap"] = note_ranges(src, hdr)
        total, cap = sum(n for _, n in ranges), limit("max_note_bytes")
        if total > cap:
            raise MemoryFormatError(
                path,
                ranges[0][0],
                f"PT_NOTE segments hold {human(total)} of notes, above {human(cap)} "
                f"(raise {env_name('max_note_bytes')} if this is real)",
            )
        notes_raw = b"".join(src.pread(off, n) for off, n in ranges)
        return src, hdr, notes_raw
    except BaseException:
        src.close()
        raise


def probe(path):
    """Facts without building the address space.

    >>> probe("guest.elf")["loads"]  # doctest: +SKIP
    3
    """
    src, hdr, notes_raw = _scan(path)
    try:
        loads = hdr["phdrs"][hdr["phdrs"]["type"] == PT_LOAD]
        facts = {
            "format": "elf-core",
            "elf_class": 64 if hdr["class"] == 2 else 32,
            "machine": hdr["machine"],
            "loads": len(loads),
            "ram_bytes": sum(loads["memsz"].tolist()),
        }
        facts.update(note_facts(parse_notes(notes_raw, path)))
        return facts
    finally:
        src.close()


def open(path, **_opts):
    """Open an ELF core as a MemoryImage.

    >>> with open("guest.elf") as img:  # doctest: +SKIP
    ...     img.read(0x1000, 16)
    """
    src, hdr, notes_raw = _scan(path)
    try:
        segs, diags = [], []
        if hdr["notes_overlap"]:
            diags.append(
                diagnostic(
                    "warning",
                    "overlapping PT_NOTE segments",
                    f"{path}@{hdr['phoff']:#x}",
                    "several program headers cover the same note bytes; each byte was read once",
                )
            )
        table, more = elf_loads.load_table(hdr["phdrs"], src.size, path)
        diags += more
        seg = elf_loads.segment(table, src, path)
        segs = [seg] if seg is not None else []
        notes = parse_notes(notes_raw, path)
        info = {"elf_class": 64 if hdr["class"] == 2 else 32, "machine": hdr["machine"]}
        info.update(note_facts(notes))
        return MemoryImage(
            format="elf-core",
            path=path,
            info=info,
            segments=segs,
            diagnostics=diags,
            notes=notes_raw,
            closers=[src.close],
        )
    except BaseException:
        src.close()
        raise
