"""For every rule of the detection catalogue, a positive and a negative case: small hand-made tables
in the engines' own shapes, the entity the positive must be about and its severity.

A negative holds what a clean server has in the same place (a python service with a unit and a
journald stdout, an interactive bash, a health-check cron, a distribution sudoers file, packaged
setuid binaries...), so a rule that keys on names or on shared interpreters fails it.

Example::

    case = CASES["proc.shell_on_socket"]
    tables, entity, severity = case["positive"](), case["entity"], case["severity"]
"""

from __future__ import annotations

import pandas as pd

BOOT = pd.Timestamp("2026-01-01T00:00:00Z")
BEFORE_BOOT = pd.Timestamp("2025-12-01T00:00:00Z")
AFTER_BOOT = pd.Timestamp("2026-01-01T00:10:00Z")
OLD = pd.Timestamp("2023-01-03T20:49:45Z")  # a build's time, years before this install
RELEASE = "6.1.0-57-amd64"


def proc(pid, name, exe, *, ppid=1, uid=0, **more) -> dict:
    return {
        "pid": pid,
        "ppid": ppid,
        "process": name,
        "exe_path": exe,
        "uid": uid,
        "is_kernel_thread": False,
        "exe_deleted": False,
        "in_list": True,
        "in_scan": True,
        "start_ts": BOOT + pd.Timedelta(seconds=pid),
        **more,
    }


def frame(*rows) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def init() -> dict:
    return proc(1, "systemd", "/usr/lib/systemd/systemd", ppid=0, start_ts=BOOT)


def sock(pid, name, fd, src, sport, dst, dport, state, *, family="AF_INET", proto="tcp", inode=None) -> dict:
    return {
        "pid": pid,
        "process": name,
        "fd": fd,
        "family": family,
        "proto": proto,
        "src_ip": src,
        "src_port": sport,
        "dst_ip": dst,
        "dst_port": dport,
        "state": state,
        "inode": inode,
    }


