"""Snapshot diff on real images: allocated-cluster mapping vs a full walk, every relation libvirt makes."""

from __future__ import annotations

import hashlib
import os

import pytest

from tests.helpers import disk_images as b
from toolkit.engines.disk.diff import diff_disks, diff_tables
from toolkit.errors import DiskError
from toolkit.hashing import sha256_file
from toolkit.schemas import validate

TAMPER = b"tampered in place, inode untouched"
EXPECTED = {
    ("added", "/opt"),
    ("added", "/opt/newdir"),
    ("added", "/opt/newdir/f"),
    ("added", "/tmp/.x"),
    ("added", "/tmp/.x/run"),
    ("added", "/usr/bin/ls2"),
    ("removed", "/var/log/syslog"),
    ("removed", "/usr/bin/ls"),
    ("modified", "/etc/hostname"),
    ("modified", "/etc/shadow"),
    ("modified", "/usr/lib/x/implant"),
}


@pytest.fixture(scope="module")
def imgs(tmp_path_factory):
    d = tmp_path_factory.mktemp("diff")
    tree = b.write_tree(d / "tree", b.sample_linux_files())
    (d / "payload").write_bytes(b"\x7fELF-payload" * 100)
    (d / "host").write_bytes(b"victim-renamed\n")
    base_raw = b.make_ext4(tree, d / "base.raw", 48)
    b.to_qcow2(base_raw, d / "base.qcow2")
    mid_raw = b.edit_ext4(
        base_raw, d / "mid.raw", ["mkdir /tmp/.x", f"write {d / 'payload'} /tmp/.x/run", "rm /var/log/syslog"]
    )
    new_raw = b.edit_ext4(
        mid_raw,
        d / "new.raw",
        [
            "rm /etc/hostname",
            f"write {d / 'host'} /etc/hostname",
            "set_inode_field /etc/shadow mode 0100600",
            "mkdir /opt",
            "mkdir /opt/newdir",
            f"write {d / 'host'} /opt/newdir/f",
            "ln /usr/bin/ls /usr/bin/ls2",
            "unlink /usr/bin/ls",
        ],
    )
    # in-place overwrite of the implant's data block: no inode, time or size change
    block = b.block_of(new_raw, "/usr/lib/x/implant")
    with open(new_raw, "r+b") as fh:
        fh.seek(block * 4096)
        fh.write(TAMPER)
    b.overlay_from(mid_raw, d / "base.qcow2", d / "mid.qcow2", base_raw=base_raw)
    b.overlay_from(new_raw, d / "mid.qcow2", d / "new.qcow2", base_raw=mid_raw)
    b.overlay_from(
        new_raw,
        d / "base.qcow2",
        d / "overlay.qcow2",
        base_raw=base_raw,
        recorded_backing="/var/lib/libvirt/images/base.qcow2",
    )
    b.to_qcow2(base_raw, d / "standalone.qcow2")
    b.snapshot(d / "standalone.qcow2", "clean")
    b.write_changes(d / "standalone.qcow2", base_raw, new_raw)
    b.to_qcow2(new_raw, d / "unrelated.qcow2")
    evidence = sorted(p for p in d.glob("*.qcow2"))
    before = {p: sha256_file(p) for p in evidence}
    yield {"dir": d, "base_raw": base_raw, "new_raw": new_raw}
    assert {p: sha256_file(p) for p in evidence} == before, "evidence files changed"


def changes(df) -> set:
    return set(zip(df["change"], df["path"]))


