"""The Sigma views of one snapshot: frames built from its tables, one per log source we serve.

Every view row keeps the row it came from (``_table``, ``_row``: the position
in that snapshot's table, as correlation links name rows), a time (``ts``,
<NA> when the source has none), an order within its source (``_seq``) and the
text that Sigma keywords search (``_raw``). The other columns use our tables'
names; ``taxonomy.VIEWS`` maps Sigma's field names onto them.

Example::

    views = build_views(tables)
    views["process_creation"][["exe_path", "args", "user", "_table", "_row"]]
"""

from __future__ import annotations

import posixpath
import shlex

import pandas as pd

from toolkit.correlate.graph import endpoint_key
from toolkit.correlate.links import frame, pid_of, value
from toolkit.correlate.sigma.taxonomy import VIEWS
from toolkit.schemas import split_deleted

# Where a shell finds a bare command name (Debian's default PATH for root, then a user's).
GUEST_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
# Programs that fetch a URL into a file, and the options that name that file.
DOWNLOADERS = {"wget", "curl", "tftp", "fetch", "aria2c"}
OUTPUT_OPTIONS = {"-O", "-o", "--output-document", "--output", "--out"}
WRAPPERS = {"sudo", "busybox", "nohup", "env", "exec", "time", "doas"}
PREFIX = ("_table", "_row", "_seq", "ts", "_raw")


def _words(command: str) -> list[str]:
    try:
        return shlex.split(command, comments=False)
    except ValueError:  # an unbalanced quote in a history line: split on blanks as the shell would have failed to
        return command.split()


def _program(words: list[str]) -> tuple[str | None, list[str]]:
    """The program a command line runs (wrappers such as sudo and busybox stepped over) and its arguments."""
    for i, word in enumerate(words):
        if "=" in word and not word.startswith(("/", "-")) and i == 0:
            continue  # VAR=value prefix
        if posixpath.basename(word) in WRAPPERS:
            continue
        if word.startswith("-"):
            continue  # an option of a wrapper (sudo -u root)
        return word, words[i + 1 :]
    return None, []


def _resolver(tables: dict):
    """A function resolving a bare command name on the guest's PATH through disk/files (as written if absent)."""
    files = frame(tables, "disk/files")
    known = set(files["path"].dropna()) if "path" in files else set()

    def resolve(word: str | None) -> str | None:
        if not word or "/" in word:
            return word
        return next((f"{d}/{word}" for d in GUEST_PATH if f"{d}/{word}" in known), word)

    return resolve


def written_files(words: list[str]) -> list[str]:
    """Files a command line writes: a downloader's output option or a shell redirection.

    Example::

        >>> written_files(["wget", "http://x/kw", "-O", "/tmp/.kw"])
        ['/tmp/.kw']
    """
    program, args = _program(words)
    out = []
    downloader = program is not None and posixpath.basename(program) in DOWNLOADERS
    for i, word in enumerate(words):
        if word in (">", ">>") and i + 1 < len(words):
            out.append(words[i + 1])
        elif word.startswith(">") and len(word.lstrip(">")) > 0:
            out.append(word.lstrip(">"))
        if not downloader or word not in args:
            continue
        if word in OUTPUT_OPTIONS and i + 1 < len(words):
            out.append(words[i + 1])
        elif "=" in word and word.split("=", 1)[0] in OUTPUT_OPTIONS:
            out.append(word.split("=", 1)[1])
        elif word.startswith(("-O", "-o")) and len(word) > 2 and not word.startswith("--"):
            out.append(word[2:])
    return [p for p in out if p and p != "-" and not p.startswith("/dev/")]


