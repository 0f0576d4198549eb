"""Fleet audits on the lab fleet: linked clones of one base, infected, clean and one corrupt.
Verdicts are checked against fleet_truth.json (what each guest itself reported)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from toolkit.audit import audit
from toolkit.case import Case, custody

pytestmark = pytest.mark.lab
VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
# Processes the tests start (dask workers, the snapscope script) import this checkout's code,
# not whichever checkout the virtualenv was installed from.
CHECKOUT_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="module")
def truth(fleet) -> dict:
    return json.loads((fleet / "fleet_truth.json").read_text())


def _vm_dirs(fleet, truth, names=None):
    return [fleet / vm["dir"] for vm in truth["vms"] if names is None or vm["name"] in names]


# The linked clones name ../base.qcow2, outside each VM directory given: the fleet directory is
# where the analyst says such files may be (toolkit.references refuses them otherwise).
def _search(fleet) -> dict:
    return {"search_paths": [fleet]}


def _by_vm(case_dir: Path, fleet: Path) -> dict:
    """fleet row per VM name (the VM's directory), from the audit/fleet table."""
    rows = Case.open(case_dir).table("audit/fleet")
    return {Path(r.source_path).name: r for r in rows.itertuples(index=False)}


def _finding_ids(case_dir: Path, snapshot_ids=None) -> set:
    f = Case.open(case_dir).findings
    if snapshot_ids is not None:
        f = f[f["snapshot_id"].isin(snapshot_ids)]
    return set(f["finding_id"])


@pytest.fixture(scope="module")
def audited(fleet, truth, tmp_path_factory):
    case = tmp_path_factory.mktemp("audit") / "fleet-case"
    started = time.monotonic()
    audit(_vm_dirs(fleet, truth), case, jobs=2, **_search(fleet))
    return case, time.monotonic() - started


def test_fleet_verdicts_match_truth(audited, fleet, truth):
    case_dir, _ = audited
    rows = _by_vm(case_dir, fleet)
    findings = Case.open(case_dir).findings
    assert set(rows) == {vm["name"] for vm in truth["vms"]}
    for vm in truth["vms"]:
        row = rows[vm["name"]]
        if vm["scenario"] == "corrupt":
            # its capture is intact and still analysed; the damaged dump and disk are reported
            assert row.status in ("failed", "partial") and row.reason, row
            assert "memory.elf" in row.reason and "disk" in row.reason, row.reason
            continue
        assert row.status == "analysed", row
        mine = findings[findings["snapshot_id"] == row.vm]
        if vm["scenario"] == "infected":
            masq = mine[mine["rule_id"] == "proc.kernel_thread_masquerade"]
            assert list(masq["pid"]) == [vm["implant_pid"]], (vm["name"], mine[["rule_id", "pid"]])
            assert row.high >= 3
        else:
            assert row.high == 0 and row.critical == 0, (vm["name"], mine[["rule_id", "severity", "explanation"]])


def test_shared_base_hashed_once(audited, fleet):
    case_dir, _ = audited
    hashed = [e["path"] for e in custody.read_events(case_dir) if e["action"] == "evidence.hash.before"]
    base = str((fleet / "base.qcow2").resolve())
    assert hashed.count(base) == 1
    assert custody.verify(case_dir) == []


def test_killed_audit_resumes_without_redoing(fleet, truth, audited, tmp_path):
    case_dir = tmp_path / "killed-case"
    dirs = _vm_dirs(fleet, truth)
    cmd = [sys.executable, "-m", "toolkit.cli", "audit", *map(str, dirs), "--case", str(case_dir), "--jobs", "1"]
    cmd += ["--search-path", str(fleet)]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        done = (
            [e for e in custody.read_events(case_dir) if e["action"] == "snapshot.done"]
            if (case_dir / "custody.jsonl").exists()
            else []
        )
        if done:
            break
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the audit and its worker processes, mid-run
    proc.wait()
    finished_before = {e["detail"]["snapshot"] for e in custody.read_events(case_dir) if e["action"] == "snapshot.done"}
    assert finished_before and len(finished_before) < len(dirs) - 1
    events_before = len(custody.read_events(case_dir))
    audit(dirs, case_dir, jobs=2, **_search(fleet))
    after = custody.read_events(case_dir)[events_before:]
    redone = {e["detail"]["snapshot"] for e in after if e["action"] == "snapshot.done"}
    reused = {e["detail"]["snapshot"] for e in after if e["action"] == "snapshot.reuse"}
    assert finished_before <= reused and not (finished_before & redone)
    assert _finding_ids(case_dir) == _finding_ids(audited[0])
    assert custody.verify(case_dir) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dask_executor_gives_the_same_findings(fleet, truth, audited, tmp_path):
    names = [vm["name"] for vm in truth["vms"] if vm["scenario"] != "corrupt"][:3]
    port = _free_port()
    env = {**CHECKOUT_ENV, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    scheduler = subprocess.Popen(
        [str(VENV_BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    worker = subprocess.Popen(
        [
            str(VENV_BIN / "dask"),
            "worker",
            f"tcp://127.0.0.1:{port}",
            "--nworkers",
            "2",
            "--nthreads",
            "1",
            "--no-dashboard",
            "--memory-limit",
            "6GiB",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    try:
        case_dir = tmp_path / "dask-case"
        audit(_vm_dirs(fleet, truth, names), case_dir, jobs=2, executor=f"dask://127.0.0.1:{port}", **_search(fleet))
        sids = [r.vm for r in Case.open(case_dir).table("audit/fleet").itertuples() if r.status == "analysed"]
        assert len(sids) == len(names)
        assert _finding_ids(case_dir) == _finding_ids(audited[0], sids)
    finally:
        for p in (worker, scheduler):
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=60)


def test_audit_against_previous_reports_changes(fleet, truth, audited, tmp_path):
    """The previous audit is the first one with one finding removed and one file's hash
    altered (as if the VM had changed since): exactly those come back as changes."""
    import shutil

    import pandas as pd

    names = [vm["name"] for vm in truth["vms"] if vm["scenario"] == "infected"][:1]
    previous = tmp_path / "previous"
    shutil.copytree(audited[0], previous, ignore=shutil.ignore_patterns("derived"))
    sid = _by_vm(audited[0], fleet)[names[0]].vm
    findings_file = previous / "tables" / "findings" / f"{sid}.parquet"
    findings = pd.read_parquet(findings_file)
    dropped = findings[findings["rule_id"] == "proc.deleted_executable"].iloc[0]
    findings[findings["finding_id"] != dropped["finding_id"]].to_parquet(findings_file, index=False)
    files_file = previous / "tables" / "disk" / "files" / f"{sid}.parquet"
    files = pd.read_parquet(files_file)
    target = truth["cron"]["target"]
    files.loc[files["path"] == target, "sha256"] = "0" * 64
    files.to_parquet(files_file, index=False)

    # Through the CLI, as a responder runs it: the summary line counts the same changes.
    cli = subprocess.run(
        [
            str(VENV_BIN / "snapscope"),
            "audit",
            *map(str, _vm_dirs(fleet, truth, names)),
            "--case",
            str(tmp_path / "now"),
            "--jobs",
            "1",
            "--previous",
            str(previous),
            "--search-path",
            str(fleet),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=CHECKOUT_ENV,
    )
    assert cli.returncode == 0, cli.stderr
    assert "since the previous audit: 1 new, 0 resolved findings, 1 file changes" in " ".join(cli.stdout.split())
    changes = Case.open(tmp_path / "now").table("audit/changes")
    assert sorted(changes["change"]) == ["file modified", "new finding"], changes
    assert changes[changes["change"] == "file modified"]["path"].tolist() == [target]
    assert changes[changes["change"] == "new finding"]["explanation"].tolist() == [dropped["explanation"]]


def test_fleet_stacking_sets_the_implant_apart(audited, truth):
    """Least frequency of occurrence over the fleet: the infected clones' implant is on few of the
    VMs, the base image's binaries on all of them; findings on the implant rise in confidence."""
    case_dir, _ = audited
    case = Case.open(case_dir)
    stacking = case.table("audit/stacking")
    fleet = {r.vm: r for r in case.table("audit/fleet").itertuples(index=False)}
    with_memory = set(case.table("memory/processes")["snapshot_id"])
    infected = {fleet_vm for fleet_vm, r in fleet.items() if Path(r.source_path).name in _names(truth, "infected")}
    implant = stacking[stacking["item"] == f"sha256:{truth['implant']['sha256']}"]
    assert len(implant) == 1 and implant["category"].iloc[0] == "executable"
    row = implant.iloc[0]
    assert row["rare"] and row["vms"] == len(infected & with_memory) and row["fleet_size"] == len(with_memory)
    assert row["fleet_size"] >= 3
    service = stacking[stacking["item"] == f"sha256:{truth['service']['sha256']}"].iloc[0]
    assert not service["rare"] and service["vms"] == service["fleet_size"] == len(with_memory)
    common = stacking[(stacking["category"] == "process") & ~stacking["rare"]]
    assert {"sh /run/lab/bin/busybox", "labsvc /usr/sbin/labsvc"} <= set(common["item"])
    outbound = stacking[stacking["category"] == "outbound"]
    assert (
        outbound["item"].str.contains(f"{truth['peer']['ip']}:{truth['peer']['port']}").all() and outbound["rare"].all()
    )
    vm_findings = case.table("vm/findings")
    masq = vm_findings[vm_findings["rule_id"] == "proc.kernel_thread_masquerade"]
    assert len(masq) == len(infected & with_memory)
    assert masq["fleet_note"].str.startswith("rare in the fleet").all()
    assert (masq["confidence"] > 0.9).all()  # 0.9 from the rule, raised for rarity
    vm_of = {sid: vm for vm, info in case.manifest["vms"].items() for sid in info["snapshots"]}
    assert set(masq["vm"]) == {vm_of[sid] for sid in infected & with_memory}
    clean = {
        vm_of[sid] for sid in fleet if sid in vm_of and Path(fleet[sid].source_path).name in _names(truth, "clean")
    }
    assert clean and vm_findings[vm_findings["vm"].isin(clean)]["fleet_note"].isna().all()


def _names(truth, scenario):
    return {vm["name"] for vm in truth["vms"] if vm["scenario"] == scenario}
