import json

from toolkit.case import custody


def _log(tmp_path, n=4):
    for i in range(n):
        custody.append_event(tmp_path, action="evidence.hash.before", path=f"/ev/{i}", sha256=f"{i:064x}", size=i)
    return tmp_path / custody.LOG_NAME


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


def test_garbage_line(tmp_path):
    log = _log(tmp_path, 2)
    with open(log, "a") as fh:
        fh.write("not json\n")
    assert any("line 3: not valid JSON" in p for p in custody.verify(tmp_path))
