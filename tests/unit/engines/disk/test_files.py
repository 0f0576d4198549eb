"""Linked clones on real images: base rows cached once, each overlay re-walked only where it changed,
and YARA file matches reused by content. The cached path must give exactly the full walk's rows."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from tests.helpers import disk_images as b
from tests.helpers.contexts import engine_context
from toolkit.engines.disk import run
from toolkit.engines.yara import files as yara_files
from toolkit.engines.yara.files import scan_files
from toolkit.engines.yara.rules import compile_rules
from toolkit.hashing import sha256_file
from toolkit.references import reference_policy

PROFILE = {"disk": {"functions": ["users"], "hash": {"paths": ["/tmp", "/home", "/etc/cron*"], "executables": True}}}


@pytest.fixture(scope="module")
def clones(tmp_path_factory):
    d = tmp_path_factory.mktemp("clones")
    files = b.sample_linux_files()
    for i in range(40):  # enough files that several inode-table blocks exist and most stay untouched
        files[f"usr/lib/pkg/mod{i:02d}.so"] = (b"\x7fELF" + bytes([i]) * 5000, 0o755)
        files[f"usr/share/doc/pkg/README{i:02d}"] = f"doc {i}\n" * 50
    tree = b.write_tree(d / "tree", files)
    (d / "payload").write_bytes(b"\x7fELF-payload" * 100)
    (d / "host").write_bytes(b"clone-a\n")
    base_raw = b.make_ext4(tree, d / "base.raw", 48)
    b.to_qcow2(base_raw, d / "base.qcow2")
    a_raw = b.edit_ext4(
        base_raw,
        d / "a.raw",
        [
            "mkdir /tmp/.x",
            f"write {d / 'payload'} /tmp/.x/run",
            "rm /var/log/syslog",
            "rm /etc/hostname",
            f"write {d / 'host'} /etc/hostname",
            "set_inode_field /etc/shadow mode 0100600",
            "ln /usr/bin/ls /usr/bin/ls2",
            "unlink /usr/bin/ls",
            # a read in the guest: only the atime moves, which disk/diff does not call a modification
            "set_inode_field /usr/lib/pkg/mod07.so atime 20240101000000",
            "mkdir /opt",
            "mkdir /opt/newdir",
            f"write {d / 'host'} /opt/newdir/f",
        ],
    )
    block = b.block_of(a_raw, "/usr/lib/x/implant")
    with open(a_raw, "r+b") as fh:  # in-place overwrite: no inode, time or size change
        fh.seek(block * 4096)
        fh.write(b"tampered in place")
    b_raw = b.edit_ext4(base_raw, d / "b.raw", ["rm /root/.bash_history", f"write {d / 'payload'} /tmp/dropped"])
    (d / "a").mkdir()
    (d / "b").mkdir()
    b.overlay_from(a_raw, d / "base.qcow2", d / "a" / "disk.qcow2", base_raw=base_raw, recorded_backing="../base.qcow2")
    b.overlay_from(b_raw, d / "base.qcow2", d / "b" / "disk.qcow2", base_raw=base_raw, recorded_backing="../base.qcow2")
    b.to_qcow2(a_raw, d / "standalone.qcow2")
    evidence = sorted(d.rglob("*.qcow2"))
    before = {p: sha256_file(p) for p in evidence}
    yield d
    assert {p: sha256_file(p) for p in evidence} == before, "evidence files changed"


def _clones_policy(clones, *more):
    # the clones' directory is the evidence root: each overlay names ../base.qcow2
    return reference_policy(roots=[clones, *more])


def _run(path, cache_dir=None, roots=()):
    snap = {"id": path.parent.name, "disks": [{"path": path, "format": "qcow2", "role": "disk", "snapshot": None}]}
    ctx = engine_context(
        path.parent / "work",
        PROFILE,
        snapshot_id=snap["id"],
        cache_dir=cache_dir,
        references=_clones_policy(path.parent.parent, *roots),
    )
    return run(snap, ctx)


def _files(tables):
    return tables["disk/files"].sort_values("path").reset_index(drop=True)


def _notes(tables):
    d = tables["diagnostics"]
    return d[d["what"] == "disk/files"]["why"].tolist()


def test_overlay_rows_equal_full_walk_cold_and_warm(clones, tmp_path):
    cache = tmp_path / "cache"
    for vm in ("a", "b"):
        full = _run(clones / vm / "disk.qcow2")
        cached = _run(clones / vm / "disk.qcow2", cache)
        pd.testing.assert_frame_equal(_files(full), _files(cached))
        assert not (cached["diagnostics"]["severity"].isin(["warning", "error"])).any()
    notes = _notes(cached)  # clone b: the base came from the cache that clone a filled
    assert any("base rows from the cache" in n for n in notes), notes
    assert any("re-stat'ed from the overlay" in n for n in notes), notes
    assert len(list((cache / "disk").rglob("files-*.json.gz"))) == 1
    a = _files(_run(clones / "a" / "disk.qcow2", cache)).set_index("path")
    assert "/usr/bin/ls" not in a.index and "/var/log/syslog" not in a.index
    assert a.loc["/tmp/.x/run", "sha256"] == hashlib.sha256(b"\x7fELF-payload" * 100).hexdigest()
    assert a.loc["/usr/lib/x/implant", "sha256"] != hashlib.sha256(b.IMPLANT).hexdigest()  # tampered in place
    assert a.loc["/usr/lib/pkg/mod07.so", "atime"] == pd.Timestamp("2024-01-01", tz="UTC")


def test_only_changed_paths_are_rewalked(clones, tmp_path, monkeypatch):
    from toolkit.engines.disk import files as disk_files

    cache = tmp_path / "cache"
    _run(clones / "a" / "disk.qcow2", cache)  # fills the base entry
    seen = []
    real = disk_files.entry_row
    monkeypatch.setattr(disk_files, "entry_row", lambda path, *a, **k: seen.append(path) or real(path, *a, **k))
    _run(clones / "b" / "disk.qcow2", cache)
    total = len(_files(_run(clones / "b" / "disk.qcow2")))
    assert "/root/.bash_history" not in seen  # removed: dropped, not stat'ed
    assert "/tmp/dropped" in seen and len(seen) < total // 4, (seen, total)


def test_cache_keyed_by_hash_policy_and_base_sha(clones, tmp_path):
    cache = tmp_path / "cache"
    path = clones / "b" / "disk.qcow2"
    _run(path, cache)
    other = {"disk": {**PROFILE["disk"], "hash": {"all": True}}}
    snap = {"id": "b", "disks": [{"path": path, "format": "qcow2", "role": "disk", "snapshot": None}]}
    policy = _clones_policy(clones)
    t = run(snap, engine_context(tmp_path, other, snapshot_id="b", cache_dir=cache, references=policy))
    full = run(snap, engine_context(tmp_path, other, snapshot_id="b", references=policy))
    pd.testing.assert_frame_equal(_files(full), _files(t))
    assert len(list((cache / "disk").rglob("files-*.json.gz"))) == 2
    hashes = {str((clones / "base.qcow2").resolve()): sha256_file(clones / "base.qcow2")}
    run(
        {"id": path.parent.name, "disks": [{"path": path, "format": "qcow2", "role": "disk", "snapshot": None}]},
        engine_context(path.parent / "work", PROFILE, cache_dir=cache, evidence_hashes=hashes, references=policy),
    )
    assert (cache / "disk" / f"sha256-{hashes[str((clones / 'base.qcow2').resolve())]}").is_dir()


def test_fallbacks_and_non_overlays_walk_in_full(clones, tmp_path):
    cache = tmp_path / "cache"
    full = _run(clones / "standalone.qcow2")
    t = _run(clones / "standalone.qcow2", cache)
    pd.testing.assert_frame_equal(full["disk/files"], t["disk/files"])  # same rows, same order
    assert _notes(t) == [] and not (cache / "disk").exists()
    grown = tmp_path / "grown" / "disk.qcow2"  # overlay with a larger virtual size: no cluster diff possible
    grown.parent.mkdir()
    b._run("qemu-img", "create", "-f", "qcow2", "-b", (clones / "base.qcow2").resolve(), "-F", "qcow2", grown, "80M")
    t = _run(grown, cache, roots=[clones])
    pd.testing.assert_frame_equal(_files(_run(grown, roots=[clones])), _files(t))
    assert any("full walk of the overlay" in n and "virtual sizes differ" in n for n in _notes(t)), _notes(t)


def test_offered_disk_files_carry_sha256(clones, tmp_path):
    ctx = engine_context(tmp_path, PROFILE, snapshot_id="a", cache_dir=tmp_path, references=_clones_policy(clones))
    t = run({"id": "a", "disks": [{"path": clones / "a" / "disk.qcow2", "format": "qcow2", "role": "disk"}]}, ctx)
    try:
        hashed = _files(t).dropna(subset=["sha256"]).set_index("path")["sha256"].to_dict()
        offered = {f["path"]: f["sha256"] for f in ctx.readers.disk_files}
        assert offered == hashed
    finally:
        ctx.readers.close()


RULE = 'rule implant { meta: severity = "high" strings: $a = "snapscope-test-implant" condition: $a }\n'


def test_yara_file_matches_cached_by_content(tmp_path, monkeypatch):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yar").write_text(RULE)
    rules = compile_rules([tmp_path / "rules"])
    data = {"/vm1/implant": b.IMPLANT, "/vm1/clean": b"nothing here" * 10}
    calls = []
    real = yara_files.scan_range
    monkeypatch.setattr(yara_files, "scan_range", lambda *a, **k: calls.append(a[4]["path"]) or real(*a, **k))

    def items(prefix):
        import io

        return [
            {
                "path": prefix + p[4:],
                "size": len(v),
                "sha256": hashlib.sha256(v).hexdigest(),
                "open": (lambda v=v: io.BytesIO(v)),
            }
            for p, v in data.items()
        ]

    first, d1 = scan_files(rules, items("/vm1"), cache_dir=tmp_path / "cache")
    assert sorted(calls) == ["/vm1/clean", "/vm1/implant"] and d1 == []
    second, d2 = scan_files(rules, items("/vm2"), cache_dir=tmp_path / "cache")
    assert len(calls) == 2, calls  # same bytes, same rules: nothing scanned again
    assert [{**r, "path": None} for r in first] == [{**r, "path": None} for r in second]
    assert {r["path"] for r in second} == {"/vm2/implant"} and first[0]["matched"] == second[0]["matched"]
    assert [x["severity"] for x in d2] == ["info"]
    other = compile_rules([tmp_path / "rules"], prefer="yara-python")  # another rule set key: rescanned
    third, _ = scan_files(other, items("/vm3"), cache_dir=tmp_path / "cache")
    assert len(calls) == 4 and len(third) == len(first)
    uncached, _ = scan_files(rules, items("/vm4"))  # no cache_dir: behaviour as before
    assert len(calls) == 6 and len(uncached) == len(first)
