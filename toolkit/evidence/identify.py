"""Identify one evidence file by its content, never by its name.

Detection tries each format's signature in a fixed order, most specific
first, and raw disks last (a raw disk is only recognised by a partition table
or filesystem signature). Memory formats and qcow2 are parsed by
``toolkit.memory`` (one parser per format in the project); this module
dispatches to them and adds the non-memory formats it owns: pcap/pcapng,
libvirt domain and snapshot XML, VMDK, VHDX, VDI and raw disks.

Raw memory has no signature: it is only identified when the caller says so
with ``hint``.

Example::

    >>> info = identify("/evidence/web01/memory.elf")        # doctest: +SKIP
    >>> info["format"], info["facts"]["vcpus"]                # doctest: +SKIP
    ('elf-core', 1)
"""

from __future__ import annotations

import importlib
import os
import stat
import struct
from pathlib import Path

from toolkit.errors import EvidenceError, SnapscopeError
from toolkit.evidence import disk_probe, libvirt_xml, pcap_probe

# Enough for every signature checked here (GPT at 4096, ext superblock at
# 1024, VDI at 0x40, pcapng's first blocks) and for the memory detectors.
HEAD_BYTES = 64 << 10

QCOW2_MAGIC = b"QFI\xfb"

# Exceptions a parser raises when a file's bytes do not hold what its header
# promised; each becomes an EvidenceError naming the file.
_PARSE_ERRORS = (ValueError, struct.error, EOFError, IndexError, KeyError, UnicodeDecodeError, OverflowError)


def _probe_xml(kind):
    def probe(path, head):
        data = _read_all(path, libvirt_xml.MAX_XML_BYTES + 1)
        parse = libvirt_xml.parse_domain if kind == "domain" else libvirt_xml.parse_snapshot
        return parse(data, path), []

    return probe


def _probe_pcap(path, head):
    return pcap_probe.probe(path)


def _local(probe):
    return lambda path, head: (probe(path, head), [])


def _format(name: str, detector, probe, doc: str) -> dict:
    """A registry entry: the format ``name`` when ``detector(head)`` names it, parsed by ``probe``."""
    return {"name": name, "detect": lambda head: detector(head) == name, "probe": probe, "doc": doc}


# The formats this package parses itself, in detection order. Each entry:
# name, detect(head) -> bool, probe(path, head) -> (facts, problems), doc.
LOCAL_FORMATS: list[dict] = [
    _format("pcap", pcap_probe.detect, _probe_pcap, "libpcap capture (QEMU filter-dump writes these)"),
    _format("pcapng", pcap_probe.detect, _probe_pcap, "pcapng capture"),
    _format(
        "libvirt-domain-xml", libvirt_xml.detect, _probe_xml("domain"), "libvirt <domain> definition (virsh dumpxml)"
    ),
    _format(
        "libvirt-snapshot-xml",
        libvirt_xml.detect,
        _probe_xml("snapshot"),
        "libvirt <domainsnapshot> metadata (virsh snapshot-dumpxml)",
    ),
    _format(
        "vmdk", disk_probe.detect, _local(disk_probe.probe_vmdk), "VMware disk: descriptor text or KDMV sparse extent"
    ),
    _format("vhdx", disk_probe.detect, _local(disk_probe.probe_vhdx), "Hyper-V VHDX disk"),
    _format("vdi", disk_probe.detect, _local(disk_probe.probe_vdi), "VirtualBox VDI disk"),
    # last: it is the weakest signature
    _format(
        "raw-disk",
        disk_probe.detect,
        _local(disk_probe.probe_raw),
        "raw disk image with an MBR/GPT partition table or a filesystem at offset 0",
    ),
]


# toolkit.memory's registry names its readers; identify() reports formats in
# the vocabulary of inspect and the lab's ground truth. Where they differ, the
# reader's name stays in facts["format"] (as its probe sets it) so the memory
# engine can still pick the reader.
def _public_name(reader: str, facts: dict) -> str:
    if reader == "kdump":
        return "kdump-flattened" if facts.get("flattened") else "kdump"
    if reader == "compressed-qemu-migration":
        return "qemu-migration"  # facts["compression"] says how it is wrapped
    return reader


def _memory_extras(path, reader: str, facts: dict, problems: list[str]) -> tuple[dict, list[str]]:
    """What inspect needs beyond the memory probe: derived flags and the
    identity of the domain a save image embeds (parsed as any libvirt XML)."""
    if reader in ("elf-core", "kdump"):
        facts["has_vmcoreinfo"] = bool(facts.get("vmcoreinfo"))
    if reader == "libvirt-save":
        if facts.get("complete") is False:
            problems.append("incomplete save image (magic LibvirtQemudPart): libvirt had not finished writing it")
        if facts.get("stream_error"):
            problems.append(f"QEMU stream: {_without_path(facts['stream_error'], path)}")
        xml = facts.get("domain_xml")
        facts["domain"] = None
        if xml:
            try:
                facts["domain"] = libvirt_xml.parse_domain(xml.encode("utf-8", "surrogateescape"), path)
            except EvidenceError as exc:
                problems.append(f"embedded domain XML unreadable: {exc.message}")
    return facts, problems


def _memory_formats() -> list[dict]:
    """Memory format entries from toolkit.memory.registry, adapted to (facts, problems).

    qcow2 is left out (it is a disk first; its internal snapshots show in its
    facts) and so is raw memory's always-true detector: raw memory is only
    ever named by a hint.
    """
    try:
        registry = importlib.import_module("toolkit.memory.registry")
    except ModuleNotFoundError as exc:
        if exc.name not in ("toolkit.memory.registry", "toolkit.memory"):
            raise
        return []
    entries = []
    for entry in registry.FORMATS:
        if entry["name"] == "qcow2-snapshot":
            continue

        # the adapter binds `entry` now, not the loop variable at call time
        def probe(path, head, _entry=entry):
            facts = dict(_entry["probe"](path))
            problems = list(facts.pop("problems", []) or [])
            return _memory_extras(path, _entry["name"], facts, problems)

        entries.append(
            {
                "name": entry["name"],
                "detect": None if entry["name"] == "raw" else entry["detect"],
                "probe": probe,
                "doc": entry.get("doc", ""),
                "public_name": _public_name,
            }
        )
    return entries


