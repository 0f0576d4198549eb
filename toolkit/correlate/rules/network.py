"""Network rules: who talks out and how (a suspicious process's connection, a beacon's rhythm, a
miner's pool protocol, data in DNS names) and addresses that tie separate traces together (a
login from the address the host also contacted).

Example::

    hits = list(beacon(tables, build_graph(tables, "s1"), "s1"))
"""

from __future__ import annotations

import re

from toolkit.correlate.graph import owner_process
from toolkit.correlate.links import endpoints, frame, hit, link, pid_of, value
from toolkit.correlate.vocabulary import (
    KERNEL_THREAD_NAME,
    after,
    boot_time,
    files_by_path,
    is_hidden_or_temp,
    is_inet,
    is_loopback,
    is_unspecified,
    process_index,
    user_writable,
)
from toolkit.programs import interpreter_script, is_interpreter, is_shell

BEACON_MIN_INTERVALS = 3
BEACON_MAX_INTERVAL_CV = 0.2  # regular: the gaps vary by less than a fifth
BEACON_MAX_SIZE_CV = 0.25  # constant: each check-in about the same size
SERIES_MIN_FLOWS = 4
# A rhythm no process can be tied to (no socket of it open at the dump's moment) is a lead, not a verdict:
# monitoring agents and sync clients keep rhythms too; implants are found by what their process is.
UNOWNED = "; no process held a connection of it when memory was captured, so nothing says whose rhythm it is"


def suspicious_owner(graph, pid) -> str | None:
    """Why a process should hold no network connection of its own, or None. An interpreter running
    a script is a program like any other; a shell, or inline code, holding a socket is not."""
    node = graph["nodes"].get(f"process:{pid}")
    if not node:
        return None
    name, exe = node.get("process") or "", node.get("exe")
    if node.get("deleted"):
        return "runs from a deleted file"
    if (exe or "").startswith(("/memfd:", "memfd:")):
        return "runs from memory only (memfd)"
    if KERNEL_THREAD_NAME.match(name):
        return "poses as a kernel thread"
    if is_hidden_or_temp(exe) or is_hidden_or_temp(node.get("script")):
        return "runs from a hidden or temporary path"
    if is_shell(exe or name):
        return f"is a shell ({name}) holding a connection itself"
    words = str(node.get("args") or "").split()
    if is_interpreter(exe) and words and not interpreter_script([exe, *words[1:]]) and len(words) > 1:
        return f"is an interpreter running inline code ({' '.join(words)[:80]!r})"
    return None


def unexpected_outbound(tables, graph, sid):
    """An ESTABLISHED or SYN_SENT TCP/UDP connection owned by a process that is suspicious for
    another reason (deleted or memory-only program, kernel-thread name, hidden path, a shell or
    inline interpreter code holding the socket). Unix sockets are never connections."""
    seen = set()
    for i, r in frame(tables, "memory/sockets").iterrows():
        state = str(value(r, "state", "")).upper()
        if not is_inet(r) or value(r, "dst_port") in (None, 0) or state not in ("ESTABLISHED", "SYN_SENT"):
            continue
        if is_unspecified(value(r, "dst_ip")):
            continue
        reason = suspicious_owner(graph, pid_of(r))
        key = (pid_of(r), value(r, "src_port"), value(r, "dst_ip"), value(r, "dst_port"))
        if reason and key not in seen:
            seen.add(key)
            why = (
                f"pid {pid_of(r)} {reason} and holds an {state} {value(r, 'proto')} connection "
                f"{value(r, 'src_ip')}:{value(r, 'src_port')} -> {value(r, 'dst_ip')}:{value(r, 'dst_port')}."
            )
            yield hit(f"process:{pid_of(r)}", [link("memory/sockets", sid, i)], 0.8, why)


SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)", re.I)


def span_seconds(text: str) -> float:
    """A systemd time span in seconds: ``span_seconds("1min 30s")`` -> ``90.0``."""
    total = 0.0
    for n, unit in SPAN.findall(text):
        u = unit.lower()
        factor = 0.001 if u in ("ms", "msec") else 60 if u in ("m", "min", "mins", "minute", "minutes") else 1
        factor = 3600 if u.startswith("h") else 86400 if u.startswith("d") else factor
        total += float(n) * factor
    return total


