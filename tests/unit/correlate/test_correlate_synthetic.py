"""Correlation over small hand-made tables (the lab test checks the real thing)."""

import json

import pandas as pd
import pytest

from tests.helpers.synthetic_case import SERVICE_UNIT, SID
from tests.helpers.synthetic_case import implant_tables as _tables
from toolkit.correlate.findings import correlate_snapshot
from toolkit.correlate.rules import RULES
from toolkit.correlate.timeline import build_timeline


def test_every_rule_is_documented():
    for _rule_id, rule in RULES.items():
        assert (
            rule["title"] and rule["severity"] in {"info", "low", "medium", "high", "critical"} and callable(rule["fn"])
        )


def test_implant_chain():
    findings, problems, graph = correlate_snapshot(_tables(), SID)
    assert len(problems) == 0, problems
    by_rule = {}
    for r in findings.itertuples():
        by_rule.setdefault(r.rule_id, []).append(r)
    assert [r.pid for r in by_rule["proc.kernel_thread_masquerade"]] == [77]
    assert [r.pid for r in by_rule["proc.deleted_executable"]] == [77]
    assert [r.entity for r in by_rule["net.unexpected_outbound"]] == ["process:77"]
    assert [r.entity for r in by_rule["net.periodic_beacon"]] == ["process:77"]
    assert [r.entity for r in by_rule["persist.cron_unusual"]] == ["process:77"]
    assert [r.entity for r in by_rule["history.download_execute"]] == ["process:77"]
    assert {r.entity for r in by_rule["yara.match"]} == {"process:77"}
    # the benign service raises nothing high
    assert not any(r.pid == 80 for r in findings.itertuples())
    chain = json.loads(by_rule["proc.deleted_executable"][0].chain)
    labels = " | ".join(step["label"] for step in chain)
    assert "/var/tmp/.cache/.kworker-upd" in labels and "10.0.2.100:8443" in labels
    assert all(json.loads(r.evidence) for r in findings.itertuples())


def test_timeline_sorted_and_linked():
    tl = build_timeline(_tables(), SID)
    assert list(tl["ts"]) == sorted(tl["ts"])
    assert {"process start", "flow start", "file mtime"} <= set(tl["kind"])
    assert tl["table"].notna().all()


def test_benign_service_and_dead_tasks_raise_nothing_high():
    t = _tables()
    t["disk/persistence"] = pd.concat(
        [
            t["disk/persistence"],
            pd.DataFrame(
                [
                    SERVICE_UNIT,
                    {
                        "kind": "shell_rc",
                        "path": "/root/.bashrc",
                        "program": "/root/.bashrc",
                        "program_path": "/root/.bashrc",
                    },
                ]
            ),
        ],
        ignore_index=True,
    )
    t["memory/processes"] = pd.concat(
        [
            t["memory/processes"],
            pd.DataFrame(
                [
                    {
                        "pid": 133,
                        "ppid": 1,
                        "process": "sh",
                        "in_list": False,
                        "in_scan": True,
                        "exit_state": "EXIT_DEAD",
                    },
                    {
                        "pid": 140,
                        "ppid": 1,
                        "process": "rootkitd",
                        "in_list": False,
                        "in_scan": True,
                        "exit_state": "TASK_RUNNING",
                    },
                ]
            ),
        ],
        ignore_index=True,
    )
    findings, _, _ = correlate_snapshot(t, SID)
    # a running service whose unit runs an ordinary program is no finding at all
    assert not findings["explanation"].str.contains("labsvc").any()
    assert not findings["explanation"].str.contains(".bashrc", regex=False).any()
    hidden = findings[findings["rule_id"] == "proc.hidden"]
    assert list(hidden["pid"]) == [140]


def test_physical_only_yara_hit_is_its_own_finding():
    t = _tables()
    t["yara/matches"] = pd.concat(
        [
            t["yara/matches"],
            pd.DataFrame(
                [
                    {"target": "physical", "rule": "lab_marker", "offset": 1 << 20, "severity": "high"},
                    {"target": "physical", "rule": "orphan_rule", "offset": 2 << 20, "severity": "critical"},
                ]
            ),
        ],
        ignore_index=True,
    )
    findings, _, _ = correlate_snapshot(t, SID)
    yara = findings[findings["rule_id"] == "yara.match"]
    assert sorted(yara["entity"]) == ["physical:memory", "process:77"]
    physical_only = yara[yara["entity"] == "physical:memory"]
    assert list(physical_only["severity"]) == ["medium"], "a physical-only hit never claims more than medium"
    assert "1 more hits in physical memory" in yara[yara["entity"] == "process:77"]["explanation"].iloc[0]


@pytest.mark.parametrize(
    ("second_offset", "severity"),
    [(3 << 20, "low"), ((2 << 20) + 300, "medium")],  # strings pages apart / side by side
)
def test_physical_hit_whose_strings_lie_in_unrelated_pages_is_low(second_offset, severity):
    """`$self and $kworker` over gigabytes of memory: a kernel task's name in one page and a path in some
    library in another meet the condition by chance; the same strings side by side are one artefact's."""
    t = _tables()
    rows = [
        {"target": "physical", "rule": "self_and_kthread", "offset": 2 << 20, "string_id": "$self"},
        {"target": "physical", "rule": "self_and_kthread", "offset": second_offset, "string_id": "$kworker"},
        {"target": "physical", "rule": "self_and_kthread", "offset": 5 << 20, "string_id": "$self"},
    ]
    t["yara/matches"] = pd.DataFrame([{**r, "severity": "medium"} for r in rows])
    findings, _, _ = correlate_snapshot(t, SID)
    physical = findings[(findings["rule_id"] == "yara.match") & (findings["entity"] == "physical:memory")]
    assert list(physical["severity"]) == [severity]


def test_recorrelate_a_stored_case(tmp_path):
    """`snapscope correlate` rebuilds findings and timeline from stored tables only."""
    from toolkit import case as case_store
    from toolkit.pipeline import recorrelate
    from toolkit.schemas import SCHEMAS, make_table

    case_dir = tmp_path / "case"
    manifest = case_store.init_case(case_dir)
    for name, df in _tables().items():
        if name in SCHEMAS:
            case_store.write_table(case_dir, name, SID, make_table(name, df, snapshot_id=SID, source="test"))
    manifest["snapshots"][SID] = {"name": SID, "times": {"memory captured": "2026-01-01T00:01:00Z"}}
    case_store.save_manifest(case_dir, manifest)
    counts = recorrelate(case_dir)
    case = case_store.Case.open(case_dir)
    # the synthetic implant, every rule that keys on what its rows show
    assert sorted(zip(case.findings["rule_id"], case.findings["entity"])) == [
        ("history.download_execute", "process:77"),
        ("net.periodic_beacon", "process:77"),
        ("net.unexpected_outbound", "process:77"),
        ("persist.cron_unusual", "process:77"),
        ("proc.deleted_executable", "process:77"),
        ("proc.kernel_thread_masquerade", "process:77"),
        ("proc.suspicious_exec_path", "process:77"),
        ("yara.match", "process:77"),
    ]
    assert counts == {SID: 8}
    assert "memory captured" in set(case.timeline["kind"])
    assert (case_dir / "findings.parquet").exists()
