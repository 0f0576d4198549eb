"""What the real Debian server labs (a clean guest and two independently named intrusions) showed
rules misreading, each as a small case: a text log read against the journal (rotations, a daemon's
late start, rate limiting, per-user journals), units systemd names by /lib while dpkg lists /usr/lib,
distribution files YARA matches, a service's polling rhythm, start-up lines under ~/, history that
silences logs or sends files out, and a key appended to an old authorized_keys file."""

from __future__ import annotations

import pandas as pd

from tests.helpers.rule_cases import BOOT, JOURNAL, benign_server, log_record, with_rows
from toolkit.correlate.findings import correlate_snapshot
from toolkit.correlate.rules import RULES
from toolkit.correlate.rules.tampering import text_log_family
from toolkit.correlate.vocabulary import package_owner, top_level_links

SID = "s1"


def findings_of(rule_id, tables):
    found, problems, _ = correlate_snapshot(tables, SID, rules={rule_id: RULES[rule_id]})
    assert problems.empty, problems.to_dict("records")
    return found


def test_rotations_are_one_log_and_journals_are_never_the_suspect():
    assert text_log_family("/var/log/syslog.1") == "/var/log/syslog"
    assert text_log_family("/var/log/auth.log.2.gz") == "/var/log/auth.log"
    assert text_log_family("/var/log/syslog-20261201.xz") == "/var/log/syslog"
    assert text_log_family("/var/log/journal/abc/system.journal") is None
    assert text_log_family("/var/log/journal/abc/user-1000@0001-0002.journal~") is None


def test_a_text_log_that_stops_while_the_journal_goes_on_is_found():
    # the auth log's daemon was told to stop writing at +40 s; the journal kept sshd's logins
    tables = with_rows(
        benign_server(),
        disk_logs=[log_record(100 + 20 * k, "sshd", JOURNAL, "Accepted password for deploy") for k in range(12)],
    )
    found = findings_of("tamper.log_tampering", tables)
    assert found.entity.tolist() == ["file:/var/log/auth.log"]
    assert "after its last record" in found.explanation.iloc[0]
    assert found.severity.iloc[0] == "medium"


def test_a_minute_cut_out_of_a_text_log_is_found_and_a_burst_is_not():
    # syslog (with syslog.1) misses 90 s of systemd's records in the middle of the day: lines removed
    base = benign_server()
    logs = base["disk/logs"]
    cut = logs[
        ~(
            logs.path.eq("/var/log/syslog")
            & logs.ts.between(BOOT + pd.Timedelta(seconds=250), BOOT + pd.Timedelta(seconds=340))
        )
    ]
    found = findings_of("tamper.log_tampering", {**base, "disk/logs": cut.reset_index(drop=True)})
    assert found.entity.tolist() == ["file:/var/log/syslog"]
    assert "between two of its records" in found.explanation.iloc[0]
    # the clean server's 20 s rate-limited burst, rsyslog's start 8 s after the journal, the rotation
    # and a user's journal that starts at their login raise nothing
    assert findings_of("tamper.log_tampering", benign_server()).empty


def test_a_text_log_starting_long_after_boot_is_found():
    # everything syslog held before +330 s is gone (the rotated syslog.1 deleted with it)
    base = benign_server()
    logs = base["disk/logs"]
    early = logs.path.eq("/var/log/syslog.1") | (
        logs.path.eq("/var/log/syslog") & (logs.ts < BOOT + pd.Timedelta(seconds=330))
    )
    found = findings_of("tamper.log_tampering", {**base, "disk/logs": logs[~early].reset_index(drop=True)})
    assert found.entity.tolist() == ["file:/var/log/syslog"]
    assert "before its first record" in found.explanation.iloc[0]


def test_merged_usr_names_the_same_packaged_unit_both_ways():
    tables = benign_server()
    assert top_level_links(tables) == {"/lib": "/usr/lib", "/sbin": "/usr/sbin"}
    owned = package_owner(tables)
    assert owned["/lib/systemd/system/quotaon.service"]["package"] == "systemd"
    assert owned["/usr/lib/systemd/system/quotaon.service"]["package"] == "systemd"
    assert "/lib/x86_64-linux-gnu/libc.so.6" in owned  # listed by dpkg under /usr/lib


