"""Every table's name, columns, dtypes and version, declared once.

Engines build rows as plain dicts and call :func:`make_table`, which adds the
provenance columns (``snapshot_id``, ``source``), coerces every column to its
declared dtype and refuses unknown columns. Correlation joins on column names,
so a name means the same thing, with the same dtype, in every table.

Example::

    df = make_table("diagnostics", [{"severity": "warning", "what": "page",
                                     "where": "memory.elf@0x1000", "why": "truncated"}],
                    snapshot_id="lab", source="memory/elf")
"""

from __future__ import annotations

import pandas as pd

# dtype vocabulary: pandas extension dtypes so that missing values stay missing
# (an absent ppid is <NA>, never 0) and strings are never objects of mixed type.
STRING = "string"
INT = "Int64"
UINT = "UInt64"  # addresses and inodes can exceed int64's positive range
FLOAT = "float64"
BOOL = "boolean"
TIME = "datetime64[ns, UTC]"
BYTES = "object"  # raw bytes; renderers decide how they look

PROVENANCE = {"snapshot_id": STRING, "source": STRING}

# The one severity scale of findings (and of YARA rule meta), most severe first.
SEVERITIES = ("critical", "high", "medium", "low", "info")
SEVERITY_RANK = {name: rank for rank, name in enumerate(reversed(SEVERITIES))}  # info 0 .. critical 4
# How bad a diagnostic is: error = evidence lost, warning = partly read, info = a note.
DIAGNOSTIC_SEVERITIES = ("error", "warning", "info")


DELETED = " (deleted)"  # what Linux appends to the path of an unlinked file (proc maps, exe links)


def split_deleted(path):
    """(' /tmp/x (deleted)') -> ('/tmp/x', True): engines split the suffix off on intake,
    so tables carry a clean path and a flag. Volatility pads such paths with a space.

    Example::

        >>> split_deleted(" /tmp/.x/kworker (deleted)")
        ('/tmp/.x/kworker', True)
    """
    if not isinstance(path, str):
        return path, None
    path = path.strip()
    if path.endswith(DELETED.strip()):
        return path[: -len(DELETED.strip())].rstrip(), True
    return path, False


def diagnostic(severity: str, what: str, where, why, **extra) -> dict:
    """One ``diagnostics`` row (design.md: "warnings are data").

    Example::

        >>> diagnostic("warning", "page", "memory.elf@0x1000", "truncated")
        {'severity': 'warning', 'what': 'page', 'where': 'memory.elf@0x1000', 'why': 'truncated'}
    """
    if severity not in DIAGNOSTIC_SEVERITIES:
        raise ValueError(f"diagnostic severity {severity!r}: expected one of {DIAGNOSTIC_SEVERITIES}")
    row = {
        "severity": severity,
        "what": what,
        "where": None if where is None else str(where),
        "why": None if why is None else str(why),
    }
    row.update(extra)
    return row


SCHEMAS: dict[str, dict] = {}


def declare(name: str, columns: dict[str, str], *, version: int = 1, doc: str) -> None:
    """Register a table schema; provenance columns are appended automatically."""
    if name in SCHEMAS:
        raise ValueError(f"table {name!r} declared twice")
    cols = dict(columns)
    for col, dtype in PROVENANCE.items():
        cols.setdefault(col, dtype)
    SCHEMAS[name] = {
        "name": name,
        "version": version,
        "doc": doc,
        "columns": cols,
        "timestamps": [c for c, d in cols.items() if d == TIME],
    }


def empty(name: str) -> pd.DataFrame:
    """An empty frame with the table's columns and dtypes."""
    cols = SCHEMAS[name]["columns"]
    return pd.DataFrame({c: pd.Series([], dtype=d) for c, d in cols.items()})


def _coerce(series: pd.Series, dtype: str) -> pd.Series:
    if dtype == TIME:
        return pd.to_datetime(series, utc=True, errors="coerce").astype(TIME)
    if dtype == BYTES:
        return series.astype(object)
    if dtype in (INT, UINT):
        if series.dtype == object:
            # Python ints straight into the nullable array: to_numeric would route a
            # column holding None through float64 and round 64-bit addresses.
            values = [None if (v is None or v is pd.NA or (isinstance(v, float) and v != v)) else v for v in series]
            if all(v is None or isinstance(v, int) for v in values):
                return pd.Series(pd.array(values, dtype=dtype), index=series.index)
        return pd.to_numeric(series, errors="coerce").astype(dtype)
    if dtype == BOOL:
        return series.astype(BOOL)
    return series.astype(dtype)


