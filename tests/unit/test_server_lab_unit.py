"""The server-lab builder's pure parts (fixtures/server/), without building anything: the scenario's
wiring, the report wire format, the observations' parsers, the technique registry."""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib
import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "fixtures"


def _mod(name: str):
    spec = importlib.util.spec_from_file_location("snapscope_build_server_lab_t", FIX / "build_server_lab.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    return importlib.import_module(f"snapscope_fixtures_server.{name}")


@pytest.fixture(scope="module")
def sc():
    return _mod("scenario")


def _section(name: str, data: bytes) -> str:
    """A section as guest/lab/report.py writes it."""
    b64 = base64.b64encode(gzip.compress(data, mtime=0)).decode()
    body = "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))
    return (
        f"@@SNAPSCOPE-SERVER BEGIN {name} {hashlib.sha256(data).hexdigest()}@@\r\n{body}\r\n"
        f"@@SNAPSCOPE-SERVER END {name}@@\r\n"
    )


def test_kernel_cmdline_carries_the_variant(sc):
    assert sc.kernel_cmdline("baseline").endswith("snapscope.variant=baseline")
    assert "snapscope.intrusion=1" in sc.kernel_cmdline("intrusion")
    assert "snapscope.intrusion=1" not in sc.kernel_cmdline("baseline")
    scale = sc.kernel_cmdline("scale")
    assert "systemd.setenv=INVENTORY_CACHE_MB=3200" in scale and "snapscope.tmpfs_mb=3200" in scale
    assert sc.kernel_cmdline("baseline").startswith("root=/dev/vda rw console=ttyS0")


def test_peers_only_guestfwd_and_restricted(sc):
    peers = _mod("peers")
    base, intr = peers.peer_specs(False), peers.peer_specs(True)
    assert [p["name"] for p in base] == ["collector"]
    assert {p["name"] for p in intr} == {"collector", "revshell", "stager"}
    shell = next(p for p in intr if p["kind"] == "shell")
    assert shell["script"][-1] == " history -w /run/gt/hist.T2-revshell.$$"
    net = peers.netdev_arg(intr)
    assert net.startswith("user,id=n0,restrict=on,")
    assert net.count("guestfwd=") == 3 and "hostfwd" not in net
    assert all(re.fullmatch(r"10\.0\.2\.\d+", p["ip"]) for p in intr)


def test_every_technique_has_script_builder_and_peer_payload(sc):
    tech = _mod("techniques")
    assert set(tech.BUILDERS) == {t["id"] for t in sc.TECHNIQUES}
    for t in sc.TECHNIQUES:
        assert (FIX / "server" / "guest" / "hook" / "techniques" / t["script"]).is_file()
        assert re.fullmatch(r"T\d{4}(\.\d{3})?", t["attack_id"]) and t["attack_id"] in t["attack_ids"]
        for payload in t.get("peer", {}).get("routes", {}).values():
            assert (FIX / "server" / "payloads" / payload).is_file()


def test_report_round_trip_and_events(tmp_path):
    rep = _mod("report")
    facts = (
        b'{"processes": [{"pid": 1, "ppid": 0, "uid": 0, "gid": 0, "state": "S", "comm_hex": "73797374656d64",'
        b' "cmdline_hex": "2f7362696e2f696e697400", "exe": "/usr/lib/systemd/systemd", "tty_nr": 0,'
        b' "start_ticks": 1, "rss_pages": 9, "threads": [{"tid": 1, "comm_hex": "73797374656d64"}], "fds": {}}]}'
    )
    text = (
        "@@SNAPSCOPE-SERVER EVENT 12.50 multi-user running@@\r\n"
        + _section("ps.txt", b"PID\n1 systemd\n")
        + _section("facts.json", facts)
        + "@@SNAPSCOPE-SERVER READY@@\r\n"
    )
    path = tmp_path / "report.log"
    path.write_text(text)
    got = rep.wait_ready(path, tmp_path / "console.log", lambda: True, timeout=5)
    assert got["events"][0]["name"] == "multi-user" and got["events"][0]["uptime"] == 12.5
    f, sections = rep.load(path)
    assert sections["ps.txt"] == b"PID\n1 systemd\n"
    assert f["processes"][0]["comm"] == "systemd" and f["processes"][0]["cmdline"] == ["/sbin/init"]
    garbled = text.replace(hashlib.sha256(b"PID\n1 systemd\n").hexdigest(), "0" * 64)
    path.write_text(garbled)
    with pytest.raises(_mod("shared").LabError, match="garbled"):
        rep.load(path)


def test_report_error_line_fails_fast(tmp_path):
    rep = _mod("report")
    path = tmp_path / "report.log"
    path.write_text(
        "@@SNAPSCOPE-SERVER ERROR hook: RuntimeError: T3 failed@@\n"
        "@@SNAPSCOPE-SERVER ERROR reporter: an actor failed, not reporting@@\n"
    )
    with pytest.raises(_mod("shared").LabError, match="T3 failed"):
        rep.wait_ready(path, tmp_path / "console.log", lambda: True, timeout=5)


def test_histories_split_memory_from_file():
    obs = _mod("observed")
    users = [{"name": "alice", "uid": 1001, "home": "/home/alice"}]
    facts = {
        "history_dumps": {"alice": {"pid": 376, "uid": 1001, "lines": ["df -h", "uptime", "history -a", "ls"]}},
        "history_files": {"/home/alice/.bash_history": ["df -h", "uptime", "history -a"]},
    }
    h = obs.histories(facts, users)["alice"]
    assert h["only_in_memory"] == ["ls"] and h["user"] == "alice" and h["pid"] == 376


def test_unit_and_module_parsers():
    obs = _mod("observed")
    units = obs.parse_units(
        "ssh.service loaded active running OpenBSD Secure Shell server\n"
        "x.service loaded failed failed X\n\nLOAD   = Reflects ...\n"
    )
    assert [u["unit"] for u in units] == ["ssh.service", "x.service"] and units[1]["active"] == "failed"
    mods = obs.parse_modules("virtio_net 65536 0 - Live 0x0000000000000000\nfailover 16384 1 net_failover, Live 0x0\n")
    assert mods[0]["name"] == "virtio_net" and mods[1]["used_by"] == ["net_failover"]


def test_guest_prompt_regex_counts_prompt_led_lines():
    src = (FIX / "server" / "guest" / "lab" / "labcommon.py").read_text()
    ns: dict = {"re": re}
    exec(next(ln for ln in src.splitlines() if ln.startswith("PROMPT = ")), ns)
    prompt = ns["PROMPT"]
    assert prompt.match("root@app01:~#") and prompt.match("alice@app01:/opt/inventory$ ls -la")
    assert not prompt.match('{"items": 1}alice@app01:~$') and not prompt.match("total 12")


def test_lab_key_depends_on_variant():
    b = _mod("build")
    assert b.lab_key("0" * 16, "baseline") != b.lab_key("0" * 16, "intrusion")
    assert b.lab_key("0" * 16, "baseline") == b.lab_key("0" * 16, "baseline")
    assert sys.modules["snapscope_fixtures_lab"]  # the busybox lab's modules are reused, not copied
