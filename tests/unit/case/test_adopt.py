"""A case continues the custody chain an acquisition started (case/adopt.py), through the real pipeline.

The acquisition directory is written by the acquisition's own record functions (no libvirt needed:
one domain whose evidence is a packet capture, written and hashed like `snapscope acquire` does).
"""

from __future__ import annotations

import json

import pytest

from tests.helpers.pcap_writer import session, write_pcap
from toolkit.acquire import record, streams
from toolkit.acquire.plan import AcquireOptions
from toolkit.case import custody
from toolkit.case.adopt import read_acquisitions, verify_adopted
from toolkit.errors import CaseError
from toolkit.pipeline import analyze

VERSIONS = {"uri": "qemu:///system", "library": "libvirt 9.0.0", "hypervisor": "QEMU 7.2.22"}


def _acquisition(out, *, status="complete", name="web01"):
    """An acquisition directory as `snapscope acquire` leaves it: one domain, one capture."""
    rec = record.open_record(
        out, AcquireOptions(pcap_seconds=10), VERSIONS, [{"name": name, "dir": name, "uuid": None}]
    )
    (out / name).mkdir()
    frames = session("10.0.2.15", 40000, "10.0.2.100", 8443, [(b"hello", b"ok")])
    scratch = write_pcap(out / "scratch.pcap", frames)
    entry = streams.write_bytes(out / name / "net-n0.pcap", scratch.read_bytes(), how="hashed as written")
    scratch.unlink()
    record.log_file(rec, name, entry, role="pcap")
    reason = None if status == "complete" else "interrupted"
    result = {"status": status, "reason": reason, "mode": "pause", "consistency": "one moment", "pause": {"seconds": 1}}
    record.end_domain(rec, name, result)
    record.close_record(rec, status, reason)
    return out


def test_a_new_case_starts_with_the_acquisition_chain(tmp_path):
    acq = _acquisition(tmp_path / "acq")
    analyze([acq], tmp_path / "case")
    acquired = (acq / "custody.jsonl").read_text().splitlines()
    case_log = (tmp_path / "case" / "custody.jsonl").read_text().splitlines()
    assert case_log[: len(acquired)] == acquired  # the same records, the same hashes
    assert custody.verify(tmp_path / "case") == [] and verify_adopted(tmp_path / "case") == []
    after = [json.loads(line)["action"] for line in case_log[len(acquired) :]]
    assert after[:2] == ["acquisition.adopt", "analyze.start"] and after[-1] == "analyze.end"
    manifest = json.loads((tmp_path / "case" / "case.json").read_text())
    (adopted,) = manifest["acquisitions"].values()
    assert adopted["status"] == "complete" and adopted["domains"]["web01"]["consistency"] == "one moment"
    assert adopted["head"] == json.loads(acquired[-1])["hash"]
    # a second run neither adopts nor copies it again
    analyze([acq], tmp_path / "case")
    assert sum(e["action"] == "acquisition.adopt" for e in custody.read_events(tmp_path / "case")) == 1


def test_a_case_with_a_log_anchors_the_acquisition_and_keeps_its_chain(tmp_path):
    first, second = _acquisition(tmp_path / "acq1"), _acquisition(tmp_path / "acq2", name="db01")
    analyze([first], tmp_path / "case")
    analyze([second], tmp_path / "case")
    events = custody.read_events(tmp_path / "case")
    anchor = [e for e in events if e["action"] == "acquisition.adopt"][-1]
    head = json.loads((second / "custody.jsonl").read_text().splitlines()[-1])["hash"]
    assert anchor["detail"]["head"] == head and anchor["detail"]["chain"].startswith("kept in derived/acquisitions/")
    kept = tmp_path / "case" / anchor["detail"]["chain"].removeprefix("kept in ")
    assert kept.read_bytes() == (second / "custody.jsonl").read_bytes()
    assert verify_adopted(tmp_path / "case") == []
    kept.write_text(kept.read_text().replace('"complete"', '"completE"'))
    assert any("content altered" in p for p in verify_adopted(tmp_path / "case"))


@pytest.mark.parametrize("given", ["acq", "acq/web01", "acq/web01/net-n0.pcap"])
def test_an_incomplete_acquisition_is_no_evidence(given, tmp_path):
    _acquisition(tmp_path / "acq", status="incomplete")
    with pytest.raises(CaseError, match=r"the acquisition of domain web01 is incomplete \(interrupted\)"):
        analyze([tmp_path / given], tmp_path / "case")
    assert not (tmp_path / "case").exists()  # refused before the case was made
    # and by adoption too, whatever discovery found
    snapshot = {"id": "web01", "evidence": [{"path": str(tmp_path / "acq" / "web01" / "net-n0.pcap")}]}
    with pytest.raises(CaseError, match="the acquisition of domain web01 is incomplete"):
        read_acquisitions([snapshot])


def test_a_changed_acquired_file_is_refused(tmp_path):
    acq = _acquisition(tmp_path / "acq")
    pcap = acq / "web01" / "net-n0.pcap"
    data = pcap.read_bytes()
    pcap.chmod(0o644)  # acquired files are read-only: this is someone changing it on purpose
    pcap.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(CaseError, match="differs from .* recorded when it was acquired"):
        analyze([acq], tmp_path / "case")


def test_a_broken_acquisition_chain_is_refused(tmp_path):
    acq = _acquisition(tmp_path / "acq")
    lines = (acq / "custody.jsonl").read_text().splitlines()
    (acq / "custody.jsonl").write_text("\n".join(lines[:1] + lines[2:]) + "\n")  # one record removed
    with pytest.raises(CaseError, match="custody log does not verify: line 2: chain broken"):
        analyze([acq], tmp_path / "case")


def test_evidence_outside_the_acquisition_is_refused(tmp_path):
    acq = _acquisition(tmp_path / "acq")
    outside = {"path": str(tmp_path / "live-disk.qcow2")}
    inside = {"path": str(acq / "web01" / "net-n0.pcap")}
    with pytest.raises(CaseError, match="live-disk.qcow2: snapshot web01 from the acquisition"):
        read_acquisitions([{"id": "web01", "evidence": [inside, outside]}])
    assert [a["status"] for a in read_acquisitions([{"id": "web01", "evidence": [inside]}])] == ["complete"]
    assert read_acquisitions([{"id": "other", "evidence": [outside]}]) == []