def test_overlay_over_base_maps_allocated_clusters(imgs):
    d = imgs["dir"]
    df = diff_disks(d / "base.qcow2", d / "overlay.qcow2")
    validate("disk/diff", df)
    assert changes(df) == EXPECTED
    assert set(df["method"]) == {"allocated-clusters"}
    row = df.set_index("path").loc["/usr/lib/x/implant"]
    assert row["changed"] == "content"  # found although its inode never changed
    assert row["sha256_a"] == hashlib.sha256(b.IMPLANT).hexdigest()
    tampered = TAMPER + b.IMPLANT[len(TAMPER) :]
    assert row["sha256_b"] == hashlib.sha256(tampered).hexdigest()
    assert df.set_index("path").loc["/etc/shadow", "changed"] == "mode"
    added = df.set_index("path").loc["/tmp/.x/run"]
    assert added["sha256_b"] == hashlib.sha256(b"\x7fELF-payload" * 100).hexdigest() and added["size_b"] == 1200
    diags = df.attrs["diagnostics"]
    assert not (diags["severity"] == "warning").any()


def test_full_walk_agrees(imgs):
    d = imgs["dir"]
    fast = diff_disks(d / "base.qcow2", d / "overlay.qcow2")
    slow = diff_disks(d / "base.qcow2", d / "overlay.qcow2", full_walk=True)
    cols = [
        "change",
        "path",
        "type",
        "changed",
        "size_a",
        "size_b",
        "sha256_a",
        "sha256_b",
        "mtime_a",
        "mtime_b",
        "mode_a",
        "mode_b",
        "uid_a",
        "uid_b",
    ]
    assert fast[cols].astype(str).values.tolist() == slow[cols].astype(str).values.tolist()


def test_internal_snapshot_against_active_layer(imgs):
    d = imgs["dir"]
    df = diff_disks({"path": d / "standalone.qcow2", "snapshot": "clean"}, d / "standalone.qcow2")
    assert changes(df) == EXPECTED and set(df["method"]) == {"allocated-clusters"}


def test_two_external_snapshots(imgs):
    d = imgs["dir"]
    first = diff_disks(d / "base.qcow2", d / "mid.qcow2")
    assert changes(first) == {("added", "/tmp/.x"), ("added", "/tmp/.x/run"), ("removed", "/var/log/syslog")}
    second = diff_disks(d / "mid.qcow2", d / "new.qcow2")
    assert changes(second) == EXPECTED - changes(first)
    assert set(second["method"]) == {"allocated-clusters"}


def test_unrelated_images_fall_back_to_full_walk(imgs):
    d = imgs["dir"]
    tables = diff_tables(d / "base.qcow2", d / "unrelated.qcow2")
    assert changes(tables["disk/diff"]) == EXPECTED
    assert set(tables["disk/diff"]["method"]) == {"full-walk"}
    diag = tables["diagnostics"]
    assert diag[diag.severity == "warning"]["why"].str.contains("share no backing layer").any()


def test_unknown_filesystem_is_a_clear_error(tmp_path):
    raw = tmp_path / "noise.raw"
    raw.write_bytes(os.urandom(4 << 20))
    b.to_qcow2(raw, tmp_path / "noise.qcow2")
    b.overlay_from(raw, tmp_path / "noise.qcow2", tmp_path / "noise2.qcow2", base_raw=raw)
    with pytest.raises(DiskError, match="no (known|readable) .*filesystem"):
        diff_disks(tmp_path / "noise.qcow2", tmp_path / "noise2.qcow2")


def test_cli_diff_writes_the_table(imgs, tmp_path):
    from typer.testing import CliRunner

    from toolkit.case import Case
    from toolkit.cli.app import app  # the CLI as users run it: `snapscope diff`

    d = imgs["dir"]
    runner = CliRunner()
    res = runner.invoke(
        app, ["diff", str(d / "standalone.qcow2@clean"), str(d / "standalone.qcow2"), "--case", str(tmp_path / "case")]
    )
    assert res.exit_code == 0, res.output
    assert "6 added, 2 removed, 3 modified" in res.output
    assert changes(Case.open(tmp_path / "case").table("disk/diff")) == EXPECTED
    bad = runner.invoke(
        app, ["diff", str(d / "overlay.qcow2"), str(d / "missing.qcow2"), "--case", str(tmp_path / "case")]
    )
    assert bad.exit_code == 2 and "missing.qcow2: disk image not found" in bad.output
    assert "Traceback" not in bad.output
