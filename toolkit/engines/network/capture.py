"""Stream frames out of pcap and pcapng files, and decode them with dpkt.

Framing (record headers, blocks) is read here rather than by dpkt's readers so
that every problem has a file offset, a corrupt length can never make us read
gigabytes into memory, and a truncated tail still yields every whole record
before it. dpkt decodes the frames themselves (Ethernet, VLAN, SLL, IPv4/6,
TCP, UDP, ICMP).

Example::

    diags = []
    for rec in iter_records("net.pcap", diags):
        src_mac, dst_mac, ip = decode_frame(rec["linktype"], rec["data"])
"""

from __future__ import annotations

import struct

import dpkt

from toolkit.schemas import diagnostic

# Link types we decode (LINKTYPE_* numbers from the tcpdump registry).
LINKTYPES = {
    0: "null (BSD loopback)",
    1: "ethernet",
    12: "raw IP",
    14: "raw IP",
    101: "raw IP",
    108: "OpenBSD loopback",
    113: "Linux cooked (SLL)",
    228: "raw IPv4",
    229: "raw IPv6",
    276: "Linux cooked v2 (SLL2)",
}
# Some link types that captures on a host commonly carry but we cannot split into flows.
OTHER_LINKTYPES = {
    105: "IEEE 802.11",
    127: "802.11 radiotap",
    9: "PPP",
    220: "USB Linux mmapped",
    192: "PPI",
    147: "user0",
}

# A frame on a virtual NIC is at most a 64 KiB GSO segment plus headers;
# anything much larger is a corrupt length field, not a packet.
MAX_RECORD = 256 * 1024
_READ = 1024 * 1024

PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000),
    b"\xa1\xb2\xc3\xd4": (">", 1000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),
    b"\xa1\xb2\x3c\x4d": (">", 1),
}  # value: ns per fraction tick
PCAPNG_SHB = 0x0A0D0D0A


def _diag(diagnostics, path, offset, what, why, severity="warning"):
    diagnostics.append(diagnostic(severity, what, f"{path}@{offset}", why))


def link_name(linktype: int) -> str:
    """Readable name of a link type. Example: ``link_name(1)`` -> ``"ethernet"``"""
    return LINKTYPES.get(linktype) or OTHER_LINKTYPES.get(linktype) or f"link type {linktype}"


def _pcap_records(fh, path, header, diagnostics):
    endian, tick_ns = PCAP_MAGIC[header[:4]]
    snaplen, linktype = struct.unpack(endian + "II", header[16:24])
    linktype &= 0xFFFF  # upper bits carry FCS information, not the link type
    limit = max(MAX_RECORD, min(snaplen, 16 * 1024 * 1024))
    rec = struct.Struct(endian + "IIII")
    offset = 24
    while True:
        head = fh.read(16)
        if not head:
            return
        if len(head) < 16:
            _diag(
                diagnostics,
                path,
                offset,
                "truncated record header",
                f"file ends {len(head)} bytes into a 16-byte record header; flows up to here are kept",
            )
            return
        sec, frac, caplen, wirelen = rec.unpack(head)
        if caplen > limit:
            _diag(
                diagnostics,
                path,
                offset,
                "corrupt record length",
                f"record claims {caplen} captured bytes (limit {limit}); the rest of the file is not read",
            )
            return
        data = fh.read(caplen)
        if len(data) < caplen:
            _diag(
                diagnostics,
                path,
                offset,
                "truncated record",
                f"record needs {caplen} bytes, file has {len(data)}; this last packet is dropped",
            )
            return
        yield {
            "ts": sec * 1_000_000_000 + frac * tick_ns,
            "linktype": linktype,
            "data": data,
            "wirelen": wirelen,
            "offset": offset,
        }
        offset += 16 + caplen


def _tsresol(options: bytes, endian: str) -> tuple[int, int]:
    """(ticks per second, offset seconds) from an Interface Description Block's options."""
    per_second, tsoffset, pos = 1_000_000, 0, 0
    while pos + 4 <= len(options):
        code, length = struct.unpack(endian + "HH", options[pos : pos + 4])
        value = options[pos + 4 : pos + 4 + length]
        if code == 0:
            break
        if code == 9 and length >= 1:
            v = value[0]
            per_second = 2 ** (v & 0x7F) if v & 0x80 else 10**v
        elif code == 14 and length == 8:
            tsoffset = struct.unpack(endian + "q", value)[0]
        pos += 4 + length + (-length % 4)
    return per_second, tsoffset


# Bytes a block body must hold (fixed fields plus the trailing length) by block type:
# a shorter block cannot be what it says.
_FIXED = {1: 8 + 4, 2: 20 + 4, 3: 4 + 4, 6: 20 + 4}


