"""Tables of the network and YARA engines (toolkit/engines/network/, toolkit/engines/yara/)."""

from toolkit.schemas.core import BOOL, BYTES, FLOAT, INT, STRING, TIME, UINT, declare

# --- network tables (toolkit/engines/network/) ---
_FIVE_TUPLE = {
    "flow_id": STRING,
    "src_ip": STRING,
    "src_port": INT,
    "dst_ip": STRING,
    "dst_port": INT,
    "proto": STRING,
}  # src = the flow's initiator (client)

declare(
    "network/flows",
    {
        "flow_id": STRING,
        "proto": STRING,  # tcp | udp | icmp | icmp6
        "ip_version": INT,
        "src_ip": STRING,
        "src_port": INT,  # the initiator
        "dst_ip": STRING,
        "dst_port": INT,
        "first_ts": TIME,
        "last_ts": TIME,
        "src_packets": INT,
        "dst_packets": INT,  # packets sent by src / by dst
        "src_bytes": INT,
        "dst_bytes": INT,  # frame bytes on the wire, each way
        "src_payload_bytes": INT,
        "dst_payload_bytes": INT,  # L4 payload incl. retransmissions
        "tcp_flags": STRING,  # union of flags seen, e.g. "SYN,ACK,PSH,FIN"
        "state": STRING,  # TCP: SYN_SENT SYN_RECEIVED ESTABLISHED FIN CLOSED RST MIDSTREAM; else ONE_WAY/TWO_WAY
        "handshake": BOOL,  # SYN and SYN-ACK both seen
        "retransmits": INT,  # segments whose bytes were already delivered (first copy wins)
        "gaps": INT,
        "gap_bytes": INT,  # holes skipped in reassembly (capture loss): stream offsets shift there
        "src_stream_bytes": INT,
        "dst_stream_bytes": INT,  # reassembled payload each way
        "src_stream_file": STRING,
        "dst_stream_file": STRING,  # spooled stream under derived_dir, None if not kept
        "src_mac": STRING,
        "dst_mac": STRING,
        "vm_mac": STRING,  # the VM NIC (from domain XML) this flow was seen on
        "icmp_type": INT,
        "app_proto": STRING,  # dns | http | tls | stratum when a parser recognised the payload
        "beacon_intervals": INT,  # gaps between the initiator's successive turns (up to 4096 turns)
        "beacon_interval_mean": FLOAT,  # seconds
        "beacon_interval_cv": FLOAT,  # stdev / mean: near 0 for a clockwork beacon
        "beacon_size_mean": FLOAT,  # payload bytes the initiator sent per turn
        "beacon_size_cv": FLOAT,  # stdev / mean of those: near 0 when every check-in is the same size
    },
    version=2,
    doc="One row per TCP/UDP/ICMP flow in the snapshot's packet captures, initiator as src.",
)

declare(
    "network/dns",
    {
        "ts": TIME,
        **_FIVE_TUPLE,
        "dns_id": INT,
        "qr": STRING,  # query | response
        "opcode": INT,
        "rcode": STRING,
        "qname": STRING,
        "qtype": STRING,
        "rname": STRING,
        "rtype": STRING,
        "ttl": INT,
        "answer": STRING,  # one row per answer record
        "malformed": BOOL,  # the message ended early; fields parsed before that are kept
        "qname_longest_label": INT,  # characters in the query name's longest label
        "qname_entropy": FLOAT,  # bits per character of the labels left of the registered domain
    },
    version=2,
    doc="DNS queries (one row each) and responses (one row per answer record, or one row if none).",
)

declare(
    "network/http",
    {
        "ts": TIME,
        **_FIVE_TUPLE,
        "method": STRING,
        "host": STRING,
        "url_path": STRING,  # request target as sent; not `path`, which names files everywhere else
        "http_version": STRING,
        "user_agent": STRING,
        "referer": STRING,
        "content_type": STRING,
        "status_code": INT,  # status of the response paired by order on the connection
        "stream_offset": INT,  # where the request starts in the client stream
    },
    doc="HTTP/1.x requests parsed from reassembled client streams, with the paired response status.",
)

declare(
    "network/tls",
    {
        "ts": TIME,
        **_FIVE_TUPLE,
        "sni": STRING,
        "alpn": STRING,
        "client_version": INT,
        "supported_versions": STRING,
        "ja3": STRING,
        "ja3_string": STRING,  # md5 of version,ciphers,extensions,groups,point formats (no GREASE)
        "server_cipher": INT,
        "ja3s": STRING,
        "ja3s_string": STRING,
    },
    doc="TLS ClientHello (SNI, ALPN, JA3) and ServerHello (JA3S) per TLS connection.",
)

# --- yara tables (toolkit/engines/yara/) ---
declare(
    "yara/matches",
    {
        "target": STRING,  # process | kernel | physical | file | stream
        "rule": STRING,
        "namespace": STRING,  # namespace = rule file path below its rule directory
        "tags": STRING,  # comma-joined rule tags
        "severity": STRING,  # rule meta: low | medium | high | critical
        "attack_id": STRING,  # rule meta: ATT&CK technique id
        "description": STRING,
        "engine": STRING,  # yara-x | yara-python: which engine matched
        "pid": INT,
        "process": STRING,
        "path": STRING,  # scanned file (disk) or file mapped at the region (memory)
        "region_start": UINT,
        "region_end": UINT,
        "protection": STRING,
        "offset": UINT,  # absolute: virtual address, GPA, file offset or stream offset
        "string_id": STRING,
        "match_length": INT,  # true length of the match
        "matched": BYTES,  # the matched bytes, at most 64 of them
        **_FIVE_TUPLE,
        "direction": STRING,  # stream matches: src_to_dst (initiator's bytes) | dst_to_src
        "sha256": STRING,  # file matches: sha256 of the whole file
    },
    doc="YARA string matches in process/kernel/physical memory, disk files and reassembled network streams; "
    "one row per (rule, string, absolute offset), never duplicated across scan chunks.",
)

declare(
    "yara/rules",
    {"path": STRING, "namespace": STRING, "sha256": STRING, "engine": STRING},
    doc="The rule files of a YARA run, their content hashes and which engine compiled each.",
)