def _history(tables: dict) -> list[dict]:
    """Every shell history line, disk and memory, with who ran it and from which shell."""
    resolve = _resolver(tables)
    procs = frame(tables, "memory/processes")
    shells = {pid_of(r): r for _, r in procs.iterrows()}
    users = _users(tables)
    rows = []
    for table in ("disk/shell_history", "memory/shell_history"):
        for i, r in frame(tables, table).iterrows():
            command = value(r, "command")
            if not command:
                continue
            words = _words(command)
            program, _args = _program(words)
            shell = shells.get(pid_of(r)) if table == "memory/shell_history" else None
            user = value(r, "user") or (users.get(value(shell, "uid")) if shell is not None else None)
            parent = split_deleted(value(shell, "exe_path"))[0] if shell is not None else resolve(value(r, "shell"))
            rows.append(
                {
                    "_table": table,
                    "_row": i,
                    "_seq": value(r, "order", i),
                    "ts": value(r, "ts"),
                    "_raw": command,
                    "_source": value(r, "path") or f"pid {pid_of(r)}",
                    "words": words,
                    "exe_path": resolve(program),
                    "args": command,
                    "user": user,
                    "parent_exe_path": parent,
                    "parent_args": None,
                    "pid": None,
                    "ppid": pid_of(r) if table == "memory/shell_history" else None,
                }
            )
    return rows


def _users(tables: dict) -> dict:
    users = frame(tables, "disk/users")
    return {value(r, "uid"): value(r, "user") for _, r in users.iterrows() if value(r, "uid") is not None}


def _processes(tables: dict) -> list[dict]:
    procs = frame(tables, "memory/processes")
    cmdlines = {pid_of(r): value(r, "args") for _, r in frame(tables, "memory/cmdlines").iterrows()}
    users = _users(tables)
    by_pid = {pid_of(r): r for _, r in procs.iterrows()}
    rows = []
    for i, r in procs.iterrows():
        pid, ppid = pid_of(r), pid_of(r, "ppid")
        parent = by_pid.get(ppid)
        args = cmdlines.get(pid)
        rows.append(
            {
                "_table": "memory/processes",
                "_row": i,
                "_seq": i,
                "ts": value(r, "start_ts"),
                "_raw": args or value(r, "process"),
                "_source": "memory/processes",
                "exe_path": split_deleted(value(r, "exe_path"))[0],
                "args": args,
                "user": users.get(value(r, "uid")),
                "parent_exe_path": split_deleted(value(parent, "exe_path"))[0] if parent is not None else None,
                "parent_args": cmdlines.get(ppid),
                "pid": pid,
                "ppid": ppid,
            }
        )
    return rows


def _network(tables: dict) -> list[dict]:
    procs = {pid_of(r): r for _, r in frame(tables, "memory/processes").iterrows()}
    users = _users(tables)
    hostnames = {
        value(r, "answer"): value(r, "qname")
        for _, r in frame(tables, "network/dns").iterrows()
        if value(r, "answer") and value(r, "qname")
    }
    sockets = frame(tables, "memory/sockets")
    listening = {(pid_of(r), value(r, "src_port")) for _, r in sockets.iterrows() if value(r, "dst_port") in (None, 0)}
    local_ips = {value(r, "src_ip") for _, r in sockets.iterrows()} - {None, "0.0.0.0", "::"}
    rows, seen = [], set()
    for i, r in sockets.iterrows():
        if value(r, "dst_port") in (None, 0):
            continue  # listening or unconnected: no connection
        proc = procs.get(pid_of(r))
        seen.add(_key(r))
        rows.append(
            {
                "_table": "memory/sockets",
                "_row": i,
                "_seq": i,
                "ts": value(r, "created_ts"),
                "exe_path": split_deleted(value(proc, "exe_path"))[0] if proc is not None else None,
                "user": users.get(value(proc, "uid")) if proc is not None else None,
                "pid": pid_of(r),
                # an accepted connection shares its local port with a listening socket of the process
                "initiated": "false" if (pid_of(r), value(r, "src_port")) in listening else "true",
                **_endpoints(r, hostnames),
            }
        )
    for i, r in frame(tables, "network/flows").iterrows():
        if _key(r) in seen or value(r, "proto") not in ("tcp", "udp"):
            continue  # a socket already tells this connection, with its process
        rows.append(
            {
                "_table": "network/flows",
                "_row": i,
                "_seq": i,
                "ts": value(r, "first_ts"),
                "flow_id": value(r, "flow_id"),
                "initiated": "true" if value(r, "src_ip") in local_ips else None,
                **_endpoints(r, hostnames),
            }
        )
    for row in rows:
        row["_raw"] = f"{row['proto']} {row['src_ip']}:{row['src_port']} -> {row['dst_ip']}:{row['dst_port']}"
    return rows


