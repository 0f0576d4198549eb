"""libvirt domain and snapshot XML: detection and the facts discovery needs.

Values read from these files are hostile (a compromised host or guest agent
may have written them): they are returned raw, as found, never interpreted as
paths relative to anything here and never used to build shell commands.
Path resolution is discover's job and only ever looks the strings up.

Example::

    >>> facts = parse_domain(b"<domain type='qemu'><name>web1</name>"
    ...     b"<memory unit='MiB'>320</memory></domain>", "web1.xml")
    >>> facts["name"], facts["memory_bytes"]
    ('web1', 335544320)
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from toolkit.errors import EvidenceError
from toolkit.limits import env_name, limit

# libvirt's XML for a domain is a few KiB; a snapshot XML embeds one domain.
# Anything much bigger is not something libvirt wrote.
MAX_XML_BYTES = 8 << 20

# libvirt's scaled-integer units (docs/formatdomain: "memory" element).
_UNITS = {
    "b": 1,
    "bytes": 1,
    "kb": 1000,
    "k": 1024,
    "kib": 1024,
    "mb": 1000**2,
    "m": 1024**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "g": 1024**3,
    "gib": 1024**3,
    "tb": 1000**4,
    "t": 1024**4,
    "tib": 1024**4,
    "pb": 1000**5,
    "p": 1024**5,
    "pib": 1024**5,
    "eb": 1000**6,
    "e": 1024**6,
    "eib": 1024**6,
}

# BOM, XML declaration, comments and a DOCTYPE may precede the root element;
# the DOCTYPE is recognised here so that load() can refuse it by name.
_PROLOGUE = re.compile(
    rb"\A(?:\xef\xbb\xbf)?\s*(?:<\?xml[^>]*\?>\s*)?(?:<!--.*?-->\s*)*"
    rb"(?:<!DOCTYPE[^\[>]*(?:\[.*?\])?\s*>\s*)?(?:<!--.*?-->\s*)*<([A-Za-z_][\w.-]*)",
    re.S,
)


def root_tag(head: bytes) -> str | None:
    """The root element name if ``head`` starts like an XML document, else None.

    >>> root_tag(b"<?xml version='1.0'?>\\n<domainsnapshot>")
    'domainsnapshot'
    """
    m = _PROLOGUE.match(head)
    return m.group(1).decode("ascii") if m else None


def detect(head: bytes) -> str | None:
    """``libvirt-domain-xml`` / ``libvirt-snapshot-xml`` by root element, else None."""
    return {"domain": "libvirt-domain-xml", "domainsnapshot": "libvirt-snapshot-xml"}.get(root_tag(head) or "")


def load(data: bytes, path) -> ET.Element:
    """Parse XML text from evidence; any defect is an EvidenceError on ``path``."""
    if len(data) > MAX_XML_BYTES:
        raise EvidenceError(path, f"XML of {len(data)} bytes is too large for a libvirt XML")
    # libvirt never writes a DTD; refusing one rules out entity-expansion bombs.
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise EvidenceError(path, "XML with a DOCTYPE/ENTITY declaration: libvirt never writes one")
    # Elements counted as they are parsed: 8 MiB of "<disk/>" is a million
    # elements (and a million disk rows) if nothing stops it.
    cap = limit("max_xml_elements")
    parser = ET.XMLPullParser(events=("start",))
    root, count = None, 0
    try:
        for at in range(0, len(data), 1 << 16):
            parser.feed(data[at : at + (1 << 16)])
            for _event, elem in parser.read_events():
                root = elem if root is None else root
                count += 1
                if count > cap:
                    raise EvidenceError(
                        path, f"more than {cap} XML elements (raise {env_name('max_xml_elements')} if this is real)"
                    )
        parser.close()
    except ET.ParseError as exc:
        raise EvidenceError(path, f"malformed XML: {exc}") from None
    if root is None:
        raise EvidenceError(path, "malformed XML: no element found")
    return root


def scaled_bytes(elem: ET.Element | None, default_unit: str = "KiB") -> int | None:
    """A libvirt scaled integer (``<memory unit='MiB'>320</memory>``) in bytes."""
    if elem is None or elem.text is None:
        return None
    unit = (elem.get("unit") or default_unit).lower()
    try:
        return int(elem.text.strip()) * _UNITS[unit]
    except (ValueError, KeyError):
        return None


def _text(elem: ET.Element, tag: str) -> str | None:
    child = elem.find(tag)
    return child.text if child is not None and child.text is not None else None


def _source(disk: ET.Element) -> str | None:
    # file-backed disks say file=, block devices dev=, network disks name=,
    # directories dir=, vhost-user/nvme have no plain path: keep whichever is there.
    src = disk.find("source")
    if src is None:
        return None
    for attr in ("file", "dev", "name", "dir", "volume"):
        if src.get(attr) is not None:
            return src.get(attr)
    return None


def _backing_chain(disk: ET.Element) -> list[dict]:
    chain = []
    node = disk.find("backingStore")
    while node is not None and node.find("source") is not None:
        fmt = node.find("format")
        chain.append({"source": _source(node), "format": fmt.get("type") if fmt is not None else None})
        node = node.find("backingStore")
    return chain


def domain_facts(root: ET.Element) -> dict:
    """Facts of a parsed ``<domain>`` element (also used for embedded ones)."""
    devices = root.find("devices")
    disks, macs, nics = [], [], []
    if devices is not None:
        for disk in devices.findall("disk"):
            target, driver = disk.find("target"), disk.find("driver")
            disks.append(
                {
                    "target": target.get("dev") if target is not None else None,
                    "device": disk.get("device", "disk"),
                    "type": disk.get("type"),
                    "source": _source(disk),
                    "driver_type": driver.get("type") if driver is not None else None,
                    "readonly": disk.find("readonly") is not None,
                    "backing": _backing_chain(disk),
                }
            )
        for nic in devices.findall("interface"):
            mac, model = nic.find("mac"), nic.find("model")
            address = mac.get("address") if mac is not None else None
            if address is not None:
                macs.append(address)
            nics.append(
                {"mac": address, "type": nic.get("type"), "model": model.get("type") if model is not None else None}
            )
    for mac in _passthrough_macs(root):
        if mac not in macs:
            macs.append(mac)
            nics.append({"mac": mac, "type": "qemu-commandline", "model": None})
    os_type = root.find("os/type")
    return {
        "name": _text(root, "name"),
        "uuid": _text(root, "uuid"),
        "type": root.get("type"),
        "memory_bytes": scaled_bytes(root.find("memory")),
        "vcpus": _int(_text(root, "vcpu")),
        "machine": os_type.get("machine") if os_type is not None else None,
        "arch": os_type.get("arch") if os_type is not None else None,
        "disks": disks,
        "macs": macs,
        "nics": nics,
    }


_QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"


def _passthrough_macs(root: ET.Element) -> list[str]:
    """MACs of NICs added with <qemu:commandline> (``-device ...,mac=``,
    ``-net nic,macaddr=``): libvirt does not list them as <interface>, but
    the guest has them, and a capture shows them."""
    macs = []
    for arg in root.iterfind(f"{_QEMU_NS}commandline/{_QEMU_NS}arg"):
        for option in (arg.get("value") or "").split(","):
            key, _, value = option.partition("=")
            if key in ("mac", "macaddr") and value:
                macs.append(value)
    return macs


def _int(text: str | None) -> int | None:
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def parse_domain(data: bytes, path) -> dict:
    """Facts of a domain XML document: name, uuid, memory, disks, NIC MACs."""
    root = load(data, path)
    if root.tag != "domain":
        raise EvidenceError(path, f"root element is <{root.tag}>, not a libvirt <domain>")
    return domain_facts(root)


def parse_snapshot(data: bytes, path) -> dict:
    """Facts of a snapshot XML (``virsh snapshot-dumpxml``) document.

    >>> f = parse_snapshot(b"<domainsnapshot><name>s1</name><state>paused</state>"
    ...     b"<memory snapshot='external' file='/v/s1.mem'/></domainsnapshot>", "s1.xml")
    >>> f["memory"]
    {'snapshot': 'external', 'file': '/v/s1.mem'}
    """
    root = load(data, path)
    if root.tag != "domainsnapshot":
        raise EvidenceError(path, f"root element is <{root.tag}>, not a libvirt <domainsnapshot>")
    mem = root.find("memory")
    disks = []
    for disk in root.findall("disks/disk"):
        driver = disk.find("driver")
        disks.append(
            {
                "name": disk.get("name"),
                "snapshot": disk.get("snapshot"),
                "source": _source(disk),
                "driver_type": driver.get("type") if driver is not None else None,
            }
        )
    # A running domain's snapshot embeds <domain>; an inactive one may carry
    # <inactiveDomain> too. The active definition is the one at that moment.
    dom = root.find("domain")
    return {
        "name": _text(root, "name"),
        "state": _text(root, "state"),
        "creation_time": _int(_text(root, "creationTime")),
        "parent": _text(root, "parent/name"),
        "memory": {"snapshot": mem.get("snapshot"), "file": mem.get("file")} if mem is not None else None,
        "disks": disks,
        "domain": domain_facts(dom) if dom is not None else None,
    }
