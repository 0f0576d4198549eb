"""One finding per rule and entity: within a snapshot (merged hits), per VM across snapshots
(seen in, first/last seen), what changed between two moments, and fleet stacking."""

from __future__ import annotations

import json

import pandas as pd

from tests.helpers.synthetic_case import SID, implant_tables, write_snapshots
from toolkit.case import Case
from toolkit.correlate.changes import diff_tables
from toolkit.correlate.findings import correlate_snapshot
from toolkit.correlate.stacking import raise_rare, rare_notes, stack, vm_items
from toolkit.schemas import SCHEMAS, make_table
from toolkit.vms import diff_snapshots

DISK = {"disks": [{"path": "/vms/web01/disk.qcow2", "role": "disk", "snapshot": None}]}


def _typed(raw: dict, sid: str) -> dict:
    return {name: make_table(name, df, snapshot_id=sid, source="test") for name, df in raw.items() if name in SCHEMAS}


def test_one_process_with_six_connections_is_one_finding_with_six_rows():
    t = implant_tables()
    beacon = t["memory/sockets"].iloc[0].to_dict()
    t["memory/sockets"] = pd.DataFrame([{**beacon, "src_port": 40000 + n} for n in range(6)])
    findings, _problems, _graph = correlate_snapshot(_typed(t, SID), SID)
    outbound = findings[findings["rule_id"] == "net.unexpected_outbound"]
    assert len(outbound) == 1 and outbound["entity"].iloc[0] == "process:77"
    links = json.loads(outbound["evidence"].iloc[0])
    assert [lk["row"] for lk in links] == list(range(6)) and {lk["table"] for lk in links} == {"memory/sockets"}
    why = outbound["explanation"].iloc[0]
    assert "10.0.2.15:40000 ->" in why and "(and 2 more)" in why  # three others quoted, the last two counted
    # the same rule on other entities, or another YARA rule on the same entity, stays apart
    assert findings.duplicated(["rule_id", "entity", "subject"]).sum() == 0


def _before_the_implant() -> dict:
    """The implant's tables as they were before it ran: no process 77, no socket, no cron entry."""
    t = implant_tables()
    t["memory/processes"] = t["memory/processes"][t["memory/processes"]["pid"] != 77]
    t["memory/sockets"] = t["memory/sockets"][t["memory/sockets"]["pid"] != 77]
    t["memory/executables"] = t["memory/executables"].iloc[0:0]
    t["disk/persistence"] = t["disk/persistence"].iloc[0:0]
    t["disk/files"] = t["disk/files"][t["disk/files"]["path"] != "/var/tmp/.cache/.kworker-upd"]
    t["disk/shell_history"] = t["disk/shell_history"].iloc[:1]
    t["network/flows"] = t["network/flows"].iloc[0:0]
    t["yara/matches"] = t["yara/matches"].iloc[0:0]
    return t


def _two_moments(tmp_path, later_extra=None):
    entries = {
        "web01-monday": {**DISK, "captured_at": ["2026-01-01T00:00:00+00:00", "snapshot XML"]},
        # (ISO times of another precision: the column must still hold both)
        "web01-tuesday": {**DISK, "captured_at": ["2026-01-02T00:00:00.250000+00:00", "snapshot XML"]},
        "web01-tuesday-kdump": {
            **DISK,
            "same_moment_as": "web01-tuesday",
            "same_moment_proof": {"pages_compared": 81824, "pages_differing": 0},
        },
    }
    later = implant_tables()
    snapshots = {"web01-monday": _before_the_implant(), "web01-tuesday": later}
    case_dir = write_snapshots(tmp_path / "case", snapshots, entries)
    return Case.open(case_dir)


def test_findings_once_per_vm_with_the_snapshots_they_were_seen_in(tmp_path):
    case = _two_moments(tmp_path)
    assert list(case.manifest["vms"]) == ["web01"]
    assert case.manifest["vms"]["web01"]["snapshots"] == ["web01-monday", "web01-tuesday", "web01-tuesday-kdump"]
    moments = case.table("vm/moments").set_index("snapshot")
    assert moments.loc["web01-tuesday-kdump", "status"] == "same moment"
    assert moments.loc["web01-tuesday-kdump", "moment"] == moments.loc["web01-tuesday", "moment"] == 2
    assert moments.loc["web01-tuesday-kdump", "pages_compared"] == 81824
    vm = case.table("vm/findings")
    assert not vm.duplicated(["rule_id", "entity", "entity_label", "subject"]).any()
    masq = vm[vm["rule_id"] == "proc.kernel_thread_masquerade"].iloc[0]
    # seen in the Tuesday moment: its analysed snapshot and the kdump of the same RAM
    assert json.loads(masq["seen_in"]) == ["web01-tuesday", "web01-tuesday-kdump"]
    assert (masq["first_seen"], masq["last_seen"], masq["moments"]) == ("web01-tuesday", "web01-tuesday-kdump", 1)
    assert masq["first_seen_ts"] == pd.Timestamp("2026-01-02T00:00:00.25Z")
    assert moments["captured_at"].notna().all()
    per_snapshot = case.findings
    assert (
        len(vm[~vm["rule_id"].str.startswith("vm.")])
        == per_snapshot.drop_duplicates(["rule_id", "entity", "subject"]).shape[0]
    )


