"""The one run path on a small real input: a packet capture, through the real network and YARA engines.

(The whole lab snapshot, memory and disk included, runs in tests/lab/test_analyze_lab.py.)
"""

from __future__ import annotations

import json
import os

import pytest

from tests.helpers.pcap_writer import session, write_pcap
from toolkit.case import Case, custody
from toolkit.case.hashes import hash_cache_path, stat_key
from toolkit.case.lock import case_lock
from toolkit.engines import ENGINES, EngineContext
from toolkit.errors import CaseError
from toolkit.hashing import sha256_file
from toolkit.pipeline import analyze, may_have_work, snapshot_fingerprint
from toolkit.profiles import load_profile
from toolkit.snapshot import RunOptions, run_engines

MARK = b"PIPELINE-TEST-MARK-4417"
RULE = 'rule pipeline_mark { meta: severity = "high" strings: $a = "PIPELINE-TEST-MARK-4417" condition: $a }\n'


@pytest.fixture
def capture(tmp_path):
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    frames = session("10.0.2.15", 40000, "10.0.2.100", 8443, [(b"hello " + MARK, b"ok"), (b"again", b"ok")])
    return write_pcap(evidence / "net.pcap", frames)


def _events(case_dir, action):
    return [e for e in custody.read_events(case_dir) if e["action"] == action]


def test_analyze_hashes_runs_the_engines_and_reuses(capture, tmp_path):
    digest = sha256_file(capture)
    case_dir = tmp_path / "case"
    summary = analyze([capture], case_dir)
    [snap] = summary["snapshots"]
    assert summary["evidence_unchanged"] and not snap["reused"]
    assert sha256_file(capture) == digest
    case = Case.open(case_dir)
    assert {"network/flows", "yara/rules", "yara/matches", "evidence", "findings", "timeline"} <= set(case.tables())
    flows = case.table("network/flows")
    assert (flows.iloc[0]["src_port"], flows.iloc[0]["dst_port"], len(flows)) == (40000, 8443, 1)
    path = str(capture.resolve())
    for phase in ("before", "after"):
        assert [(e["path"], e["sha256"]) for e in _events(case_dir, f"evidence.hash.{phase}")] == [(path, digest)]
    manifest = case.manifest
    assert manifest["evidence"][path]["sha256"] == digest
    assert [(r["kind"], r["profile"], r["evidence_unchanged"]) for r in manifest["runs"]] == [
        ("analyze", "linux-triage", True)
    ]
    assert custody.verify(case_dir) == []

    again = analyze([capture], case_dir)
    assert again["snapshots"][0]["reused"] and len(_events(case_dir, "snapshot.reuse")) == 1
    assert len(_events(case_dir, "snapshot.done")) == 1


def test_an_edited_user_rule_means_a_new_analysis(capture, tmp_path):
    rules = tmp_path / "my.yar"
    rules.write_text(RULE)
    case_dir = tmp_path / "case"
    analyze([capture], case_dir, rule_paths=[rules])
    matches = Case.open(case_dir).table("yara/matches")
    assert set(matches[matches["target"] == "stream"]["rule"]) == {"pipeline_mark"}
    rules.write_text(RULE.replace("pipeline_mark", "pipeline_mark_v2"))
    rerun = analyze([capture], case_dir, rule_paths=[rules])
    assert not rerun["snapshots"][0]["reused"]
    matches = Case.open(case_dir).table("yara/matches")
    assert set(matches[matches["target"] == "stream"]["rule"]) == {"pipeline_mark_v2"}