def _pcapng_records(fh, path, diagnostics):
    endian, interfaces, offset = "<", [], 0
    while True:
        head = fh.read(8)
        if not head:
            return
        if len(head) < 8:
            _diag(diagnostics, path, offset, "truncated block header", "file ends inside a pcapng block header")
            return
        btype = struct.unpack("<I", head[:4])[0]
        if btype == PCAPNG_SHB:
            bom = fh.read(4)
            endian = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">" if bom == b"\x1a\x2b\x3c\x4d" else None
            if endian is None:
                _diag(diagnostics, path, offset, "bad section header", "byte-order magic missing; not read further")
                return
            blen = struct.unpack(endian + "I", head[4:])[0]
            body_len = blen - 12
            interfaces = []  # interface ids restart with every section
        else:
            btype, blen = struct.unpack(endian + "II", head)
            body_len = blen - 8
        if blen < 12 or blen % 4 or blen > MAX_RECORD + 4096:
            _diag(
                diagnostics,
                path,
                offset,
                "corrupt block length",
                f"block type {btype:#x} claims {blen} bytes; the rest of the file is not read",
            )
            return
        body = fh.read(body_len)
        if len(body) < body_len:
            _diag(
                diagnostics,
                path,
                offset,
                "truncated block",
                f"block type {btype:#x} needs {blen} bytes, file ends first; this last block is dropped",
            )
            return
        if len(body) < _FIXED.get(btype, 0):
            _diag(
                diagnostics,
                path,
                offset,
                "corrupt block",
                f"block type {btype:#x} of {blen} bytes is shorter than its own fixed fields; skipped",
            )
        elif btype == 1:  # Interface Description Block
            linktype, _, snaplen = struct.unpack(endian + "HHI", body[:8])
            per_second, tsoffset = _tsresol(body[8:-4], endian)
            interfaces.append((linktype, per_second, tsoffset))
        elif btype in (6, 2):  # Enhanced / obsolete Packet Block
            if btype == 6:
                ifid, hi, lo, caplen, wirelen = struct.unpack(endian + "IIIII", body[:20])
            else:
                ifid, _drops, hi, lo, caplen, wirelen = struct.unpack(endian + "HHIIII", body[:20])
            if ifid >= len(interfaces):
                _diag(
                    diagnostics,
                    path,
                    offset,
                    "packet for unknown interface",
                    f"interface id {ifid} was never described; packet skipped",
                )
            else:
                linktype, per_second, tsoffset = interfaces[ifid]
                ticks = (hi << 32) | lo
                ts = tsoffset * 1_000_000_000 + ticks * 1_000_000_000 // per_second
                yield {
                    "ts": ts,
                    "linktype": linktype,
                    "data": body[20 : 20 + caplen],
                    "wirelen": wirelen,
                    "offset": offset,
                }
        elif btype == 3:  # Simple Packet Block: interface 0, no timestamp
            if interfaces:
                wirelen = struct.unpack(endian + "I", body[:4])[0]
                yield {
                    "ts": None,
                    "linktype": interfaces[0][0],
                    "data": body[4 : 4 + min(wirelen, len(body) - 8)],
                    "wirelen": wirelen,
                    "offset": offset,
                }
        offset += blen


def iter_records(path, diagnostics: list):
    """Yield ``{ts (ns, UTC), linktype, data, wirelen, offset}`` per captured frame.

    Problems (unknown format, truncation, corrupt lengths) are appended to
    ``diagnostics`` and end the file; every record before them is yielded.
    Example: ``sum(1 for _ in iter_records("net.pcap", []))``
    """
    try:
        fh = open(path, "rb", buffering=_READ)
    except OSError as exc:
        _diag(diagnostics, path, 0, "capture not readable", f"{type(exc).__name__}: {exc.strerror or exc}", "error")
        return
    with fh:
        header = fh.read(24)
        if header[:4] in PCAP_MAGIC and len(header) == 24:
            yield from _pcap_records(fh, path, header, diagnostics)
        elif len(header) >= 4 and struct.unpack("<I", header[:4])[0] == PCAPNG_SHB:
            fh.seek(0)
            yield from _pcapng_records(fh, path, diagnostics)
        elif header[:4] in PCAP_MAGIC:
            _diag(diagnostics, path, 0, "truncated capture", f"pcap header is {len(header)} of 24 bytes", "error")
        else:
            _diag(
                diagnostics,
                path,
                0,
                "not a capture",
                f"starts with {header[:4].hex() or 'nothing'}: neither pcap nor pcapng",
                "error",
            )


_IP4 = struct.Struct("!BBHHHBBH4s4s")
_PORTS = struct.Struct("!HH")
_TCP = struct.Struct("!HHIIBB")


def _fast_ipv4(data: bytes, off: int):
    """Ethernet+IPv4+TCP/UDP straight from the bytes (the bulk of any capture).

    dpkt builds an object per layer, which made it ~60% of the engine's time;
    anything unusual (options we cannot bound, fragments, short headers,
    other protocols) returns None and goes through dpkt instead.
    """
    vihl, _tos, total, _id, frag, _ttl, proto, _sum, src, dst = _IP4.unpack_from(data, off)
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or ihl < 20 or frag & 0x3FFF:
        return None
    end = off + total if total else len(data)  # total 0: a TSO frame captured before segmentation
    l4 = off + ihl
    if proto == 6 and len(data) >= l4 + 20:
        sport, dport, seq, _ack, doff, flags = _TCP.unpack_from(data, l4)
        hl = (doff >> 4) * 4
        if hl < 20 or len(data) < l4 + hl:
            return None
        return ("tcp", 4, src, dst, sport, dport, flags, seq, data[l4 + hl : end], None, None)
    if proto == 17 and len(data) >= l4 + 8:
        sport, dport = _PORTS.unpack_from(data, l4)
        return ("udp", 4, src, dst, sport, dport, 0, 0, data[l4 + 8 : end], None, None)
    return None