def test_what_appeared_between_two_moments_is_new_since_the_first(tmp_path):
    case = _two_moments(tmp_path)
    changes = case.table("vm/changes")
    new = changes[(changes["change"] == "new")]
    assert set(new["kind"]) == {"process", "socket", "persistence", "file"}
    assert new[new["kind"] == "process"]["item"].str.contains("pid 77 'kworker/0:2H'").all()
    vm = case.table("vm/findings")
    since = vm[vm["rule_id"] == "vm.new_since"]
    process = since[since["subject"].str.startswith("process ")]
    assert list(process["entity"]) == ["process:77"] and list(process["first_seen"]) == ["web01-tuesday"]
    assert "is new since snapshot web01-monday (2026-01-01 00:00:00 UTC)" in process["explanation"].iloc[0]
    assert set(since[since["severity"] == "high"]["subject"].str.split().str[0]) == {"persistence"}
    assert not len(vm[vm["rule_id"] == "vm.gone_since"])  # nothing went away
    # the same comparison on demand, for any two snapshots of the case (table memory/diff)
    diff = diff_snapshots(case.path, "web01-monday", "web01-tuesday-kdump")
    assert set(diff["snapshot_b"]) == {"web01-tuesday"}  # the kdump is read through its moment's snapshot
    assert len(diff) == len(changes) and set(Case.open(case.path).table("memory/diff")["item"]) == set(changes["item"])


def test_changes_key_processes_by_pid_name_and_start():
    a, b = implant_tables(), implant_tables()
    b["memory/processes"].loc[b["memory/processes"]["pid"] == 80, "start_ts"] = pd.Timestamp("2026-01-01T01:00Z")
    b["disk/persistence"].loc[0, "program_sha256"] = "9" * 64
    rows = diff_tables(_typed(a, "a"), _typed(b, "b"), "a", "b")
    got = sorted((r["kind"], r["change"], " ".join(r["item"].split()[:3])) for r in rows)
    # a pid reused by a process started later is another process; a cron entry's program changed
    assert got == [
        ("persistence", "modified", "cron /etc/cron.d/upd"),
        ("process", "gone", "pid 80 'labsvc'"),
        ("process", "new", "pid 80 'labsvc'"),
    ]


def test_stacking_finds_what_few_vms_have_and_raises_it():
    clean = implant_tables()
    clean["memory/processes"] = clean["memory/processes"][clean["memory/processes"]["pid"] != 77]
    clean["memory/sockets"] = clean["memory/sockets"][clean["memory/sockets"]["pid"] != 77]
    clean["disk/persistence"] = clean["disk/persistence"].iloc[0:0]
    dead = implant_tables()  # a dead task's leftovers, found by a scan only, run nothing
    dead["memory/processes"] = pd.concat(
        [dead["memory/processes"], pd.DataFrame([{"pid": 150, "process": "find", "exit_state": "EXIT_DEAD"}])],
        ignore_index=True,
    )
    per_vm = {
        f"vm{n}": vm_items([_typed(dead if n == 0 else implant_tables() if n < 2 else clean, f"vm{n}")])
        for n in range(5)
    }
    rows = {(r["category"], r["detail"]): r for r in stack(per_vm)}
    assert not [key for key in rows if "find" in key[1]]
    implant = rows[("executable", "/tmp/.kw")]
    assert (implant["vms"], implant["fleet_size"], implant["rare"]) == (2, 5, True)
    assert implant["item"] == "sha256:" + "1" * 64  # the deleted image, by the hash of its copy on disk
    service = rows[("process", "'labsvc' /usr/sbin/labsvc")]
    assert (service["vms"], service["rare"]) == (5, False)
    assert rows[("outbound", "tcp 10.0.2.100:8443 (kworker/0:2H)")]["rare"]
    notes = rare_notes(list(rows.values()), per_vm)
    assert set(notes) == {"vm0", "vm1"} and "on 2 of 5 VMs" in notes["vm0"]["process:77"]
    raised = raise_rare(
        [{"entity": "process:77", "confidence": 0.8}, {"entity": "process:80", "confidence": 0.8}], notes["vm0"]
    )
    assert [r["confidence"] for r in raised] == [0.9, 0.8] and "fleet_note" not in raised[1]


def test_two_vms_are_too_few_to_call_anything_rare():
    per_vm = {"a": vm_items([_typed(implant_tables(), "a")]), "b": vm_items([_typed({}, "b")])}
    assert not any(r["rare"] for r in stack(per_vm))
