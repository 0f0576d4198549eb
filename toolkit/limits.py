"""Ceilings on what hostile evidence can make snapscope allocate, write or spend.

Every header in evidence is the attacker's, so nothing is sized from a header
alone. The first bound is always the format's own: a qcow2 compressed cluster
inflates to exactly one cluster, a kdump page to one block, a spill file holds
one slot per page and never more than the RAM declared, a page index grows
with the records present in the file, not with the RAM a header declares,
ELF notes are read once per byte of the file. The ceilings below sit above
those for what a format cannot bound by itself. Each has a default chosen far
above any real VM and can be changed with an environment variable (read when
the limit is used, so a test or an analyst can set it per run). Sizes take a
unit: ``512M``, ``4G``, ``64T``.

Going past a ceiling stops the reader with a MemoryFormatError / DiskError /
EvidenceError that names the file, the offset and the variable to raise.

The ceilings (name, environment variable, default: what it bounds):

- ``max_guest_ram``, SNAPSCOPE_MAX_GUEST_RAM, 64T: RAM one memory artefact may declare.
- ``index_floor``, SNAPSCOPE_INDEX_FLOOR, 64M: page-index memory allowed before
  the index must be paid for by evidence read (2 bytes of index per byte).
- ``max_runs``, SNAPSCOPE_MAX_RUNS, 1048576: separate ranges of known memory in
  one image (each costs a Python tuple).
- ``max_spill``, SNAPSCOPE_MAX_SPILL, 16T: decompressed pages one compressed
  stream writes to derived/ (also capped at the RAM it declares).
- ``min_free_disk``, SNAPSCOPE_MIN_FREE_DISK, 1G: free space a spill leaves on
  its filesystem.
- ``max_inflate``, SNAPSCOPE_MAX_INFLATE, 256M: what a compressed QEMU stream
  may inflate to beyond 8x the RAM it declares (and at most 1024x its own
  size): decompression and parsing time are linear in it.
- ``max_elf_notes``, SNAPSCOPE_MAX_ELF_NOTES, 65536: ELF notes in one core
  (QEMU writes two per vCPU and one VMCOREINFO).
- ``max_note_bytes``, SNAPSCOPE_MAX_NOTE_BYTES, 64M: ELF note bytes of one core.
- ``max_overlapping_records``, SNAPSCOPE_MAX_OVERLAPPING_RECORDS, 65536:
  flattened kdump records that overwrite one another (QEMU and makedumpfile
  rewrite a few headers).
- ``max_changed_ranges``, SNAPSCOPE_MAX_CHANGED_RANGES, 1048576: guest ranges a
  disk diff may list before it falls back to walking both trees.
- ``max_xml_elements``, SNAPSCOPE_MAX_XML_ELEMENTS, 100000: elements of one
  libvirt XML document.

>>> limit("max_elf_notes")
65536
>>> parse_size("64T") == 64 << 40
True
"""

from __future__ import annotations

import os

from toolkit.errors import SnapscopeError

KIB, MIB, GIB, TIB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

LIMITS = {
    "max_guest_ram": {"env": "SNAPSCOPE_MAX_GUEST_RAM", "default": 64 * TIB},
    "index_floor": {"env": "SNAPSCOPE_INDEX_FLOOR", "default": 64 * MIB},
    "max_spill": {"env": "SNAPSCOPE_MAX_SPILL", "default": 16 * TIB},
    "min_free_disk": {"env": "SNAPSCOPE_MIN_FREE_DISK", "default": GIB},
    "max_inflate": {"env": "SNAPSCOPE_MAX_INFLATE", "default": 256 * MIB},
    "max_runs": {"env": "SNAPSCOPE_MAX_RUNS", "default": 1 << 20},
    "max_elf_notes": {"env": "SNAPSCOPE_MAX_ELF_NOTES", "default": 1 << 16},
    "max_note_bytes": {"env": "SNAPSCOPE_MAX_NOTE_BYTES", "default": 64 * MIB},
    "max_overlapping_records": {"env": "SNAPSCOPE_MAX_OVERLAPPING_RECORDS", "default": 1 << 16},
    "max_changed_ranges": {"env": "SNAPSCOPE_MAX_CHANGED_RANGES", "default": 1 << 20},
    "max_xml_elements": {"env": "SNAPSCOPE_MAX_XML_ELEMENTS", "default": 100_000},
}

# Bytes of page index allowed per byte of evidence read, above index_floor: a
# dense index costs 8 bytes per page, and the smallest record that makes a
# page present (a migration ZERO record) is 9 bytes.
INDEX_PER_EVIDENCE_BYTE = 2
# What a compressed stream may inflate to, above max_inflate: its declared RAM
# sent INFLATE_PASSES times (a live migration resends dirty pages), and never
# more than INFLATE_PER_INPUT_BYTE per compressed byte: far above what RAM
# compresses to (zero pages are 9-byte records before compression already).
INFLATE_PASSES = 8
INFLATE_PER_INPUT_BYTE = 1024

_UNITS = {"": 1, "K": KIB, "M": MIB, "G": GIB, "T": TIB, "P": TIB << 10}


def parse_size(text: str) -> int:
    """Bytes in ``text``: an integer with an optional K/M/G/T/P suffix (powers of 1024).

    >>> parse_size("512M"), parse_size("4096")
    (536870912, 4096)
    """
    raw = str(text).strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (raw[:-1], raw[-1]) if raw and raw[-1] in _UNITS else (raw, "")
    value = int(number) * _UNITS[unit]
    if value < 0:
        raise ValueError(f"negative size {text!r}")
    return value


def limit(name: str) -> int:
    """The ceiling ``name`` (see the table above), from its environment variable if set.

    >>> limit("max_changed_ranges")
    1048576
    """
    entry = LIMITS[name]
    text = os.environ.get(entry["env"])
    if text is None or not text.strip():
        return entry["default"]
    try:
        return parse_size(text)
    except ValueError:
        raise SnapscopeError(f"{entry['env']}={text!r} is not a size (examples: 65536, 512M, 4G)") from None


def env_name(name: str) -> str:
    """The environment variable that sets ceiling ``name``, for error messages."""
    return LIMITS[name]["env"]


def human(n: int) -> str:
    """A byte count for a message: ``human(3 << 30)`` -> ``'3 GiB'``.

    >>> human(3 << 30), human(1536), human(10)
    ('3 GiB', '1.5 KiB', '10 bytes')
    """
    for unit, size in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= size:
            text = f"{n / size:.1f}".removesuffix(".0")
            return f"{text} {unit}"
    return f"{n} bytes"