def make_table(name: str, rows, *, snapshot_id: str, source: str) -> pd.DataFrame:
    """Build a validated table from dict rows (or a DataFrame) plus provenance.

    Unknown columns are an error (a typo must not silently vanish); missing
    columns are filled with <NA>.
    """
    schema = SCHEMAS[name]
    cols = schema["columns"]
    if isinstance(rows, pd.DataFrame):
        df = rows.copy()
    else:
        rows = list(rows)
        keys = list(dict.fromkeys(k for r in rows for k in r))
        # Column by column as objects, so no value is coerced before its declared dtype applies.
        df = pd.DataFrame({k: pd.Series([r.get(k) for r in rows], dtype=object) for k in keys}, index=range(len(rows)))
    unknown = [c for c in df.columns if c not in cols]
    if unknown:
        raise ValueError(f"table {name}: columns not in schema: {unknown}")
    df["snapshot_id"] = snapshot_id
    df["source"] = df["source"] if "source" in df and df["source"].notna().all() else source
    out = {}
    for col, dtype in cols.items():
        series = df[col] if col in df else pd.Series([pd.NA] * len(df), index=df.index)
        out[col] = _coerce(series, dtype)
    return pd.DataFrame(out).reset_index(drop=True)


def validate(name: str, df: pd.DataFrame) -> None:
    """Raise ValueError if df does not match the declared schema exactly."""
    cols = SCHEMAS[name]["columns"]
    if list(df.columns) != list(cols):
        raise ValueError(f"table {name}: columns {list(df.columns)} != declared {list(cols)}")
    for col, dtype in cols.items():
        if str(df[col].dtype) != str(pd.Series([], dtype=dtype).dtype):
            raise ValueError(f"table {name}: column {col} has dtype {df[col].dtype}, declared {dtype}")


# --- shared tables -----------------------------------------------------------
declare(
    "diagnostics",
    {
        "severity": STRING,  # DIAGNOSTIC_SEVERITIES: error | warning | info
        "what": STRING,  # the thing that could not be read or was skipped
        "where": STRING,  # file, offset, plugin, table
        "why": STRING,
    },
    doc="Warnings are data: everything an engine could not read, with where and why.",
)

declare(
    "evidence",
    {
        "path": STRING,
        "format": STRING,
        "size": INT,
        "sha256": STRING,
        "role": STRING,
    },
    doc="Every evidence file of a snapshot, as identified and hashed at intake.",
)

# --- memory tables (toolkit/engines/volatility*.py) ---------------------------
declare(
    "memory/info",
    {
        "os": STRING,  # linux | windows
        "banner": STRING,  # kernel banner found in the image (Linux)
        "isf_path": STRING,  # symbol file used (Linux ISF), or the symbols dir (Windows)
        "isf_sha256": STRING,
        "isf_origin": STRING,  # user | profiles | cache | built
        "image_path": STRING,  # the file Volatility opened (an ELF core, maybe derived)
        "image_format": STRING,
        "dtb": UINT,  # kernel page-table root Volatility settled on
        "kernel_virtual_offset": UINT,
        "volatility_version": STRING,
        "pakunoda_version": STRING,
        "profile": STRING,
        "plugins_ok": INT,
        "plugins_failed": INT,
        "seconds": FLOAT,
    },
    doc="One row per analysed memory image: which kernel, which symbols (path + sha256), which tools.",
)

declare(
    "memory/plugin_runs",
    {
        "plugin": STRING,
        "status": STRING,  # ok | failed | partial
        "rows": INT,
        "seconds": FLOAT,
        "error": STRING,
    },
    doc="Every Volatility plugin a profile ran, how long it took and how it ended.",
)

declare(
    "memory/processes",
    {
        "pid": INT,
        "ppid": INT,
        "process": STRING,
        "uid": INT,
        "gid": INT,
        "start_ts": TIME,
        "in_list": BOOL,  # reached by walking the kernel's task list (pslist)
        "in_scan": BOOL,  # found by carving task structures (psscan)
        "is_kernel_thread": BOOL,
        "exe_path": STRING,
        "exe_deleted": BOOL,
        "exit_state": STRING,
        "threads": INT,
        "task_offset": UINT,  # virtual address of the task (list) or physical offset (scan only)
    },
    doc="Processes merged from the task list and a scan: a scan-only row is hidden or exited.",
)

