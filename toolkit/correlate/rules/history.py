"""Shell history rules: what a command line did (download and run, hide the history, silence the
logs), read from history files on disk and from live shells' memory, and whether a line ever
reached the user's history file.

Example::

    hits = list(history_tampering(tables, build_graph(tables, "s1"), "s1"))
"""

from __future__ import annotations

import re

from toolkit.correlate.graph import history_paths
from toolkit.correlate.links import frame, hit, link, pid_of, value
from toolkit.correlate.vocabulary import DOWNLOADERS, NET_REDIRECT, PIPE_TO_SHELL, process_index

HISTORY_TAMPERING = re.compile(
    r"\bunset\s+(-v\s+)?HISTFILE\b"
    r"|\bHISTFILE=(/dev/null\b|[\"']{2}|\s|;|$)"
    r"|\bHIST(FILE)?SIZE=0\b"
    r"|\bhistory\s+-c\b"
    r"|\bhistory\s+-w\s+/dev/null\b"
    r"|\bset\s+\+o\s+history\b"
    r"|\b(rm|shred|unlink|truncate)\b[^;|&]*_history\b"
    r"|>\s*\S*_history\b"
    r"|\bln\s+-s\S*\s+/dev/null\s+\S*_history\b"
)
LOGGING_SERVICES = (
    r"(rsyslog|syslog-ng|syslog|systemd-journald|journald|auditd|auditbeat|osqueryd|falco|wazuh\S*|ossec\S*)"
)
DISABLE_LOGGING = re.compile(
    rf"\b(systemctl|service)\b[^;|&]*\b(stop|disable|mask|kill)\b[^;|&]*\b{LOGGING_SERVICES}"
    rf"|\bservice\s+{LOGGING_SERVICES}\s+stop\b"
    r"|\bauditctl\s+(-e\s*0|-D)\b"
    r"|\bjournalctl\b[^;|&]*--vacuum-"
    r"|\b(kill|pkill|killall)\b[^;|&]*\b(rsyslogd|systemd-journald|journald|auditd|syslog-ng)\b"
    r"|Storage=(none|volatile)\b"
    r"|\b(auth|authpriv|kern|\*)(,\w+)*\.[*\w!=]+\s+(stop|~)\b"
    r"|\b(rm|shred|unlink|truncate)\b[^;|&]*\s/var/log/"
    r"|(^|[;&|]\s*|\bcat\s+/dev/null\s*|(^|[;&|]\s*)(:|true|echo\s+-n)\s*)>\s*/var/log/\S+"
)
FETCH_INTO_SHELL = re.compile(r"(?:ba|da|z)?sh\s+(-c\s+)?[\"']?\$\(\s*(curl|wget)\b|<\(\s*(curl|wget)\b")


def _memory_users(tables) -> dict[int, str]:
    """shell pid -> the name of the account it runs as (memory uid joined with disk/users)."""
    users = frame(tables, "disk/users")
    names = {pid_of(r, "uid"): value(r, "user") for _, r in users.iterrows() if pid_of(r, "uid") is not None}
    return {pid: names.get(pid_of(r, "uid")) for pid, r in process_index(tables).items() if pid_of(r, "uid") in names}


def _file_lines(tables) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for _, r in frame(tables, "disk/shell_history").iterrows():
        out.setdefault(value(r, "user") or "", set()).add(str(value(r, "command") or "").strip())
    return out


def _commands(tables):
    """(table, row, command, entity, where, only_in_memory) for every history line, memory first."""
    users, on_disk = _memory_users(tables), _file_lines(tables)
    has_disk = len(frame(tables, "disk/shell_history")) > 0 or len(frame(tables, "disk/users")) > 0
    for i, r in frame(tables, "memory/shell_history").iterrows():
        pid, command = pid_of(r), str(value(r, "command") or "")
        user = users.get(pid)
        unsaved = has_disk and user is not None and command.strip() not in on_disk.get(user, set())
        where = f"the memory of {value(r, 'process') or 'shell'} pid {pid}" + (f" ({user})" if user else "")
        yield "memory/shell_history", i, command, f"process:{pid}", where, unsaved
    for i, r in frame(tables, "disk/shell_history").iterrows():
        path = value(r, "path")
        where = f"history file {path!r}" if path else f"the history of {value(r, 'user') or 'a user'}"
        yield "disk/shell_history", i, str(value(r, "command") or ""), f"file:{path}", where, False


def _note(unsaved: bool) -> str:
    return " The line exists only in the shell's memory: it never reached the user's history file." if unsaved else ""