def benign_server() -> dict[str, pd.DataFrame]:
    """What a clean Debian server shows: a python service behind its unit, with its stdout on a unix
    socket to journald, an interactive bash over ssh, nginx, a health-check cron, packaged setuid
    files, a standing sudo grant and authorised keys from before boot."""
    t = {}
    t["memory/processes"] = frame(
        init(),
        proc(300, "sshd", "/usr/sbin/sshd"),
        proc(400, "nginx", "/usr/sbin/nginx"),
        proc(401, "nginx", "/usr/sbin/nginx", ppid=400, uid=33),
        proc(500, "python3", "/usr/bin/python3.11", uid=999),
        proc(600, "sshd", "/usr/sbin/sshd", ppid=300),
        proc(601, "bash", "/usr/bin/bash", ppid=600, uid=1001),
        proc(602, "sh", "/usr/bin/dash", ppid=600, uid=1002),
        proc(700, "cron", "/usr/sbin/cron"),
    )
    t["memory/cmdlines"] = frame(
        {"pid": 500, "args": "/usr/bin/python3 /opt/inventory/app.py"},
        {"pid": 601, "args": "-bash"},
        {"pid": 602, "args": "sh -c uptime"},
        {"pid": 400, "args": "nginx: master process /usr/sbin/nginx"},
    )
    t["memory/sockets"] = frame(
        sock(300, "sshd", 3, "0.0.0.0", 22, "0.0.0.0", 0, "LISTEN"),
        sock(400, "nginx", 6, "0.0.0.0", 80, "0.0.0.0", 0, "LISTEN"),
        sock(401, "nginx", 6, "0.0.0.0", 80, "0.0.0.0", 0, "LISTEN"),  # workers share the master's listener
        sock(500, "python3", 3, "0.0.0.0", 8081, "0.0.0.0", 0, "LISTEN"),
        # journald stdout: a unix socket, no addresses and no ports (the engine puts inodes elsewhere)
        {"pid": 500, "process": "python3", "fd": 1, "family": "AF_UNIX", "proto": None, "state": "ESTABLISHED"},
        {"pid": 500, "process": "python3", "fd": 2, "family": "AF_UNIX", "proto": None, "state": "ESTABLISHED"},
        sock(500, "python3", 7, "10.0.2.15", 40100, "10.0.2.101", 9000, "ESTABLISHED"),
        sock(600, "sshd", 4, "10.0.2.15", 22, "10.0.2.2", 50000, "ESTABLISHED"),
        sock(401, "nginx", 9, "127.0.0.1", 45000, "127.0.0.1", 8081, "ESTABLISHED"),
    )
    t["memory/open_files"] = frame(
        {"pid": 601, "fd": 0, "path": "/dev/pts/0"}, {"pid": 602, "fd": 0, "path": "pipe:[1234]"}
    )
    t["memory/shell_history"] = frame(
        {"pid": 601, "process": "bash", "command": "sudo -n journalctl -u inventory-api --no-pager -n 5"},
        {"pid": 601, "process": "bash", "command": "history -a"},
        {"pid": 601, "process": "bash", "command": "curl -s http://127.0.0.1/api/items | head -c 200; echo"},
        {"pid": 601, "process": "bash", "command": "ls -la /var/log/inventory"},
        {"pid": 601, "process": "bash", "command": "systemctl status nginx"},
    )
    t["disk/users"] = frame(
        {"user": "root", "uid": 0, "shell": "/bin/bash", "home": "/root"},
        {"user": "www-data", "uid": 33, "shell": "/usr/sbin/nologin", "home": "/var/www"},
        {"user": "inventory", "uid": 999, "shell": "/usr/sbin/nologin", "home": "/var/lib/inventory"},
        {"user": "alice", "uid": 1001, "shell": "/bin/bash", "home": "/home/alice"},
    )
    t["disk/files"] = frame(
        {"path": "/opt/inventory", "type": "dir", "uid": 0, "mode": 0o755},
        {"path": "/opt/inventory/app.py", "type": "file", "uid": 0, "mode": 0o755, "mtime": BEFORE_BOOT},
        {"path": "/usr/bin/passwd", "type": "file", "uid": 0, "mode": 0o4755, "md5": "a" * 32},
        {"path": "/usr/bin/ls", "type": "file", "uid": 0, "mode": 0o755, "md5": "b" * 32},
        {
            "path": "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "type": "file",
            "mode": 0o755,
            "md5": "c" * 32,
            "mtime": pd.Timestamp("2024-05-01T00:00:00Z"),
            "btime": BEFORE_BOOT,
        },
        {"path": f"/usr/lib/modules/{RELEASE}/kernel/fs/ext4/ext4.ko", "type": "file", "mode": 0o644},
        {"path": "/var/log/auth.log", "type": "file", "size": 4096, "ctime": AFTER_BOOT, "btime": BEFORE_BOOT},
        {"path": "/etc/sudoers.d/alice", "type": "file", "mode": 0o440, "btime": BEFORE_BOOT, "ctime": BEFORE_BOOT},
        {"path": "/home/alice/.ssh/authorized_keys", "type": "file", "mode": 0o600, "btime": BEFORE_BOOT},
        # installers copy data files keeping their times: a skeleton dotfile, a conffile, and dpkg's own
        # metadata for a package installed while the system was up
        {"path": "/home/alice/.profile", "type": "file", "mode": 0o644, "mtime": OLD, "btime": BEFORE_BOOT},
        {"path": "/etc/inputrc", "type": "file", "mode": 0o644, "mtime": OLD, "btime": BEFORE_BOOT},
        {"path": "/var/lib/dpkg/info/tree.md5sums", "type": "file", "mode": 0o644, "mtime": OLD, "btime": AFTER_BOOT},
        # merged /usr: /sbin is a link (mode 0777 is the link's, no permission) to a root-only directory
        {"path": "/sbin", "type": "symlink", "uid": 0, "mode": 0o777, "link_target": "usr/sbin"},
        {"path": "/usr/sbin", "type": "dir", "uid": 0, "mode": 0o755},
        {"path": "/lib", "type": "symlink", "uid": 0, "mode": 0o777, "link_target": "usr/lib"},
    )
    t["disk/package_files"] = frame(
        {"package": "passwd", "path": "/usr/bin/passwd", "md5": "a" * 32, "installed_ts": BEFORE_BOOT},
        {"package": "coreutils", "path": "/usr/bin/ls", "md5": "b" * 32, "installed_ts": BEFORE_BOOT},
        {"package": "libc6", "path": "/usr/lib/x86_64-linux-gnu", "installed_ts": BEFORE_BOOT},
        {"package": "libc6", "path": "/usr/lib/x86_64-linux-gnu/libc.so.6", "md5": "c" * 32},
        {"package": "sudo", "path": "/etc/sudoers"},
        {"package": "rsyslog", "path": "/etc/rsyslog.conf"},
        {"package": "systemd", "path": "/usr/lib/systemd/system/debug-shell.service"},
        {"package": "openssh-server", "path": "/etc/init.d/ssh"},
        {"package": "base-files", "path": "/etc", "installed_ts": BEFORE_BOOT},
        {"package": "dpkg", "path": "/var/lib/dpkg/info", "installed_ts": BEFORE_BOOT},
        {"package": "systemd", "path": "/usr/lib/systemd/system/quotaon.service"},
    )
    t["disk/persistence"] = frame(
        {
            "kind": "systemd",
            "path": "/etc/systemd/system/inventory-api.service",
            "user": "inventory",
            "command": "/usr/bin/python3 /opt/inventory/app.py",
            "program": "/opt/inventory/app.py",
            "program_path": "/opt/inventory/app.py",
            "ts": BEFORE_BOOT,
        },
        {
            "kind": "systemd",
            "path": "/usr/lib/systemd/system/debug-shell.service",
            "command": "/bin/bash",
            "program": "/bin/bash",
            "program_path": "/usr/bin/bash",
        },
        # systemd names its units by /lib (a link), dpkg by /usr/lib; the unit's tool is not installed
        {
            "kind": "systemd",
            "path": "/lib/systemd/system/quotaon.service",
            "command": "/sbin/quotaon -aug",
            "program": "/sbin/quotaon",
            "unit_state": "static",
        },
        {
            "kind": "cron",
            "path": "/etc/cron.d/inventory-health",
            "user": "root",
            "schedule": "* * * * *",
            "command": "curl -fsS http://127.0.0.1:8081/health >> /var/log/inventory/health.log 2>&1",
            "program": "curl",
            "program_path": "/usr/bin/curl",
        },
        {
            "kind": "initd",
            "path": "/etc/init.d/ssh",
            "program": "/etc/init.d/ssh",
            "program_path": "/etc/init.d/ssh",
            "command": "PIDFILE=/var/run/sshd.pid\nstart-stop-daemon --start --pidfile /var/run/sshd.pid\n",
        },
        {
            "kind": "shell_rc",
            "path": "/home/alice/.bashrc",
            "program": "/home/alice/.bashrc",
            "program_path": "/home/alice/.bashrc",
            "command": '[ -x /usr/bin/lesspipe ] && eval "$(SHELL=/bin/sh lesspipe)"\nalias ls="ls --color=auto"\n',
        },
        # rsyslog's stock rules (a conffile: dpkg lists it without an md5)
        {"kind": "log_config", "path": "/etc/rsyslog.conf", "command": "auth,authpriv.*\t/var/log/auth.log"},
        {"kind": "log_config", "path": "/etc/rsyslog.conf", "command": "*.*;auth,authpriv.none\t-/var/log/syslog"},
        {"kind": "sudoers", "path": "/etc/sudoers", "command": "%sudo\tALL=(ALL:ALL) ALL", "user": "%sudo"},
        {"kind": "sudoers", "path": "/etc/sudoers", "command": "root ALL=(ALL:ALL) ALL", "user": "root"},
        {"kind": "sudoers", "path": "/etc/sudoers.d/alice", "command": "alice ALL=(ALL) NOPASSWD: ALL"},
        {
            "kind": "authorized_keys",
            "path": "/home/alice/.ssh/authorized_keys",
            "user": "alice",
            "ts": BEFORE_BOOT,
            "detail": "ssh-ed25519 root@app01",
        },
        {
            "kind": "timer",
            "path": "/etc/systemd/system/inventory-client.timer",
            "schedule": "OnUnitActiveSec=5s, OnBootSec=5s",
            "command": "/usr/local/bin/inventory-client",
            "program": "/usr/local/bin/inventory-client",
            "program_path": "/usr/local/bin/inventory-client",
            "ts": BEFORE_BOOT,
        },  # (appended last: the catalogue's cases name earlier rows by number)
        # a stock unit for a tool that is not installed, its program named through the /sbin link
        {
            "kind": "systemd",
            "path": "/usr/lib/systemd/system/quotaon.service",
            "command": "/sbin/quotaon -aug",
            "program": "/sbin/quotaon",
            "detail": "quotaon.service",
        },
        {
            "kind": "cron",
            "path": "/etc/crontab",
            "user": "root",
            "schedule": "17 * * * *",
            "command": "cd / && run-parts --report /etc/cron.hourly",
            "program": "run-parts",
            "program_path": "/usr/bin/run-parts",
        },
    )
    t["memory/modules"] = frame({"name": "ext4", "in_list": True, "in_sysfs": True, "hidden": False})
    t["memory/info"] = frame({"banner": f"Linux version {RELEASE} (debian-kernel@lists.debian.org) #1 SMP"})
    t["memory/maps"] = frame(
        {"pid": 500, "process": "python3", "path": "/usr/lib/x86_64-linux-gnu/libc.so.6", "flags": "r-x"},
        {"pid": 500, "process": "python3", "path": "/dev/shm/inventory-cache.bin", "flags": "rw-"},
    )
    t["memory/envars"] = frame(
        {"pid": 601, "process": "bash", "key": "PATH", "value": "/usr/bin:/bin"},
        {"pid": 601, "process": "bash", "key": "LD_LIBRARY_PATH", "value": "/opt/lib"},
    )
    t["disk/system"] = frame({"hostname": "app01", "dns": "10.0.2.3", "ips": "10.0.2.15"})
    t["disk/logs"] = frame(*_clean_logs())
    heartbeat = [
        {
            "flow_id": f"h{k}",
            "proto": "tcp",
            "src_ip": "10.0.2.15",
            "src_port": 40000 + k,
            "dst_ip": "10.0.2.101",
            "dst_port": 9000,
            "first_ts": BOOT + pd.Timedelta(seconds=60 + 5 * k),
            "src_payload_bytes": 180,
            "beacon_intervals": 0,
        }
        for k in range(8)
    ]
    t["network/flows"] = frame(*heartbeat)
    t["network/dns"] = frame(
        {"qr": "query", "qname": "deb.debian.org", "src_ip": "10.0.2.15", "dst_ip": "10.0.2.3", "flow_id": "d1"}
    )
    return t


