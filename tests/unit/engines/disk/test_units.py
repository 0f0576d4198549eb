"""systemd unit states read from the files at rest, on a real ext4 image with the links systemctl makes."""

from __future__ import annotations

import os

import pytest

from tests.helpers import disk_images as b
from toolkit.engines.disk.functions import run_functions
from toolkit.engines.disk.persistence import persistence_rows, unit_records
from toolkit.engines.disk.units import template_of, unit_states

LIB = "lib/systemd/system"
ETC = "etc/systemd/system"


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    from dissect.target import Target

    d = tmp_path_factory.mktemp("units")
    tree = b.write_tree(
        d / "tree",
        {
            "etc/os-release": "ID=debian\n",
            f"{LIB}/ssh.service": "[Service]\nExecStart=/usr/sbin/sshd -D\n[Install]\nWantedBy=multi-user.target\n"
            "Alias=sshd.service\n",
            f"{LIB}/sudo.service": "[Service]\nExecStart=/bin/true\n",
            f"{LIB}/debug-shell.service": "[Service]\nExecStart=/bin/sh\n[Install]\nWantedBy=sysinit.target\n",
            f"{LIB}/getty@.service": "[Service]\nExecStart=/sbin/agetty %I\n[Install]\nWantedBy=getty.target\n",
            f"{LIB}/static.service": "[Unit]\nDescription=pulled in by others\n[Service]\nExecStart=/bin/s\n",
            f"{LIB}/fstrim.timer": "[Timer]\nOnCalendar=weekly\n[Install]\nWantedBy=timers.target\n",
            f"{LIB}/fstrim.service": "[Service]\nExecStart=/sbin/fstrim -a\n",
            f"{ETC}/app.service": "[Service]\nExecStart=/opt/app/run\n[Install]\nWantedBy=multi-user.target\n",
        },
    )
    links = {
        f"{ETC}/multi-user.target.wants/ssh.service": "/lib/systemd/system/ssh.service",
        f"{ETC}/multi-user.target.wants/app.service": "/etc/systemd/system/app.service",
        f"{ETC}/sshd.service": "/lib/systemd/system/ssh.service",  # Alias= made by enabling
        f"{ETC}/sudo.service": "/dev/null",  # masked over the packaged file
        f"{ETC}/getty.target.wants/getty@tty1.service": "/lib/systemd/system/getty@.service",
        f"{ETC}/timers.target.wants/fstrim.timer": "/lib/systemd/system/fstrim.timer",
        f"{LIB}/autovt@.service": "getty@.service",  # a packaged alias, relative
    }
    for rel, to in links.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(to, tree / rel)
    return Target.open(b.make_ext4(tree, d / "root.raw", 16))


def test_states_as_systemctl_names_them(target):
    records, problems = run_functions(target, ["services"])
    assert problems == []
    assert unit_states(target, unit_records(records)) == {
        "ssh.service": "enabled",
        "sshd.service": "alias",
        "app.service": "enabled",
        "sudo.service": "masked",
        "debug-shell.service": "disabled",
        "getty@.service": "enabled",  # through its instance getty@tty1
        "autovt@.service": "alias",
        "static.service": "static",
        "fstrim.timer": "enabled",
        "fstrim.service": "static",
    }


def test_persistence_rows_carry_the_state_and_the_winning_file(target):
    records, _ = run_functions(target, ["services"])
    rows, problems = persistence_rows(target, records, 1 << 20)
    assert problems == []
    units = {r["detail"]: r for r in rows if r["kind"] in ("systemd", "timer")}
    assert units["ssh.service"]["unit_state"] == "enabled" and units["ssh.service"]["program"] == "/usr/sbin/sshd"
    # the mask in /etc wins over the packaged file: nothing runs
    assert units["sudo.service"]["unit_state"] == "masked" and units["sudo.service"]["program"] is None
    assert units["fstrim.timer -> fstrim.service"]["unit_state"] == "enabled"
    assert units["fstrim.timer -> fstrim.service"]["command"] == "/sbin/fstrim -a"


@pytest.mark.parametrize(
    "name, template", [("getty@tty1.service", "getty@.service"), ("getty@.service", None), ("ssh.service", None)]
)
def test_template_of(name, template):
    assert template_of(name) == template
