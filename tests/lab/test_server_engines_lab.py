"""Every engine on the real Debian server guest, against the guest's own ground truth.

The baseline server lab (fixtures/server/README.md: Debian 12, systemd, sshd, nginx, a service of
its own, three interactive bash sessions, 2 GiB) is analysed once per session by `server_case`
(ELF + disk overlay + pcap; the overlay's savevm state is a second snapshot). Each test compares
one table with what the guest itself reported just before the pause (ground_truth.json, run
"qemu"). What may move between the report and the pause (README, "What moves"): short-lived
processes of the client timer and the cron health check, and kernel workers; everything
long-lived (services, sessions, sockets, histories) must match exactly.

Opt-in: see SERVER_LAB_ENV in tests/conftest.py (skipped, with the reason, when the lab is not
built and SNAPSCOPE_SERVER_LAB is unset).
"""

from __future__ import annotations

import pandas as pd
import pytest

from toolkit.case.store import Case

pytestmark = [pytest.mark.lab, pytest.mark.server, pytest.mark.timeout(3600)]

# Started between the guest's report and the pause, or gone in between (README "What moves"):
# the client timer's curl (every 5 s) and its shell, the cron health check's cron/sh/curl.
TRANSIENT = {"curl", "sh", "cron", "client.sh", "flock", "sleep"}
# The guest reports a process's effective ids (the owner of /proc/PID); Volatility's pslist its real ids
# (task->cred->uid). They differ only for a daemon that lowers its effective ids while it runs as root:
# atd sets them to daemon:daemon between jobs.
LOWERS_EFFECTIVE_IDS = {"/usr/sbin/atd"}


def _is_worker(comm: str) -> bool:
    return comm.startswith("kworker/")


@pytest.fixture(scope="module")
def case(server_case):
    return Case.open(server_case[0])


@pytest.fixture(scope="module")
def elf(case) -> str:
    """The snapshot id of the ELF dump's snapshot (the other one is the overlay's savevm state)."""
    (sid,) = [
        s for s, snap in case.snapshots.items() if (snap.get("memory") or {}).get("path", "").endswith("memory.elf")
    ]
    return sid


@pytest.fixture(scope="module")
def run(server_truth) -> dict:
    return server_truth["runs"]["qemu"]


def test_every_process_the_guest_listed(case, elf, run):
    procs = case.table("memory/processes", elf)
    found = {int(r.pid): r for r in procs.itertuples() if r.in_list}
    for p in run["processes"]:
        if p["kernel_thread"] and _is_worker(p["comm"]):
            continue  # kernel workers come and go
        assert p["pid"] in found, f"pid {p['pid']} ({p['comm']}) listed by the guest, not in memory/processes"
        row = found[p["pid"]]
        assert (int(row.ppid), row.process) == (p["ppid"], p["comm"][:15]), p
        if not p["kernel_thread"]:
            real_root = p["exe"] in LOWERS_EFFECTIVE_IDS and (int(row.uid), int(row.gid)) == (0, 0)
            assert real_root or (int(row.uid), int(row.gid)) == (p["uid"], p["gid"]), p
            if p["pid"] not in run["lab_scaffolding"]["pids"]:  # the reporter's worker ends after reporting
                assert int(row.threads) == len(p["threads"]), p
    # nothing in memory the guest did not list but what may start in the last second
    listed = {p["pid"] for p in run["processes"]}
    extra = procs[procs.in_list & ~procs.pid.isin(listed)]
    unexplained = extra[~extra.process.isin(TRANSIENT) & ~extra.process.str.startswith("kworker/")]
    assert unexplained.empty, unexplained[["pid", "ppid", "process"]].to_string()


def test_every_thread_the_guest_listed(case, elf, run):
    threads = case.table("memory/threads", elf)
    seen = {(int(r.pid), int(r.tid)) for r in threads.itertuples() if r.in_list}
    scaffolding = set(run["lab_scaffolding"]["pids"])  # the reporter's worker thread ends after reporting
    expected = {
        (p["pid"], t["tid"])
        for p in run["processes"]
        if not p["kernel_thread"] and p["pid"] not in scaffolding
        for t in p["threads"]
    }
    assert expected - seen == set()
    # the multi-threaded services are there with all their threads: rsyslogd (4), the app (2)
    rsyslogd = run["expected_processes"]["rsyslogd"][0]  # pids as this build's guest reported them
    for pid in (rsyslogd, run["app_pid"]):
        (proc,) = [p for p in run["processes"] if p["pid"] == pid]
        assert {t for p, t in seen if p == pid} == {t["tid"] for t in proc["threads"]}


def _listening_sshd(run) -> int:
    """The sshd that systemd started (parent 1); the others are per-session children."""
    (pid,) = [p["pid"] for p in run["processes"] if p["comm"] == "sshd" and p["ppid"] == 1]
    return pid