def history_tampering(tables, graph, sid):
    """A command that stops the shell from keeping history or erases it (unset HISTFILE,
    HISTFILE=/dev/null, HISTSIZE=0, history -c, set +o history, removing or nulling a history file)."""
    seen = set()
    for table, i, command, entity, where, unsaved in _commands(tables):
        if HISTORY_TAMPERING.search(command) and (entity, command) not in seen:
            seen.add((entity, command))
            why = f"{where} holds {command!r}, which stops or erases the shell's history." + _note(unsaved)
            yield hit(entity, [link(table, sid, i)], 0.85 if table.startswith("memory") else 0.8, why)


def disable_logging(tables, graph, sid):
    """A command that stops, disables or empties the system's logging or auditing
    (systemctl stop rsyslog/journald/auditd, auditctl -e 0, journalctl --vacuum, deleting or
    truncating files under /var/log)."""
    seen = set()
    for table, i, command, entity, where, unsaved in _commands(tables):
        if DISABLE_LOGGING.search(command) and (entity, command) not in seen:
            seen.add((entity, command))
            why = f"{where} holds {command!r}, which silences or erases the system's logs." + _note(unsaved)
            yield hit(entity, [link(table, sid, i)], 0.85, why)


def _runner(graph, path: str, fallback: str) -> str:
    return next(
        (
            n["id"]
            for n in graph["nodes"].values()
            if n["kind"] == "process" and path in (n.get("exe"), n.get("script"))
        ),
        fallback,
    )


def download_then_execute(tables, graph, sid):
    """Shell history (disk or memory) that downloads and runs code: a fetch piped straight into a
    shell or interpreter (curl ... | bash, sh -c "$(wget ...)"), a command that wires a shell to the
    network (/dev/tcp, nc -e), or a download of a file that a later line executes."""
    for table in ("memory/shell_history", "disk/shell_history"):
        hist = frame(tables, table)
        downloaded: dict[tuple, int] = {}
        unsaved_by_row = {(t, i): u for t, i, _c, _e, _w, u in _commands(tables) if t == table}
        for i, r in hist.iterrows():
            command = value(r, "command") or ""
            shell = pid_of(r) if table.startswith("memory") else value(r, "path")
            fallback = f"process:{shell}" if table.startswith("memory") else f"file:{shell}"
            where = (
                f"the memory of {value(r, 'process')} pid {shell}"
                if table.startswith("memory")
                else f"file {shell!r}"
                if shell
                else f"of {value(r, 'user') or 'a user'}"
            )
            unsaved = _note(unsaved_by_row.get((table, i), False))
            if DOWNLOADERS.search(command) and (PIPE_TO_SHELL.search(command) or FETCH_INTO_SHELL.search(command)):
                why = f"shell history ({where}) fetches code and runs it in one line: {command!r}." + unsaved
                yield hit(fallback, [link(table, sid, i)], 0.9, why)
                continue
            if NET_REDIRECT.search(command):
                why = f"shell history ({where}) wires a shell to the network: {command!r}." + unsaved
                yield hit(fallback, [link(table, sid, i)], 0.85, why)
                continue
            if DOWNLOADERS.search(command):
                for path in history_paths(command):
                    downloaded[(shell, path)] = i
                continue
            for (owner, path), j in list(downloaded.items()):
                if owner != shell:
                    continue
                runs = any(w == path or w == f".{path}" for w in command.split())
                if runs and not command.lstrip().startswith(("rm ", "chmod ", "ls ", "cat ", "file ", "stat ")):
                    why = (
                        f"shell history ({where}) downloads {path!r} ({value(hist.loc[j], 'command')!r}) and "
                        f"then executes it ({command!r})." + unsaved
                    )
                    yield hit(_runner(graph, path, fallback), [link(table, sid, j), link(table, sid, i)], 0.8, why)
                    del downloaded[(owner, path)]


# A local file handed to a network client: curl/wget upload options, a file fed to nc/socat, scp/rsync
# of a local path to a remote host.
UPLOAD = re.compile(
    r"\bcurl\b[^;|&]*?(?:--data(?:-binary|-raw|-urlencode)?|-d|-F\s*\S*?=|--form\s*\S*?=)\s*['\"]?@(?P<curl>[^\s'\"]+)"
    r"|\bcurl\b[^;|&]*?(?:-T|--upload-file)\s+['\"]?(?P<curl_t>[^\s'\"]+)"
    r"|\bwget\b[^;|&]*?--(?:post|body)-file[=\s]['\"]?(?P<wget>[^\s'\"]+)"
    r"|\b(?:nc|ncat|netcat|socat)\b[^;|&<]*<\s*(?P<nc>\S+)"
    r"|\bcat\s+(?P<cat>\S+)\s*\|\s*(?:nc|ncat|netcat|socat)\b"
    r"|\b(?:scp|rsync)\b(?:\s+-\S+)*\s+(?P<scp>/\S+)\s+\S+@?\S*:"
)
ADDRESS = re.compile(r"(?:https?|ftp)://(?P<host>[\w.-]+)(?::(?P<port>\d+))?|\b(?P<ip>\d{1,3}(?:\.\d{1,3}){3})\b")
SENSITIVE = re.compile(r"shadow|passwd|sudoers|\.ssh/|id_(rsa|dsa|ecdsa|ed25519)|\.pem$|\.key$|_history$|\.kdbx$|\.sql")