def schedule_period(kind, schedule) -> float | None:
    """Seconds between runs a timer or crontab line declares (None when not periodic or unknown).

    >>> schedule_period("timer", "OnUnitActiveSec=5s, OnBootSec=10s"), schedule_period("cron", "*/5 * * * *")
    (5.0, 300.0)
    """
    text = str(schedule or "")
    if kind == "timer":
        m = re.search(r"On(?:UnitActive|UnitInactive)Sec=([^,]+)", text)
        return (span_seconds(m.group(1)) or None) if m else None
    if kind == "cron":
        fields = text.split()
        if len(fields) < 5 or fields[1] != "*":
            return None
        minute = fields[0]
        if minute == "*":
            return 60.0
        if minute.startswith("*/") and minute[2:].isdigit():
            return 60.0 * int(minute[2:])
        return 3600.0 if minute.isdigit() else None
    return None


def _declared_schedules(tables) -> list[tuple[float, int, dict]]:
    out = []
    for i, r in frame(tables, "disk/persistence").iterrows():
        period = schedule_period(value(r, "kind"), value(r, "schedule"))
        target = value(r, "program_path") or value(r, "program")
        if period and not is_hidden_or_temp(target):
            out.append((period, i, r))
    return out


def _explained_by(schedules, interval) -> tuple[int, dict] | None:
    for period, i, r in schedules:
        if interval and abs(interval - period) <= 0.25 * period + 1.0:
            return i, r
    return None


def _regular(n, cv, size_cv) -> bool:
    return (
        n is not None
        and n >= BEACON_MIN_INTERVALS
        and cv is not None
        and cv < BEACON_MAX_INTERVAL_CV
        and (size_cv is None or size_cv < BEACON_MAX_SIZE_CV)
    )


def _series(flows):
    """Flows the guest opened again and again to one peer: (key, row numbers) with at least SERIES_MIN_FLOWS."""
    groups: dict[tuple, list[int]] = {}
    for i, r in flows.iterrows():
        if value(r, "first_ts") is None or is_loopback(value(r, "dst_ip")):
            continue
        groups.setdefault((value(r, "proto"), value(r, "src_ip"), value(r, "dst_ip"), value(r, "dst_port")), []).append(
            i
        )
    for key, rows in groups.items():
        if len(rows) >= SERIES_MIN_FLOWS:
            yield key, sorted(rows, key=lambda j: flows.loc[j, "first_ts"])


def _cv(values):
    values = [float(v) for v in values if v is not None]
    if len(values) < 2:
        return None, None
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    return mean, ((var**0.5) / mean if mean else None)


def established_services(tables) -> dict[str, tuple[int, dict]]:
    """program path -> (row, entry) for the systemd services this machine had before this boot whose
    program only root can replace and that lies in no hidden or temporary place: the machine's
    own long-running agents (a sync client that polls its server is a rhythm too)."""
    boot, files = boot_time(tables), None
    out = {}
    for i, r in frame(tables, "disk/persistence").iterrows():
        program = value(r, "program_path") or value(r, "program")
        if value(r, "kind") != "systemd" or not program or is_hidden_or_temp(program) or after(value(r, "ts"), boot):
            continue
        files = files_by_path(tables) if files is None else files
        row = files.get(value(r, "path")) or {}
        if after(value(row, "btime"), boot) or after(value(row, "ctime"), boot) or user_writable(files, program):
            continue  # written while the system ran, or replaceable by a user: not established
        out.setdefault(program, (i, r))
    return out


def _service_of(graph, owner, services) -> tuple[int, dict] | None:
    node = graph["nodes"].get(owner) or {} if owner else {}
    for program in (node.get("script"), node.get("exe")):
        if program and program in services:
            return services[program]
    return None


