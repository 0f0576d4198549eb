"""Audit helpers on small synthetic inputs (the audit itself runs on the lab fleet:
tests/lab/test_audit_lab.py)."""
from __future__ import annotations

import json
import os

from toolkit import audit
from toolkit.pipeline import hash_cache_path, snapshot_fingerprint, stat_key


def test_workers_warm_up_only_when_a_snapshot_may_need_work(tmp_path):
    evidence = tmp_path / "vm01" / "memory.elf"
    evidence.parent.mkdir()
    evidence.write_bytes(b"\x7fELF" + bytes(60))
    case = tmp_path / "case"
    snaps = [{"id": "vm01", "evidence": [{"path": str(evidence), "format": "elf-core"}]}]
    profile = {"name": "p"}
    manifest = {"snapshots": {}}
    assert audit._may_have_work(case, snaps, manifest, profile)          # nothing hashed yet

    cache = hash_cache_path(case)
    cache.parent.mkdir(parents=True)
    path = str(evidence.resolve())
    cache.write_text(json.dumps({path: {"key": stat_key(path), "sha256": "ab" * 32}}))
    assert audit._may_have_work(case, snaps, manifest, profile)          # hashed, never analysed

    manifest["snapshots"]["vm01"] = {"fingerprint": snapshot_fingerprint(snaps[0], {path: "ab" * 32}, profile)}
    assert not audit._may_have_work(case, snaps, manifest, profile)      # all reused: no warm-up

    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert audit._may_have_work(case, snaps, manifest, profile)          # file touched since

    cache.write_text("{not json")
    assert audit._may_have_work(case, snaps, manifest, profile)          # unreadable cache: a guess, not a crash
