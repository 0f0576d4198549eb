"""A libvirt host of the tests' own, with the lab's guest running on it, for the acquisition lab tests.

virtlogd and libvirtd are the stock daemons, started as the lab builder starts them (in the
background, no systemd, ``qemu:///system``) but in a private mount namespace whose libvirt
runtime, state, configuration, cache and log directories are empty tmpfs mounts. This machine is
shared: other builds define and run their own domains on the host's libvirtd, and ``acquire
--all`` must see exactly the domains a test started, never pause someone else's guest, and stop
only daemons it started. Every command of a test (virsh, ``snapscope``) runs in that namespace
(``host["enter"]`` is the nsenter prefix).

A lab domain runs the lab guest (its kernel and initramfs and a standalone qcow2 converted from
the lab's base image, as the lab's libvirt run does), staged under
``/var/lib/libvirt/images/snapscope-acq-test-<name>`` (QEMU runs as libvirt-qemu and must reach
it), defined by the lab's own domain XML under another name: TCG; user networking with
``restrict=on`` whose only peer is a guestfwd to an echo server run here (the lab's EchoServer),
so no frame leaves QEMU. It is ready once the guest printed its
ready marker on its serial console, after its beacon connection is ESTABLISHED. An idle domain
is SeaBIOS with nothing to boot, with a raw disk or with no disk: running, and cheap.

Example::

    with private_libvirtd(state_dir) as host, lab_domain(host, lab, "web") as dom:
        run(host, [sys.executable, "-m", "toolkit.cli", "acquire", dom["name"], "--out", out])
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from fixtures.lab.libvirt_run import LIBVIRT_STAGE_PARENT, EchoServer, domain_xml, stop_daemons
from fixtures.lab.qemu_run import wait_ready

REPO = Path(__file__).resolve().parents[2]
URI = "qemu:///system"
PREFIX = "snapscope-acq-test-"
PRIVATE_DIRS = ["/run/libvirt", "/var/lib/libvirt/qemu", "/etc/libvirt/qemu", "/var/cache/libvirt", "/var/log/libvirt"]
NAMESPACE_SETUP = (
    "set -e; "
    + "; ".join(f"mkdir -p {d}; mount -t tmpfs -o mode=0755 tmpfs {d}" for d in PRIVATE_DIRS)
    + "; mkdir -p /var/log/libvirt/qemu /var/lib/libvirt/qemu /var/cache/libvirt/qemu; echo ready; exec sleep infinity"
)
UP_TIMEOUT = 60
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


def run(host: dict, argv, *, check=False, timeout=900, **kw) -> subprocess.CompletedProcess:
    """``argv`` run in the host's namespace (from the repository root), output captured as text."""
    return subprocess.run(
        [*host["enter"], *map(str, argv)], capture_output=True, text=True, timeout=timeout, check=check, **kw
    )


def virsh(host: dict, *args, check=True, timeout=120) -> subprocess.CompletedProcess:
    proc = run(host, ["virsh", "-q", "-c", URI, *args], timeout=timeout)
    if check and proc.returncode:
        raise RuntimeError(f"virsh {' '.join(map(str, args))}: {proc.stderr.strip()}")
    return proc


def _virtlogd_up(root: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(root / "run/libvirt/virtlogd-sock"))
            return True
        except OSError:
            return False


@contextlib.contextmanager
def private_libvirtd(state_dir: Path):
    """virtlogd + libvirtd in a private mount namespace; yields the host {"enter", "pid"}; stops them after."""
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", NAMESPACE_SETUP],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    started = []
    stack = contextlib.ExitStack()
    try:
        if holder.stdout.readline().strip() != "ready":
            raise RuntimeError(f"private mount namespace not made: {holder.communicate(timeout=10)[1]}")
        host = {"pid": holder.pid, "enter": ["nsenter", f"--target={holder.pid}", "--mount", f"--wd={REPO}", "--"]}
        root = Path(f"/proc/{holder.pid}/root")  # the filesystem as the namespace sees it
        log = stack.enter_context(open(state_dir / "libvirtd.log", "ab"))
        daemons = [
            (["virtlogd", "--pid-file", "/run/libvirt/virtlogd.pid"], lambda: _virtlogd_up(root)),
            (
                ["libvirtd", "--pid-file", "/run/libvirt/libvirtd.pid"],
                lambda: virsh(host, "version", check=False).returncode == 0,
            ),
        ]
        for argv, up in daemons:
            started.append(
                subprocess.Popen(
                    [*host["enter"], *argv], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
                )
            )
            deadline = time.monotonic() + UP_TIMEOUT
            while not up():  # polled: the daemon answers, or it died, or time is up
                if started[-1].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{argv[0]} did not come up; see {state_dir / 'libvirtd.log'}")
                time.sleep(0.2)
        yield host
    finally:
        stop_daemons(started)
        holder.kill()
        holder.wait()
        stack.close()


def state(host: dict, name: str) -> str:
    return virsh(host, "domstate", "--domain", name).stdout.strip()