def _key(r):
    return endpoint_key(
        value(r, "src_ip"), value(r, "src_port"), value(r, "dst_ip"), value(r, "dst_port"), value(r, "proto")
    )


def _endpoints(r, hostnames: dict) -> dict:
    return {
        "proto": value(r, "proto"),
        "src_ip": value(r, "src_ip"),
        "src_port": value(r, "src_port"),
        "dst_ip": value(r, "dst_ip"),
        "dst_port": value(r, "dst_port"),
        "dst_hostname": hostnames.get(value(r, "dst_ip")),
    }


def _dns(tables: dict) -> list[dict]:
    return [
        {
            "_table": "network/dns",
            "_row": i,
            "_seq": i,
            "ts": value(r, "ts"),
            "_raw": " ".join(str(v) for v in (value(r, "qname"), value(r, "answer")) if v),
            "qname": value(r, "qname"),
            "answer": value(r, "answer"),
            "record_type": value(r, "rtype") or value(r, "qtype"),
            "src_ip": value(r, "src_ip"),
            "dst_ip": value(r, "dst_ip"),
            "flow_id": value(r, "flow_id"),
        }
        for i, r in frame(tables, "network/dns").iterrows()
    ]


def _logs(tables: dict, logs=None, services=None) -> pd.DataFrame:
    """Log lines (of some logs, or of some services), column-wise: a disk's logs run to millions of lines."""
    df = frame(tables, "disk/logs")
    if not len(df):
        return pd.DataFrame()
    keep = pd.Series(True, index=df.index)
    if logs:
        keep &= df["log"].isin(logs).fillna(False)
    if services:
        keep &= df["service"].astype("string").str.lower().isin({s.lower() for s in services}).fillna(False)
    lines = df[keep.astype(bool)]
    return pd.DataFrame(
        {
            "_table": "disk/logs",
            "_row": lines.index,
            "_seq": lines.index,
            "ts": lines["ts"],
            "_raw": lines["message"],
            "_source": lines["path"],
            "service": lines["service"],
            "pid": lines["pid"],
        }
    )


def build_views(tables: dict) -> dict[str, pd.DataFrame]:
    """Every view of :data:`~toolkit.correlate.sigma.taxonomy.VIEWS` from one snapshot's tables
    (row positions as in those tables: pass them with a fresh index)."""
    history = _history(tables)
    built = {
        "process_creation": _processes(tables) + history,
        "file_event": [
            {**h, "target_path": path, "_raw": h["args"]} for h in history for path in written_files(h["words"])
        ],
        "network_connection": _network(tables),
        "dns": _dns(tables),
        "linux_auth": _logs(tables, logs=("authlog", "securelog")),
        "linux_log": _logs(tables),
    }
    for name, view in VIEWS.items():
        if "services" in view:
            built[name] = _logs(tables, services=view["services"])
    out = {}
    for name, view in VIEWS.items():
        columns = list(PREFIX) + ["_source"] + sorted(set(view["fields"].values()))
        columns += [c for c in ("pid", "exe_path", "flow_id") if c not in columns]
        data = built[name]
        df = (data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)).reset_index(drop=True)
        df = df.reindex(columns=columns)
        df["ts"] = pd.to_datetime(df["ts"], utc=True, errors="coerce")
        out[name] = df.convert_dtypes()
    return out