def test_every_socket_with_its_owner(case, elf, run):
    sockets = case.table("memory/sockets", elf)
    owners: dict[int, set[int]] = {}
    for r in sockets.itertuples():
        if pd.notna(r.inode) and pd.notna(r.pid):
            owners.setdefault(int(r.inode), set()).add(int(r.pid))
    checked = 0
    for s in run["tcp"] + run["tcp6"] + run["udp"] + run["udp6"]:
        if not s["inode"]:  # TIME_WAIT / FIN_WAIT2: no socket file, no owner (and none in memory)
            continue
        pids = s["pid"] if isinstance(s["pid"], list) else [s["pid"]]
        assert s["inode"] in owners, f"socket {s} not in memory/sockets"
        assert set(pids) <= owners[s["inode"]], (s, owners[s["inode"]])
        checked += 1
    assert checked >= 4  # sshd :22 (v4, v6), nginx :80, the app :8081, ssh sessions
    listening = sockets[(sockets.state == "LISTEN") & sockets.proto.fillna("").str.lower().str.startswith("tcp")]
    by_port = {int(r.src_port): set() for r in listening.itertuples()}
    for r in listening.itertuples():
        by_port[int(r.src_port)].add(int(r.pid))
    assert run["app_pid"] in by_port[8081]
    assert set(run["expected_processes"]["nginx"]) <= by_port[80]
    assert _listening_sshd(run) in by_port[22]


def test_modules(case, elf, run):
    modules = case.table("memory/modules", elf)
    assert set(modules[modules.in_list].name) == {m["name"] for m in run["modules"]}
    assert not modules.hidden.fillna(False).any(), modules[modules.hidden.fillna(False)]


def test_bash_history_from_each_live_bash(case, elf, run):
    history = case.table("memory/shell_history", elf)
    for user, h in run["histories"].items():
        commands = list(history[history.pid == h["pid"]].command)
        assert set(h["lines"]) <= set(commands), (user, h["lines"], commands)
        # the lines that never reached ~/.bash_history are recovered from memory
        assert h["only_in_memory"] and set(h["only_in_memory"]) <= set(commands), user


def test_maps_and_executables_of_the_services(case, elf, run):
    maps = case.table("memory/maps", elf)
    exes = case.table("memory/executables", elf)
    services = {
        "nginx": (run["expected_processes"]["nginx"], "/usr/sbin/nginx"),
        "app": ([run["app_pid"]], "/usr/bin/python3.11"),
        "sshd": ([_listening_sshd(run)], "/usr/sbin/sshd"),
    }
    for name, (pids, path) in services.items():
        for pid in pids:
            assert path in set(maps[maps.pid == pid].path), (name, pid)
            assert path in set(exes[exes.pid == pid].path), (name, pid)
            row = exes[(exes.pid == pid) & (exes.path == path)].iloc[0]
            assert row.e_machine and len(row.first_page_sha256) == 64, row


def test_os_and_users(case, elf, run):
    system = case.table("disk/system", elf).iloc[0]
    assert system.hostname == run["hostname"]
    assert "Debian GNU/Linux 12" in f"{system.os} {system.os_version}"
    users = case.table("disk/users", elf)
    got = {(r.user, int(r.uid), r.home, r.shell) for r in users.itertuples()}
    assert got == {(u["name"], u["uid"], u["home"], u["shell"]) for u in run["users"]}


# States systemctl derives from more than the unit files at rest: "enabled-runtime" is a symlink
# under /run (gone with the RAM), "indirect" a template enabled only through an instance's alias.
NOT_AT_REST = {"enabled-runtime", "indirect"}


def test_systemd_units_state_and_execstart(case, elf, run, server_truth):
    persistence = case.table("disk/persistence", elf)
    units = persistence[persistence.kind.isin(["systemd", "timer"])]
    by_name = {}
    for r in units.sort_values("path", key=lambda p: p.str.startswith("/etc/")).itertuples():
        by_name[r.path.rsplit("/", 1)[-1]] = r  # the unit file in /etc wins over /lib, as for systemd
    compared = [u for u in run["unit_files"] if u["unit"] in by_name and u["state"] not in NOT_AT_REST]
    assert len(compared) >= 100
    wrong = [(u["unit"], u["state"], by_name[u["unit"]].unit_state) for u in compared]
    assert [w for w in wrong if w[1] != w[2]] == []
    for unit in ("ssh.service", "nginx.service", "cron.service", server_truth["app"]["unit"]):
        assert by_name[unit].unit_state == "enabled", unit
    # ExecStart resolved to the file it runs, and that file hashed
    app = by_name[server_truth["app"]["unit"]]
    assert server_truth["app"]["path"] in app.command
    # an interpreter's unit runs its script: the script is the program (the interpreter is shared by all)
    assert app.program_path == server_truth["app"]["path"] and len(app.program_sha256) == 64, app
    assert by_name["nginx.service"].program_path == "/usr/sbin/nginx"


