"""A qcow2 whose L1 entries all share one L2 table cannot exhaust memory (issue 13).

320 KiB of L1 (40960 entries, 4 KiB clusters) pointing at one fully allocated
L2 table describe 86 GB of allocated clusters; the allocation map used to be a
dict of every one of them (894 MiB) on every open. Measured in a child
interpreter (tests/helpers/bounded.py).
"""

from __future__ import annotations

import struct
import subprocess

import pytest

from tests.helpers import hostile_memory as H
from tests.helpers.bounded import measure

SETUP = """
from toolkit.engines.disk.images import open_disk, close_disk
from toolkit.engines.disk.allocation import changed_ranges, validate_tables
"""


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    d = tmp_path_factory.mktemp("shared-l2")
    lone = H.qcow2_shared_l2(d / "lone.qcow2")
    size = lone["virtual_size"]
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", str(d / "base.qcow2"), str(size)],
        check=True,
    )
    full = H.qcow2_shared_l2(d / "overlay.qcow2", backing="base.qcow2")
    every_other = H.qcow2_shared_l2(d / "striped.qcow2", backing="base.qcow2", every=2)
    return {"dir": d, "lone": lone, "full": full, "striped": every_other, "size": size}


def test_open_validates_each_shared_l2_table_once(shared):
    r = measure(
        """
        import os
        disk = open_disk(P)
        layer = disk["layers"][0]
        n = validate_tables(layer["qcow2"], layer["l1"], os.path.getsize(P), P)
        disk["stream"].seek(SIZE - 4096)
        out = [n, disk["size"], disk["stream"].read(4096) == bytes(4096)]
        close_disk(disk)
        """,
        setup=SETUP,
        P=str(shared["lone"]["path"]),
        SIZE=shared["size"],
    )
    assert r["ok"] and r["grew_mb"] < 64 and r["seconds"] < 20, r
    assert r["out"] == [40960 * 512, 40960 * 512 * 4096, True]


def _changed_ranges(shared, overlay, env=None):
    """changed_ranges(base, overlay) measured in a child."""
    r = measure(
        """
        a, b = open_disk(BASE), open_disk(P)
        out = changed_ranges(a, b)
        close_disk(a); close_disk(b)
        """,
        setup=SETUP,
        BASE=str(shared["dir"] / "base.qcow2"),
        P=str(shared[overlay]["path"]),
        env=env,
    )
    assert r["ok"] and r["grew_mb"] < 64 and r["seconds"] < 20, r
    return r["out"]


def test_overlay_allocating_everything_through_one_table_is_one_range(shared):
    assert _changed_ranges(shared, "full") == [[[0, shared["size"]]], "allocated clusters"]


def test_too_many_changed_ranges_fall_back_to_a_full_walk(shared):
    # every other cluster: 256 ranges per table, 10.5 million in all
    out = _changed_ranges(shared, "striped", {"SNAPSCOPE_MAX_CHANGED_RANGES": "100000"})
    assert out == [None, "more than 100000 changed ranges (raise SNAPSCOPE_MAX_CHANGED_RANGES to map them)"]


def test_l1_table_larger_than_qemu_allows(shared, tmp_path):
    p = tmp_path / "big-l1.qcow2"
    raw = bytearray(shared["lone"]["path"].read_bytes())
    struct.pack_into(">I", raw, 36, (32 << 20) // 8 + 1)  # l1_size
    p.write_bytes(raw)
    from toolkit.engines.disk.images import open_disk
    from toolkit.errors import DiskError

    with pytest.raises(DiskError, match=r"big-l1.qcow2: L1 table of 4194305 entries is larger than QEMU allows"):
        open_disk(p)
