"""Where QEMU RAM blocks sit in the guest-physical address space (x86).

The migration stream knows RAM blocks by name and block-relative offset; the
guest sees them at physical addresses. ``pc.ram`` (or the NUMA backends
``ram-node0``, ``ram-node1``... concatenated in node order) is split around
the PCI hole: the low part at 0, the rest from 4 GiB.

* i440fx (``pc-i440fx-*``, ``pc-*``): RAM >= 0xE0000000 → low part ends at 0xC0000000.
* q35 (``pc-q35-*``): RAM >= 0xB0000000 → low part ends at 0x80000000.

Other blocks (``vga.vram``, ``pc.bios``, option ROMs, ACPI tables) are device
memory, not guest RAM, and get no address here.

>>> guest_ram_pieces("pc-q35-7.2", [("pc.ram", 0xC0000000)])
[(0, 'pc.ram', 0, 2147483648), (4294967296, 'pc.ram', 2147483648, 1073741824)]
"""

from __future__ import annotations

import re

FOUR_GIB = 1 << 32
_NODE = re.compile(r"^(?:/objects/)?ram-node(\d+)$")


def chipset(machine):
    """'q35', 'i440fx' or 'other' for a QEMU machine type name."""
    m = (machine or "").lower()
    if "q35" in m:
        return "q35"
    if m.startswith("pc") or "i440fx" in m or "piix" in m:
        return "i440fx"
    return "other"


def low_ram_limit(machine, total):
    """Bytes of RAM below the PCI hole for this machine and RAM size."""
    kind = chipset(machine)
    if kind == "q35":
        return 0x80000000 if total >= 0xB0000000 else total
    if kind == "i440fx":
        return 0xC0000000 if total >= 0xE0000000 else total
    return total


def ram_blocks(blocks):
    """Names of the blocks that make up guest RAM, in address order.

    >>> ram_blocks([("vga.vram", 1), ("ram-node1", 2), ("ram-node0", 2)])
    ['ram-node0', 'ram-node1']
    """
    names = [n for n, _ in blocks]
    nodes = sorted((int(m.group(1)), n) for n in names if (m := _NODE.match(n)))
    if nodes:
        return [n for _, n in nodes]
    if "pc.ram" in names:
        return ["pc.ram"]
    return []


def guest_ram_pieces(machine, blocks):
    """[(gpa, block_name, block_offset, length)] for the guest-RAM blocks."""
    lengths = dict(blocks)
    order = ram_blocks(blocks)
    total = sum(lengths[n] for n in order)
    low = low_ram_limit(machine, total)
    pieces, linear = [], 0
    for name in order:
        start, end = linear, linear + lengths[name]
        if start < low:
            n = min(end, low) - start
            pieces.append((start, name, 0, n))
        if end > low:
            s = max(start, low)
            pieces.append((FOUR_GIB + s - low, name, s - start, end - s))
        linear = end
    return pieces