def beacon(tables, graph, sid):
    """Check-ins at regular intervals with constant sizes to a peer outside the host: turns inside
    one long connection, or a series of new connections to the same peer and port. A series that a
    declared timer or cron schedule explains (same period, a program in no hidden place), that a
    service established before this boot makes (its program root's alone), or that no process can
    be tied to, is low."""
    flows = frame(tables, "network/flows")
    if not len(flows):
        return
    schedules, services = _declared_schedules(tables), established_services(tables)
    for i, r in flows.iterrows():
        n, mean = value(r, "beacon_intervals"), value(r, "beacon_interval_mean")
        cv, size_cv = value(r, "beacon_interval_cv"), value(r, "beacon_size_cv")
        if is_loopback(value(r, "dst_ip")) or not _regular(n, cv, size_cv):
            continue
        owner = owner_process(graph, f"flow:{value(r, 'flow_id')}")
        reason = suspicious_owner(graph, graph["nodes"][owner].get("pid")) if owner else None
        service = None if reason else _service_of(graph, owner, services)
        size = value(r, "beacon_size_mean")
        why = (
            f"flow {endpoints(r)} sent {n + 1} payloads about every {mean:.1f}s (variation {cv:.0%})"
            + (f", each about {size:.0f} bytes" if size is not None else "")
            + ", like a beacon"
            + (f"; its process {reason}" if reason else "")
            + (
                f"; {graph['nodes'][owner]['label']} is the established service {value(service[1], 'path')!r}"
                if service
                else ""
            )
            + ("" if owner else UNOWNED)
            + "."
        )
        severity = "high" if reason else "medium" if owner and not service else "low"
        yield hit(
            owner or f"flow:{value(r, 'flow_id')}",
            [link("network/flows", sid, i)],
            {"high": 0.8, "medium": 0.7}.get(severity, 0.4),
            why,
            severity=severity,
        )
    for (proto, src, dst, port), rows in _series(flows):
        starts = [flows.loc[j, "first_ts"] for j in rows]
        gaps = [(b - a).total_seconds() for a, b in zip(starts, starts[1:])]
        mean, cv = _cv(gaps)
        size_mean, size_cv = _cv([value(flows.loc[j], "src_payload_bytes") for j in rows])
        if not _regular(len(gaps), cv, size_cv) or not mean:
            continue
        owners = {owner_process(graph, f"flow:{value(flows.loc[j], 'flow_id')}") for j in rows} - {None}
        owner = sorted(owners)[0] if owners else None
        reason = suspicious_owner(graph, graph["nodes"][owner].get("pid")) if owner else None
        explained = None if reason else _explained_by(schedules, mean)
        service = None if reason or explained else _service_of(graph, owner, services)
        why = (
            f"{len(rows)} {proto} connections {src} -> {dst}:{port} opened about every {mean:.1f}s "
            f"(variation {cv:.0%}), each sending about {size_mean or 0:.0f} bytes"
        )
        links = [link("network/flows", sid, j) for j in rows[:12]]
        if service:
            j, entry = service
            program = value(entry, "program_path") or value(entry, "program")
            why += (
                f": the rhythm of {graph['nodes'][owner]['label']}, the service {value(entry, 'path')!r} this "
                f"machine ran before this boot, whose program {program!r} only root can replace."
            )
            links.append(link("disk/persistence", sid, j))
            yield hit(owner, links, 0.4, why, severity="low")
            continue
        if explained:
            j, entry = explained
            why += (
                f": the rhythm of the scheduled job {value(entry, 'path')!r} ({value(entry, 'schedule')}), "
                f"which runs {value(entry, 'program_path') or value(entry, 'program')!r}."
            )
            links.append(link("disk/persistence", sid, j))
            yield hit(f"persistence:{j}", links, 0.4, why, severity="low")
            continue
        why += (
            ", like a beacon"
            + (f"; the process behind it {reason}" if reason else "")
            + ("" if owner else UNOWNED)
            + "."
        )
        entity = owner or f"flow:{value(flows.loc[rows[0]], 'flow_id')}"
        severity = "high" if reason else "medium" if owner else "low"
        yield hit(entity, links, {"high": 0.8, "medium": 0.7}.get(severity, 0.4), why, severity=severity)


def mining_protocol(tables, graph, sid):
    """A TCP stream that speaks the stratum mining protocol (JSON-RPC mining.subscribe /
    mining.authorize / mining.submit) on any port: a cryptocurrency miner talking to its pool."""
    for i, r in frame(tables, "network/flows").iterrows():
        if "stratum" not in str(value(r, "app_proto") or "").split(","):
            continue
        owner = owner_process(graph, f"flow:{value(r, 'flow_id')}")
        why = (
            f"flow {endpoints(r)} speaks the stratum mining protocol (JSON-RPC mining.* calls)"
            + (f"; it belongs to {graph['nodes'][owner]['label']}" if owner else "")
            + ": a cryptocurrency miner reporting to its pool."
        )
        yield hit(owner or f"flow:{value(r, 'flow_id')}", [link("network/flows", sid, i)], 0.95, why)


TUNNEL_LABEL = 40  # characters: hostnames rarely have labels this long, encoded data often does
TUNNEL_ENTROPY = 3.5  # bits per character of the subdomain part
MULTICAST = re.compile(r"^(22[4-9]|23\d)\.|^ff", re.I)


def _configured_resolvers(tables) -> set[str]:
    out = set()
    for _, r in frame(tables, "disk/system").iterrows():
        out |= set(re.findall(r"[0-9a-fA-F.:]{3,}", str(value(r, "dns") or "")))
    return {x for x in out if any(c.isdigit() for c in x)}