def _probe_qcow2(path, head):
    try:
        qcow2 = importlib.import_module("toolkit.memory.qcow2")
    except ModuleNotFoundError as exc:
        if exc.name != "toolkit.memory.qcow2":
            raise
        raise EvidenceError(path, "qcow2 image, but qcow2 support (toolkit.memory.qcow2) is not installed") from None
    header = dict(qcow2.read_header(path))
    version = struct.unpack_from(">I", head, 4)[0] if len(head) >= 8 else None
    snaps = [dict(s, has_vm_state=bool(s.get("vm_state_size"))) for s in header.get("snapshots", [])]
    facts = {
        "version": header.get("version", version),
        "virtual_size": header.get("virtual_size"),
        "cluster_size": 1 << header["cluster_bits"] if header.get("cluster_bits") is not None else None,
        "backing_file": header.get("backing_file"),
        "backing_format": header.get("backing_format"),
        # guest clusters kept in another file, named here: discovery follows it like a backing file
        "external_data_file": bool(header.get("external_data_file")),
        "data_file": header.get("data_file"),
        "snapshots": snaps,
        "vm_state_snapshots": [s.get("name") for s in snaps if s["has_vm_state"]],
    }
    problems = list(header.get("problems", []) or [])
    if version == 3 and len(head) >= 80:
        incompatible = struct.unpack_from(">Q", head, 72)[0]
        if incompatible & 1:
            problems.append("image is marked dirty (not closed cleanly): refcounts may be stale")
        if incompatible & 2:
            problems.append("image is marked corrupt by QEMU")
    return facts, problems


QCOW2_FORMAT = {
    "name": "qcow2",
    "detect": lambda h: h[:4] == QCOW2_MAGIC,
    "probe": _probe_qcow2,
    "doc": "QEMU qcow2 disk; internal snapshots may carry VM state (parsed by toolkit.memory.qcow2)",
}


def memory_format_names() -> set[str]:
    """Names identify() gives to files that hold guest memory."""
    names = {e["name"] for e in _memory_formats()}
    return names | {_public_name(n, {"flattened": f}) for n in names for f in (True, False)}


def formats() -> list[dict]:
    """Every format in detection order: memory formats, qcow2, then the local ones."""
    return _memory_formats() + [QCOW2_FORMAT] + LOCAL_FORMATS


def _read_all(path, limit: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read(limit)
    if len(data) >= limit:
        raise EvidenceError(path, f"larger than {limit - 1} bytes: too large for this format")
    return data


def _check_file(path: Path) -> int:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise EvidenceError(path, "no such file") from None
    except OSError as exc:
        raise EvidenceError(path, f"cannot stat: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise EvidenceError(path, "is a directory, not an evidence file (discover() scans directories)")
    if not stat.S_ISREG(st.st_mode):
        raise EvidenceError(path, "not a regular file")
    if st.st_size == 0:
        raise EvidenceError(path, "empty file")
    return st.st_size


def identify(path, *, hint: str | None = None) -> dict:
    """Identify ``path`` by content: ``{path, format, size, facts, problems}``.

    ``hint`` names a format to use instead of detection (the only way to say
    "raw memory", which has no signature); a hint whose signature does not
    match is honoured but noted in ``problems``.

    Example::

        >>> identify("disk.qcow2")["facts"]["backing_file"]      # doctest: +SKIP
        '/var/lib/libvirt/images/base.qcow2'
    """
    path = Path(path)
    size = _check_file(path)
    try:
        with open(path, "rb") as f:  # read-only, always
            head = f.read(HEAD_BYTES)
    except OSError as exc:
        raise EvidenceError(path, f"cannot read: {exc.strerror}") from None
    table = formats()
    problems: list[str] = []
    if hint is not None:
        entry = next((e for e in table if e["name"] == hint), None)
        if entry is None:
            raise EvidenceError(path, f"unknown format hint {hint!r}; known: {', '.join(e['name'] for e in table)}")
        if entry.get("detect") and not entry["detect"](head):
            problems.append(f"content does not carry the {hint} signature; identified by hint")
    else:
        entry = next((e for e in table if e.get("detect") and e["detect"](head)), None)
        if entry is None:
            raise EvidenceError(
                path,
                "not a recognised evidence format"
                + (" (raw memory needs an explicit format hint)" if size >= 1 << 20 else ""),
            )
    try:
        facts, found = entry["probe"](path, head)
    except EvidenceError:
        raise
    except (SnapscopeError, *_PARSE_ERRORS) as exc:  # the memory layer's own error type among them
        raise EvidenceError(path, f"unreadable {entry['name']}: {_without_path(str(exc), path)}") from None
    except OSError as exc:
        raise EvidenceError(path, f"cannot read {entry['name']}: {exc.strerror or exc}") from None
    name = entry["public_name"](entry["name"], facts) if "public_name" in entry else entry["name"]
    return {
        "path": os.path.abspath(path),
        "format": name,
        "size": size,
        "facts": facts,
        "problems": problems + list(found),
    }


def _without_path(message: str, path: Path) -> str:
    # parsers in toolkit.memory name the file themselves; EvidenceError adds it once
    for prefix in (f"{path}: ", f"{os.path.abspath(path)}: "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message