def test_an_edited_included_rule_file_means_a_new_analysis(capture, tmp_path):
    """The rule file names a file outside its directory with `include`; only that file changes."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "shared").mkdir()
    included = tmp_path / "shared" / "mark.yar"
    included.write_text(RULE)
    (tmp_path / "rules" / "main.yar").write_text('include "../shared/mark.yar"\n')
    case_dir = tmp_path / "case"
    analyze([capture], case_dir, rule_paths=[tmp_path / "rules"])
    included.write_text(RULE.replace("pipeline_mark", "pipeline_mark_v2"))
    rerun = analyze([capture], case_dir, rule_paths=[tmp_path / "rules"])
    assert not rerun["snapshots"][0]["reused"]  # before: reused, with the old rule's results
    matches = Case.open(case_dir).table("yara/matches")
    assert set(matches[matches["target"] == "stream"]["rule"]) == {"pipeline_mark_v2"}


def test_a_second_run_into_a_locked_case_stops_with_one_line(capture, tmp_path):
    case_dir = tmp_path / "case"
    analyze([capture], case_dir)
    manifest_before = (case_dir / "case.json").read_bytes()
    with case_lock(case_dir), pytest.raises(CaseError, match="another snapscope run is using this case"):
        analyze([capture], case_dir)
    assert (case_dir / "case.json").read_bytes() == manifest_before


def test_evidence_inside_the_case_is_refused_before_anything_is_written(capture, tmp_path):
    folder = capture.parent
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(CaseError, match="evidence lies inside the case directory"):
        analyze([capture], folder)
    assert sorted(p.name for p in folder.iterdir()) == before  # no case.json, tables/ or lock beside the evidence


def test_an_engine_that_raises_becomes_a_diagnostic_and_readers_close(capture, tmp_path):
    broken = tmp_path / "broken.yar"
    broken.write_text("rule oops { strings: $a = condition: $a }\n")  # YARA refuses to compile it
    closed = []
    ctx = EngineContext(
        snapshot_id="s", derived_dir=tmp_path / "d", profile=load_profile("linux-triage"), rule_paths=(broken,)
    )
    ctx.readers.closers.append(lambda: closed.append(True))
    tables = run_engines({"id": "s", "pcaps": [{"path": str(capture)}]}, ctx)
    assert len(tables["network/flows"]) == 1  # the engine before the failure keeps its tables
    diag = tables["diagnostics"]
    failed = diag[diag["what"] == "engine yara"]
    assert len(failed) == 1 and failed.iloc[0]["severity"] == "error" and "broken.yar" in failed.iloc[0]["why"]
    assert closed == [True]


def test_engines_run_in_registry_order(capture, tmp_path):
    seen = []
    ctx = EngineContext(snapshot_id="s", derived_dir=tmp_path / "d", profile=load_profile("linux-triage"))
    seconds = {}
    tables = run_engines({"id": "s", "pcaps": [{"path": str(capture)}]}, ctx, seconds=seconds)
    seen = [name.split("/")[0] for name in tables if "/" in name]
    order = [e["name"] for e in ENGINES]
    assert sorted(set(seen), key=order.index) == ["network", "yara"]
    # each engine that ran is timed, nothing else
    assert list(seconds) == ["network", "yara"] and all(v >= 0 for v in seconds.values())
    # YARA saw the network engine's table: the stream carrying the mark was scanned
    assert ctx.tables["network/flows"].iloc[0]["src_stream_file"]


def test_workers_warm_up_only_when_a_snapshot_may_need_work(tmp_path):
    evidence = tmp_path / "vm01" / "memory.elf"
    evidence.parent.mkdir()
    evidence.write_bytes(b"\x7fELF" + bytes(60))
    case = tmp_path / "case"
    snaps = [{"id": "vm01", "evidence": [{"path": str(evidence), "format": "elf-core"}]}]
    profile, options = load_profile("linux-triage"), RunOptions()
    manifest = {"snapshots": {}}
    assert may_have_work(case, snaps, manifest, profile, options)  # nothing hashed yet

    cache = hash_cache_path(case)
    cache.parent.mkdir(parents=True)
    path = str(evidence.resolve())
    cache.write_text(json.dumps({path: {"key": stat_key(path), "sha256": "ab" * 32}}))
    assert may_have_work(case, snaps, manifest, profile, options)  # hashed, never analysed

    manifest["snapshots"]["vm01"] = {"fingerprint": snapshot_fingerprint(snaps[0], {path: "ab" * 32}, profile, options)}
    assert not may_have_work(case, snaps, manifest, profile, options)  # all reused: no warm-up

    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert may_have_work(case, snaps, manifest, profile, options)  # file touched since

    cache.write_text("{not json")
    assert may_have_work(case, snaps, manifest, profile, options)  # unreadable cache: a guess, not a crash
