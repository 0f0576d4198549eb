"""VMs, not snapshots, on the lab's real captures. ground_truth.json says which artefact holds
which moment of which run (``artefacts[].moment``, ``runs.<run>.moments``); snapscope must
analyse each moment once, recognise the others by their RAM, and report what changed between
two moments of one VM.

- the QEMU run: an ELF dump, a kdump, a migration stream and a savevm of one paused moment;
- the libvirt run: one domain at three moments (a dump, an internal and an external snapshot
  at the first; a full dump at the second; a save at the third).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolkit.case import Case, custody
from toolkit.cli.app import app
from toolkit.pipeline import analyze

pytestmark = pytest.mark.lab
PAGE = 4096


def _analysed(lab, tmp_path_factory, run):
    case_dir = tmp_path_factory.mktemp(f"{run}-run") / "case"
    summary = analyze([lab / run], case_dir)
    return Case.open(case_dir), {s["id"]: s for s in summary["snapshots"]}


@pytest.fixture(scope="module")
def qemu_run(lab, tmp_path_factory):
    return _analysed(lab, tmp_path_factory, "qemu")


@pytest.fixture(scope="module")
def libvirt_run(lab, tmp_path_factory):
    return _analysed(lab, tmp_path_factory, "libvirt")


def _truth_moments(lab, ground_truth, case) -> dict[str, str]:
    """{snapshot id: the ground truth's moment of its memory artefact}."""
    by_path = {}
    for a in ground_truth["artefacts"]:
        if a.get("moment"):
            by_path[str((lab / a["path"]).resolve())] = a["moment"]
    out = {}
    for sid, entry in case.snapshots.items():
        memory = entry.get("memory") or {}
        if memory.get("path"):
            out[sid] = by_path[str(Path(memory["path"]).resolve())]
    return out


def _ram_pages(ground_truth, run) -> int:
    mib = next(
        a["facts"]["ram_mib"] for a in ground_truth["artefacts"] if a.get("run") == run and "ram_mib" in a["facts"]
    )
    return mib * (1 << 20) // PAGE


def test_qemu_run_one_moment_analysed_once(qemu_run, lab, ground_truth):
    case, summary = qemu_run
    truth = _truth_moments(lab, ground_truth, case)
    assert len(truth) == 4 and set(truth.values()) == {"qemu-pause-1"}  # ELF, kdump, migration, savevm
    analysed = [sid for sid, s in summary.items() if s["status"] in ("analysed", "partial")]
    assert analysed == ["qemu-memory.elf"]  # the ELF: no conversion needed
    same = {sid: s for sid, s in summary.items() if s["status"] == "same moment"}
    assert set(same) == set(truth) - {"qemu-memory.elf"}
    for sid, s in same.items():
        proof = s["proof"]
        assert s["same_moment_as"] == "qemu-memory.elf" and proof["same"] and proof["pages_differing"] == 0, sid
        assert proof["pages_compared"] >= 0.97 * _ram_pages(ground_truth, "qemu"), (sid, proof)
    events = [e["detail"]["snapshot"] for e in custody.read_events(case.path) if e["action"] == "snapshot.same_moment"]
    assert sorted(events) == sorted(same)
    # tables only for the analysed artefact; the manifest and vm/moments hold the others and the proof
    assert set(case.table("memory/processes")["snapshot_id"]) == {"qemu-memory.elf"}
    moments = case.table("vm/moments")
    assert list(case.manifest["vms"]) == ["qemu"] and set(moments["moment"]) == {1}
    assert (moments[moments["status"] == "same moment"]["pages_differing"] == 0).all()


def test_qemu_run_each_finding_once_with_its_snapshots(qemu_run, ground_truth):
    case, _summary = qemu_run
    vm = case.table("vm/findings")
    assert len(vm) and not vm.duplicated(["rule_id", "entity", "entity_label", "subject"]).any()
    pid = ground_truth["runs"]["qemu"]["implant_pid"]
    masq = vm[vm["rule_id"] == "proc.kernel_thread_masquerade"]
    assert list(masq["pid"]) == [pid]
    assert sorted(json.loads(masq["seen_in"].iloc[0])) == sorted(case.snapshots)  # all four artefacts of the moment
    assert masq["moments"].iloc[0] == 1
    # `snapscope findings` prints each once, with its snapshots, after the story of the implant
    out = CliRunner().invoke(app, ["findings", str(case.path), "--no-chain"]).output
    assert out.index(f"kworker/0:2H (pid {pid})") < out.index("findings by severity")
    assert out.count("User process posing as a kernel thread (proc.kernel_thread_masquerade") == 1
    assert "seen in 4 snapshot(s), 1 moment(s)" in out


def test_libvirt_moments_are_the_ground_truths(libvirt_run, lab, ground_truth):
    case, summary = libvirt_run
    truth = _truth_moments(lab, ground_truth, case)
    order = [m["id"] for m in sorted(ground_truth["runs"]["libvirt"]["moments"], key=lambda m: m["at"])]
    assert set(truth.values()) == set(order)
    ours = {sid: s["same_moment_as"] or sid for sid, s in summary.items()}
    for a in truth:
        for b in truth:
            assert (ours[a] == ours[b]) == (truth[a] == truth[b]), (a, b)  # same RAM iff the same moment
    [vm] = case.manifest["vms"].values()
    assert vm["uuid"] == ground_truth["runs"]["libvirt"]["domain_uuid"]
    moments = case.table("vm/moments").set_index("snapshot")
    assert all(order.index(truth[sid]) + 1 == moments.loc[sid, "moment"] for sid in truth)  # in capture order


def _started_between(ground_truth) -> list[tuple[str, str, dict]]:
    """(earlier moment, later moment, process) for every process the guest reports starting
    between two moments of one run (``runs.<run>.moments[i].processes_started``)."""
    out = []
    for run in ground_truth["runs"].values():
        moments = sorted(run.get("moments") or [], key=lambda m: m["at"])
        for before, after in zip(moments, moments[1:]):
            out += [(before["id"], after["id"], p) for p in after.get("processes_started") or []]
    return out


def test_a_process_started_between_two_moments_is_new_since_the_first(libvirt_run, lab, ground_truth):
    """The libvirt guest starts one ordinary process (sleep) between its second and third moment
    (fixtures/lab/libvirt_run.py): it is new since the second moment, and nothing more than that."""
    started = _started_between(ground_truth)
    assert started, (
        "ground_truth.json records no process started between two moments of one run "
        "(runs.<run>.moments[].processes_started): the lab builder must start one"
    )
    case, _summary = libvirt_run
    truth = _truth_moments(lab, ground_truth, case)
    vm = case.table("vm/findings")
    new = vm[vm["rule_id"] == "vm.new_since"]
    for before, after, proc in started:
        mine = new[new["entity"] == f"process:{proc['pid']}"]
        assert len(mine) == 1, (proc, new[["entity", "explanation"]])
        assert truth[mine["first_seen"].iloc[0]] == after
        earlier = [sid for sid, m in truth.items() if m == before]
        assert any(f"is new since snapshot {sid}" in mine["explanation"].iloc[0] for sid in earlier)
        assert proc["comm"] in mine["explanation"].iloc[0]
        # an ordinary process: new is all there is to say about it
        others = vm[(vm["pid"] == proc["pid"]) & (vm["rule_id"] != "vm.new_since")]
        assert others.empty, others[["rule_id", "severity", "explanation"]]
        assert set(mine["severity"]) == {"medium"}


def test_no_user_process_comes_or_goes_between_the_libvirt_moments(libvirt_run, ground_truth):
    """The guest idles between the moments (but for the one process it starts before the last):
    every user process it listed at ready is in every moment, so no process of its list is new
    or gone (a false "new since" would be noise on every VM); the started one is new."""
    case, _summary = libvirt_run
    run = ground_truth["runs"]["libvirt"]
    started = {p["pid"] for _b, _a, p in _started_between(ground_truth)}
    users = {p["pid"] for p in run["processes"] if not p["kernel_thread"]} - started
    moments = case.table("vm/moments")
    analysed = moments[moments["status"].isin(["analysed", "partial"])].sort_values("moment")["snapshot"].tolist()
    assert len(analysed) == len(run["moments"]) == 3
    procs = case.table("memory/processes")
    for sid in analysed:  # each moment's process list holds the guest's own
        assert users <= set(procs[procs["snapshot_id"] == sid]["pid"]), sid
    changes = case.table("vm/changes")
    moved = set(changes[changes["kind"] == "process"]["item"].str.extract(r"^pid (\d+) ")[0].astype(int))
    assert not moved & users, changes[changes["kind"] == "process"]
    # the same comparison on demand, first moment against last, through the CLI
    result = CliRunner().invoke(app, ["diff", "--memory", analysed[0], analysed[-1], "--case", str(case.path)])
    assert result.exit_code == 0 and "snapshot diff:" in result.output, result.output
    diff = Case.open(case.path).table("memory/diff")
    diff_pids = diff[diff["kind"] == "process"]["item"].str.extract(r"^pid (\d+) ")[0].astype(int)
    assert not set(diff_pids) & users
    new_pids = set(diff_pids[diff[diff["kind"] == "process"]["change"] == "new"])
    assert started and started <= new_pids, (started, new_pids)
