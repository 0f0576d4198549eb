"""DNS, HTTP, TLS ClientHello/ServerHello and JSON-RPC (stratum) parsers (all input is hostile).

Every parser takes bytes it does not trust, bounds every length it reads and
returns plain dicts of raw values (names and headers decoded as UTF-8 with
backslash escapes for bytes that are not; renderers do any display escaping).
A malformed message yields what was parsed before the problem, never an
exception.

Example::

    hello = tls_client_hello(client_head)
    hello["sni"], hello["ja3"]       # "example.org", "e7d705a3286e19ea42f587b344ee6865"
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import socket
import struct

DNS_TYPES = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    65: "HTTPS",
    255: "ANY",
}
DNS_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
MAX_DNS_RECORDS = 256


def text(raw: bytes) -> str:
    """Bytes from the wire as a str without losing anything: UTF-8, else backslash escapes."""
    return raw.decode("utf-8", errors="backslashreplace")


def _name(buf: bytes, pos: int) -> tuple[str, int]:
    """A (possibly compressed) DNS name at ``pos``; returns (name, position after it)."""
    labels, end, jumps, total = [], None, 0, 0
    while True:
        if pos >= len(buf):
            raise ValueError("name runs past the message")
        n = buf[pos]
        if n & 0xC0 == 0xC0:
            if pos + 1 >= len(buf) or jumps > 32:
                raise ValueError("bad compression pointer")
            if end is None:
                end = pos + 2
            pos, jumps = ((n & 0x3F) << 8) | buf[pos + 1], jumps + 1
            continue
        if n & 0xC0:
            raise ValueError("bad label length")
        pos += 1
        if n == 0:
            break
        labels.append(text(buf[pos : pos + n]))
        total += n + 1
        if total > 255 or pos + n > len(buf):
            raise ValueError("name too long")
        pos += n
    return ".".join(labels), end if end is not None else pos


def _rdata(buf: bytes, rtype: int, start: int, length: int) -> str:
    data = buf[start : start + length]
    if rtype == 1 and length == 4:
        return socket.inet_ntop(socket.AF_INET, data)
    if rtype == 28 and length == 16:
        return socket.inet_ntop(socket.AF_INET6, data)
    if rtype in (2, 5, 12):
        return _name(buf, start)[0]
    if rtype == 15 and length > 2:
        return _name(buf, start + 2)[0]
    if rtype == 16:
        parts, pos = [], 0
        while pos < len(data):
            parts.append(text(data[pos + 1 : pos + 1 + data[pos]]))
            pos += 1 + data[pos]
        return "".join(parts)
    return data.hex()


def parse_dns(buf: bytes) -> dict | None:
    """A DNS message as ``{id, qr, opcode, rcode, questions, answers}``; None if not DNS.

    Example: ``parse_dns(udp_payload)["questions"]`` -> ``[{"qname": "example.org", "qtype": "A"}]``
    """
    if len(buf) < 12:
        return None
    ident, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", buf[:12])
    msg = {
        "id": ident,
        "qr": "response" if flags & 0x8000 else "query",
        "opcode": (flags >> 11) & 0xF,
        "rcode": DNS_RCODES.get(flags & 0xF, str(flags & 0xF)),
        "questions": [],
        "answers": [],
        "truncated": False,
    }
    pos = 12
    try:
        for _ in range(min(qd, MAX_DNS_RECORDS)):
            qname, pos = _name(buf, pos)
            qtype, _qclass = struct.unpack("!HH", buf[pos : pos + 4])
            pos += 4
            msg["questions"].append({"qname": qname, "qtype": DNS_TYPES.get(qtype, str(qtype))})
        for _ in range(min(an, MAX_DNS_RECORDS)):
            rname, pos = _name(buf, pos)
            rtype, _rclass, ttl, rdlen = struct.unpack("!HHIH", buf[pos : pos + 10])
            pos += 10
            if pos + rdlen > len(buf):
                raise ValueError("record runs past the message")
            msg["answers"].append(
                {
                    "rname": rname,
                    "rtype": DNS_TYPES.get(rtype, str(rtype)),
                    "ttl": ttl,
                    "answer": _rdata(buf, rtype, pos, rdlen),
                }
            )
            pos += rdlen
    except (ValueError, struct.error, IndexError):
        msg["truncated"] = True
        if not msg["questions"]:
            return None
    return msg


def dns_over_tcp(head: bytes):
    """DNS messages from a TCP stream (2-byte length prefix each)."""
    pos = 0
    while pos + 2 <= len(head):
        n = struct.unpack("!H", head[pos : pos + 2])[0]
        if n == 0 or pos + 2 + n > len(head):
            return
        msg = parse_dns(head[pos + 2 : pos + 2 + n])
        if msg:
            yield msg
        pos += 2 + n


def label_stats(qname: str | None) -> tuple[int | None, float | None]:
    """(longest label, Shannon entropy in bits per character of the labels left of the last two):
    what DNS tunnels betray, data packed into long random-looking subdomains.

    >>> label_stats("www.example.com")
    (7, 0.0)
    >>> label_stats(None)
    (None, None)
    """
    if not qname:
        return None, None
    labels = [x for x in qname.rstrip(".").split(".") if x]
    if not labels:
        return None, None
    sub = "".join(labels[:-2]) if len(labels) > 2 else ""
    if len(sub) < 2:
        return max(len(x) for x in labels), 0.0
    counts = {c: sub.count(c) for c in set(sub)}
    entropy = -sum(n / len(sub) * math.log2(n / len(sub)) for n in counts.values())
    return max(len(x) for x in labels), round(entropy, 4)


# --- JSON-RPC (stratum) ---------------------------------------------------------
MAX_JSON_LINES = 64


def jsonrpc_methods(head: bytes) -> list[str]:
    """Method names of the newline-delimited JSON-RPC requests at the start of a stream (what the
    stratum mining protocol speaks: mining.subscribe, mining.authorize, mining.submit, ...).
    Only the first MAX_JSON_LINES lines of the stream head are read.

    >>> jsonrpc_methods(b'{"id": 1, "method": "mining.subscribe", "params": []}\\n')
    ['mining.subscribe']
    """
    methods = []
    for line in head.split(b"\n")[:MAX_JSON_LINES]:
        line = line.strip()
        if not line.startswith(b"{"):
            continue
        try:
            msg = json.loads(line)
        except ValueError:  # a line cut by the head's end, or not JSON at all
            continue
        if isinstance(msg, dict) and isinstance(msg.get("method"), str):
            methods.append(msg["method"][:100])
    return methods


# --- HTTP ---------------------------------------------------------------------
_REQUEST = re.compile(rb"^([A-Z]{3,12}) ([^\s]{1,8192}) (HTTP/\d\.\d)\r?$")
_RESPONSE = re.compile(rb"^(HTTP/\d\.\d) (\d{3})(?: ([^\r\n]*))?\r?$")
MAX_HEAD = 64 * 1024
MAX_MESSAGES = 100_000


def _read_at(fh, pos: int, n: int) -> bytes:
    fh.seek(pos)
    return fh.read(n)


def _chunked_end(fh, pos: int) -> int | None:
    """Position after a chunked body starting at ``pos`` (None if it does not parse)."""
    for _ in range(1_000_000):
        line = _read_at(fh, pos, 64)
        eol = line.find(b"\r\n")
        if eol < 1:
            return None
        try:
            size = int(line[:eol].split(b";")[0], 16)
        except ValueError:
            return None
        pos += eol + 2
        if size == 0:
            trailer = _read_at(fh, pos, MAX_HEAD)
            end = trailer.find(b"\r\n") if trailer.startswith(b"\r\n") else trailer.find(b"\r\n\r\n")
            return pos + (2 if trailer.startswith(b"\r\n") else (end + 4 if end >= 0 else len(trailer)))
        pos += size + 2
    return None


def http_messages(fh, kind: str):
    """HTTP requests (``kind="request"``) or responses found back to back in a stream file.

    Yields ``{offset, start_line: (3 raw byte fields), headers: {lower name: raw value}}``;
    stops at the first thing that is not HTTP (or at a body without a length).
    Example: ``list(http_messages(open(spool, "rb"), "request"))``
    """
    pattern = _REQUEST if kind == "request" else _RESPONSE
    pos = 0
    for _ in range(MAX_MESSAGES):
        head = _read_at(fh, pos, MAX_HEAD)
        end = head.find(b"\r\n\r\n")
        sep = 4
        if end < 0:
            end, sep = head.find(b"\n\n"), 2
        if end < 0:
            return
        lines = head[:end].split(b"\n")
        m = pattern.match(lines[0])
        if not m:
            return
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.setdefault(text(name.strip()).lower(), text(value.strip()))
        yield {"offset": pos, "start_line": m.groups(), "headers": headers}
        pos += end + sep
        if "chunked" in headers.get("transfer-encoding", "").lower():
            pos = _chunked_end(fh, pos)
            if pos is None:
                return
        elif headers.get("content-length", "").isdigit():
            pos += int(headers["content-length"])
        elif kind == "response":
            status = int(m.group(2))
            if not (100 <= status < 200 or status in (204, 304)):
                return  # body runs to the end of the connection


# --- TLS ----------------------------------------------------------------------
def _grease(value: int) -> bool:
    # RFC 8701 GREASE values: 0x?a?a with both bytes equal; JA3 ignores them
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


def _handshake(head: bytes, wanted: int) -> bytes | None:
    """The body of the first handshake message of type ``wanted``, joined across records."""
    pos, hs = 0, bytearray()
    while pos + 5 <= len(head) and len(hs) < MAX_HEAD:
        ctype, major, _minor, length = (
            head[pos],
            head[pos + 1],
            head[pos + 2],
            struct.unpack("!H", head[pos + 3 : pos + 5])[0],
        )
        if ctype != 22 or major != 3:
            break
        hs += head[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(hs) >= 4 and len(hs) >= 4 + int.from_bytes(hs[1:4], "big"):
            break
    if len(hs) < 4 or hs[0] != wanted:
        return None
    return bytes(hs[4 : 4 + int.from_bytes(hs[1:4], "big")])


def _u16s(data: bytes) -> list[int]:
    return [v for (v,) in struct.iter_unpack("!H", data[: len(data) // 2 * 2])]


def _extensions(body: bytes, pos: int) -> list[tuple[int, bytes]]:
    out = []
    if pos + 2 > len(body):
        return out
    end = min(len(body), pos + 2 + struct.unpack("!H", body[pos : pos + 2])[0])
    pos += 2
    while pos + 4 <= end:
        etype, elen = struct.unpack("!HH", body[pos : pos + 4])
        out.append((etype, body[pos + 4 : pos + 4 + elen]))
        pos += 4 + elen
    return out


def tls_client_hello(head: bytes) -> dict | None:
    """SNI, ALPN, versions and the JA3 fingerprint of a ClientHello at the stream start.

    JA3 string: ``version,ciphers,extensions,groups,point_formats`` (decimal,
    ``-``-joined, GREASE removed); ``ja3`` is its md5 hex.
    Example: ``tls_client_hello(head)["sni"]`` -> ``"example.org"``
    """
    body = _handshake(head, 1)
    if body is None or len(body) < 38:
        return None
    try:
        version = struct.unpack("!H", body[:2])[0]
        pos = 34 + 1 + body[34]
        nciph = struct.unpack("!H", body[pos : pos + 2])[0]
        ciphers = [c for c in _u16s(body[pos + 2 : pos + 2 + nciph]) if not _grease(c)]
        pos += 2 + nciph
        pos += 1 + body[pos]
        exts = _extensions(body, pos)
    except (struct.error, IndexError):
        return None
    out = {"client_version": version, "sni": None, "alpn": None, "supported_versions": None}
    groups, formats = [], []
    for etype, data in exts:
        if etype == 0 and len(data) >= 5 and data[2] == 0:
            out["sni"] = text(data[5 : 5 + struct.unpack("!H", data[3:5])[0]])
        elif etype == 10:
            groups = [g for g in _u16s(data[2:]) if not _grease(g)]
        elif etype == 11 and data:
            formats = list(data[1 : 1 + data[0]])
        elif etype == 16 and len(data) > 2:
            names, p = [], 2
            while p < len(data):
                names.append(text(data[p + 1 : p + 1 + data[p]]))
                p += 1 + data[p]
            out["alpn"] = ",".join(names)
        elif etype == 43 and data:
            out["supported_versions"] = ",".join(str(v) for v in _u16s(data[1 : 1 + data[0]]) if not _grease(v))
    ext_ids = [e for e, _ in exts if not _grease(e)]
    ja3 = ",".join(
        [
            str(version),
            "-".join(map(str, ciphers)),
            "-".join(map(str, ext_ids)),
            "-".join(map(str, groups)),
            "-".join(map(str, formats)),
        ]
    )
    out.update({"ja3_string": ja3, "ja3": hashlib.md5(ja3.encode()).hexdigest()})
    return out


def tls_server_hello(head: bytes) -> dict | None:
    """The chosen cipher and JA3S (``version,cipher,extensions``) of a ServerHello."""
    body = _handshake(head, 2)
    if body is None or len(body) < 38:
        return None
    try:
        version = struct.unpack("!H", body[:2])[0]
        pos = 34 + 1 + body[34]
        cipher = struct.unpack("!H", body[pos : pos + 2])[0]
        exts = _extensions(body, pos + 3)
    except (struct.error, IndexError):
        return None
    ja3s = f"{version},{cipher},{'-'.join(str(e) for e, _ in exts)}"
    return {"server_cipher": cipher, "ja3s_string": ja3s, "ja3s": hashlib.md5(ja3s.encode()).hexdigest()}
