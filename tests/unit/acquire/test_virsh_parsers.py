"""What virsh and QEMU print, read back: versions, names, network backends, pause events.

The inputs are the exact text libvirt 9.0 / QEMU 7.2 printed on the lab host.
"""

import datetime as dt
import subprocess

from toolkit.acquire import virsh

VERSION = """Compiled against library: libvirt 9.0.0
Using library: libvirt 9.0.0
Using API: QEMU 9.0.0
Running hypervisor: QEMU 7.2.22
Running against daemon: 9.0.0
"""

INFO_NETWORK = """virtio-net-pci.0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56
 \\ n0: index=0,type=user,net=10.0.2.0,restrict=on
net1: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:aa:bb:cc
 \\ hostnet1: index=0,type=tap,ifname=vnet3,script=no,downscript=no
"""

EVENTS = """2026-12-02 01:37:40.186+0000: event STOP for domain 'acqx1': <null>
2026-12-02 01:37:40.422+0000: event RESUME for domain 'acqx1': <null>
event loop interrupted
events received: 2
"""


def test_version_lines_become_fields():
    assert virsh.parse_version(VERSION) == {
        "compiled": "libvirt 9.0.0",
        "library": "libvirt 9.0.0",
        "api": "QEMU 9.0.0",
        "hypervisor": "QEMU 7.2.22",
        "daemon": "9.0.0",
    }


def test_names_one_per_line():
    assert virsh.parse_names("web01\ndb-01\n\n") == ["web01", "db-01"]


def test_netdevs_are_the_backends_not_the_nics():
    assert virsh.parse_netdevs(INFO_NETWORK) == ["n0", "hostnet1"]


def test_pause_from_qemu_events():
    events = virsh.parse_pause_events(EVENTS)
    assert [kind for _, kind in events] == ["STOP", "RESUME"]
    ((stop, resume),) = virsh.pause_intervals(events)
    assert (resume - stop).total_seconds() == 0.236
    assert stop.tzinfo is not None and stop.utcoffset() == dt.timedelta(0)


def test_pause_record_that_cannot_be_trusted():
    t = lambda s: dt.datetime(2026, 1, 1, 0, 0, s, tzinfo=dt.UTC)  # noqa: E731
    assert virsh.pause_intervals([(t(1), "RESUME")]) is None  # the watch missed the STOP
    assert virsh.pause_intervals([(t(1), "STOP")]) is None  # it ended before the RESUME
    assert virsh.pause_intervals([(t(1), "STOP"), (t(2), "STOP")]) is None
    two = virsh.pause_intervals([(t(1), "STOP"), (t(2), "RESUME"), (t(5), "STOP"), (t(9), "RESUME")])
    assert [(b - a).seconds for a, b in two] == [1, 4]
    assert virsh.pause_intervals([]) == []


def test_error_lines_become_one():
    proc = subprocess.CompletedProcess(
        [], 1, "", "error: failed to get domain 'nope'\nerror: Domain not found: no domain with matching name\n"
    )
    assert virsh.error_text(proc) == "failed to get domain 'nope': Domain not found: no domain with matching name"
    assert virsh.error_text(subprocess.CompletedProcess([], 3, "", "")) == "virsh exited with status 3"
