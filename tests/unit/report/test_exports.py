"""STIX, MISP and Timesketch exports of a small synthetic case: validated by the formats' own libraries."""

import copy
import json
import socket

import pandas as pd
import pytest
from pymisp import MISPEvent
from stix2validator import ValidationOptions, validate_string
from timesketch_import_client import importer
from timesketch_import_client import utils as ts_utils

from tests.helpers.synthetic_case import SERVICE_UNIT, implant_tables, write_case
from toolkit.case import Case
from toolkit.errors import ExportError
from toolkit.report.misp import misp_event_json
from toolkit.report.stix import stix_bundle_json
from toolkit.report.timesketch import REQUIRED_FIELDS, timesketch_lines, upload_timeline

IMPLANT_SHA = "1" * 64
SERVICE_SHA = SERVICE_UNIT["program_sha256"]
HOSTILE = "evil\x1b[2J\u202e<script>alert(1)</script>\x07"


def _case(tmp_path):
    t = implant_tables()
    # a benign service with a unit that starts it: a low finding only, and nothing of it may be exported
    t["disk/persistence"] = pd.concat([t["disk/persistence"], pd.DataFrame([SERVICE_UNIT])], ignore_index=True)
    t["disk/files"].loc[0, "mode"] = 0o100755
    t["disk/files"].loc[1, "mode"] = 0o100755
    t["yara/matches"]["description"] = HOSTILE  # a guest-influenced string in explanations
    t["disk/system"] = pd.DataFrame([{"hostname": "web01", "os_version": "Debian GNU/Linux 12", "ips": "10.0.2.15"}])
    return Case.open(write_case(tmp_path / "case", t))


def _exported(case):
    findings = case.findings
    return findings[findings["severity_rank"] >= 2]


def _techniques(findings) -> set:
    return {t for ids in findings["attack_id"].dropna() for t in ids.split(",")}


def _assert_plain_ascii(text: str):
    bad = sorted({hex(ord(c)) for c in text if (ord(c) < 0x20 and c != "\n") or ord(c) >= 0x7F})
    assert not bad, f"raw control or non-ASCII characters in the export: {bad}"


def test_stix_bundle_validates_and_holds_what_the_findings_implicate(tmp_path):
    case = _case(tmp_path)
    findings = case.findings
    assert (findings.loc[findings["entity"] == "process:80", "severity"] == "low").all()  # the service: noted only
    text = stix_bundle_json(case)
    results = validate_string(text, ValidationOptions(version="2.1"))
    results = results if isinstance(results, list) else [results]
    assert all(r.is_valid for r in results) and not [e for r in results for e in r.errors]
    _assert_plain_ascii(text)
    objects = json.loads(text)["objects"]
    by_type: dict[str, list] = {}
    for obj in objects:
        by_type.setdefault(obj["type"], []).append(obj)
    assert [f["hashes"]["SHA-256"] for f in by_type["file"]] == [IMPLANT_SHA]
    patterns = sorted(i["pattern"] for i in by_type["indicator"])
    assert patterns == [
        f"[file:hashes.'SHA-256' = '{IMPLANT_SHA}']",
        "[network-traffic:dst_ref.type = 'ipv4-addr' AND network-traffic:dst_ref.value = '10.0.2.100' "
        "AND network-traffic:dst_port = 8443]",
    ]
    assert {a["external_references"][0]["external_id"] for a in by_type["attack-pattern"]} == _techniques(
        _exported(case)
    )
    assert {m["result_name"] for m in by_type["malware-analysis"]} == {"lab_marker"}
    assert SERVICE_SHA not in text and "labsvc" not in text
    # every finding of medium or worse is a grouping; every indicator names its findings and rows
    groupings = {g["external_references"][0]["external_id"]: g for g in by_type["grouping"]}
    assert set(groupings) == set(_exported(case)["finding_id"])
    ids = set(findings["finding_id"])
    for indicator in by_type["indicator"]:
        assert indicator["snapscope_finding_ids"] and set(indicator["snapscope_finding_ids"]) <= ids
        for row in indicator["snapscope_evidence"]:
            assert 0 <= row["row"] < len(case.table(row["table"], snapshot=row["snapshot_id"]))
    network = next(i for i in by_type["indicator"] if "8443" in i["pattern"])
    assert {"table": "memory/sockets", "snapshot_id": "s1", "row": 0} in network["snapscope_evidence"]
    # the hostile string is data: escaped in the file, intact once parsed
    assert any(HOSTILE in g.get("description", "") for g in by_type["grouping"])
    vm = [i for i in by_type["identity"] if i.get("snapscope_snapshot_id") == "s1"]
    assert len(vm) == 1 and vm[0]["identity_class"] == "system" and vm[0]["name"].startswith("web01")
    assert {s["where_sighted_refs"][0] for s in by_type["sighting"]} == {vm[0]["id"]}


def test_misp_event_round_trips_and_holds_what_the_findings_implicate(tmp_path):
    case = _case(tmp_path)
    text = misp_event_json(case)
    _assert_plain_ascii(text)
    event = MISPEvent()
    event.from_json(text)
    again = MISPEvent()
    again.from_json(event.to_json())
    assert json.loads(again.to_json()) == json.loads(event.to_json())
    values = {(a.type, a.value) for a in event.attributes}
    assert values == {("sha256", IMPLANT_SHA), ("ip-dst|port", "10.0.2.100|8443")}
    assert {t.name for t in event.tags} == {f'mitre-attack:attack-pattern="{t}"' for t in _techniques(_exported(case))}
    names = [o.name for o in event.objects]
    assert names.count("annotation") == len(_exported(case)) and names.count("device") == 1
    yara = [o for o in event.objects if o.name == "yara"]
    assert [a.value for o in yara for a in o.attributes if a.object_relation == "yara-rule-name"] == ["lab_marker"]
    for attribute in event.attributes:
        assert attribute.comment.startswith("snapscope finding(s) ") and "@s1" in attribute.comment
    assert SERVICE_SHA not in text and "labsvc" not in text
    texts = [
        a.value for o in event.objects if o.name == "annotation" for a in o.attributes if a.object_relation == "text"
    ]
    assert any(HOSTILE in t for t in texts)


def test_timesketch_lines_keep_what_the_importer_requires(tmp_path):
    case = _case(tmp_path)
    lines = list(timesketch_lines(case.timeline))
    assert len(lines) == case.timeline["ts"].notna().sum() > 0
    streamer = importer.ImportStreamer()
    for line in lines:
        event = json.loads(line)
        assert all(event[f] for f in REQUIRED_FIELDS)
        fixed = copy.deepcopy(event)
        streamer._fix_dict(fixed)  # what the import client does to every event before upload
        assert {f: fixed[f] for f in REQUIRED_FIELDS} == {
            "message": event["message"],
            "datetime": ts_utils.get_datestring_from_value(event["datetime"]),
            "timestamp_desc": event["timestamp_desc"],
        }
        assert pd.Timestamp(fixed["datetime"]) == pd.Timestamp(event["datetime"])
        assert event["timestamp"] == pd.Timestamp(event["datetime"]).value // 1000


def test_timesketch_upload_to_an_unreachable_server_is_one_clear_error(tmp_path):
    with socket.socket() as s:  # a port on this machine that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(ExportError) as err:
        upload_timeline(['{"message": "m"}'], url, "analyst", "pw", timeline_name="web01")
    assert str(err.value).startswith(f"Timesketch upload to {url} failed") and "\n" not in str(err.value)
