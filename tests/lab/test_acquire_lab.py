"""`snapscope acquire` against a real libvirtd: the lab guest acquired while it runs.

What is compared with the lab's own artefacts: the findings of `analyze` on the acquired directory
against those of the lab's plain-QEMU snapshot (`lab_case`: the same guest scenario, taken by the
lab builder), as sets of (rule, severity, entity label without its pid): a pid depends on the boot's
timing (the lab's own two runs differ by one), so the acquired findings' pids are checked instead
against what the acquired guest itself printed on its console. The beacon flow is compared by
what is stable, its endpoints and the guest's own socket, not by timing or packet counts (a capture
of a running guest starts mid-connection).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.lab.guest_report import ground_truth_from_serial
from tests.lab.live_domain import (
    REPO,
    URI,
    disk_chain,
    idle_domain,
    lab_domain,
    private_libvirtd,
    run,
    state,
    watch_untouched,
)
from toolkit.case import Case, custody
from toolkit.hashing import sha256_file

pytestmark = pytest.mark.lab
PAUSE_LIMIT_S = 5.0


def snapscope(host, *args) -> subprocess.CompletedProcess:
    """The CLI of this checkout, run on the tests' libvirt host."""
    return run(host, [sys.executable, "-m", "toolkit.cli", *args], cwd=REPO)


