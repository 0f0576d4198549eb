"""A sparse VMDK whose header sizes its tables beyond the file cannot exhaust memory.

dissect's SparseDisk reads the grain directory, a grain table and the embedded
descriptor with one read each, sized from the header. Found by the disk fuzz
target (tests/helpers/fuzzing.py): one byte of ``capacity`` changed in a
128 KiB qemu-img VMDK asked for a 16 GiB grain directory (MemoryError under the
child's 6 GiB address-space cap). Measured in a child interpreter
(tests/helpers/bounded.py).
"""

from __future__ import annotations

import struct
import subprocess

import pytest

from tests.helpers.bounded import measure

# imports before the measure starts: what opening adds is the file's own cost
SETUP = "from toolkit.engines.disk.images import open_disk, close_disk; import dissect.hypervisor.disk.vmdk"
OPEN = """
d = open_disk(P)
d["stream"].seek(0)
out = [d["size"], d["stream"].read(4096).hex()]
close_disk(d)
"""


@pytest.fixture(scope="module")
def vmdk(tmp_path_factory):
    d = tmp_path_factory.mktemp("vmdk")
    (d / "d.raw").write_bytes(b"\xa5" * 4096 + bytes((2 << 20) - 4096))
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "vmdk", str(d / "d.raw"), str(d / "d.vmdk")], check=True
    )
    return d / "d.vmdk"


def _patched(vmdk, tmp_path, name, at, fmt, value):
    raw = bytearray(vmdk.read_bytes())
    struct.pack_into(fmt, raw, at, value)
    p = tmp_path / name
    p.write_bytes(raw)
    return p


@pytest.mark.parametrize(
    ("at", "fmt", "value", "what"),
    [
        (12, "<Q", 1 << 48, "a grain directory of 17179869184 bytes"),  # capacity: 2^57 bytes of disk
        (44, "<I", 0xFFFFFFFF, "a grain table of 17179869180 bytes"),  # numGTEsPerGT
        (36, "<Q", 1 << 40, "a descriptor of 562949953421312 bytes"),  # descriptorSize
    ],
    ids=["capacity", "grain-table-entries", "descriptor-size"],
)
def test_sparse_header_sizing_tables_beyond_the_file(vmdk, tmp_path, at, fmt, value, what):
    p = _patched(vmdk, tmp_path, "bad.vmdk", at, fmt, value)
    r = measure(OPEN, setup=SETUP, P=str(p))
    assert not r["ok"] and r["error"] == "DiskError", r
    assert r["message"] == f"{p}: VMDK sparse header at offset 0: {what} cannot fit in a file of 131072", r
    assert r["grew_mb"] < 64, r


def test_zero_grain_size_is_a_disk_error(vmdk, tmp_path):
    p = _patched(vmdk, tmp_path, "zero.vmdk", 20, "<Q", 0)
    r = measure(OPEN, setup=SETUP, P=str(p))
    assert not r["ok"] and r["error"] == "DiskError", r
    assert "grain size or grain table entries is 0" in r["message"], r


def test_the_unpatched_vmdk_still_opens(vmdk):
    r = measure(OPEN, setup=SETUP, P=str(vmdk))
    assert r["ok"] and r["out"] == [2 << 20, "a5" * 4096], r