def test_cron(case, elf, server_truth):
    persistence = case.table("disk/persistence", elf)
    cron = persistence[persistence.path == server_truth["app"]["health_cron"]]
    assert len(cron) >= 1 and cron.schedule.notna().all(), persistence[["kind", "path"]].to_string()


def test_installed_packages(case, elf, server_truth):
    packages = case.table("disk/packages", elf)
    installed = packages[packages.status.fillna("").str.contains(r"(?:^|\s)installed$")]
    versions = {r.name: r.version for r in installed.itertuples()}
    expected = dict(server_truth["rootfs"]["package_versions"])
    expected.update({"tree": "2.1.0-1", "inventory-tools": "1.1"})  # installed, and upgraded, in the guest
    assert set(versions) == set(expected)
    # the version as dpkg wrote it; an epoch ("1:") dropped by the parser is tolerated, nothing else
    wrong = {n: (v, expected[n]) for n, v in versions.items() if v not in (expected[n], expected[n].split(":", 1)[-1])}
    assert wrong == {}


def test_dpkg_log_and_sshd_logins(case, elf, run):
    logs = case.table("disk/logs", elf)
    messages = "\n".join(logs.message.fillna(""))
    for line in run["sshd_accepted"]:
        accepted = line.split(": ", 1)[1]  # "Accepted publickey for alice from 127.0.0.1 port 35760 ssh2: ..."
        assert accepted.split(" ssh2")[0] in messages, line
    assert "upgrade inventory-tools:all 1.0 1.1" in messages


def test_shell_history_files_of_every_user(case, elf, run):
    history = case.table("disk/shell_history", elf)
    for path, lines in run["history_files"].items():
        got = list(history[history.path == path].sort_values("order").command)
        assert got == lines, path


def test_http_to_the_collector(case, elf, server_truth):
    http = case.table("network/http", elf)
    posts = http[(http.dst_ip == "10.0.2.101") & (http.method == "POST")]
    collector = server_truth["runs"]["qemu"]["peers"]["collector"]
    assert len(posts) == len(collector["requests"]) > 0
    assert set(posts.url_path) == {r["path"] for r in collector["requests"]}
    assert set(posts.user_agent) == {r["user_agent"] for r in collector["requests"]}


def test_tls_to_the_catalogue_with_its_server_name(case, elf, server_truth):
    """The sync client's HTTPS sessions: one TLS row per ClientHello to the catalogue, with the server
    name the guest's client asked for, and the flows of those sessions in network/flows."""
    tls = server_truth["tls_peer"]
    sessions = tls["by_run"]["qemu"]["sessions"]
    rows = case.table("network/tls", elf)
    to_peer = rows[(rows.dst_ip == tls["ip"]) & (rows.dst_port == tls["port"])]
    closed = [s for s in sessions if s["closed"] == "close_notify"]
    assert set(to_peer.sni) == {tls["sni"]} and len(to_peer) >= len(closed) >= 2
    flows = case.table("network/flows", elf)
    ports = set(flows[(flows.dst_ip == tls["ip"]) & (flows.dst_port == tls["port"])].src_port)
    assert set(to_peer.src_port) <= ports


def test_no_medium_or_higher_finding_on_the_clean_guest(case, server_truth):
    """The false-positive budget on a clean server: nothing of medium or more, except findings about
    the lab's own machinery, which the guest itself lists as scaffolding (its hook scripts, reporter)."""
    lab = server_truth["runs"]["qemu"]["lab_scaffolding"]
    marks = [*lab["paths"], *lab["units"]]
    lab_pids = {f"process:{pid}" for pid in lab["pids"]}
    findings = case.findings
    serious = findings[findings.severity.isin(["medium", "high", "critical"])]
    about_the_lab = [
        row.entity in lab_pids or any(mark in f"{row.entity} {row.explanation}" for mark in marks)
        for row in serious.itertuples()
    ]
    unplanted = serious[[not lab_only for lab_only in about_the_lab]]
    assert unplanted.empty, unplanted[["rule_id", "severity", "entity", "title"]].to_string()


def test_every_rule_ran_without_error(case, elf):
    d = case.table("diagnostics", elf)
    errors = d[(d["source"] == "correlate") & (d["severity"] == "error")]
    assert errors.empty, errors[["what", "why"]].to_dict("records")


def test_evidence_unchanged(case):
    assert case.manifest["runs"][-1]["evidence_unchanged"] is True
