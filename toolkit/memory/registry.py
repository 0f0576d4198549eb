"""The memory formats snapscope reads, in detection order (raw last).

Each entry is a plain dict: ``name``, ``detect(head: bytes) -> bool`` (head =
the first HEAD_SIZE bytes), ``probe(path) -> dict``, ``open(path, **opts) ->
MemoryImage``, ``doc``, and ``volatility_native`` (Volatility 3 opens the
file by itself, so the memory engine may hand it the original file).

>>> [f["name"] for f in FORMATS][-1]
'raw'
"""

from __future__ import annotations

from toolkit.memory import compressed_stream, elf_core, kdump, libvirt_save, migration_image, qcow2, raw

HEAD_SIZE = 1 << 16

FORMATS = [
    {
        "name": "elf-core",
        "detect": elf_core.detect,
        "probe": elf_core.probe,
        "open": elf_core.open,
        "volatility_native": True,
        "doc": "QEMU ELF core: dump-guest-memory, virsh dump --memory-only (incl. PN_XNUM)",
    },
    {
        "name": "kdump",
        "detect": kdump.detect,
        "probe": kdump.probe,
        "open": kdump.open,
        "volatility_native": False,
        "doc": "kdump-compressed (makedumpfile flattened or raw KDUMP), zlib/lzo/snappy pages",
    },
    {
        "name": "libvirt-save",
        "detect": libvirt_save.detect,
        "probe": libvirt_save.probe,
        "open": libvirt_save.open,
        "volatility_native": False,
        "doc": "libvirt save image: virsh save, managedsave, external snapshot memory; "
        "raw/gzip/bzip2/xz/lzop/zstd/sparse streams",
    },
    {
        "name": "qemu-migration",
        "detect": migration_image.detect,
        "probe": migration_image.probe,
        "open": migration_image.open,
        "volatility_native": False,
        "doc": "bare QEMU migration stream (QEVM v3): migrate to file, virsh dump (full), mapped-ram",
    },
    {
        "name": "qcow2-snapshot",
        "detect": qcow2.detect,
        "probe": qcow2.probe,
        "open": qcow2.open,
        "volatility_native": False,
        "doc": "VM state of a qcow2 internal snapshot (savevm), through its L1 table and backing chain",
    },
    {
        "name": "compressed-qemu-migration",
        "detect": compressed_stream.detect,
        "probe": compressed_stream.probe,
        "open": compressed_stream.open,
        "volatility_native": False,
        "doc": "a whole QEVM stream compressed with gzip/bzip2/xz/lzop/zstd (virsh dump + dump_image_format)",
    },
    {
        "name": "lime",
        "detect": raw.lime_detect,
        "probe": raw.lime_probe,
        "open": raw.lime_open,
        "volatility_native": True,
        "doc": "LiME dump (EMiL range headers)",
    },
    {
        "name": "raw",
        "detect": raw.raw_detect,
        "probe": raw.raw_probe,
        "open": raw.raw_open,
        "volatility_native": True,
        "doc": "raw physical image: file offset = guest-physical address",
    },
]

BY_NAME = {f["name"]: f for f in FORMATS}
