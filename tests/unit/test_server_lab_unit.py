"""The server-lab builder's pure parts (fixtures/server/), without building a guest: the scenario's
wiring, the report wire format, the observations' parsers, the technique catalogue and its two
implementations, the ground-truth builders' refusals, the host peers (HTTP, TLS, stratum) and the
compiled payloads run on this host."""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib
import importlib.util
import re
import subprocess
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
    assert sc.kernel_cmdline("intrusion").endswith("snapscope.intrusion=a")
    assert sc.kernel_cmdline("intrusion-b").endswith("snapscope.variant=intrusion-b snapscope.intrusion=b")
    assert "snapscope.intrusion" not in sc.kernel_cmdline("baseline")
    scale = sc.kernel_cmdline("scale")
    assert "systemd.setenv=INVENTORY_CACHE_MB=3200" in scale and "snapscope.tmpfs_mb=3200" in scale
    assert sc.kernel_cmdline("baseline").startswith("root=/dev/vda rw console=ttyS0")


def test_peers_only_guestfwd_and_restricted(sc):
    peers = _mod("peers")
    base, intr, intr_b = (peers.peer_specs(v, Path("/tls")) for v in ("baseline", "intrusion", "intrusion-b"))
    assert [p["name"] for p in base] == ["collector", "catalog"]
    assert {p["name"] for p in intr} == {"collector", "catalog", "revshell", "stager", "beacon", "pool", "exfil"}
    assert {p["name"] for p in intr_b} == {p["name"] for p in intr}
    shell = next(p for p in intr if p["kind"] == "shell")
    assert shell["script"][-1] == " history -w /run/gt/hist.T2-revshell.$$"
    tls = next(p for p in base if p["kind"] == "tls")
    assert (tls["cert"], tls["key"]) == ("/tls/cert.pem", "/tls/key.pem") and tls["sni"] == sc.CATALOG["host"]
    for specs in (intr, intr_b):
        net = peers.netdev_arg(specs)
        assert net.startswith("user,id=n0,restrict=on,")
        assert net.count("guestfwd=") == len(specs) and "hostfwd" not in net
        assert all(re.fullmatch(r"10\.0\.2\.\d+", p["ip"]) for p in specs)
        assert len({(p["ip"], p["port"]) for p in specs}) == len(specs)  # one peer per address
    # the two implementations talk to different addresses and ports (the fixed peers aside)
    fixed = {(p["ip"], p["port"]) for p in base}
    assert not ({(p["ip"], p["port"]) for p in intr} - fixed) & {(p["ip"], p["port"]) for p in intr_b}


def test_every_technique_has_script_builder_and_peer_payload(sc):
    tech, intr = _mod("techniques"), _mod("intrusions")
    assert set(tech.BUILDERS) == {t["id"] for t in intr.TECHNIQUES}
    assert len({t["id"] for t in intr.TECHNIQUES}) == len(intr.TECHNIQUES) >= 15
    for t in intr.TECHNIQUES:
        assert (FIX / "server" / "guest" / "hook" / "techniques" / t["script"]).is_file()
        assert re.fullmatch(r"T\d{4}(\.\d{3})?", t["attack_id"]) and t["attack_id"] in t["attack_ids"]
        assert t["kind"] in {"process", "file", "flow", "module", "account", "history", "unit"}
        for impl, params in t["params"].items():
            if t.get("peer", {}).get("kind") == "http" and "payload" in params:
                assert (FIX / "server" / "payloads" / params["payload"]).is_file()
            if "peer" in t:
                assert {"peer_ip", "peer_port"} <= set(params), (t["id"], impl)


def test_second_implementation_shares_no_name_path_port_or_address():
    """Rules must key on behaviour: what the two implementations have in common is only the behaviour
    itself (the history builtins that clear or write the history)."""
    intr = _mod("intrusions")
    behaviour = {"history -c", "history -a"}

    def leaves(v):
        if isinstance(v, dict):
            return {x for w in v.values() for x in leaves(w)}
        if isinstance(v, list):
            return {x for w in v for x in leaves(w)}
        return {v}

    both = [t for t in intr.TECHNIQUES if set(t["params"]) == {"a", "b"}]
    assert len(both) >= 5
    for t in both:
        a, b = leaves(t["params"]["a"]), leaves(t["params"]["b"])
        assert not (a & b) - behaviour, (t["id"], (a & b) - behaviour)
    assert [t["id"] for t in intr.planted("a")] == [t["id"] for t in intr.planted("b")]
    assert intr.planted(None) == []
    with pytest.raises(ValueError):
        intr.planted("c")


def test_scripts_plant_techniques_in_order_with_disjoint_params():
    intr = _mod("intrusions")
    for impl in intr.IMPLEMENTATIONS:
        plan = intr.scripts(impl)
        # techniques that share a script are neighbours in the catalogue: the plan keeps the catalogue's order
        assert [i for s in plan for i in s["ids"]] == [t["id"] for t in intr.planted(impl)]
        by_id = {t["id"]: t for t in intr.planted(impl)}
        for s in plan:
            keys = [k for i in s["ids"] for k in by_id[i]["params"]]
            assert len(keys) == len(set(keys)), (s["script"], keys)
            assert s["params"] == {k: v for i in s["ids"] for k, v in by_id[i]["params"].items()}
        # the profile script goes last: no shell starts after it; the preload before the long-lived pieces
        ids = [i for s in plan for i in s["ids"]]
        assert ids[-1] == "T20-profile-script"
        assert ids.index("T11-ld-so-preload") < min(
            ids.index(x) for x in ("T7-bindshell", "T8-webshell-child", "T29-dns-tunnel")
        )


def test_readme_techniques_table_is_current():
    """fixtures/server/README.md carries intrusions.markdown_table() between its markers, and the table has
    a row for every technique with both implementations."""
    text = (FIX / "server" / "README.md").read_text()
    table = text.split("<!-- techniques-table -->\n", 1)[1].split("<!-- /techniques-table -->", 1)[0]
    intr = _mod("intrusions")
    assert table == intr.markdown_table()
    assert len(table.splitlines()) == 2 + len(intr.TECHNIQUES) >= 2 + 15


def test_hook_lib_backgrounds_the_program_itself_with_a_clean_environment():
    """lib.sh: a program started with "${CLEAN[@]}" ... & is $! itself (the waits watch that pid), and its
    environment holds nothing of the hook's (P_* params are evidence-free)."""
    lib = FIX / "server" / "guest" / "hook" / "lib.sh"
    script = (
        f'. "{lib}"; export P_SECRET=leak; "${{CLEAN[@]}}" setsid sleep 30 </dev/null >/dev/null 2>&1 & '
        'p=$!; for i in $(seq 200); do [ "$(cat /proc/$p/comm)" = sleep ] && break; sleep 0.05; done; '
        'cat /proc/$p/comm; tr "\\0" "\\n" < /proc/$p/environ | sort | tr "\\n" " "; kill $p'
    )
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, check=True).stdout
    comm, env = out.splitlines()
    assert comm == "sleep"
    assert env.split() == sorted(
        [
            "HOME=/root",
            "LANG=C.UTF-8",
            "LOGNAME=root",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "SHELL=/bin/bash",
            "USER=root",
        ]
    )


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