def disk_chain(host: dict, name: str) -> list[str]:
    """The first disk's image and its backing files, as libvirt has them open now."""
    root = ET.fromstring(virsh(host, "dumpxml", "--domain", name).stdout)
    chain, node = [], root.find("devices/disk[@device='disk']")
    while node is not None and node.find("source") is not None:
        chain.append(node.find("source").get("file"))
        node = node.find("backingStore")
    return chain


def _purge(host: dict, name: str) -> None:
    if virsh(host, "dominfo", "--domain", name, check=False).returncode:
        return
    virsh(host, "destroy", "--domain", name, check=False)
    virsh(host, "undefine", "--domain", name, "--snapshots-metadata", check=False)


def _stage(name: str) -> Path:
    stage = LIBVIRT_STAGE_PARENT / f"{PREFIX}{name}"
    shutil.rmtree(stage, ignore_errors=True)  # what a killed earlier run of these tests left
    stage.mkdir(mode=0o777, parents=True)
    os.chmod(stage, 0o777)  # QEMU runs as libvirt-qemu
    return stage


def _lab_xml(name: str, stage: Path) -> str:
    """The lab's own libvirt domain (fixtures/lab/libvirt_run.py), under this test's name and uuid."""
    ET.register_namespace("qemu", QEMU_NS)
    root = ET.fromstring(domain_xml(stage, str(uuid.uuid4())))
    root.find("name").text = name
    return ET.tostring(root, encoding="unicode")


@contextlib.contextmanager
def lab_domain(host: dict, lab: Path, short: str):
    """The lab guest running as ``snapscope-acq-test-<short>``, ready; destroyed afterwards.
    Yields {"name", "stage", "serial"}."""
    name = f"{PREFIX}{short}"
    stage = _stage(short)
    guest, base = lab / "guest", lab / "qemu" / "base.qcow2"
    shutil.copyfile(guest / "vmlinuz", stage / "vmlinuz")
    shutil.copyfile(guest / "initrd.img", stage / "initrd.img")
    # a copy, never the lab's own files: a standalone qcow2, as the lab's libvirt run makes it
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", base, stage / "disk.qcow2"], check=True)
    for written_by_qemu in ("serial.log", "net.pcap"):  # the lab's domain records its own capture too
        (stage / written_by_qemu).touch()
        os.chmod(stage / written_by_qemu, 0o666)
    (stage / "define.xml").write_text(_lab_xml(name, stage))
    echo = EchoServer(stage / "peer.sock")
    try:
        virsh(host, "define", stage / "define.xml")
        virsh(host, "start", "--domain", name)
        wait_ready(stage / "serial.log", lambda: state(host, name) in ("running", "paused"))
        yield {"name": name, "stage": stage, "serial": stage / "serial.log"}
    finally:
        _purge(host, name)
        echo.close()
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def idle_domain(host: dict, short: str, disk: str | None):
    """A running domain with nothing to boot: ``disk`` "raw" (a 1 MiB raw image) or None (no disk)."""
    name = f"{PREFIX}{short}"
    stage = _stage(short)
    devices = ""
    if disk == "raw":
        image = stage / "disk.img"
        image.write_bytes(bytes(1 << 20))
        devices = (
            "<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file={quoteattr(str(image))}/><target dev='vda' bus='virtio'/></disk>"
        )
    xml = f"""<domain type='qemu'><name>{escape(name)}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>{devices}<memballoon model='none'/></devices>
</domain>"""
    (stage / "define.xml").write_text(xml)
    try:
        virsh(host, "define", stage / "define.xml")
        virsh(host, "start", "--domain", name)
        yield {"name": name, "stage": stage}
    finally:
        _purge(host, name)
        shutil.rmtree(stage, ignore_errors=True)


def condition(host: dict, name: str) -> dict:
    """What an untouched domain keeps: its state and the reason for it, its disk chain, its last job."""
    has_disk = "vda" in virsh(host, "domblklist", "--domain", name).stdout
    return {
        "state": virsh(host, "domstate", "--domain", name, "--reason").stdout.strip(),
        "chain": disk_chain(host, name) if has_disk else [],
        # kept, not consumed, by reading it; failed jobs count too
        "last_job": virsh(
            host, "domjobinfo", "--domain", name, "--completed", "--keep-completed", "--anystats"
        ).stdout.strip(),
    }


@contextlib.contextmanager
def watch_untouched(host: dict, name: str):
    """Yields {"before": condition}; after the block it also holds "after" (the condition then) and
    "events" (QEMU's events for the domain meanwhile: a pause would show a STOP)."""
    seen = {"before": condition(host, name)}
    watch = subprocess.Popen(
        [*host["enter"], "virsh", "-q", "-c", URI, "qemu-monitor-event", "--domain", name, "--loop", "--timestamp"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield seen
    finally:
        watch.send_signal(2)  # SIGINT: virsh prints what it saw and ends
        out, _ = watch.communicate(timeout=30)
        seen["events"] = [line for line in out.splitlines() if " event " in line]
        seen["after"] = condition(host, name)
