"""The disk engine and the snapshot diff on the lab guest (fixtures/build_lab.py) against its ground truth.

Layout used (fixtures/build_lab.py): qemu/base.qcow2 and qemu/disk.qcow2 (overlay, backing
"base.qcow2", internal snapshot lab-savevm); libvirt/disk.qcow2 (standalone, internal snapshot
snap-internal) and libvirt/disk-ext.qcow2 + libvirt/snap-external.xml (external overlay whose
backing is an absolute staging path that no longer exists).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import pytest

from tests.helpers.contexts import engine_context
from toolkit.engines.disk import run
from toolkit.engines.disk.diff import diff_disks
from toolkit.evidence import discover

pytestmark = pytest.mark.lab
PROFILE = {
    "disk": {
        "functions": ["users", "cronjobs", "services", "history", "logs"],
        "hash": {"max_size": 64 << 20, "paths": ["/var/tmp", "/tmp"], "executables": True},
    }
}


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _disk_tables(lab, path, snapshot=None):
    snap = {
        "id": f"lab-{path.parent.name}-{snapshot or 'active'}",
        "disks": [{"path": lab / path, "format": "qcow2", "role": "disk", "snapshot": snapshot}],
    }
    before = _sha(lab / path)
    tables = run(snap, engine_context(Path(tempfile.mkdtemp()), PROFILE, snapshot_id=snap["id"]))
    assert _sha(lab / path) == before, "evidence changed"
    return tables


STATES = [("qemu/disk.qcow2", None), ("qemu/disk.qcow2", "lab-savevm"), ("libvirt/disk.qcow2", "snap-internal")]


@pytest.mark.parametrize("path, snapshot", STATES)
def test_guest_facts_through_chain_and_internal_snapshots(lab, ground_truth, path, snapshot):
    from pathlib import Path

    t = _disk_tables(lab, Path(path), snapshot)
    assert not (t["diagnostics"]["severity"] == "error").any(), t["diagnostics"]
    assert t["disk/system"]["hostname"].iloc[0] == ground_truth["guest"]["hostname"]
    users = set(t["disk/users"]["user"])
    assert {u["name"] for u in ground_truth["guest"]["users"]} <= users

    cron = ground_truth["cron"]
    p = t["disk/persistence"]
    row = p[(p.kind == "cron") & (p.path == cron["path"])]
    assert len(row) == 1, p[p.kind == "cron"]
    row = row.iloc[0]
    assert (row["user"], row["program"], row["program_path"]) == (cron["user"], cron["target"], cron["target"])
    assert row["program_sha256"] == ground_truth["implant"]["sha256"]

    hist = t["disk/shell_history"]
    lines = hist[hist.path == ground_truth["shell_history"]["path"]].sort_values("order")["command"].tolist()
    assert lines == ground_truth["shell_history"]["lines"]


def test_chain_rows_name_the_files_used(lab):
    t = _disk_tables(lab, lab / "qemu" / "disk.qcow2")
    chain = t["disk/chain"]
    assert chain["path"].tolist() == [str(lab / "qemu" / "disk.qcow2"), str(lab / "qemu" / "base.qcow2")]


def test_external_snapshot_overlay_named_in_xml(lab, ground_truth):
    # discover() names the disk as it was at the snapshot (role disk) and the
    # overlay libvirt created then (role overlay, written after the moment).
    (snap,) = discover([lab / "libvirt" / "snap-external.xml"])
    overlay = [d for d in snap["disks"] if d["role"] == "overlay"]
    assert overlay and overlay[0]["path"] == str(lab / "libvirt" / "disk-ext.qcow2")
    # The overlay itself opens, its absolute staging-path backing file found beside it.
    t = run(
        {"id": "lab-ext", "disks": [{**overlay[0], "role": "disk"}]},
        engine_context(Path(tempfile.mkdtemp()), PROFILE, snapshot_id="lab-ext"),
    )
    assert t["disk/chain"]["resolved_by"].tolist()[1] == "basename-beside"
    assert t["disk/system"]["hostname"].iloc[0] == ground_truth["guest"]["hostname"]
    at_moment = run(snap, engine_context(Path(tempfile.mkdtemp()), PROFILE, snapshot_id=snap["id"]))
    assert at_moment["disk/system"]["hostname"].iloc[0] == ground_truth["guest"]["hostname"]


def test_diff_base_vs_overlay_matches_ground_truth(lab, ground_truth):
    df = diff_disks(lab / "qemu" / "base.qcow2", lab / "qemu" / "disk.qcow2")
    assert set(df["method"]) == {"allocated-clusters"}
    content = df[
        (df["type"] == "file") & ((df["change"] == "added") | df["changed"].fillna("").str.contains("content"))
    ]
    assert sorted(content["path"]) == sorted(ground_truth["diff_expected"])
    expected_sha = ground_truth["runs"]["qemu"]["disk_diff"]["sha256"]
    assert dict(zip(content["path"], content["sha256_b"])) == expected_sha
    full = diff_disks(lab / "qemu" / "base.qcow2", lab / "qemu" / "disk.qcow2", full_walk=True)
    assert set(zip(full["change"], full["path"])) == set(zip(df["change"], df["path"]))