def log_record(seconds: float, service: str, path: str, message: str = "") -> dict:
    """One ``disk/logs`` row ``seconds`` after boot."""
    log = "journal" if "/journal/" in path else "text"
    return {
        "ts": BOOT + pd.Timedelta(seconds=seconds),
        "log": log,
        "service": service,
        "message": message,
        "path": path,
    }


JOURNAL = "/var/log/journal/x/system.journal"


def _clean_logs() -> list[dict]:
    """A clean server's logs, with what makes them differ without anyone touching them: the journal
    starts at boot and rsyslog 8 s later, syslog was rotated (syslog.1 holds the start), a per-user
    journal holds only that user's services from their login, and rsyslog dropped a 20 s burst
    (rate limiting) the journal kept."""
    rows = [log_record(30 + k, "sshd", JOURNAL, "Accepted publickey for alice from 127.0.0.1") for k in range(3)]
    rows += [log_record(30 + k, "sshd", "/var/log/auth.log", "Accepted publickey for alice") for k in range(3)]
    rows += [log_record(1 + k * 0.5, "kernel", JOURNAL, "early boot") for k in range(14)]
    rows += [log_record(1 + k * 0.5, "systemd", JOURNAL, "starting") for k in range(14)]
    for t in range(9, 400, 4):
        rows.append(log_record(t, "systemd", JOURNAL, "tick"))
        if not 150 < t < 171:
            rows.append(log_record(t, "systemd", "/var/log/syslog" if t > 200 else "/var/log/syslog.1", "tick"))
    rows += [log_record(150 + k, "systemd", JOURNAL, "burst") for k in range(20)]
    rows += [log_record(300 + k, "systemd", "/var/log/journal/x/user-1001.journal", "user unit") for k in range(3)]
    return rows


def with_rows(tables: dict, **more) -> dict:
    """``tables`` plus rows appended per table: ``with_rows(t, memory_processes=[...])``."""
    out = dict(tables)
    for key, rows in more.items():
        name = key.replace("_", "/", 1)
        extra = pd.DataFrame(rows)
        out[name] = pd.concat([out[name], extra], ignore_index=True) if name in out else extra
    return out
