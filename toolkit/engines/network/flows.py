"""Flow tracking: packets -> TCP/UDP/ICMP flows with state, counters and streams.

The initiator is the ``src`` side: the sender of a SYN (or receiver of a
SYN-ACK); without a handshake, the side on an unprivileged port talking to a
privileged one, else whoever spoke first. A TCP flow is settled (streams
closed and parsed, buffers freed) when both FINs or an RST were seen; a new
SYN on a settled 5-tuple starts a new flow (port reuse).

Example::

    tr = new_tracker(Path("derived/streams"), macs=["52:54:00:12:34:56"])
    for rec in iter_records("net.pcap", tr["diagnostics"]):
        add_record(tr, rec)
    tables = finish(tr)   # {"flows": [...], "dns": [...], "http": [...], "tls": [...]}
"""

from __future__ import annotations

import hashlib
import io
import socket
import struct
from pathlib import Path

import dpkt

from toolkit.engines.network import protocols as P
from toolkit.engines.network import streams as S
from toolkit.engines.network.capture import decode_frame
from toolkit.schemas import diagnostic

TCP_FLAG_NAMES = [
    (dpkt.tcp.TH_SYN, "SYN"),
    (dpkt.tcp.TH_ACK, "ACK"),
    (dpkt.tcp.TH_PUSH, "PSH"),
    (dpkt.tcp.TH_FIN, "FIN"),
    (dpkt.tcp.TH_RST, "RST"),
    (dpkt.tcp.TH_URG, "URG"),
    (dpkt.tcp.TH_ECE, "ECE"),
    (dpkt.tcp.TH_CWR, "CWR"),
]
DIRS = ("src_to_dst", "dst_to_src")
DNS_PORTS = {53, 5353, 5355}
# Memory bounds: every HOUSEKEEPING frames, unwritten stream bytes over
# PENDING_BUDGET are flushed to disk, and idle flows are finalised (capture
# time): settled TCP after TCP_IDLE, UDP/ICMP after DGRAM_IDLE (a packet after
# that starts a new flow row). Open TCP flows stay until the end of the capture.
HOUSEKEEPING = 8192
PENDING_BUDGET = 128 * 1024 * 1024
TCP_IDLE = 120 * 1_000_000_000
DGRAM_IDLE = 300 * 1_000_000_000


MAX_BURSTS = 4096  # per flow: enough to see a rhythm, bounded memory on long sessions


def new_tracker(spool_dir: Path | None, macs=None) -> dict:
    """Empty tracking state; streams spool under ``spool_dir`` (None: heads only)."""
    if spool_dir is not None:
        Path(spool_dir).mkdir(parents=True, exist_ok=True)
    return {
        "spool_dir": Path(spool_dir) if spool_dir else None,
        "macs": {m.lower() for m in macs or []},
        "flows": {},
        "done": [],
        "dns": [],
        "http": [],
        "tls": [],
        "diagnostics": [],
        "counts": {"frames": 0, "foreign": 0, "non_ip": 0, "malformed": 0, "fragments": 0, "other_l4": 0},
        "first_bad": {},
        "bad_links": {},
        "last_ts": 0,
        "serial": 0,
    }