declare(
    "memory/cmdlines",
    {
        "pid": INT,
        "ppid": INT,
        "process": STRING,
        "args": STRING,
    },
    doc="Command line of each process, as its own memory holds it.",
)

declare(
    "memory/maps",
    {
        "pid": INT,
        "process": STRING,
        "start": UINT,
        "end": UINT,
        "flags": STRING,  # rwx protection as Volatility prints it
        "pgoff": UINT,
        "major": INT,
        "minor": INT,
        "inode": UINT,
        "path": STRING,
        "deleted": BOOL,
    },
    doc="Virtual memory areas of every process; path without the ' (deleted)' suffix.",
)

declare(
    "memory/sockets",
    {
        "pid": INT,
        "tid": INT,
        "process": STRING,
        "fd": INT,
        "family": STRING,
        "type": STRING,
        "proto": STRING,
        "src_ip": STRING,
        "src_port": INT,
        "dst_ip": STRING,
        "dst_port": INT,
        "state": STRING,
        "inode": UINT,
        "netns": UINT,
        "sock_offset": UINT,
        "created_ts": TIME,
    },
    doc="Sockets owned by processes (Linux sockstat, Windows netscan).",
)

declare(
    "memory/modules",
    {
        "name": STRING,
        "offset": UINT,
        "base": UINT,
        "size": INT,
        "path": STRING,
        "taints": STRING,
        "args": STRING,
        "in_list": BOOL,  # on the kernel's module list (lsmod)
        "in_sysfs": BOOL,  # False when check_modules found it missing from sysfs
        "hidden": BOOL,  # carved from memory but absent from the list
    },
    doc="Kernel modules / drivers, with the hidden-module cross-checks folded in.",
)

declare(
    "memory/kernel_checks",
    {
        "check": STRING,  # check_syscall | check_idt | tty_check | modules
        "item": STRING,  # table[index], tty name, module name
        "address": UINT,
        "module": STRING,
        "symbol": STRING,
        "suspicious": BOOL,
        "detail": STRING,
    },
    doc="One row per kernel integrity check result; suspicious rows explain why in detail.",
)

declare(
    "memory/malfind",
    {
        "pid": INT,
        "process": STRING,
        "start": UINT,
        "end": UINT,
        "path": STRING,
        "protection": STRING,
        "hexdump": BYTES,
        "disasm": STRING,
    },
    doc="Memory ranges that look injected (executable and written, or unbacked).",
)

declare(
    "memory/open_files",
    {
        "pid": INT,
        "tid": INT,
        "process": STRING,
        "fd": INT,
        "path": STRING,
        "deleted": BOOL,
        "device": STRING,
        "inode": UINT,
        "type": STRING,
        "mode_text": STRING,  # as lsof prints it (e.g. "-rwxr-xr-x"); disk/files keeps the numeric mode
        "ctime": TIME,
        "mtime": TIME,
        "atime": TIME,
        "size": INT,
    },
    doc="Open file descriptors of every process (lsof).",
)

declare(
    "memory/shell_history",
    {
        "pid": INT,
        "process": STRING,
        "ts": TIME,
        "command": STRING,
    },
    doc="Shell history recovered from shell process memory (bash keeps it; busybox sh does not).",
)

declare(
    "memory/executables",
    {
        "pid": INT,
        "process": STRING,
        "path": STRING,
        "deleted": BOOL,
        "start": UINT,
        "e_type": INT,
        "e_machine": INT,
        "elf_class": INT,
        "build_id": STRING,
        # sha256 of the image's first 4096 bytes: equals the disk file's first 4 KiB if unmodified
        "first_page_sha256": STRING,
        "first_page_from": STRING,  # process (its page tables) | page_cache (the file's cached pages)
    },
    doc="The main executable image of each process, read through its own address space.",
)