def dns_tunnel(tables, graph, sid):
    """DNS queries that carry data (labels of 40+ characters or random-looking subdomains) or go to
    a resolver the guest's own configuration does not name; high when both."""
    dns = frame(tables, "network/dns")
    if not len(dns):
        return
    resolvers = _configured_resolvers(tables)
    groups: dict[tuple, list[int]] = {}
    for i, r in dns.iterrows():
        if value(r, "qr") != "query" or not value(r, "qname"):
            continue
        dst = value(r, "dst_ip")
        longest, entropy = value(r, "qname_longest_label"), value(r, "qname_entropy")
        labels = str(value(r, "qname")).rstrip(".").split(".")
        domain = ".".join(labels[-2:])
        sub_len = len("".join(labels[:-2]))
        encoded = (longest or 0) >= TUNNEL_LABEL or ((entropy or 0) >= TUNNEL_ENTROPY and sub_len >= 20)
        stray = bool(resolvers) and dst not in resolvers and not MULTICAST.match(str(dst)) and not is_loopback(dst)
        if encoded or stray:
            groups.setdefault((value(r, "src_ip"), dst, domain, encoded, stray), []).append(i)
    for (src, dst, domain, encoded, stray), rows in groups.items():
        first = dns.loc[rows[0]]
        what = []
        if encoded:
            what.append(f"names under {domain!r} carry encoded data (e.g. {value(first, 'qname')!r})")
        if stray:
            configured = ", ".join(sorted(resolvers))
            what.append(f"they go to {dst}, which is not a resolver the guest is configured with ({configured})")
        owner = owner_process(graph, f"flow:{value(first, 'flow_id')}")
        why = f"{len(rows)} DNS quer{'y' if len(rows) == 1 else 'ies'} from {src}: " + "; ".join(what) + "."
        yield hit(
            owner or f"flow:{value(first, 'flow_id')}",
            [link("network/dns", sid, i) for i in rows[:12]],
            0.8 if encoded and stray else 0.6,
            why,
            severity="high" if encoded and stray else "medium",
        )


ACCEPTED = re.compile(r"Accepted (\S+) for (\S+) from (\S+) port (\d+)")


def login_peer_contacted(tables, graph, sid):
    """An address that logged in over SSH (sshd's "Accepted ... from ADDR") that the host itself
    also reached out to (a connection it opened, in memory or in the capture) or that a shell
    command names: one actor on both sides."""
    logins: dict[str, list[tuple[int, str]]] = {}
    for i, r in frame(tables, "disk/logs").iterrows():
        m = ACCEPTED.search(str(value(r, "message") or ""))
        if m and not is_loopback(m.group(3)):
            logins.setdefault(m.group(3), []).append((i, m.group(2)))
    if not logins:
        return
    procs = process_index(tables)
    listening = {
        value(s, "src_port") for _, s in frame(tables, "memory/sockets").iterrows() if value(s, "state") == "LISTEN"
    }
    for address, accepted in logins.items():
        users = sorted({u for _, u in accepted})
        links = [link("disk/logs", sid, i) for i, _ in accepted[:4]]
        seen_by, entity = [], None
        for j, s in frame(tables, "memory/sockets").iterrows():
            if is_inet(s) and value(s, "dst_ip") == address and value(s, "src_port") not in listening:
                seen_by.append(f"pid {pid_of(s)} ({value(s, 'process')}) holds a connection to it")
                links.append(link("memory/sockets", sid, j))
                entity = entity or (f"process:{pid_of(s)}" if pid_of(s) in procs else None)
        for j, f in frame(tables, "network/flows").iterrows():
            if value(f, "dst_ip") == address:
                seen_by.append(f"the capture shows the host opening {endpoints(f)}")
                links.append(link("network/flows", sid, j))
                entity = entity or owner_process(graph, f"flow:{value(f, 'flow_id')}")
        for table in ("memory/shell_history", "disk/shell_history"):
            for j, h in frame(tables, table).iterrows():
                if re.search(rf"(?<![\d.]){re.escape(address)}(?![\d])", str(value(h, "command") or "")):
                    seen_by.append(f"a shell command names it ({value(h, 'command')!r})")
                    links.append(link(table, sid, j))
                    if table.startswith("memory") and entity is None and pid_of(h) in procs:
                        entity = f"process:{pid_of(h)}"
        if not seen_by:
            continue
        why = (
            f"{address} logged in over SSH as {', '.join(map(repr, users))}, and "
            + "; ".join(list(dict.fromkeys(seen_by))[:4])
            + ": the same actor on both sides."
        )
        yield hit(entity or f"address:{address}", links[:16], 0.7, why)