def exfiltration(tables, graph, sid):
    """A history line that sends a local file to a network address (curl --data-binary @file, -T,
    -F x=@file, wget --post-file, a file fed to nc or socat, scp/rsync to a remote host); high for
    credential or key files, or when the capture holds the guest's connection to that address."""
    flows = frame(tables, "network/flows")
    contacted = set(flows["dst_ip"].dropna().astype(str)) if "dst_ip" in flows else set()
    seen = set()
    for table, i, command, entity, where, unsaved in _commands(tables):
        m = UPLOAD.search(command)
        if not m or (entity, command) in seen:
            continue
        seen.add((entity, command))
        path = next(v for v in m.groupdict().values() if v)
        address = ADDRESS.search(command[m.start() :]) or ADDRESS.search(command)
        host = (address.group("host") or address.group("ip")) if address else None
        if host in ("localhost", "::1") or str(host or "").startswith("127."):
            continue  # posting to a service on the same machine sends nothing out
        sensitive = bool(SENSITIVE.search(path))
        seen_on_wire = host in contacted
        why = (
            f"{where} holds {command!r}, which sends {path!r} to {host or 'a remote host'}"
            + (" (a credential or key file)" if sensitive else "")
            + ("; the capture holds the guest's connection to that address" if seen_on_wire else "")
            + "."
            + _note(unsaved)
        )
        severity = "high" if sensitive or seen_on_wire else "medium"
        yield hit(entity, [link(table, sid, i)], 0.85 if severity == "high" else 0.7, why, severity=severity)


RULES: dict[str, dict] = {
    "history.download_execute": {
        "title": "Download and run in shell history",
        "attack_id": "T1105",
        "severity": "high",
        "confidence": 0.85,
        "keys_on": "a history line (file or a live shell's memory) that pipes a download into a shell or "
        "interpreter, wires a shell to /dev/tcp or nc -e, or downloads a path a later line of the same "
        "shell executes",
        "joins": ["disk/shell_history", "memory/shell_history", "memory/processes", "disk/users"],
        "grading": "high: fetching code and running it is how second stages arrive; 0.8-0.9 by how direct",
        "chain": "the shell process (memory) or history file -> the process now running the downloaded file",
        "fn": download_then_execute,
    },
    "history.tampering": {
        "title": "Shell history disabled or erased",
        "attack_id": "T1070.003",
        "severity": "high",
        "confidence": 0.85,
        "keys_on": "a history line that unsets or nulls HISTFILE, zeroes HISTSIZE, runs history -c or set +o "
        "history, or removes, truncates or links to /dev/null a history file; the explanation says when the "
        "line exists only in the live shell's memory",
        "joins": ["memory/shell_history", "disk/shell_history", "memory/processes", "disk/users"],
        "grading": "high: hiding one's commands is done by someone expecting an investigation; 0.8 (file) - "
        "0.85 (memory)",
        "chain": "the shell process -> its children, sockets and files its other commands name",
        "fn": history_tampering,
    },
    "history.disable_logging": {
        "title": "Logging or auditing silenced",
        "attack_id": "T1562.001",
        "severity": "high",
        "confidence": 0.85,
        "keys_on": "a history line that stops, disables, masks or kills a logging/audit daemon (rsyslog, "
        "journald, auditd, ...), turns auditing off, vacuums the journal, writes a setting that discards records "
        "(journald Storage=none|volatile, rsyslog `auth.* stop`) or deletes/truncates/empties (`: >`) files under "
        "/var/log",
        "joins": ["memory/shell_history", "disk/shell_history", "memory/processes", "disk/users"],
        "grading": "high: blinding the logs precedes or covers an intrusion; 0.85",
        "chain": "the shell process -> its other commands' files and processes",
        "fn": disable_logging,
    },
    "history.exfiltration": {
        "title": "File sent out from the shell",
        "attack_id": "T1048.003",
        "severity": "high",
        "confidence": 0.85,
        "keys_on": "a history line (file or a live shell's memory) that hands a local file to a network client: "
        "curl --data-binary/-d/-F with @file, curl -T, wget --post-file, a file redirected into nc/ncat/socat or "
        "piped from cat, scp/rsync of a local path to a remote host",
        "joins": ["memory/shell_history", "disk/shell_history", "network/flows", "memory/processes", "disk/users"],
        "grading": "high (0.85) for credential or key files or when the capture holds the connection to that "
        "address; medium (0.7) otherwise: admins copy files out too",
        "chain": "the shell process (memory) or history file -> its other commands' files and processes",
        "fn": exfiltration,
    },
}
