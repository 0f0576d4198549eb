import json

import pytest

from toolkit.case import custody, init_case, load_manifest, save_manifest


def _log(tmp_path, n=4):
    for i in range(n):
        custody.append_event(tmp_path, action="evidence.hash.before", path=f"/ev/{i}", sha256=f"{i:064x}", size=i)
    return tmp_path / custody.LOG_NAME


@pytest.fixture
def case(tmp_path):
    """A case with four custody lines: the chain head is in its case.json."""
    case_dir = tmp_path / "case"
    init_case(case_dir)
    _log(case_dir)
    return case_dir


def test_chain_verifies_and_sequences(tmp_path):
    _log(tmp_path)
    events = custody.read_events(tmp_path)
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert events[0]["prev"] == custody.GENESIS
    assert all(b["prev"] == a["hash"] for a, b in zip(events, events[1:]))
    assert custody.verify(tmp_path) == []


def test_edited_line_is_named(tmp_path):
    log = _log(tmp_path)
    lines = log.read_text().splitlines()
    record = json.loads(lines[2])
    record["sha256"] = "f" * 64
    lines[2] = json.dumps(record, sort_keys=True)
    log.write_text("\n".join(lines) + "\n")
    problems = custody.verify(tmp_path)
    assert any(p.startswith("line 3: content altered") for p in problems)


def test_deleted_line_breaks_chain(tmp_path):
    log = _log(tmp_path)
    lines = log.read_text().splitlines()
    del lines[1]
    log.write_text("\n".join(lines) + "\n")
    problems = custody.verify(tmp_path)
    assert any(p.startswith("line 2: chain broken") for p in problems)


def test_garbage_line_in_the_middle(tmp_path):
    log = _log(tmp_path, 2)
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], "not json", lines[1]]) + "\n")
    assert any("line 2: not valid JSON" in p for p in custody.verify(tmp_path))


def test_chain_head_is_kept_in_case_json(case):
    head = load_manifest(case)["custody"]
    last = custody.read_events(case)[-1]
    assert head == {"seq": 4, "hash": last["hash"]} == custody.chain_head(case)
    # a whole-manifest save from a run that loaded case.json earlier keeps the newer head
    stale = load_manifest(case)
    custody.append_event(case, action="x")
    save_manifest(case, stale)
    assert load_manifest(case)["custody"]["seq"] == 5
    assert custody.verify(case) == []


def test_lines_removed_from_the_end_are_detected(case):
    log = case / custody.LOG_NAME
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:2]) + "\n")  # the chain that is left still links
    problems = custody.verify(case)
    assert problems == [
        "lines removed from the end of the log: case.json's chain head is line 4, the log ends at line 2"
    ]
    # the next append records the gap in the chain itself: the removal stays visible afterwards
    custody.append_event(case, action="analyze.start")
    gap = [e for e in custody.read_events(case) if e["action"] == custody.GAP]
    assert len(gap) == 1 and gap[0]["detail"]["recorded_head"]["seq"] == 4 and gap[0]["detail"]["log_ended_at"] == 2
    assert any("lines were missing from the log before this run" in p for p in custody.verify(case))


def test_replaced_last_line_is_detected(case):
    log = case / custody.LOG_NAME
    lines = log.read_text().splitlines()
    forged = json.loads(lines[-1])
    forged["path"] = "/ev/other"
    forged["hash"] = custody._line_hash(forged)  # a consistent line: only the head can tell
    log.write_text("\n".join([*lines[:-1], json.dumps(forged, sort_keys=True)]) + "\n")
    assert custody.verify(case) == ["line 4 is not the line case.json's chain head records (its hash differs)"]


@pytest.mark.parametrize(
    "torn",
    [b'{"action": "evidence.hash.af', b"\x00" * 4096, b'{"seq": 5, "trunc\n', b"not json at all\n"],
    ids=["half line", "NULs", "cut with newline", "garbage line"],
)
def test_torn_tail_is_quarantined_and_later_runs_go_on(case, torn):
    log = case / custody.LOG_NAME
    with open(log, "ab") as fh:
        fh.write(torn)  # what a crash or a full disk leaves
    # before any repair: the chain is whole and the torn bytes are a note, not a failure
    report = custody.verify_log(case)
    assert report["problems"] == [] and report["events"] == 4
    assert f"{len(torn)} bytes after the last whole line are a torn write" in report["notes"][0]
    assert len(custody.read_events(case)) == 4

    custody.append_event(case, action="analyze.start")  # the next run does not fail on the torn line
    events = custody.read_events(case)
    assert [e["action"] for e in events[-2:]] == [custody.REPAIR, "analyze.start"]
    repair = events[-2]["detail"]
    quarantined = case / repair["quarantined"]
    assert quarantined.read_bytes() == torn and repair["bytes"] == len(torn)
    assert log.read_bytes().endswith(b"\n") and custody.verify(case) == []
    notes = custody.verify_log(case)["notes"]
    assert notes == [f"line 5: a torn write of {len(torn)} bytes was moved to {repair['quarantined']}"]


def test_torn_only_line_restarts_the_chain(tmp_path):
    (tmp_path / custody.LOG_NAME).write_bytes(b'{"seq": 1, "act')
    record = custody.append_event(tmp_path, action="first")
    events = custody.read_events(tmp_path)
    assert [e["action"] for e in events] == [custody.REPAIR, "first"] and record["seq"] == 2
    assert custody.verify(tmp_path) == []


def test_repair_torn_tail_without_an_event(case):
    with open(case / custody.LOG_NAME, "ab") as fh:
        fh.write(b'{"half')
    [repair] = custody.repair_torn_tail(case)
    assert repair["action"] == custody.REPAIR and load_manifest(case)["custody"]["seq"] == repair["seq"]
    assert custody.repair_torn_tail(case) == []
    assert custody.verify(case) == []


def test_a_custody_log_linking_out_of_the_case_is_never_written_through(tmp_path):
    """A case copied from elsewhere whose custody.jsonl links to a host file: a repair would have
    moved the file's bytes aside and truncated it. Every custody call refuses with one clear line."""
    from toolkit.errors import CaseError

    case_dir = tmp_path / "case"
    init_case(case_dir)
    host_file = tmp_path / "host-notes.txt"
    host_file.write_bytes(b"an analyst's file, not JSON")
    (case_dir / custody.LOG_NAME).symlink_to(host_file)
    for call in (
        lambda: custody.append_event(case_dir, action="analyze.start"),
        lambda: custody.repair_torn_tail(case_dir),
        lambda: custody.read_events(case_dir),
        lambda: custody.verify_log(case_dir),
        lambda: custody.chain_head(case_dir),
    ):
        with pytest.raises(CaseError, match="is a symbolic link"):
            call()
    assert host_file.read_bytes() == b"an analyst's file, not JSON"
    assert not list(case_dir.glob(custody.TORN_PREFIX + "*"))


def test_a_custody_log_that_is_a_fifo_does_not_block(tmp_path):
    import os

    from toolkit.errors import CaseError

    case_dir = tmp_path / "case"
    init_case(case_dir)
    os.mkfifo(case_dir / custody.LOG_NAME)
    with pytest.raises(CaseError, match="not a regular file"):
        custody.verify_log(case_dir)
    with pytest.raises(CaseError, match="not a regular file"):
        custody.append_event(case_dir, action="analyze.start")