RULES: dict[str, dict] = {
    "net.unexpected_outbound": {
        "title": "Outbound connection from a process that should not have one",
        "attack_id": "T1071",
        "severity": "high",
        "confidence": 0.8,
        "keys_on": "an ESTABLISHED/SYN_SENT TCP or UDP socket (IPv4/IPv6 only: unix sockets are never "
        "connections) owned by a process that runs from a deleted, memory-only, hidden or temporary file, "
        "poses as a kernel thread, or is a shell or inline interpreter code holding the socket itself",
        "joins": ["memory/sockets", "memory/processes", "memory/cmdlines"],
        "grading": "high: the connection of a process already suspicious is its command channel; 0.8. An "
        "interpreter running a script file is an ordinary program",
        "chain": "the process -> the socket -> the capture flow of that 5-tuple (-> YARA hits in the stream)",
        "fn": unexpected_outbound,
    },
    "net.periodic_beacon": {
        "title": "Periodic beacon-like traffic",
        "attack_id": "T1071.001",
        "severity": "medium",
        "confidence": 0.7,
        "keys_on": f"an initiator that checks in at least {BEACON_MIN_INTERVALS + 1} times at regular intervals "
        f"(variation < {BEACON_MAX_INTERVAL_CV:.0%}) with constant sizes (< {BEACON_MAX_SIZE_CV:.0%}) to a "
        f"peer outside the host, in one connection or as {SERIES_MIN_FLOWS}+ new connections to one peer and "
        "port; a series whose period a timer or cron schedule on disk declares, or that a systemd service "
        "established before this boot makes (program in no hidden place, replaceable by root alone), is low",
        "joins": ["network/flows", "memory/sockets", "memory/processes", "disk/persistence"],
        "grading": "medium (0.7): implants beacon, so do monitoring agents; high when the process behind it is "
        "suspicious; low (0.4) when a declared schedule or an established service of the machine explains the "
        "rhythm (an implant planted while the system ran, or in a hidden place, is neither), or when no process "
        "can be tied to it (no socket open at capture: the rhythm alone is a lead)",
        "chain": "the owning process (socket <-> flow 5-tuple) -> its executable -> persistence",
        "fn": beacon,
    },
    "net.mining_protocol": {
        "title": "Cryptocurrency mining pool protocol (stratum)",
        "attack_id": "T1496",
        "severity": "high",
        "confidence": 0.95,
        "keys_on": "a TCP stream whose client speaks newline-delimited JSON-RPC with mining.* methods "
        "(mining.subscribe, mining.authorize, mining.submit), on any port",
        "joins": ["network/flows", "memory/sockets", "memory/processes"],
        "grading": "high: mining on a server is resource hijacking; 0.95 since the protocol says it",
        "chain": "the process owning the flow -> its executable -> persistence",
        "fn": mining_protocol,
    },
    "net.dns_tunnel": {
        "title": "Data in DNS queries or queries to a stray resolver",
        "attack_id": "T1071.004",
        "severity": "medium",
        "confidence": 0.6,
        "keys_on": f"DNS queries with a label of {TUNNEL_LABEL}+ characters or a subdomain of 20+ characters "
        f"with entropy >= {TUNNEL_ENTROPY} bits/char, or queries to an address that is not a resolver of the "
        "guest's own configuration (multicast and loopback excluded); high when both",
        "joins": ["network/dns", "disk/system", "memory/sockets"],
        "grading": "medium alone (CDNs and DKIM use long names; some tools query public resolvers), high (0.8) "
        "together",
        "chain": "the process owning the DNS flow, when its socket is still open",
        "fn": dns_tunnel,
    },
    "net.login_peer_contacted": {
        "title": "SSH login from an address the host also contacted",
        "attack_id": "T1021.004",
        "severity": "medium",
        "confidence": 0.7,
        "keys_on": "an address in sshd's 'Accepted ... from ADDR' log lines (loopback excluded) that the host "
        "itself connected to (an outbound socket in memory or a flow it opened in the capture) or that a "
        "shell command names",
        "joins": ["disk/logs", "memory/sockets", "network/flows", "memory/shell_history", "disk/shell_history"],
        "grading": "medium (0.7): an operator's workstation can be both, but an attacker's host typically is",
        "chain": "the process that contacted the address -> its socket and flow",
        "fn": login_peer_contacted,
    },
}
