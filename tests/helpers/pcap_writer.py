"""Builders for synthetic captures used by the network and YARA tests (dpkt writers)."""

from __future__ import annotations

import socket
import struct

import dpkt

VM = "52:54:00:12:34:56"
GW = "52:55:0a:00:02:02"
OTHER_VM = "52:54:00:aa:bb:cc"
SYN, ACK, FIN, RST, PSH = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN, dpkt.tcp.TH_RST, dpkt.tcp.TH_PUSH


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _ip(src, dst, proto, l4):
    if ":" in src:
        return dpkt.ip6.IP6(
            src=socket.inet_pton(socket.AF_INET6, src),
            dst=socket.inet_pton(socket.AF_INET6, dst),
            nxt=proto,
            hlim=64,
            data=l4,
            plen=len(bytes(l4)),
        ), dpkt.ethernet.ETH_TYPE_IP6
    return dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, data=l4), dpkt.ethernet.ETH_TYPE_IP


def eth(src, dst, proto, l4, smac=VM, dmac=GW) -> bytes:
    ip, etype = _ip(src, dst, proto, l4)
    return bytes(dpkt.ethernet.Ethernet(src=mac(smac), dst=mac(dmac), type=etype, data=ip))


def tcp(src, sport, dst, dport, seq, flags, data=b"", ack=0, **kw) -> bytes:
    seg = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq % (1 << 32), ack=ack % (1 << 32), flags=flags, data=data)
    return eth(src, dst, 6, seg, **kw)


def udp(src, sport, dst, dport, data, **kw) -> bytes:
    return eth(src, dst, 17, dpkt.udp.UDP(sport=sport, dport=dport, data=data, ulen=8 + len(data)), **kw)


def icmp_echo(src, dst, ident, reply=False, **kw) -> bytes:
    if ":" in src:
        msg = dpkt.icmp6.ICMP6(
            type=129 if reply else 128, code=0, data=dpkt.icmp6.ICMP6.Echo(id=ident, seq=1, data=b"ping")
        )
        return eth(src, dst, 58, msg, **kw)
    msg = dpkt.icmp.ICMP(type=0 if reply else 8, code=0, data=dpkt.icmp.ICMP.Echo(id=ident, seq=1, data=b"ping"))
    return eth(src, dst, 1, msg, **kw)


def session(
    client, cport, server, sport, exchanges, isn_c=1000, isn_s=5000, close="fin", t0=1_700_000_000.0, cmac=VM, smac=GW
):
    """Frames of a full TCP session: handshake, (client_bytes, server_bytes) turns, FIN or RST."""
    kw_c, kw_s = {"smac": cmac, "dmac": smac}, {"smac": smac, "dmac": cmac}
    t, out = t0, []
    c, s = isn_c, isn_s

    def add(frame):
        nonlocal t
        out.append((t, frame))
        t += 0.001

    add(tcp(client, cport, server, sport, c, SYN, **kw_c))
    add(tcp(server, sport, client, cport, s, SYN | ACK, ack=c + 1, **kw_s))
    c, s = c + 1, s + 1
    add(tcp(client, cport, server, sport, c, ACK, ack=s, **kw_c))
    for cdata, sdata in exchanges:
        if cdata:
            add(tcp(client, cport, server, sport, c, ACK | PSH, cdata, ack=s, **kw_c))
            c += len(cdata)
        if sdata:
            add(tcp(server, sport, client, cport, s, ACK | PSH, sdata, ack=c, **kw_s))
            s += len(sdata)
    if close == "fin":
        add(tcp(client, cport, server, sport, c, FIN | ACK, ack=s, **kw_c))
        add(tcp(server, sport, client, cport, s, FIN | ACK, ack=c + 1, **kw_s))
        add(tcp(client, cport, server, sport, c + 1, ACK, ack=s + 1, **kw_c))
    elif close == "rst":
        add(tcp(client, cport, server, sport, c, RST, **kw_c))
    return out


def write_pcap(path, frames, linktype=1, nano=False):
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh, snaplen=65535, linktype=linktype, nano=nano)
        for ts, frame in frames:
            w.writepkt(frame, ts=ts)
    return path


def write_pcapng(path, frames, linktype=1):
    with open(path, "wb") as fh:
        w = dpkt.pcapng.Writer(fh, snaplen=65535, linktype=linktype)
        for ts, frame in frames:
            w.writepkt(frame, ts=ts)
    return path


def client_hello(sni="beacon.example", grease=True) -> tuple[bytes, str]:
    """A TLS 1.3-style ClientHello record and its expected JA3 string."""

    def ext(etype, data):
        return struct.pack("!HH", etype, len(data)) + data

    ciphers = ([0x0A0A] if grease else []) + [0x1301, 0x1302, 0xC02F]
    groups = ([0x1A1A] if grease else []) + [29, 23]
    name = sni.encode()
    sni_ext = ext(0, struct.pack("!HBH", len(name) + 3, 0, len(name)) + name)
    exts = (
        (ext(0x2A2A, b"") if grease else b"")
        + sni_ext
        + ext(10, struct.pack("!H", 2 * len(groups)) + b"".join(struct.pack("!H", g) for g in groups))
        + ext(11, b"\x01\x00")
        + ext(16, b"\x00\x0c" + b"\x02h2" + b"\x08http/1.1")
        + ext(43, b"\x04" + struct.pack("!HH", 0x0304, 0x0303))
    )
    body = (
        struct.pack("!H", 0x0303)
        + b"\x11" * 32
        + b"\x00"
        + struct.pack("!H", 2 * len(ciphers))
        + b"".join(struct.pack("!H", c) for c in ciphers)
        + b"\x01\x00"
        + struct.pack("!H", len(exts))
        + exts
    )
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    record = b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs
    ja3 = "771,4865-4866-49199,0-10-11-16-43,29-23,0"
    return record, ja3


def server_hello() -> bytes:
    exts = struct.pack("!HH", 43, 2) + struct.pack("!H", 0x0304)
    body = (
        struct.pack("!H", 0x0303)
        + b"\x22" * 32
        + b"\x00"
        + struct.pack("!H", 0x1301)
        + b"\x00"
        + struct.pack("!H", len(exts))
        + exts
    )
    hs = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x03" + struct.pack("!H", len(hs)) + hs


def dns_query(name: str, ident=0x1234, qtype=1) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", qtype, 1)


def dns_answer(name: str, ips, ident=0x1234, rcode=0) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    msg = struct.pack("!HHHHHH", ident, 0x8180 | rcode, 1, len(ips), 0, 0) + q + struct.pack("!HH", 1, 1)
    for ip in ips:
        msg += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + socket.inet_aton(ip)
    return msg
