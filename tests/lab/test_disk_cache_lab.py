"""Base-image cache on the lab: qemu/disk.qcow2 over base.qcow2 and the fleet's linked clones.

The cached path (base rows once, overlay re-walked where the allocated-cluster
diff says) must give exactly the rows of a full walk, and leave the evidence alone.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers.contexts import engine_context
from toolkit.engines.disk import run
from toolkit.hashing import sha256_file
from toolkit.references import reference_policy

pytestmark = pytest.mark.lab
PROFILE = {
    "disk": {"functions": ["users"], "hash": {"max_size": 64 << 20, "paths": ["/var/tmp", "/tmp"], "executables": True}}
}


def _tables(path, snapshot=None, cache_dir=None, work=None, references=None):
    snap = {
        "id": f"{path.parent.name}-{snapshot or 'active'}",
        "disks": [{"path": path, "format": "qcow2", "role": "disk", "snapshot": snapshot}],
    }
    work = work or Path(tempfile.mkdtemp())
    return run(snap, engine_context(work, PROFILE, snapshot_id=snap["id"], cache_dir=cache_dir, references=references))


def _files(t):
    return t["disk/files"].sort_values("path").reset_index(drop=True)


def _notes(t):
    d = t["diagnostics"]
    return d[d["what"] == "disk/files"]["why"].tolist()


@pytest.mark.parametrize("snapshot", [None, "lab-savevm"])
def test_lab_overlay_equals_full_walk(lab, tmp_path, snapshot):
    disk, base = lab / "qemu" / "disk.qcow2", lab / "qemu" / "base.qcow2"
    before = {p: sha256_file(p) for p in (disk, base)}
    full = _tables(disk, snapshot)
    cold = _tables(disk, snapshot, cache_dir=tmp_path)
    warm = _tables(disk, snapshot, cache_dir=tmp_path)
    for t in (cold, warm):
        pd.testing.assert_frame_equal(_files(full), _files(t))
        assert not t["diagnostics"]["severity"].isin(["warning", "error"]).any(), t["diagnostics"]
    assert any("base walked once" in n for n in _notes(cold)), _notes(cold)
    assert any("base rows from the cache" in n for n in _notes(warm)), _notes(warm)
    assert {p: sha256_file(p) for p in (disk, base)} == before, "evidence changed"


def test_fleet_clones_share_one_base_entry(fleet, tmp_path):
    clones = sorted(fleet.glob("vm0[1-5]/disk.qcow2"))
    assert len(clones) == 5
    base = fleet / "base.qcow2"
    before = sha256_file(base)
    fleet_root = reference_policy(roots=[fleet])  # each clone names ../base.qcow2: the fleet dir is the root
    for i, disk in enumerate(clones):
        cached = _tables(disk, cache_dir=tmp_path, work=tmp_path, references=fleet_root)
        pd.testing.assert_frame_equal(_files(_tables(disk, references=fleet_root)), _files(cached))
        if i:
            assert any("base rows from the cache" in n for n in _notes(cached)), _notes(cached)
    assert len(list((tmp_path / "disk").rglob("files-*.json.gz"))) == 1
    assert sha256_file(base) == before, "base image changed"