def test_a_link_outside_usr_or_a_flood_of_links_adds_no_owner():
    tables = with_rows(
        benign_server(),
        disk_files=[{"path": "/evil", "type": "symlink", "link_target": "/"}]
        + [{"path": f"/l{k}", "type": "symlink", "link_target": f"usr/l{k}"} for k in range(100)],
    )
    links = top_level_links(tables)
    assert "/evil" not in links and len(links) <= 16


def test_an_unpackaged_unit_whose_program_is_missing_is_still_found():
    tables = with_rows(
        benign_server(),
        disk_persistence=[
            {
                "kind": "systemd",
                "path": "/lib/systemd/system/netcfg-sync.service",
                "command": "/usr/sbin/netcfg-sync --daemon",
                "program": "/usr/sbin/netcfg-sync",
            }
        ],
    )
    found = findings_of("persist.systemd_unusual", tables)
    assert len(found) == 1 and "not on the disk" in found.explanation.iloc[0]
    assert findings_of("persist.systemd_unusual", benign_server()).empty


def test_a_log_born_this_boot_and_emptied_later_is_found_and_copytruncate_is_not():
    born, emptied = BOOT + pd.Timedelta(seconds=20), BOOT + pd.Timedelta(minutes=30)
    log = {"path": "/var/log/secure.log", "type": "file", "size": 0, "btime": born, "mtime": emptied, "ctime": emptied}
    found = findings_of("tamper.log_tampering", with_rows(benign_server(), disk_files=[log]))
    assert found.entity.tolist() == ["file:/var/log/secure.log"]
    # logrotate's copytruncate: the copy (secure.log.1) is born when the log is emptied
    copy = {"path": "/var/log/secure.log.1", "type": "file", "size": 900, "btime": emptied, "mtime": emptied}
    assert findings_of("tamper.log_tampering", with_rows(benign_server(), disk_files=[log, copy])).empty
    # a log created empty (its daemon has written nothing yet) was never emptied
    fresh = {**log, "mtime": born + pd.Timedelta(seconds=2), "ctime": born + pd.Timedelta(seconds=2)}
    assert findings_of("tamper.log_tampering", with_rows(benign_server(), disk_files=[fresh])).empty


def test_a_journald_drop_in_that_keeps_nothing_on_disk_is_found():
    row = {"kind": "log_config", "path": "/etc/systemd/journald.conf.d/zz.conf", "command": "Storage=volatile"}
    found = findings_of("tamper.logging_config", with_rows(benign_server(), disk_persistence=[row]))
    assert found.entity.tolist() == ["file:/etc/systemd/journald.conf.d/zz.conf"]
    assert found.severity.iloc[0] == "medium"  # no file time says it was written while the system was up


def test_a_yara_hit_in_a_file_its_package_installed_unchanged_is_low():
    example = "/usr/share/doc/adduser/examples/bash.bashrc"
    hit_row = {
        "target": "file",
        "rule": "History_Evasion",
        "severity": "medium",
        "path": example,
        "offset": 1241,
        "string_id": "$b",
    }

    def scanned(disk_md5):
        return with_rows(
            benign_server(),
            yara_matches=[hit_row],
            # a hashed file no package owns beside it (the walk hashes executables wherever they are)
            disk_files=[
                {"path": example, "type": "file", "md5": disk_md5},
                {"path": "/opt/tool/bin/run", "type": "file", "md5": "f" * 32},
            ],
            disk_package_files=[{"package": "adduser", "path": example, "md5": "d" * 32}],
        )

    assert findings_of("yara.match", scanned("d" * 32)).severity.tolist() == ["low"]  # as dpkg installed it
    changed = scanned("e" * 32)
    assert findings_of("yara.match", changed).severity.tolist() == ["medium"]


def test_a_one_liner_that_listens_is_a_bind_shell_whatever_its_port():
    from tests.helpers.rule_cases import proc, sock

    code = "python3 -c import os,pty,socket;s=socket.socket();s.bind(('',5511));s.listen(1)"
    tables = with_rows(
        benign_server(),
        memory_processes=[proc(913, "python3", "/usr/bin/python3.11")],
        memory_cmdlines=[{"pid": 913, "args": code}],
        memory_sockets=[sock(913, "python3", 3, "0.0.0.0", 5511, "0.0.0.0", 0, "LISTEN")],
    )
    found = findings_of("proc.unexpected_listener", tables)
    assert found.entity.tolist() == ["process:913"] and found.severity.tolist() == ["high"]
    assert "code given on its command line" in found.explanation.iloc[0]


