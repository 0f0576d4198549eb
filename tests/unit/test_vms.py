"""One moment analysed once, through the one run path (toolkit/vms.py with toolkit/pipeline.py):
an ELF core, a kdump and a migration stream of the same synthetic guest RAM, and an ELF of a
later moment, with the capture of the VM's traffic; the network and YARA engines run (the
memory engine needs a real kernel: tests/lab/test_analyze_lab.py)."""

from __future__ import annotations

import json

import pytest

from tests.helpers.pcap_writer import session, write_pcap
from tests.unit.memory.test_same_ram import _elf, _kdump, _migration, _ram
from toolkit.case import Case, custody
from toolkit.pipeline import analyze

MARK = b"SAME-MOMENT-MARK-5521"
RULE = 'rule same_moment_mark { meta: severity = "high" strings: $a = "SAME-MOMENT-MARK-5521" condition: $a }\n'


def _marked(ram: bytes) -> bytes:
    return ram[:0x180000] + MARK + ram[0x180000 + len(MARK) :]


@pytest.fixture
def moment(tmp_path):
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    ram = _marked(_ram())
    rules = tmp_path / "mark.yar"
    rules.write_text(RULE)
    frames = session("10.0.2.15", 40000, "10.0.2.100", 8443, [(b"beacon " + MARK, b"ok")])
    return {
        "paths": [
            write_pcap(evidence / "net.pcap", frames),
            _kdump(evidence / "b-memory.kdump", ram),
            _elf(evidence / "c-memory.elf", ram),
            _migration(evidence / "a-migration.qevm", ram),
            _elf(evidence / "d-later.elf", _marked(_ram(changed=300))),
        ],
        "rules": rules,
    }


def _run(moment, case_dir, **more):
    return analyze(moment["paths"], case_dir, engine_names=("network", "yara"), rule_paths=[moment["rules"]], **more)


def test_one_moment_in_three_artefacts_is_analysed_once(moment, tmp_path):
    case_dir = tmp_path / "case"
    summary = _run(moment, case_dir)
    status = {s["id"]: (s["status"], s["same_moment_as"]) for s in summary["snapshots"]}
    assert status == {
        "evidence-c-memory.elf": ("analysed", None),  # the ELF: opened without conversion
        "evidence-b-memory.kdump": ("same moment", "evidence-c-memory.elf"),
        "evidence-a-migration.qevm": ("same moment", "evidence-c-memory.elf"),
        "evidence-d-later.elf": ("analysed", None),  # one page differs: another moment
    }
    proof = next(s["proof"] for s in summary["snapshots"] if s["id"] == "evidence-b-memory.kdump")
    assert proof["same"] and proof["pages_compared"] == 768 - 96 and proof["pages_differing"] == 0
    case = Case.open(case_dir)
    # tables only for what was analysed; the mark found once per moment, not once per artefact
    for table in ("evidence", "network/flows", "yara/matches"):
        assert set(case.table(table)["snapshot_id"]) == {"evidence-c-memory.elf", "evidence-d-later.elf"}, table
    events = [e for e in custody.read_events(case_dir) if e["action"] == "snapshot.same_moment"]
    assert sorted(e["detail"]["snapshot"] for e in events) == ["evidence-a-migration.qevm", "evidence-b-memory.kdump"]
    assert all(e["detail"]["proof"]["pages_differing"] == 0 for e in events) and custody.verify(case_dir) == []
    # identical RAM made the three one VM; the later ELF, tied to nothing, is a VM of its own
    vms = case.manifest["vms"]
    assert sorted(len(vm["snapshots"]) for vm in vms.values()) == [1, 3]
    moments = case.table("vm/moments")
    same = moments[moments["status"] == "same moment"]
    assert set(same["same_moment_as"]) == {"evidence-c-memory.elf"} and set(same["pages_compared"]) == {672}
    vm_findings = case.table("vm/findings")
    mark = vm_findings[vm_findings["subject"] == "same_moment_mark"]
    seen = sorted(sorted(json.loads(s)) for s in mark["seen_in"])  # one finding per VM, with its snapshots
    assert seen == [
        ["evidence-a-migration.qevm", "evidence-b-memory.kdump", "evidence-c-memory.elf"],
        ["evidence-d-later.elf"],
    ]


def test_a_rerun_opens_nothing_and_the_flag_analyses_every_artefact(moment, tmp_path):
    case_dir = tmp_path / "case"
    _run(moment, case_dir)
    again = _run(moment, case_dir)
    assert sorted(s["status"] for s in again["snapshots"]) == ["reused", "reused", "same moment", "same moment"]
    assert not [e for e in custody.read_events(case_dir)[-8:] if e["action"] == "snapshot.same_moment"]
    every = _run(moment, case_dir, analyse_every_artefact=True)
    status = {s["id"]: s["status"] for s in every["snapshots"]}
    assert status["evidence-b-memory.kdump"] == status["evidence-a-migration.qevm"] == "analysed"
    assert {"evidence-b-memory.kdump", "evidence-a-migration.qevm"} <= set(
        Case.open(case_dir).table("yara/matches")["snapshot_id"]
    )