def _from_dpkt(ip):
    version = 4 if isinstance(ip, dpkt.ip.IP) else 6
    if version == 4 and (ip.mf or ip.offset):
        return ("fragment", 4, ip.src, ip.dst, None, None, 0, 0, b"", None, None)
    l4 = ip.data
    if isinstance(l4, dpkt.tcp.TCP):
        return ("tcp", version, ip.src, ip.dst, l4.sport, l4.dport, l4.flags, l4.seq, bytes(l4.data), None, None)
    if isinstance(l4, dpkt.udp.UDP):
        return ("udp", version, ip.src, ip.dst, l4.sport, l4.dport, 0, 0, bytes(l4.data), None, None)
    if isinstance(l4, (dpkt.icmp.ICMP, dpkt.icmp6.ICMP6)):
        kind = "icmp" if version == 4 else "icmp6"
        echo = isinstance(l4.data, (dpkt.icmp.ICMP.Echo, dpkt.icmp6.ICMP6.Echo)) and l4.type in (0, 8, 128, 129)
        ident = ("echo", l4.data.id) if echo else ("type", l4.type, l4.code)
        return (kind, version, ip.src, ip.dst, None, None, 0, 0, b"", ident, l4.type)
    known = ip.p in (1, 6, 17, 58)  # a known protocol dpkt left undecoded: its header is broken
    return ("malformed" if known else "other", version, ip.src, ip.dst, None, None, 0, 0, b"", None, None)


def _mac(raw: bytes) -> str:
    return raw.hex(":")


def decode_frame(linktype: int, data: bytes):
    """``(src_mac, dst_mac, packet)`` for one frame; packet None if not IP.

    ``packet`` is a tuple ``(kind, ip_version, src, dst, sport, dport,
    tcp_flags, seq, payload, icmp_ident, icmp_type)`` with kind one of tcp,
    udp, icmp, icmp6, fragment, other, malformed and raw 4/16-byte addresses.
    MACs are lowercase ``aa:bb:..`` strings, None where the link type has none.
    Raises ``dpkt.UnpackError``/``dpkt.NeedData``/``struct.error`` on a
    malformed frame and ``ValueError`` on an undecodable link type.
    Example: ``decode_frame(1, frame)[2][0]`` -> ``"tcp"``
    """
    if linktype == 1 and len(data) >= 34 and data[12:14] == b"\x08\x00":
        fast = _fast_ipv4(data, 14)
        if fast is not None:
            return data[6:12].hex(":"), data[:6].hex(":"), fast
    src, dst, ip = _decode_dpkt(linktype, data)
    return src, dst, (_from_dpkt(ip) if ip is not None else None)


def _decode_dpkt(linktype: int, data: bytes):
    if linktype == 1:
        eth = dpkt.ethernet.Ethernet(data)
        ip = eth.data if isinstance(eth.data, (dpkt.ip.IP, dpkt.ip6.IP6)) else None
        return _mac(eth.src), _mac(eth.dst), ip
    if linktype in (12, 14, 101):
        version = data[0] >> 4 if data else 0
        return None, None, dpkt.ip.IP(data) if version == 4 else dpkt.ip6.IP6(data) if version == 6 else None
    if linktype == 228:
        return None, None, dpkt.ip.IP(data)
    if linktype == 229:
        return None, None, dpkt.ip6.IP6(data)
    if linktype in (0, 108):
        family = struct.unpack("<I" if data[:2] != b"\0\0" else ">I", data[:4])[0] if len(data) >= 4 else 0
        inner = data[4:]
        if family == 2:
            return None, None, dpkt.ip.IP(inner)
        if family in (10, 24, 28, 30):
            return None, None, dpkt.ip6.IP6(inner)
        return None, None, None
    if linktype == 113:
        sll = dpkt.sll.SLL(data)
        src = _mac(sll.hdr[: sll.hlen]) if sll.hlen == 6 else None
        ip = sll.data if isinstance(sll.data, (dpkt.ip.IP, dpkt.ip6.IP6)) else None
        return src, None, ip  # the SLL address is always the sender's, whatever the direction
    if linktype == 276:
        sll = dpkt.sll2.SLL2(data)
        src = _mac(sll.hdr[: sll.hlen]) if sll.hlen == 6 else None
        ip = sll.data if isinstance(sll.data, (dpkt.ip.IP, dpkt.ip6.IP6)) else None
        return src, None, ip
    raise ValueError(f"{link_name(linktype)} frames cannot be decoded into IP packets")