def _ip(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def _client_first(sport: int, dport: int) -> bool:
    if dport < 1024 <= sport:
        return True
    if sport < 1024 <= dport:
        return False
    return True


def _count(tr, what, rec):
    tr["counts"][what] += 1
    tr["first_bad"].setdefault(what, rec["offset"])


def _housekeeping(tr, now) -> None:
    flows = tr["flows"]
    streams = [s for f in flows.values() for s in f["streams"] if s is not None]
    if sum(len(s["pending"]) for s in streams) > PENDING_BUDGET:
        for s in streams:
            S.flush(s)
    for key in [
        k
        for k, f in flows.items()
        if now - f["last"] > (DGRAM_IDLE if f["proto"] != "tcp" else TCP_IDLE if f["settled"] else float("inf"))
    ]:
        tr["done"].append(_row(tr, flows.pop(key)))


def add_record(tr: dict, rec: dict, where: str = "") -> None:
    """Decode one captured frame and account it to its flow."""
    tr["counts"]["frames"] += 1
    ts = rec["ts"] if rec["ts"] is not None else tr["last_ts"]
    tr["last_ts"] = ts
    if tr["counts"]["frames"] % HOUSEKEEPING == 0:
        _housekeeping(tr, ts)
    try:
        src_mac, dst_mac, pkt = decode_frame(rec["linktype"], rec["data"])
    except ValueError:
        tr["bad_links"].setdefault(rec["linktype"], [where, rec["offset"], 0])[2] += 1
        return
    except (dpkt.UnpackError, dpkt.NeedData, struct.error, IndexError):
        _count(tr, "malformed", rec)
        return
    vm_mac = None
    if tr["macs"]:
        vm_mac = src_mac if src_mac in tr["macs"] else dst_mac if dst_mac in tr["macs"] else None
        if vm_mac is None:
            tr["counts"]["foreign"] += 1
            return
    if pkt is None:
        tr["counts"]["non_ip"] += 1
        return
    proto, ipv, src, dst, sport, dport, flags, seq, payload, ident, icmp_type = pkt
    if proto in ("fragment", "other", "malformed"):
        _count(tr, {"fragment": "fragments", "other": "other_l4"}.get(proto, "malformed"), rec)
        return
    a, b = (src, sport or 0), (dst, dport or 0)
    key = (proto, ident) + ((a, b) if a <= b else (b, a))
    flow = tr["flows"].get(key)
    syn, ack = flags & dpkt.tcp.TH_SYN, flags & dpkt.tcp.TH_ACK
    if flow is not None and flow["settled"] and syn and not ack:
        tr["done"].append(_row(tr, tr["flows"].pop(key)))
        flow = None
    if flow is None:
        if proto == "tcp" and syn:
            forward = not ack
        elif proto in ("tcp", "udp"):
            forward = _client_first(sport, dport)
        else:
            forward = icmp_type not in (0, 129)  # an echo reply's sender is the responder
        flow = _new_flow(tr, proto, (a, b) if forward else (b, a), ts, ipv)
        tr["flows"][key] = flow
        flow["icmp_type"] = icmp_type
    d = 0 if a == flow["src"] else 1
    flow["last"] = ts
    flow["packets"][d] += 1
    flow["bytes"][d] += rec["wirelen"]
    if flow["macs"][d] is None:
        flow["macs"][d] = src_mac
        flow["macs"][1 - d] = flow["macs"][1 - d] or dst_mac
    flow["vm_mac"] = flow["vm_mac"] or vm_mac
    if proto == "tcp":
        _tcp(tr, flow, d, flags, seq, payload, ts)
    elif proto == "udp" and payload:
        _udp(tr, flow, d, payload, ts)


def _new_flow(tr, proto, ends, ts, ipv) -> dict:
    (src, sport), (dst, dport) = ends
    tr["serial"] += 1
    ident = f"{proto}|{_ip(src)}|{sport}|{_ip(dst)}|{dport}|{ts}|{tr['serial']}"
    return {
        "id": hashlib.sha1(ident.encode()).hexdigest()[:16],
        "proto": proto,
        "src": (src, sport),
        "dst": (dst, dport),
        "ipv": ipv,
        "first": ts,
        "last": ts,
        "packets": [0, 0],
        "bytes": [0, 0],
        "payload": [0, 0],
        "flags": 0,
        "syn": False,
        "synack": False,
        "established": False,
        "fin": [False, False],
        "rst": False,
        "settled": False,
        "macs": [None, None],
        "vm_mac": None,
        "streams": [None, None],
        "last_talker": None,
        "icmp_type": None,
        "app": set(),
        "stats": {},
        "bursts": [],
        "burst_bytes": [],
    }


def _stream(tr, flow, d) -> dict:
    if flow["streams"][d] is None:
        spool = tr["spool_dir"] / f"{flow['id']}.{DIRS[d]}.bin" if tr["spool_dir"] else None
        flow["streams"][d] = S.new_stream(spool)
    return flow["streams"][d]


def _payload(tr, flow, d, data, ts) -> dict:
    flow["payload"][d] += len(data)
    stream = _stream(tr, flow, d)
    if flow["last_talker"] != d:
        S.mark(stream, ts)
        flow["last_talker"] = d
        # Start times and sizes of the initiator's turns: the rhythm a beacon betrays.
        if d == 0 and len(flow["bursts"]) < MAX_BURSTS:
            flow["bursts"].append(ts)
            flow["burst_bytes"].append(0)
    if d == 0 and flow["last_talker"] == 0 and flow["burst_bytes"] and len(flow["bursts"]) <= MAX_BURSTS:
        flow["burst_bytes"][-1] += len(data)
    return stream


def mean_cv(values: list) -> tuple[float | None, float | None]:
    """(mean, coefficient of variation = stdev / mean) of numbers; (None, None) for none.

    >>> mean_cv([2.0, 2.0, 2.0])
    (2.0, 0.0)
    """
    if not values:
        return None, None
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    return mean, ((var**0.5) / mean if mean > 0 else None)


def burst_stats(times: list, sizes: list | None = None) -> dict:
    """Count, mean (seconds) and coefficient of variation of the gaps between the initiator's turns,
    and the mean and variation of the bytes it sent per turn.

    Packet times here are integer nanoseconds since the epoch.
    """
    gaps = [(b - a) / 1e9 for a, b in zip(times, times[1:]) if b is not None and a is not None]
    size_mean, size_cv = mean_cv([float(n) for n in sizes or []])
    if not gaps:
        return {
            "beacon_intervals": 0,
            "beacon_interval_mean": None,
            "beacon_interval_cv": None,
            "beacon_size_mean": size_mean,
            "beacon_size_cv": size_cv,
        }
    mean, cv = mean_cv(gaps)
    return {
        "beacon_intervals": len(gaps),
        "beacon_interval_mean": mean,
        "beacon_interval_cv": cv,
        "beacon_size_mean": size_mean,
        "beacon_size_cv": size_cv,
    }


def _tcp(tr, flow, d, flags, seq, payload, ts) -> None:
    flow["flags"] |= flags
    syn, ack = flags & dpkt.tcp.TH_SYN, flags & dpkt.tcp.TH_ACK
    if syn and not ack and d == 0:
        flow["syn"] = True
    elif syn and ack and d == 1:
        flow["synack"] = True
    elif ack and d == 0 and flow["synack"]:
        flow["established"] = True
    if flags & dpkt.tcp.TH_FIN:
        flow["fin"][d] = True
    if flags & dpkt.tcp.TH_RST:
        flow["rst"] = True
    if flow["settled"]:
        return
    if payload:
        S.tcp_segment(_payload(tr, flow, d, payload, ts), seq, payload, bool(syn))
    elif syn or flow["streams"][d] is None:
        S.tcp_segment(_stream(tr, flow, d), seq, b"", bool(syn))
    if flow["rst"] or all(flow["fin"]):
        _settle(tr, flow)


def _udp(tr, flow, d, data, ts) -> None:
    S.deliver(_payload(tr, flow, d, data, ts), data)
    if flow["src"][1] in DNS_PORTS or flow["dst"][1] in DNS_PORTS:
        msg = P.parse_dns(data)
        if msg:
            flow["app"].add("dns")
            tr["dns"] += _dns_rows(flow, msg, ts)


def _ends(flow) -> dict:
    return {
        "flow_id": flow["id"],
        "src_ip": _ip(flow["src"][0]),
        "src_port": flow["src"][1] if flow["proto"] in ("tcp", "udp") else None,
        "dst_ip": _ip(flow["dst"][0]),
        "dst_port": flow["dst"][1] if flow["proto"] in ("tcp", "udp") else None,
        "proto": flow["proto"],
    }


def _dns_rows(flow, msg, ts) -> list[dict]:
    base = {
        **_ends(flow),
        "ts": ts,
        "dns_id": msg["id"],
        "qr": msg["qr"],
        "opcode": msg["opcode"],
        "rcode": msg["rcode"] if msg["qr"] == "response" else None,
        "malformed": msg["truncated"],
    }
    q = msg["questions"][0] if msg["questions"] else {"qname": None, "qtype": None}
    longest, entropy = P.label_stats(q["qname"])
    base.update({"qname": q["qname"], "qtype": q["qtype"], "qname_longest_label": longest, "qname_entropy": entropy})
    if msg["qr"] == "query" or not msg["answers"]:
        return [base]
    return [
        {**base, "rname": a["rname"], "rtype": a["rtype"], "ttl": a["ttl"], "answer": a["answer"]}
        for a in msg["answers"]
    ]


def _open_stream(stream):
    """A seekable view of a stream: its spool file, else its in-memory head."""
    if stream["spool"] is not None and stream["error"] is None and stream["file_bytes"]:
        return open(stream["spool"], "rb")
    return io.BytesIO(bytes(stream["head"]))


def _settle(tr, flow) -> None:
    """Close both streams, run the stream parsers, free the buffers."""
    if flow["settled"]:
        return
    flow["settled"] = True
    for d, stream in enumerate(flow["streams"]):
        if stream is None:
            continue
        S.close_stream(stream)
        if stream["error"]:
            tr["diagnostics"].append(
                diagnostic(
                    "warning",
                    f"stream {flow['id']}.{DIRS[d]}",
                    str(stream["spool"]),
                    f"spool write failed: {stream['error']}",
                )
            )
    client, server = flow["streams"]
    if flow["proto"] == "tcp" and client is not None:
        head = bytes(client["head"])
        if (flow["dst"][1] in DNS_PORTS or flow["src"][1] in DNS_PORTS) and head:
            for msg in P.dns_over_tcp(head):
                tr["dns"] += _dns_rows(flow, msg, S.ts_at(client, 0))
            if server is not None:
                for msg in P.dns_over_tcp(bytes(server["head"])):
                    tr["dns"] += _dns_rows(flow, msg, S.ts_at(server, 0))
        elif head[:1] == b"\x16":
            _tls(tr, flow, client, server)
        elif head[:1].isupper():
            _http(tr, flow, client, server)
        elif head.lstrip()[:1] == b"{" and any(m.startswith("mining.") for m in P.jsonrpc_methods(head)):
            flow["app"].add("stratum")  # a miner's pool protocol, on whatever port
    flow["stats"] = {
        d: {k: s[k] for k in ("size", "gaps", "gap_bytes", "retrans", "overlap_bytes", "spool", "file_bytes")}
        for d, s in enumerate(flow["streams"])
        if s is not None
    }
    flow["streams"] = [None, None]


def _tls(tr, flow, client, server) -> None:
    hello = P.tls_client_hello(bytes(client["head"]))
    if hello is None:
        return
    flow["app"].add("tls")
    row = {**_ends(flow), "ts": S.ts_at(client, 0), **hello}
    if server is not None:
        row.update(P.tls_server_hello(bytes(server["head"])) or {})
    tr["tls"].append(row)


def _http(tr, flow, client, server) -> None:
    with _open_stream(client) as fh:
        requests = list(P.http_messages(fh, "request"))
    if not requests:
        return
    flow["app"].add("http")
    responses = []
    if server is not None:
        with _open_stream(server) as fh:
            responses = list(P.http_messages(fh, "response"))
    for i, req in enumerate(requests):
        method, target, version = (P.text(x) for x in req["start_line"])
        h = req["headers"]
        resp = responses[i] if i < len(responses) else None
        tr["http"].append(
            {
                **_ends(flow),
                "ts": S.ts_at(client, req["offset"]),
                "method": method,
                "host": h.get("host"),
                "url_path": target,
                "http_version": version,
                "user_agent": h.get("user-agent"),
                "referer": h.get("referer"),
                "content_type": h.get("content-type"),
                "stream_offset": req["offset"],
                "status_code": int(resp["start_line"][1]) if resp else None,
            }
        )


def _state(flow) -> str | None:
    if flow["proto"] != "tcp":
        return "TWO_WAY" if all(flow["packets"]) else "ONE_WAY"
    if flow["rst"]:
        return "RST"
    if all(flow["fin"]):
        return "CLOSED"
    if any(flow["fin"]):
        return "FIN"
    if flow["established"] or (flow["synack"] and all(flow["payload"])):
        return "ESTABLISHED"
    if flow["synack"]:
        return "SYN_RECEIVED"
    if flow["syn"]:
        return "SYN_SENT"
    return "MIDSTREAM"


def _row(tr, flow) -> dict:
    _settle(tr, flow)
    st = flow["stats"]
    row = {
        **_ends(flow),
        "ip_version": flow["ipv"],
        "first_ts": flow["first"],
        "last_ts": flow["last"],
        "src_packets": flow["packets"][0],
        "dst_packets": flow["packets"][1],
        "src_bytes": flow["bytes"][0],
        "dst_bytes": flow["bytes"][1],
        "src_payload_bytes": flow["payload"][0],
        "dst_payload_bytes": flow["payload"][1],
        "tcp_flags": ",".join(n for bit, n in TCP_FLAG_NAMES if flow["flags"] & bit)
        if flow["proto"] == "tcp"
        else None,
        "state": _state(flow),
        "handshake": flow["syn"] and flow["synack"] if flow["proto"] == "tcp" else None,
        "src_mac": flow["macs"][0],
        "dst_mac": flow["macs"][1],
        "vm_mac": flow["vm_mac"],
        "icmp_type": flow["icmp_type"],
        "app_proto": ",".join(sorted(flow["app"])) or None,
        "retransmits": sum(s["retrans"] for s in st.values()) if st else 0,
        "gaps": sum(s["gaps"] for s in st.values()) if st else 0,
        "gap_bytes": sum(s["gap_bytes"] for s in st.values()) if st else 0,
        **burst_stats(flow["bursts"], flow["burst_bytes"]),
    }
    for d, prefix in ((0, "src"), (1, "dst")):
        s = st.get(d)
        row[f"{prefix}_stream_bytes"] = s["size"] if s else 0
        row[f"{prefix}_stream_file"] = str(s["spool"]) if s and s["file_bytes"] == s["size"] and s["size"] else None
    return row


def finish(tr: dict) -> dict:
    """Settle every open flow; returns row lists for flows, dns, http, tls (+ diagnostics)."""
    for flow in tr["flows"].values():
        tr["done"].append(_row(tr, flow))
    tr["flows"] = {}
    return {"flows": tr["done"], "dns": tr["dns"], "http": tr["http"], "tls": tr["tls"]}
