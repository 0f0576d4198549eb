"""case verify on a real analysed case (a packet capture through the real engines): custody head,
evidence re-hashed, derived files, crashed and killed runs, and the demo's refusal to replace a user's case."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers.pcap_writer import session, write_pcap
from toolkit.case import custody, init_case, load_manifest
from toolkit.case.derived import REMOVE, WRITE, derived_files
from toolkit.case.verify import verify_case
from toolkit.errors import CaseError
from toolkit.hashing import sha256_file
from toolkit.lab import prepare_demo_case
from toolkit.pipeline import analyze

SNAPSCOPE = [sys.executable, "-m", "toolkit.cli"]


def _pcap(path, turns=3):
    frames = session("10.0.2.15", 40000, "10.0.2.100", 8443, [(b"GET /x HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK")] * turns)
    return write_pcap(path, frames)


@pytest.fixture
def analysed(tmp_path):
    """(case, evidence): a capture analysed into a case; the network engine spools its streams in derived/."""
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    pcap = _pcap(evidence / "net.pcap")
    case_dir = tmp_path / "case"
    analyze([pcap], case_dir)
    return case_dir, pcap


def _run(*args):
    return subprocess.run([*SNAPSCOPE, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_an_analysed_case_verifies(analysed):
    case_dir, _ = analysed
    report = verify_case(case_dir)
    assert report["problems"] == [] and report["evidence_checked"] == 1
    result = _run("case", "verify", case_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "evidence files 1 re-hashed and unchanged" in result.stdout


def test_every_derived_file_is_in_custody_with_its_sha256(analysed):
    case_dir, _ = analysed
    files = derived_files(case_dir)
    streams = [rel for rel in files if "/streams/" in rel]
    assert streams, "the network engine spooled no stream: the test proves nothing"
    assert "derived/cache/evidence-hashes.json" in files
    logged = {}
    for event in custody.read_events(case_dir):
        if event["action"] == WRITE:
            logged[event["path"]] = event["sha256"]
    assert logged == {rel: sha256_file(path) for rel, path in files.items()}


def test_verify_rehashes_evidence(analysed):
    case_dir, pcap = analysed
    data = bytearray(pcap.read_bytes())
    data[-1] ^= 0xFF
    pcap.write_bytes(bytes(data))  # one byte changed after analysis, the size as recorded: only a re-hash sees it
    problems = verify_case(case_dir)["problems"]
    assert len(problems) == 1 and problems[0].startswith(f"{pcap.resolve()}: evidence changed since it was analysed")
    assert "sha256" in problems[0]
    with open(pcap, "ab") as fh:
        fh.write(b"\0")  # grown: the size says so
    problems = verify_case(case_dir)["problems"]
    assert problems == [
        f"{pcap.resolve()}: evidence changed since it was analysed (size {len(data)} -> {len(data) + 1})"
    ]
    assert verify_case(case_dir, quick=True)["problems"] == []  # --quick does not re-hash
    pcap.unlink()
    assert verify_case(case_dir)["problems"] == [f"{pcap.resolve()}: evidence file not found here; not re-hashed"]


def test_verify_names_a_removed_tail_line_and_an_altered_line(analysed):
    case_dir, _ = analysed
    log = case_dir / custody.LOG_NAME
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:-1]) + "\n")
    result = _run("case", "verify", case_dir, "--quick")
    assert result.returncode == 2
    assert f"case.json's chain head is line {len(lines)}, the log ends at line {len(lines) - 1}" in result.stdout
    record = json.loads(lines[1])
    record["path"] = "/somewhere/else"
    log.write_text("\n".join([lines[0], json.dumps(record, sort_keys=True), *lines[2:]]) + "\n")
    result = _run("case", "verify", case_dir, "--quick")
    assert result.returncode == 2 and "line 2: content altered" in result.stdout


def test_verify_notices_an_altered_or_removed_derived_file(analysed):
    case_dir, _ = analysed
    stream = next(path for rel, path in derived_files(case_dir).items() if "/streams/" in rel)
    rel = stream.relative_to(case_dir).as_posix()
    stream.write_bytes(b"X" + stream.read_bytes()[1:])  # same size: only the re-hash sees it
    assert verify_case(case_dir, quick=True)["problems"] == []
    assert any(p.startswith(f"{rel}: derived file differs") for p in verify_case(case_dir)["problems"])
    stream.unlink()
    assert any(p.startswith(f"{rel}: derived file logged in custody") for p in verify_case(case_dir)["problems"])


def test_a_run_after_a_crash_mid_line_repairs_and_verifies(analysed):
    case_dir, pcap = analysed
    torn = b'{"action": "evidence.hash.after", "det'
    with open(case_dir / custody.LOG_NAME, "ab") as fh:
        fh.write(torn)  # the crash
    summary = analyze([pcap], case_dir)  # before the fix: a JSON error here and in every later run
    [note] = summary["custody_repairs"]
    assert note.startswith(f"custody: a torn last line ({len(torn)} bytes) was moved to custody.jsonl.torn-")
    assert load_manifest(case_dir)["runs"][-1]["custody_repairs"] == [note]
    report = verify_case(case_dir)
    assert report["problems"] == []
    assert any(f"a torn write of {len(torn)} bytes was moved to" in n for n in report["notes"])


def test_a_killed_run_leaves_a_case_the_next_run_completes(tmp_path):
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    pcap = _pcap(evidence / "net.pcap", turns=200)
    case_dir = tmp_path / "case"
    code = f"from toolkit.pipeline import analyze; analyze([{str(pcap)!r}], {str(case_dir)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 120
    log = case_dir / custody.LOG_NAME
    while not (log.exists() and b"evidence.hash.before" in log.read_bytes()):
        assert proc.poll() is None, "the run finished before the kill: the test proved nothing"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not any(e["action"] == "analyze.end" for e in custody.read_events(case_dir))
    summary = analyze([pcap], case_dir)  # the lock died with the process; the case is usable
    assert summary["snapshots"][0]["tables"]["network/flows"] == 1
    assert verify_case(case_dir)["problems"] == []


def test_derived_removal_is_logged(analysed):
    case_dir, pcap = analysed
    spill = case_dir / "derived" / "extra.bin"
    spill.write_bytes(b"x")
    analyze([pcap], case_dir)  # reused: the sweep at the end still logs the new file
    spill.unlink()
    analyze([pcap], case_dir)
    removed = [e["path"] for e in custody.read_events(case_dir) if e["action"] == REMOVE]
    assert removed == ["derived/extra.bin"]
    assert verify_case(case_dir)["problems"] == []


def test_demo_never_replaces_a_users_case(analysed, tmp_path):
    case_dir, _ = analysed
    before = sorted(p.relative_to(case_dir) for p in case_dir.rglob("*"))
    with pytest.raises(CaseError, match="it is not a demo case snapscope made; refusing to replace it"):
        prepare_demo_case(case_dir)
    result = _run("demo", "--case", case_dir)  # refused before the lab is even looked at
    assert result.returncode == 2 and "refusing to replace it" in result.stderr
    assert sorted(p.relative_to(case_dir) for p in case_dir.rglob("*")) == before

    demo = tmp_path / "demo-case"
    prepare_demo_case(demo)
    assert load_manifest(demo)["demo"] is True
    (demo / "tables" / "x").mkdir()
    prepare_demo_case(demo)  # a demo case of our own is replaced
    assert not (demo / "tables" / "x").exists()
    (demo / "notes.txt").write_text("the analyst's own notes")
    with pytest.raises(CaseError, match="it also holds notes.txt"):
        prepare_demo_case(demo)
    assert (demo / "notes.txt").exists()
    other = tmp_path / "stuff"
    other.mkdir()
    (other / "a").write_text("x")
    with pytest.raises(CaseError, match="not an empty directory or a demo case"):
        prepare_demo_case(other)
    init_case(tmp_path / "fresh")
    with pytest.raises(CaseError):
        prepare_demo_case(tmp_path / "fresh", check_only=True)


def test_verify_does_not_read_a_crafted_huge_evidence_entry(analysed, tmp_path):
    """A case.json (a copy received from someone else) naming a host file of another size: reported
    from its size, never read (hashing this 64 GiB sparse file would take minutes)."""
    case_dir, _ = analysed
    huge = tmp_path / "elsewhere.img"
    with open(huge, "wb") as fh:
        fh.truncate(64 << 30)
    manifest = load_manifest(case_dir)
    manifest["evidence"][str(huge)] = {"sha256": "0" * 64, "size": 4096}
    (case_dir / "case.json").write_text(json.dumps(manifest))
    started = time.monotonic()
    problems = verify_case(case_dir)["problems"]
    assert time.monotonic() - started < 20
    assert f"{huge}: evidence changed since it was analysed (size 4096 -> {64 << 30})" in problems