def every_15_seconds(dst_ip: str, count: int, first_port: int) -> list[dict]:
    """A series of new TLS connections from the guest to one peer, 15 s apart, each the same size."""
    return [
        {
            "flow_id": f"{dst_ip}-{k}",
            "proto": "tcp",
            "src_ip": "10.0.2.15",
            "src_port": first_port + k,
            "dst_ip": dst_ip,
            "dst_port": 443,
            "first_ts": BOOT + pd.Timedelta(seconds=100 + 15 * k),
            "src_payload_bytes": 1083,
        }
        for k in range(count)
    ]


def beacons_to(dst_ip: str, tables) -> pd.DataFrame:
    found = findings_of("net.periodic_beacon", tables)
    return found[found.explanation.str.contains(dst_ip, regex=False)]


def _polling(tables, ts_of_unit):
    from tests.helpers.rule_cases import sock

    persistence = tables["disk/persistence"].copy()
    persistence.loc[persistence.path.eq("/etc/systemd/system/inventory-api.service"), "ts"] = ts_of_unit
    out = with_rows(
        {**tables, "disk/persistence": persistence},
        network_flows=every_15_seconds("203.0.113.9", 8, 41000),
        memory_sockets=[sock(500, "python3", 8, "10.0.2.15", 41007, "203.0.113.9", 443, "ESTABLISHED")],
    )
    return beacons_to("203.0.113.9", out)


def test_a_service_of_the_machine_that_polls_its_server_is_low_and_a_new_one_is_not():
    from tests.helpers.rule_cases import AFTER_BOOT, BEFORE_BOOT

    established = _polling(benign_server(), BEFORE_BOOT)
    assert established[["entity", "severity"]].values.tolist() == [["process:500", "low"]]
    assert "before this boot" in established.explanation.iloc[0]
    planted = _polling(benign_server(), AFTER_BOOT)  # the unit appeared while the system ran
    assert planted[["entity", "severity"]].values.tolist() == [["process:500", "medium"]]


def test_a_rhythm_no_process_can_be_tied_to_is_a_low_lead():
    flows = every_15_seconds("203.0.113.10", 9, 42000)
    found = beacons_to("203.0.113.10", with_rows(benign_server(), network_flows=flows))
    assert found.severity.tolist() == ["low"] and "no process held a connection" in found.explanation.iloc[0]


def test_start_up_lines_that_start_a_hidden_program_under_home_and_the_stock_ones_that_do_not():
    from toolkit.correlate.rules.persistence import _started

    line = "[ -x ~/.config/.dbus/session-bus ] && (~/.config/.dbus/session-bus >/dev/null 2>&1 &)"
    assert _started(line, "/home/bob") == ["/home/bob/.config/.dbus/session-bus"]
    assert _started("nohup $HOME/.cache/x/run &", "/root") == ["/root/.cache/x/run"]
    stock = [
        'if [ -d "$HOME/.local/bin" ] ; then PATH="$HOME/.local/bin:$PATH"; fi',
        "if [ -f ~/.bash_aliases ]; then . ~/.bash_aliases; fi",
        '[ -x /usr/bin/lesspipe ] && eval "$(SHELL=/bin/sh lesspipe)"',
    ]
    assert [_started(s, "/home/bob") for s in stock] == [[], [], []]


def test_history_that_empties_a_log_or_turns_the_journal_volatile():
    from toolkit.correlate.rules.history import DISABLE_LOGGING

    assert DISABLE_LOGGING.search(": > /var/log/wtmp")
    assert DISABLE_LOGGING.search("printf '[Journal]\\nStorage=volatile' > /etc/systemd/journald.conf.d/z.conf")
    assert DISABLE_LOGGING.search("echo 'auth,authpriv.* stop' > /etc/rsyslog.d/0.conf")
    assert not DISABLE_LOGGING.search("echo done >> /var/log/app/deploy.log")


def test_a_key_appended_to_an_old_authorized_keys_file_is_medium():
    from tests.helpers.rule_cases import AFTER_BOOT, BEFORE_BOOT

    keys = "/home/alice/.ssh/authorized_keys"
    appended = {"path": keys, "type": "file", "btime": BEFORE_BOOT, "ctime": AFTER_BOOT, "mtime": AFTER_BOOT}
    base = benign_server()
    files = base["disk/files"][base["disk/files"].path.ne(keys)]
    found = findings_of("persist.ssh_key", with_rows({**base, "disk/files": files}, disk_files=[appended]))
    assert found[found.entity.eq(f"file:{keys}")].severity.tolist() == ["medium"]
