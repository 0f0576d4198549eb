"""Before any domain is touched: what to acquire, how, and whether it can be done.

:func:`plan` connects, resolves the domains (``--all``: every running one),
reads each one's live definition and refuses, with one line, anything the
acquisition could not finish cleanly: an unknown domain, a domain that is not
running, a disk that is not a file-backed qcow2, a domain with no disk when
disks are asked for, a block job already running, two files that would land
under one name, an output directory that is not empty, or not enough free
space for what will be written. Nothing has been paused, snapshotted or
written when it refuses.

Example::

    options = AcquireOptions(uri="qemu:///system", memory="migration")
    domains, host = plan(["web01"], Path("/evidence/web01-live"), options)
    domains[0]["disks"][0]["chain"]   # ['/var/lib/libvirt/images/web01.qcow2', ...]
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

from toolkit.acquire import virsh
from toolkit.errors import AcquireError, EvidenceError
from toolkit.evidence.discover import slug
from toolkit.evidence.libvirt_xml import parse_domain

# --memory: what `virsh dump` is asked for, and the file it becomes in the domain's directory
MEMORY_FORMATS = {
    "migration": {
        "file": "memory.qevm",
        "args": [],
        "doc": "QEMU migration stream (virsh dump): zero pages skipped, the shortest pause",
    },
    "elf": {
        "file": "memory.elf",
        "args": ["--memory-only", "--format", "elf"],
        "doc": "ELF core (virsh dump --memory-only): what every tool reads; the whole RAM is written",
    },
    "kdump-zlib": {
        "file": "memory.kdump",
        "args": ["--memory-only", "--format", "kdump-zlib"],
        "doc": "kdump, zlib pages: small, but QEMU compresses while the guest is paused",
    },
    "kdump-lzo": {"file": "memory.kdump", "args": ["--memory-only", "--format", "kdump-lzo"], "doc": "kdump, lzo"},
    "kdump-snappy": {
        "file": "memory.kdump",
        "args": ["--memory-only", "--format", "kdump-snappy"],
        "doc": "kdump, snappy",
    },
}
DEFAULT_MEMORY = "migration"
# --live: libvirt saves the memory through a live migration into its save format
LIVE_MEMORY = {"file": "memory.save", "doc": "libvirt save image written by a live external snapshot"}
DISK_MODES = {
    "external": "an external overlay at the moment; the frozen image is copied afterwards, the guest running",
    "copy": "the disk files copied while the guest stays paused (the longest pause; the chain never changes)",
    "none": "memory only",
}
DOMAIN_FILE = "domain.xml"
# room for what a pcap may take per second of capture, and for the small files beside
PCAP_BYTES_PER_SECOND = 1 << 20
MARGIN_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class AcquireOptions:
    """How to acquire (the CLI's flags). ``live``: dump while the guest runs;
    ``merge``: commit the external overlay back when done; ``io_slots``: domains acquired at once."""

    uri: str = "qemu:///system"
    memory: str | None = None
    disk: str = "external"
    merge: bool = False
    pcap_seconds: int = 0
    live: bool = False
    io_slots: int = 1

    @property
    def memory_format(self) -> str:
        return "libvirt-save" if self.live else (self.memory or DEFAULT_MEMORY)


def check_options(options: AcquireOptions) -> None:
    """AcquireError for flags that do not go together."""
    if options.memory is not None and options.memory not in MEMORY_FORMATS:
        raise AcquireError(f"--memory {options.memory!r}: use one of {', '.join(MEMORY_FORMATS)}")
    if options.disk not in DISK_MODES:
        raise AcquireError(f"--disk {options.disk!r}: use one of {', '.join(DISK_MODES)}")
    if options.live and options.memory is not None:
        raise AcquireError("--live saves memory as a libvirt save image (a live migration); --memory is for --pause")
    if options.live and options.disk == "copy":
        raise AcquireError("--disk copy copies disks while the guest is paused; with --live use --disk external")
    if options.merge and options.disk != "external":
        raise AcquireError("--merge commits the external overlay back; it needs --disk external")
    if options.pcap_seconds < 0 or options.io_slots < 1:
        raise AcquireError("--pcap needs seconds >= 0 and --io-slots at least 1")


def connect(uri: str) -> dict:
    """libvirt's versions on ``uri``; AcquireError (one line) when it cannot be reached."""
    proc = virsh.run(uri, "version", "--daemon", timeout=30, check=False)
    if proc.returncode:
        raise AcquireError(f"{uri}: cannot connect to libvirt: {virsh.error_text(proc)}")
    return {"uri": uri, **virsh.parse_version(proc.stdout)}


def running_domains(uri: str) -> list[str]:
    """Names of the running domains on ``uri`` (``--all``)."""
    return virsh.parse_names(virsh.run(uri, "list", "--name", "--state-running").stdout)


def domain_state(uri: str, name: str) -> str:
    """``running``, ``paused``, ``shut off``...; AcquireError when the domain does not exist."""
    proc = virsh.run(uri, "domstate", "--domain", name, check=False)
    if proc.returncode:
        raise AcquireError(f"{name}: no such domain on {uri} ({virsh.error_text(proc)})")
    return proc.stdout.strip()


def qemu_owner(xml_text: str) -> tuple[int, int] | None:
    """(uid, gid) QEMU runs as, from the live XML's DAC label (``+999:+995``), or None.

    >>> qemu_owner("<domain><seclabel type='dynamic' model='dac'><label>+999:+995</label></seclabel></domain>")
    (999, 995)
    """
    root = ET.fromstring(xml_text)
    label = root.find("seclabel[@model='dac']/label")
    if label is None or not label.text:
        return None
    try:
        uid, gid = (int(part.strip().lstrip("+")) for part in label.text.split(":"))
    except ValueError:
        return None
    return uid, gid


def capture_disks(name: str, facts: dict, disk_mode: str) -> tuple[list[dict], list[dict]]:
    """(disks to capture, disks left out with why) from a domain's facts; AcquireError for a disk that cannot
    be captured. A disk's ``chain`` is its image then its backing files, as libvirt has them open.

    >>> facts = {"disks": [{"target": "vda", "device": "disk", "type": "file", "source": "/i/a.qcow2",
    ...                     "driver_type": "qcow2", "readonly": False, "backing": []}]}
    >>> capture_disks("web01", facts, "external")[0][0]["chain"]
    ['/i/a.qcow2']
    """
    captured, left_out = [], []
    for disk in facts["disks"]:
        target = disk.get("target") or "?"
        if disk.get("device") != "disk" or disk.get("readonly"):
            left_out.append({"target": target, "why": f"{disk.get('device')} (read-only media is not captured)"})
            continue
        if disk_mode == "none":
            left_out.append({"target": target, "why": "--disk none"})
            continue
        if disk.get("type") != "file" or not disk.get("source"):
            raise AcquireError(
                f"{name}: disk {target} is a {disk.get('type')} disk ({disk.get('source')}): acquire captures "
                "file-backed qcow2 disks only; use --disk none to take memory only"
            )
        if disk.get("driver_type") != "qcow2":
            raise AcquireError(
                f"{name}: disk {target} ({disk['source']}) is {disk.get('driver_type')}, not qcow2: acquire "
                "captures qcow2 disks only (a raw image has no header, so its copy cannot be told from any "
                "other file by content); use --disk none to take memory only"
            )
        chain = [disk["source"]] + [b["source"] for b in disk.get("backing") or [] if b.get("source")]
        captured.append({"target": target, "format": "qcow2", "chain": chain})
    if disk_mode != "none" and not captured:
        raise AcquireError(f"{name}: the domain has no disk to capture; use --disk none to take memory only")
    return captured, left_out


def _check_files(name: str, disks: list[dict], reserved: set[str]) -> None:
    """Each disk file must exist and land under its own base name (backing files are found by base name)."""
    seen: dict[str, str] = {}
    for disk in disks:
        for path in disk["chain"]:
            if not os.path.isfile(path):
                raise AcquireError(f"{name}: disk {disk['target']}: {path} is not a file on this host")
            base = os.path.basename(path)
            if base in reserved or (base in seen and seen[base] != path):
                raise AcquireError(
                    f"{name}: {path} and {seen.get(base, 'an acquisition file')} share the name {base!r}; "
                    "the copies land in one directory, where backing files are found by name"
                )
            seen[base] = path


def _no_block_job(uri: str, name: str, disks: list[dict]) -> None:
    for disk in disks:
        out = virsh.run(uri, "blockjob", "--domain", name, "--path", disk["target"], "--info").stdout
        if out.strip() and "no current block job" not in out.lower():
            raise AcquireError(f"{name}: disk {disk['target']} has a block job running ({out.strip()}); wait for it")


def plan_domain(uri: str, name: str, options: AcquireOptions) -> dict:
    """Everything the acquisition of one domain needs, checked; AcquireError when it cannot be done."""
    state = domain_state(uri, name)
    if state not in ("running", "paused"):
        raise AcquireError(f"{name}: the domain is {state}; acquire takes running (or paused) domains")
    xml_text = virsh.run(uri, "dumpxml", "--domain", name).stdout
    try:
        facts = parse_domain(xml_text.encode(), f"{name} (virsh dumpxml)")
    except EvidenceError as exc:
        raise AcquireError(str(exc)) from None
    disks, left_out = capture_disks(name, facts, options.disk)
    memory_file = LIVE_MEMORY["file"] if options.live else MEMORY_FORMATS[options.memory_format]["file"]
    _check_files(name, disks, {DOMAIN_FILE, memory_file})
    _no_block_job(uri, name, disks)
    netdevs = []
    if options.pcap_seconds:
        info = virsh.run(uri, "qemu-monitor-command", "--domain", name, "--hmp", "--cmd", "info network").stdout
        netdevs = virsh.parse_netdevs(info)
        if not netdevs:
            raise AcquireError(f"{name}: --pcap asked, but the domain has no network backend to capture")
    return {
        "name": name,
        "uuid": facts.get("uuid"),
        "dir": slug(name),
        "state": state,
        "memory_bytes": facts.get("memory_bytes") or 0,
        "memory_file": memory_file,
        "disks": disks,
        "left_out": left_out,
        "netdevs": netdevs,
        "qemu_owner": qemu_owner(xml_text),
    }


def needed_bytes(domain: dict, options: AcquireOptions) -> int:
    """What one domain's acquisition may write: its memory, its disk files, its capture."""
    disks = sum(os.path.getsize(p) for d in domain["disks"] for p in d["chain"])
    pcap = options.pcap_seconds * PCAP_BYTES_PER_SECOND * max(1, len(domain["netdevs"]))
    return domain["memory_bytes"] + disks + pcap


def check_space(domains: list[dict], out_dir: Path, options: AcquireOptions) -> dict:
    """AcquireError when the output volume cannot hold everything; returns {needed, free}.

    Example: ``check_space(domains, Path("/evidence/out"), options)["free"]``
    """
    probe = Path(out_dir).absolute()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    needed = sum(needed_bytes(d, options) for d in domains) + MARGIN_BYTES
    if needed > free:
        raise AcquireError(
            f"{out_dir}: not enough space on the output volume: about {needed / 2**20:.0f} MiB needed "
            f"(memory, disk files, captures of {len(domains)} domain(s)), {free / 2**20:.0f} MiB free"
        )
    return {"needed": needed, "free": free}


def check_out_dir(out_dir: Path) -> None:
    """The output must be new (or an empty directory): acquisition never writes over earlier evidence."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise AcquireError(f"{out_dir}: exists and is not an empty directory; acquisition never writes over evidence")


def plan(names: list[str], out_dir: Path, options: AcquireOptions, *, all_running: bool = False) -> tuple[list, dict]:
    """(domain plans, libvirt versions) for ``names`` (or every running domain); every check done.

    Example: ``domains, versions = plan(["web01"], Path("out"), AcquireOptions())`` -> ``versions["hypervisor"]``
    """
    check_options(options)
    check_out_dir(out_dir)
    versions = connect(options.uri)
    if all_running:
        names = list(dict.fromkeys([*names, *running_domains(options.uri)]))
        if not names:
            raise AcquireError(f"{options.uri}: no running domain to acquire")
    if not names:
        raise AcquireError("name at least one domain, or use --all")
    domains = [plan_domain(options.uri, name, options) for name in dict.fromkeys(names)]
    dirs = [d["dir"] for d in domains]
    if len(set(dirs)) != len(dirs):
        raise AcquireError(f"two domains would share one output directory name: {', '.join(sorted(dirs))}")
    check_space(domains, out_dir, options)
    return domains, versions