declare(
    "memory/plugin_rows",
    {
        "plugin": STRING,
        "row_id": INT,
        "parent_row_id": INT,
        "column": STRING,
        "kind": STRING,  # int | str | time | bytes | bool | float | absent
        "value": STRING,
    },
    doc="Output of plugins without a dedicated table, one row per cell; tree output keeps parent links.",
)

# --- disk tables (toolkit/engines/dissect*.py) --------------------------------
declare(
    "disk/chain",
    {
        "disk": STRING,  # the disk as given (snapshot["disks"][i]["path"] or the diff argument)
        "depth": INT,  # 0 = the layer read first (top), 1 = its backing file, ...
        "path": STRING,  # file actually opened on this machine (<NA> if missing)
        "recorded_path": STRING,  # backing path as the image records it (often an absolute host path)
        "resolved_by": STRING,  # given | relative | basename-beside | search-path:DIR | as-recorded | missing-zeros
        "format": STRING,
        "snapshot": STRING,
        "size": INT,
        "virtual_size": INT,
    },
    doc="Every element of every disk chain opened: which file was used and how it was found.",
)

declare(
    "disk/system",
    {
        "hostname": STRING,
        "domain": STRING,
        "os": STRING,
        "os_version": STRING,
        "architecture": STRING,
        "timezone": STRING,
        "ips": STRING,
        "dns": STRING,
        "gateways": STRING,
        "interfaces": STRING,  # JSON list of the interface records dissect found (raw guest strings)
    },
    doc="One row: who the guest says it is (hostname, OS, version, network config, timezone).",
)

declare(
    "disk/users",
    {
        "user": STRING,
        "uid": INT,
        "gid": INT,
        "gecos": STRING,
        "home": STRING,
        "shell": STRING,
        "sid": STRING,
        "path": STRING,
    },
    doc="Accounts defined on the guest disk (passwd on Unix, SAM/profile list on Windows).",
)

declare(
    "disk/persistence",
    {
        # cron | systemd | timer | initd | rc | ld_preload | authorized_keys | shell_rc | runkey | service | task
        "kind": STRING,
        "path": STRING,  # the file (or registry key) that defines the entry
        "user": STRING,  # account it runs as, when the entry says
        "schedule": STRING,  # cron time fields, timer spec, WantedBy...
        "command": STRING,  # the full command line, raw as found
        "program": STRING,  # what it runs (first real word of command, wrappers unwrapped)
        "program_path": STRING,  # program resolved to a file on the same disk
        "program_sha256": STRING,
        "ts": TIME,  # last modification of the defining file
        "detail": STRING,
    },
    doc="Everything that makes a program run again: cron, systemd units/timers, init and rc scripts, "
    "ld.so.preload, authorized_keys, shell rc files; Windows run keys, services and tasks.",
)

declare(
    "disk/shell_history",
    {
        "user": STRING,
        "shell": STRING,
        "order": INT,
        "command": STRING,
        "ts": TIME,
        "path": STRING,
    },
    doc="Shell history lines, raw, in file order.",
)

declare(
    "disk/logs",
    {
        "ts": TIME,
        "log": STRING,
        "service": STRING,
        "pid": INT,
        "message": STRING,
        "path": STRING,
    },
    doc="Log lines (auth, syslog, journal, ...) with their timestamps where present.",
)

declare(
    "disk/packages",
    {
        "name": STRING,
        "version": STRING,
        "architecture": STRING,
        "status": STRING,
        "manager": STRING,
        "ts": TIME,
        "path": STRING,
    },
    doc="Installed packages as the guest's package manager records them.",
)

declare(
    "disk/files",
    {
        "path": STRING,
        "type": STRING,
        "size": INT,
        "uid": INT,
        "gid": INT,
        "mode": INT,
        "inode": UINT,
        "mtime": TIME,
        "atime": TIME,
        "ctime": TIME,
        "btime": TIME,
        "sha256": STRING,
        "link_target": STRING,
        "build_id": STRING,
        "first_page_sha256": STRING,  # ELF files that were hashed: for the process <-> file join
    },
    doc="Every file on the guest disk with MACB times; sha256 for executables and writable/hidden "
    "locations (profile disk.hash decides).",
)

declare(
    "disk/records",
    {
        "function": STRING,
        "record_type": STRING,
        "ts": TIME,
        "fields": STRING,  # JSON object of the record's fields, values as raw strings
    },
    doc="Records of any other dissect function a profile names, kept whole.",
)

