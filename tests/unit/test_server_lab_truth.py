"""The server lab's ground-truth builders (fixtures/server/techniques/): on observations shaped like a
run's, each returns the entity a finding should match, and refuses a run in which the technique did not
happen as designed."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest

FIX = Path(__file__).resolve().parents[2] / "fixtures"


def _mod(name: str):
    spec = importlib.util.spec_from_file_location("snapscope_build_server_lab_t", FIX / "build_server_lab.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    return importlib.import_module(f"snapscope_fixtures_server.{name}")


def _tech(tid: str, impl: str = "a") -> dict:
    return next(t for t in _mod("intrusions").planted(impl) if t["id"] == tid)


def _proc(pid, comm, cmdline, exe, ppid=1, uid=0, **kw) -> dict:
    return {
        "pid": pid,
        "ppid": ppid,
        "uid": uid,
        "comm": comm,
        "cmdline": cmdline,
        "exe": exe,
        "kernel_thread": False,
        "fds": {},
        "maps": {"files": [], "exec_anon": []},
        "env_ld": {},
        **kw,
    }


def _obs(*procs, **kw) -> dict:
    base = {
        "processes": list(procs),
        "tcp": [],
        "tcp6": [],
        "udp": [],
        "udp6": [],
        "histories": {},
        "history_files": {},
    }
    return {**base, **kw}


def test_masquerade_entity_and_refusal():
    t = _tech("T1-masquerade")
    pr = t["params"]
    ok = _obs(_proc(900, pr["comm"], [pr["argv0"]], f"{pr['drop_path']} (deleted)"))
    rec = _mod("techniques").BUILDERS[t["id"]](t, {"pid": 900, "sha256": "ab"}, ok, {})
    assert rec["entity"] == {
        "kind": "process",
        "pid": 900,
        "ppid": 1,
        "uid": 0,
        "comm": pr["comm"],
        "cmdline": [pr["argv0"]],
        "exe": f"{pr['drop_path']} (deleted)",
        "path": pr["drop_path"],
        "deleted": True,
        "sha256": "ab",
    }
    still_there = _obs(_proc(900, pr["comm"], [pr["argv0"]], pr["drop_path"]))
    with pytest.raises(_mod("shared").LabError, match="not the deleted drop path"):
        _mod("techniques").BUILDERS[t["id"]](t, {"pid": 900, "sha256": "ab"}, still_there, {})


def test_beacon_needs_constant_sizes_and_a_steady_interval():
    t = _tech("T16-beacon", "b")
    pr = t["params"]
    beacon = _proc(700, "session-bus", ["/x"], "/x")

    def peers(sizes, gap):
        reqs = [
            {"method": "POST", "path": pr["url_path"], "content_length": n, "at": 100 + i * gap}
            for i, n in enumerate(sizes)
        ]
        return {"beacon": {"qemu_connected": True, "requests": reqs}}

    build = _mod("techniques").BUILDERS[t["id"]]
    rec = build(t, {"pid": 700}, _obs(beacon), peers([pr["size"]] * 4, pr["interval"]))
    assert rec["entity"]["kind"] == "flow" and rec["entity"]["remote_port"] == pr["peer_port"]
    assert rec["evidence"]["beacons"] == 4 and rec["evidence"]["median_gap"] == pr["interval"]
    with pytest.raises(_mod("shared").LabError, match="beacon sizes"):
        build(t, {"pid": 700}, _obs(beacon), peers([pr["size"], pr["size"] + 1, pr["size"]], pr["interval"]))
    with pytest.raises(_mod("shared").LabError, match="median gap"):
        build(t, {"pid": 700}, _obs(beacon), peers([pr["size"]] * 4, 3 * pr["interval"]))


def test_hidden_module_must_be_off_the_list_and_as_designed_in_sysfs():
    t = _tech("T14-hidden-lkm", "b")  # hide=2: out of sysfs too
    name = t["params"]["module"]
    facts = {
        "module_address": "0xffffffffc0a00000",
        "core_base": "0xffffffffc0a00000",
        "core_size": 8192,
        "tainted": 12288,
    }
    files = {
        t["params"]["ko_path"]: {
            "mode": 0o100644,
            "uid": 0,
            "size": 1,
            "mtime": 1,
            "ctime": 1,
            "birth": 1,
            "sha256": "x",
        }
    }
    build = _mod("techniques").BUILDERS[t["id"]]
    obs = _obs(modules=[{"name": "ext4"}], sys_modules=["ext4"], technique_files=files)
    assert build(t, facts, obs, {})["entity"] == {
        "kind": "module",
        "name": name,
        "address": facts["module_address"],
        "core_base": facts["core_base"],
        "core_size": 8192,
        "in_module_list": False,
        "in_sysfs": False,
        "ko_path": t["params"]["ko_path"],
    }
    with pytest.raises(_mod("shared").LabError, match="is in /proc/modules"):
        build(t, facts, {**obs, "modules": [{"name": name}]}, {})
    with pytest.raises(_mod("shared").LabError, match="present=True"):
        build(t, facts, {**obs, "sys_modules": ["ext4", name]}, {})


def test_injected_region_must_be_anonymous_rwx():
    t = _tech("T9-ptrace-inject")
    region = {"start": 0x7F0000000000, "end": 0x7F0000002000, "perms": "rwxp", "path": ""}
    cron = _proc(400, "cron", ["/usr/sbin/cron", "-f"], "/usr/sbin/cron", maps={"files": [], "exec_anon": [region]})
    facts = {"pid": 400, "region_start": region["start"], "rwx_regions_before": 0}
    build = _mod("techniques").BUILDERS[t["id"]]
    assert build(t, facts, _obs(cron), {})["entity"]["region_end"] == region["end"]
    file_backed = {**region, "path": "/usr/lib/x.so"}
    with pytest.raises(_mod("shared").LabError, match="no anonymous rwx region"):
        build(t, facts, _obs({**cron, "maps": {"files": [], "exec_anon": [file_backed]}}), {})


def test_history_clear_holds_only_what_followed_the_clear():
    t = _tech("T12-history-clear", "b")  # unset HISTFILE, history -c: the clear erases itself too
    typed = [*t["params"]["recon"], *t["params"]["tamper"], "systemctl restart x", ": > /var/log/wtmp"]
    bash = _proc(500, "bash", ["-bash"], "/usr/bin/bash")
    hist = {"lines": typed[-2:], "file_lines": ["apt-get update"]}
    facts = {"pid": 500, "typed": typed, "tamper": t["params"]["tamper"], "tty": "/dev/pts/4", "tmux_session": "maint"}
    build = _mod("techniques").BUILDERS[t["id"]]
    rec = build(
        t, facts, _obs(bash, histories={t["id"]: hist}, history_files={"/root/.bash_history": ["apt-get update"]}), {}
    )
    assert rec["entity"]["history_lines"] == typed[-2:] and rec["evidence"]["before_clear_not_in_memory"] == typed[:-3]
    with pytest.raises(_mod("shared").LabError, match="not what followed the clear"):
        build(t, facts, _obs(bash, histories={t["id"]: {**hist, "lines": typed}}, history_files={}), {})


def test_records_keep_failed_techniques_out_of_the_scored_ones():
    """A technique without facts, one whose guest script failed, and one its builder refuses are listed as
    failed with why; only the verified one is a record."""
    ok_t, nofacts_t = _tech("T1-masquerade"), _tech("T4-memfd-exec")
    hook_t, refused_t = _tech("T22-authorized-keys"), _tech("T2-revshell")
    pr = ok_t["params"]
    obs = _obs(_proc(900, pr["comm"], [pr["argv0"]], f"{pr['drop_path']} (deleted)"))
    facts = {
        "techniques": {"T1-masquerade": {"pid": 900, "sha256": "ab"}, "T2-revshell": {"pid": 4242}},
        "hook": {"failed": [{"script": "t22_authorized_keys.sh", "ids": [hook_t["id"]], "rc": 1, "log_tail": "boom"}]},
    }
    ok, failed = _mod("techniques").records([ok_t, nofacts_t, hook_t, refused_t], facts, obs, {})
    assert [r["id"] for r in ok] == ["T1-masquerade"] and ok[0]["entity"]["pid"] == 900
    why = {f["id"]: f["why"] for f in failed}
    assert why["T4-memfd-exec"] == "the guest wrote no facts for this technique"
    assert why["T22-authorized-keys"] == "guest script failed (rc 1)" and failed[1]["log_tail"] == "boom"
    assert why["T2-revshell"].startswith("refused by its builder: T2-revshell: pid 4242 is not in the guest")