def _one_clear_line(proc, needle: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr


def _finding_set(case: Case, sid: str | None = None) -> set[tuple]:
    f = case.findings
    if sid is not None:
        f = f[f["snapshot_id"] == sid]
    return {(r.rule_id, r.severity, re.sub(r" \(pid \d+\)$", "", r.entity_label)) for r in f.itertuples()}


@pytest.fixture(scope="module")
def host(lab, tmp_path_factory):
    with private_libvirtd(tmp_path_factory.mktemp("libvirtd")) as libvirt_host:
        yield libvirt_host


@pytest.fixture(scope="module")
def web(host, lab):
    with lab_domain(host, lab, "web") as dom:
        yield dom


@pytest.fixture(scope="module")
def acquired(host, web, tmp_path_factory):
    """The default mode (paused moment, external overlay left in place) with a 10 s capture."""
    out = tmp_path_factory.mktemp("acquired") / "web"
    before = disk_chain(host, web["name"])
    proc = snapscope(host, "acquire", web["name"], "--out", out, "--pcap", 10)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return {"out": out, "chain_before": before, "stdout": proc.stdout}


def _manifest(out: Path) -> dict:
    return json.loads((out / "acquisition.json").read_text())


def test_default_mode_pauses_once_briefly_and_leaves_the_overlay(host, web, acquired):
    doc = _manifest(acquired["out"])
    dom = doc["domains"][web["name"]]
    assert doc["status"] == dom["status"] == "complete" and dom["mode"] == "pause"
    assert dom["pause"]["source"] == "QEMU's STOP and RESUME events" and dom["pause"]["stops"] == 1
    assert 0 < dom["pause"]["seconds"] < PAUSE_LIMIT_S, dom["pause"]
    assert f"{dom['pause']['seconds']:.3f}" in acquired["stdout"]  # reported, not only recorded
    assert state(host, web["name"]) == "running"
    # as the flags say: the domain runs on a new overlay whose backing file is the image it had
    base = acquired["chain_before"][0]
    (overlay,) = [o["path"] for o in dom["overlays"]]
    assert disk_chain(host, web["name"]) == [overlay, *acquired["chain_before"]] and overlay.startswith(base[:-6])
    # the frozen image in place and its copy are the same bytes, as hashed when written
    copy = acquired["out"] / web["name"] / Path(base).name
    files = {f["role"]: f for f in dom["files"]}
    assert files["disk"]["sha256"] == sha256_file(copy) == sha256_file(base)
    assert doc["who"]["user"] and doc["libvirt"]["hypervisor"].startswith("QEMU ")


def test_every_file_hashed_as_written_and_logged_from_the_first_byte(web, acquired):
    out = acquired["out"]
    assert custody.verify(out) == []
    events = custody.read_events(out)
    assert events[0]["action"] == "acquire.start" and events[-1]["action"] == "acquire.end"
    assert events[0]["detail"]["libvirt"]["daemon"] and events[0]["detail"]["who"]["host"]
    logged = {e["path"]: e["sha256"] for e in events if e["action"] == "acquire.file"}
    on_disk = {str(p.relative_to(out)): sha256_file(p) for p in (out / web["name"]).iterdir()}
    assert logged == on_disk
    assert {Path(p).name for p in logged} == {"domain.xml", "memory.qevm", "disk.qcow2", "net-n0.pcap"}


def test_the_acquisition_analyses_to_the_lab_findings(host, web, acquired, lab_case, ground_truth, tmp_path):
    case_dir = tmp_path / "case"
    proc = snapscope(host, "analyze", acquired["out"], "--case", case_dir)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    case = Case.open(case_dir)
    (sid,) = case.snapshots
    lab = Case.open(lab_case[0])
    lab_sid = next(
        s for s, snap in lab.snapshots.items() if (snap.get("memory") or {}).get("path", "").endswith("memory.elf")
    )
    assert _finding_set(case) == _finding_set(lab, lab_sid)
    # pids and the beacon socket as the acquired guest itself reported them before it was acquired
    guest = ground_truth_from_serial(web["serial"].read_text("latin-1"))
    comm = ground_truth["implant"]["comm"]
    implant = next(p["pid"] for p in guest["processes"] if p["comm"] == comm)
    masquerade = case.findings[case.findings["rule_id"] == "proc.kernel_thread_masquerade"]
    assert list(masquerade["pid"]) == [implant] and ("proc.kernel_thread_masquerade", "high", comm) in _finding_set(
        case
    )
    socket = next(r for r in guest["tcp"] if r["remote_port"] == 8443 and r["state"] == "ESTABLISHED")
    assert socket["pid"] == implant
    flows = case.table("network/flows")
    beacon = flows[(flows["dst_ip"] == socket["remote_ip"]) & (flows["dst_port"] == socket["remote_port"])]
    assert list(zip(beacon["src_ip"], beacon["src_port"])) == [(socket["local_ip"], socket["local_port"])]
    assert beacon["src_packets"].iloc[0] >= 3
    # the case's custody chain is the acquisition's, continued
    acquired_lines = (acquired["out"] / "custody.jsonl").read_text().splitlines()
    assert (case_dir / "custody.jsonl").read_text().splitlines()[: len(acquired_lines)] == acquired_lines
    assert custody.verify(case_dir) == []
    assert snapscope(host, "case", "verify", case_dir).returncode == 0


def test_live_mode_with_merge_leaves_the_chain_as_before(host, web, acquired, tmp_path):
    out = tmp_path / "live"
    before = disk_chain(host, web["name"])  # the overlay the default mode left, over the original image
    proc = snapscope(host, "acquire", web["name"], "--out", out, "--live", "--merge")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    dom = _manifest(out)["domains"][web["name"]]
    assert dom["status"] == "complete" and dom["mode"] == "live" and "live migration" in dom["consistency"]
    assert 0 < dom["pause"]["seconds"] < PAUSE_LIMIT_S, dom["pause"]
    assert state(host, web["name"]) == "running" and disk_chain(host, web["name"]) == before
    assert all(o["merged"] and not Path(o["path"]).exists() for o in dom["overlays"])
    # ordinary evidence: a libvirt save image, the two-file chain copied beside it
    info = json.loads(snapscope(host, "inspect", out, "--json").stdout)
    (snap,) = info["snapshots"]
    assert snap["memory"]["format"] == "libvirt-save"
    assert [Path(d["path"]).name for d in snap["disks"]] == [Path(p).name for p in before]
    assert all(Path(d["path"]).parent == out / web["name"] for d in snap["disks"])


def test_ctrl_c_leaves_the_domain_running_and_the_output_incomplete(host, web, acquired, tmp_path):
    out = tmp_path / "interrupted"
    before = disk_chain(host, web["name"])
    proc = subprocess.Popen(
        [*host["enter"], sys.executable, "-m", "toolkit.cli", "acquire", web["name"], "--out", out, "--memory", "elf"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while state(host, web["name"]) != "paused":  # interrupt it in the middle of the paused moment
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert "marked incomplete" in stderr
    assert state(host, web["name"]) == "running" and disk_chain(host, web["name"]) == before
    doc = _manifest(out)
    dom = doc["domains"][web["name"]]
    assert doc["status"] == dom["status"] == "incomplete" and dom["reason"] == "interrupted"
    memory = next(f for f in dom["files"] if f["role"] == "memory")
    assert not memory["complete"] and memory["sha256"] == sha256_file(out / memory["path"])
    assert custody.verify(out) == [] and custody.read_events(out)[-1]["detail"]["status"] == "incomplete"
    _one_clear_line(snapscope(host, "analyze", out, "--case", tmp_path / "case"), "incomplete (interrupted)")


def _one_at_a_time(doc: dict, names: set[str]) -> None:
    """Both domains acquired completely, briefly paused, the second begun after the first had ended."""
    assert doc["status"] == "complete" and doc["options"]["io_slots"] == 1
    assert set(doc["domains"]) == names
    spans = sorted((d["started"], d["ended"]) for d in doc["domains"].values())
    assert spans[0][1] <= spans[1][0], spans
    outcome = {name: (d["status"], d["pause"]["seconds"]) for name, d in doc["domains"].items()}
    assert all(status == "complete" and pause < PAUSE_LIMIT_S for status, pause in outcome.values()), outcome


def test_all_running_domains_one_io_stream_at_a_time(host, web, acquired, lab, tmp_path):
    with lab_domain(host, lab, "db") as db:
        chains = {name: disk_chain(host, name) for name in (web["name"], db["name"])}
        proc = snapscope(host, "acquire", "--all", "--out", tmp_path / "all", "--merge")
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        _one_at_a_time(_manifest(tmp_path / "all"), set(chains))
        assert {name: disk_chain(host, name) for name in chains} == chains  # merged back: as before
        out, case_dir = tmp_path / "evidence", tmp_path / "fleet"
        proc = snapscope(host, "audit", "--live", URI, "--case", case_dir, "--out", out, "--merge", "--pcap", 4)
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        assert state(host, db["name"]) == "running" and disk_chain(host, db["name"]) == [
            str(db["stage"] / "disk.qcow2")
        ]
    _one_at_a_time(_manifest(out), {web["name"], db["name"]})
    fleet = Case.open(case_dir).table("audit/fleet")
    assert len(fleet) == 2 and (fleet["high"] > 0).all() and set(fleet["status"]) == {"analysed"}
    acquired_lines = (out / "custody.jsonl").read_text().splitlines()
    assert (case_dir / "custody.jsonl").read_text().splitlines()[: len(acquired_lines)] == acquired_lines


@pytest.mark.parametrize("kind", ["unknown domain", "unreachable uri", "no space", "raw disk", "no disk"])
def test_bad_input_one_line_exit_2_domain_untouched(kind, host, web, acquired, tmp_path):
    out = tmp_path / "out"
    if kind in ("raw disk", "no disk"):
        with idle_domain(host, kind.replace(" ", "-"), "raw" if kind == "raw disk" else None) as dom:
            with watch_untouched(host, dom["name"]) as seen:
                proc = snapscope(host, "acquire", dom["name"], "--out", out)
        needle = "is raw, not qcow2" if kind == "raw disk" else "has no disk to capture"
    elif kind == "no space":
        small = tmp_path / "small"
        small.mkdir()
        # mounted in the namespace the acquisition runs in; seen from here through its root
        run(host, ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", small], check=True)
        out = small / "out"
        try:
            with watch_untouched(host, web["name"]) as seen:
                proc = snapscope(host, "acquire", web["name"], "--out", out)
            seen_there = Path(f"/proc/{host['pid']}/root") / small.relative_to("/")
            assert not any(seen_there.iterdir())
        finally:
            run(host, ["umount", small], check=True)
        needle = "not enough space on the output volume"
    else:
        with watch_untouched(host, web["name"]) as seen:
            if kind == "unknown domain":
                proc = snapscope(host, "acquire", "snapscope-acq-test-nobody", "--out", out)
                needle = "snapscope-acq-test-nobody: no such domain"
            else:
                bad_uri = "qemu+unix:///system?socket=/nonexistent"
                proc = snapscope(host, "acquire", web["name"], "--out", out, "--connect", bad_uri)
                needle = "cannot connect to libvirt"
    _one_clear_line(proc, needle)
    assert not out.exists()
    assert seen["after"] == seen["before"] and not [e for e in seen["events"] if "STOP" in e], seen