declare(
    "disk/diff",
    {
        "change": STRING,  # added | removed | modified
        "path": STRING,
        "type": STRING,
        "changed": STRING,  # for modified: comma list of content,size,mtime,mode,uid,gid,type,target
        "size_a": INT,
        "size_b": INT,
        "sha256_a": STRING,
        "sha256_b": STRING,
        "mtime_a": TIME,
        "mtime_b": TIME,
        "mode_a": INT,
        "mode_b": INT,
        "uid_a": INT,
        "uid_b": INT,
        "gid_a": INT,
        "gid_b": INT,
        "inode_a": UINT,
        "inode_b": UINT,
        "method": STRING,  # allocated-clusters | full-walk
    },
    doc="Files that differ between two states of one VM disk (a = older/base, b = newer).",
)


# --- network tables (toolkit/engines/network.py) ------------------------------
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
        "app_proto": STRING,  # dns | http | tls when a parser recognised the payload
        "beacon_intervals": INT,  # gaps between the initiator's successive turns (up to 4096 turns)
        "beacon_interval_mean": FLOAT,  # seconds
        "beacon_interval_cv": FLOAT,  # stdev / mean: near 0 for a clockwork beacon
    },
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
    },
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

# --- yara tables (toolkit/engines/yara.py) ------------------------------------
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
        "flow_id": STRING,
        "src_ip": STRING,
        "src_port": INT,
        "dst_ip": STRING,
        "dst_port": INT,
        "proto": STRING,
        "direction": STRING,  # stream matches: src_to_dst (initiator's bytes) | dst_to_src
        "sha256": STRING,  # file matches: sha256 of the whole file
    },
    doc="YARA string matches in process/kernel/physical memory, disk files and reassembled network streams; "
    "one row per (rule, string, absolute offset), never duplicated across scan chunks.",
)

declare(
    "yara/rules",
    {
        "path": STRING,
        "namespace": STRING,
        "sha256": STRING,
        "engine": STRING,
    },
    doc="The rule files of a YARA run, their content hashes and which engine compiled each.",
)

# --- correlation tables (toolkit/correlate/) ----------------------------------
declare(
    "findings",
    {
        "finding_id": STRING,  # stable hash of snapshot, rule, entity and explanation
        "rule_id": STRING,
        "title": STRING,
        "severity": STRING,  # info | low | medium | high | critical
        "severity_rank": INT,  # 0..4, for sorting
        "confidence": FLOAT,  # 0..1: how directly the rows show it
        "attack_id": STRING,  # MITRE ATT&CK technique
        "explanation": STRING,  # plain language, built from the row values
        "entity": STRING,  # graph node id: process:PID, file:PATH, flow:ID, ...
        "entity_label": STRING,
        "pid": INT,
        "path": STRING,
        "flow_id": STRING,
        "evidence": STRING,  # JSON list of {table, snapshot_id, row}: the rows that prove it
        "chain": STRING,  # JSON list of entity-graph steps from the entity, each with its proving rows
    },
    doc="Correlated findings: one per rule and entity, with the rows that prove it and the entity chain.",
)

declare(
    "timeline",
    {
        "ts": TIME,
        "kind": STRING,
        "description": STRING,
        "table": STRING,
        "row": INT,  # the originating row
        "pid": INT,
        "path": STRING,
    },
    doc="Every timestamped event of a snapshot (memory, disk, network, capture times) in UTC, linked to its row.",
)

# --- audit tables (toolkit/audit.py) -------------------------------------------
declare(
    "audit/fleet",
    {
        "vm": STRING,
        "status": STRING,  # analysed | partial (some evidence unreadable) | reused | failed
        "critical": INT,
        "high": INT,
        "medium": INT,
        "low": INT,
        "info": INT,
        "reason": STRING,
        "source_path": STRING,
    },
    doc="One row per VM snapshot of an audit: its findings by severity, or why it could not be analysed.",
)
declare(
    "audit/changes",
    {
        "vm": STRING,
        "change": STRING,  # new finding | resolved finding | file added | file removed | file modified
        "rule_id": STRING,
        "severity": STRING,
        "entity_label": STRING,
        "explanation": STRING,
        "path": STRING,
    },
    doc="What changed per VM since a previous audit's case: findings and disk files.",
)
