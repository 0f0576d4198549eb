"""VMDK, VDI and VHDX headers that size dissect's reads beyond the file cannot exhaust memory.

dissect reads a sparse VMDK's grain directory, a grain table and its embedded
descriptor, a VDI's block map and a VHDX's region table with one read each,
sized from the header. Found by the disk fuzz target (tests/helpers/fuzzing.py):
one byte of ``capacity`` changed in a 128 KiB qemu-img VMDK asked for a 16 GiB
grain directory (MemoryError under the child's 6 GiB address-space cap); the
VDI and VHDX siblings were found looking for the same read in dissect. Each file
is a qemu-img image with one header field patched, opened in a child
interpreter (tests/helpers/bounded.py).
"""

from __future__ import annotations

import struct
import subprocess

import pytest

from tests.helpers.bounded import measure

# imports before the measure starts: what opening adds is the file's own cost
SETUP = (
    "from toolkit.engines.disk.images import open_disk, close_disk\n"
    "import dissect.hypervisor.disk.vmdk, dissect.target.containers.vdi, dissect.target.containers.vhdx"
)
OPEN = """
d = open_disk(P)
d["stream"].seek(0)
out = [d["size"], d["stream"].read(4096).hex()]
close_disk(d)
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    (d / "d.raw").write_bytes(b"\xa5" * 4096 + bytes((2 << 20) - 4096))
    for fmt in ("vmdk", "vdi", "vhdx"):
        subprocess.run(
            ["qemu-img", "convert", "-q", "-f", "raw", "-O", fmt, str(d / "d.raw"), str(d / f"d.{fmt}")], check=True
        )
    return d


def _patched(images, tmp_path, fmt, at, pack, value):
    raw = bytearray((images / f"d.{fmt}").read_bytes())
    struct.pack_into(pack, raw, at, value)
    p = tmp_path / f"bad.{fmt}"
    p.write_bytes(raw)
    return p, len(raw)


@pytest.mark.parametrize(
    ("fmt", "at", "pack", "value", "why"),
    [
        # capacity 2^48 sectors: 2^32 grain directory entries
        ("vmdk", 12, "<Q", 1 << 48, "VMDK sparse header at offset 0: a grain directory of 17179869184 bytes"),
        ("vmdk", 44, "<I", 0xFFFFFFFF, "VMDK sparse header at offset 0: a grain table of 17179869180 bytes"),
        ("vmdk", 36, "<Q", 1 << 40, "VMDK sparse header at offset 0: a descriptor of 562949953421312 bytes"),
    ],
    ids=["vmdk-capacity", "vmdk-grain-table-entries", "vmdk-descriptor-size"],
)
def test_sparse_vmdk_sizing_tables_beyond_the_file(images, tmp_path, fmt, at, pack, value, why):
    p, size = _patched(images, tmp_path, fmt, at, pack, value)
    r = measure(OPEN, setup=SETUP, P=str(p))
    assert not r["ok"] and r["error"] == "DiskError", r
    assert r["message"] == f"{p}: {why} cannot fit in a file of {size}", r
    assert r["grew_mb"] < 64, r


def test_zero_grain_size_is_a_disk_error(images, tmp_path):
    p, _ = _patched(images, tmp_path, "vmdk", 20, "<Q", 0)
    r = measure(OPEN, setup=SETUP, P=str(p))
    assert not r["ok"] and r["error"] == "DiskError", r
    assert r["message"] == f"{p}: VMDK sparse header at offset 0: grain size or grain table entries is 0", r


def test_vdi_block_map_past_the_end(images, tmp_path):
    p, size = _patched(images, tmp_path, "vdi", 0x180, "<I", 0xFFFFFFFF)  # cBlocks
    r = measure(OPEN, setup=SETUP, P=str(p))
    assert not r["ok"] and r["error"] == "DiskError", r
    assert r["message"] == (
        f"{p}: VDI block map at offset 512 of 4294967295 blocks runs past the end of the file ({size} bytes)"
    ), r
    assert r["grew_mb"] < 64, r


def test_vdi_block_of_four_gigabytes(images, tmp_path):
    p, _ = _patched(images, tmp_path, "vdi", 0x178, "<I", 0xFFF00000)  # cbBlock
    r = measure(OPEN, setup=SETUP, P=str(p))
    assert not r["ok"] and r["error"] == "DiskError", r
    assert r["message"] == f"{p}: VDI block size 4293918720 (header at offset 0) is not 1 to 67108864", r


def test_vhdx_region_table_of_four_billion_entries(images, tmp_path):
    p, _ = _patched(images, tmp_path, "vhdx", (192 << 10) + 8, "<I", 0xFFFFFFFF)  # entry_count
    r = measure(OPEN, setup=SETUP, P=str(p))
    assert not r["ok"] and r["error"] == "DiskError", r
    assert r["message"] == f"{p}: VHDX region table at offset 196608 lists 4294967295 regions (at most 2047)", r
    assert r["grew_mb"] < 64, r


@pytest.mark.parametrize("fmt", ["vmdk", "vdi", "vhdx"])
def test_the_unpatched_images_still_open(images, fmt):
    r = measure(OPEN, setup=SETUP, P=str(images / f"d.{fmt}"))
    assert r["ok"] and r["out"] == [2 << 20, "a5" * 4096], r
