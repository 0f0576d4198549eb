"""pcap / pcapng identification: link type, packet count, first/last timestamp.

Counting walks record headers only (payloads are skipped by offset over a
read-only mmap), so a multi-GiB capture is counted without reading its packets
through Python. Decoding packets is the network engine's business (dpkt).

Timestamps are integers, nanoseconds since the Unix epoch (UTC): raw values,
formatted by renderers.

Example::

    >>> facts, problems = probe("/cases/vm1/net.pcap")    # doctest: +SKIP
    >>> facts["link_type"], facts["packets"]               # doctest: +SKIP
    (1, 42)
"""

from __future__ import annotations

import mmap
import struct

from toolkit.errors import EvidenceError

# magic as read little-endian -> (byte order, ticks per second)
PCAP_MAGICS = {0xA1B2C3D4: ("<", 10**6), 0xD4C3B2A1: (">", 10**6), 0xA1B23C4D: ("<", 10**9), 0x4D3CB2A1: (">", 10**9)}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_BOM = 0x1A2B3C4D

# the link types a libvirt/QEMU capture plausibly has; others are reported by number
LINK_NAMES = {0: "null", 1: "ethernet", 101: "raw", 105: "ieee802_11", 113: "linux_sll", 276: "linux_sll2"}

# Larger than any real frame plus headroom: a bigger length means the walk has
# lost sync (a corrupt or hostile file), so counting stops there.
MAX_RECORD = 1 << 26


def detect(head: bytes) -> str | None:
    """``pcap`` / ``pcapng`` from the first bytes, else None."""
    if len(head) >= 4 and struct.unpack_from("<I", head)[0] in PCAP_MAGICS:
        return "pcap"
    if head[:4] == PCAPNG_SHB and len(head) >= 12:
        bom = head[8:12]
        if bom in (struct.pack("<I", _BOM), struct.pack(">I", _BOM)):
            return "pcapng"
    return None


def probe(path) -> tuple[dict, list[str]]:
    """Facts and problems of a pcap or pcapng file (format decided by magic)."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            raise EvidenceError(path, "empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            kind = detect(buf[:12])
            if kind == "pcap":
                return _pcap(buf, path)
            if kind == "pcapng":
                return _pcapng(buf, path)
    raise EvidenceError(path, "not a pcap or pcapng file")


def _pcap(buf, path) -> tuple[dict, list[str]]:
    if len(buf) < 24:
        raise EvidenceError(path, f"truncated pcap header ({len(buf)} of 24 bytes)")
    order, ticks = PCAP_MAGICS[struct.unpack_from("<I", buf)[0]]
    major, minor, _zone, _sig, snaplen, network = struct.unpack_from(order + "HHiIII", buf, 4)
    link = network & 0x0FFFFFFF  # upper bits carry FCS length, not the link type
    rec = struct.Struct(order + "IIII")
    problems, count, first, last, off, end = [], 0, None, None, 24, len(buf)
    scale = 10**9 // ticks
    while off < end:
        if off + 16 > end:
            problems.append(f"truncated packet header at offset {off}")
            break
        sec, frac, incl, _orig = rec.unpack_from(buf, off)
        if incl > MAX_RECORD:
            problems.append(f"implausible packet length {incl} at offset {off}; stopped counting there")
            break
        if off + 16 + incl > end:
            problems.append(f"last packet truncated at offset {off} ({off + 16 + incl - end} bytes missing)")
            break
        ts = sec * 10**9 + frac * scale
        first = ts if first is None else first
        last = ts
        count += 1
        off += 16 + incl
    facts = {
        "version": f"{major}.{minor}",
        "link_type": link,
        "link_type_name": LINK_NAMES.get(link),
        "snaplen": snaplen,
        "ts_resolution": "ns" if ticks == 10**9 else "us",
        "packets": count,
        "first_ts_ns": first,
        "last_ts_ns": last,
    }
    return facts, problems


def _tsresol(opts: bytes, order: str) -> tuple[int, int]:
    """(ticks per second, offset seconds) from an interface block's options."""
    ticks, offset, off = 10**6, 0, 0
    while off + 4 <= len(opts):
        code, length = struct.unpack_from(order + "HH", opts, off)
        if code == 0:
            break
        value = opts[off + 4 : off + 4 + length]
        if code == 9 and length >= 1:  # if_tsresol
            v = value[0]
            ticks = 2 ** (v & 0x7F) if v & 0x80 else 10**v
        elif code == 14 and length >= 8:  # if_tsoffset
            offset = struct.unpack_from(order + "q", value)[0]
        off += 4 + ((length + 3) & ~3)
    return ticks, offset


def _pcapng(buf, path) -> tuple[dict, list[str]]:
    problems: list[str] = []
    interfaces: list[dict] = []
    count, first, last, off, end, order = 0, None, None, 0, len(buf), "<"
    while off < end:
        if off + 12 > end:
            problems.append(f"truncated block header at offset {off}")
            break
        if buf[off : off + 4] == PCAPNG_SHB:
            # each section may switch byte order and restarts interface numbering
            order = "<" if struct.unpack_from("<I", buf, off + 8)[0] == _BOM else ">"
            interfaces = []
        btype, blen = struct.unpack_from(order + "II", buf, off)
        if blen < 12 or blen % 4 or blen > MAX_RECORD:
            problems.append(f"implausible block length {blen} at offset {off}; stopped counting there")
            break
        if off + blen > end:
            problems.append(f"last block truncated at offset {off} ({off + blen - end} bytes missing)")
            break
        body = off + 8
        if btype == 1 and blen >= 20:  # interface description
            link, _res, snaplen = struct.unpack_from(order + "HHI", buf, body)
            ticks, tsoff = _tsresol(bytes(buf[body + 8 : off + blen - 4]), order)
            interfaces.append({"link_type": link, "snaplen": snaplen, "ticks": ticks, "offset": tsoff})
        elif btype in (6, 2) and blen >= 32:  # enhanced / obsolete packet
            if btype == 6:
                iface, hi, lo = struct.unpack_from(order + "III", buf, body)
            else:
                iface, _drops, hi, lo = struct.unpack_from(order + "HHII", buf, body)
            if iface < len(interfaces):
                ifc = interfaces[iface]
                raw = (hi << 32) | lo
                ts = (raw // ifc["ticks"] + ifc["offset"]) * 10**9 + (raw % ifc["ticks"]) * 10**9 // ifc["ticks"]
                first = ts if first is None else first
                last = ts
            else:
                problems.append(f"packet at offset {off} names undeclared interface {iface}")
            count += 1
        elif btype == 3:  # simple packet: no timestamp
            count += 1
        off += blen
    link = interfaces[0]["link_type"] if interfaces else None
    facts = {
        "link_type": link,
        "link_type_name": LINK_NAMES.get(link),
        "interfaces": len(interfaces),
        "link_types": sorted({i["link_type"] for i in interfaces}),
        "packets": count,
        "first_ts_ns": first,
        "last_ts_ns": last,
    }
    return facts, problems
