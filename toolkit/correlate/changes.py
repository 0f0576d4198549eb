"""What appeared, disappeared or changed between two snapshots of one VM, from their tables.

Each kind of thing is compared on what identifies it across moments (declared in
:data:`KINDS`): a process by pid, name and start time (a reused pid is another
process), a socket by its endpoints and owner, a module by name, a suspicious
kernel check by check and item, a persistence entry by its file and kind (its
program changing is "modified"), a file by path (its hash changing is
"modified"). Rows link back to the row that shows the thing in either snapshot.

:func:`change_findings` turns the changes a responder must see into findings
(``vm.new_since`` / ``vm.gone_since``); every change stays in the
``vm/changes`` table.

Example::

    rows = diff_tables(tables_a, tables_b, "web01-monday", "web01-tuesday")
    [(r["kind"], r["change"], r["item"]) for r in rows]   # [('process', 'new', 'pid 913 nc ...')]
"""

from __future__ import annotations

import json

import pandas as pd

from toolkit.correlate.links import col, exited, frame, link, pid_of, truthy, value
from toolkit.correlate.vocabulary import is_hidden_or_temp

CHANGE_RULES = {
    "vm.new_since": {
        "title": "Appeared since the previous snapshot",
        "attack_id": None,
        "doc": "a process, socket, module, kernel hook, persistence entry or executable file that the "
        "earlier snapshot of the VM does not have",
    },
    "vm.gone_since": {
        "title": "Gone since the previous snapshot",
        "attack_id": None,
        "doc": "something the earlier snapshot had and the later one does not (an exited process, a "
        "removed module or persistence entry, a deleted executable)",
    },
}


def _process_key(r):
    ts = value(r, "start_ts")
    return f"pid {pid_of(r)} {value(r, 'process')!r}" + (f" started {ts.isoformat()}" if ts is not None else "")


def _process_text(r):
    exe = value(r, "exe_path")
    return f"process {value(r, 'process')!r} (pid {pid_of(r)}, ppid {pid_of(r, 'ppid')})" + (
        f" running {exe!r}" if exe else ""
    )


def _socket_key(r):
    state = str(value(r, "state") or "")
    far = "" if state.upper() in ("LISTEN", "UNCONNECTED") else f" -> {value(r, 'dst_ip')}:{value(r, 'dst_port')}"
    return f"{value(r, 'proto')} {value(r, 'src_ip')}:{value(r, 'src_port')}{far} {state} pid {pid_of(r)}"


def _live_processes(df):
    return df[[not exited(r) for _i, r in df.iterrows()]] if len(df) else df


def _suspicious(df):
    return df[col(df, "suspicious").map(truthy).astype(bool)]


# kind -> (table, rows to compare, identity, description, what makes it "modified" or None)
KINDS = {
    "process": ("memory/processes", _live_processes, _process_key, _process_text, None),
    "socket": ("memory/sockets", lambda df: df, _socket_key, lambda r: f"socket {_socket_key(r)}", None),
    "module": (
        "memory/modules",
        lambda df: df,
        lambda r: str(value(r, "name")),
        lambda r: f"kernel module {value(r, 'name')!r}",
        None,
    ),
    "kernel_check": (
        "memory/kernel_checks",
        _suspicious,
        lambda r: f"{value(r, 'check')} {value(r, 'item') or value(r, 'symbol') or ''}".strip(),
        lambda r: f"kernel check {value(r, 'check')!r} flags {value(r, 'item') or value(r, 'detail')!r}",
        None,
    ),
    "persistence": (
        "disk/persistence",
        lambda df: df,
        lambda r: f"{value(r, 'kind')} {value(r, 'path')}",
        lambda r: (
            f"{value(r, 'kind')} entry {value(r, 'path')!r} running {value(r, 'program_path') or value(r, 'program')!r}"
        ),
        lambda r: (value(r, "command"), value(r, "program_sha256")),
    ),
    "file": (
        "disk/files",
        lambda df: df,
        lambda r: str(value(r, "path")),
        lambda r: f"file {value(r, 'path')!r}" + (f" (sha256 {value(r, 'sha256')})" if value(r, "sha256") else ""),
        lambda r: value(r, "sha256"),
    ),
}


def _indexed(df: pd.DataFrame, rows, key) -> dict:
    """{identity: row position in the snapshot's table} (the first row of a repeated identity)."""
    out = {}
    for i, r in rows(df).iterrows():
        out.setdefault(key(r), i)
    return out


def diff_tables(tables_a: dict, tables_b: dict, sid_a: str, sid_b: str, vm: str | None = None) -> list[dict]:
    """``vm/changes`` rows between two snapshots' tables (a earlier, b later).

    A kind is compared only when both snapshots have its table: a snapshot without
    a disk says nothing about files appearing.
    """
    out = []
    for kind, (table, rows, key, describe, content) in KINDS.items():
        if table not in tables_a or table not in tables_b:
            continue
        a, b = frame(tables_a, table), frame(tables_b, table)
        in_a, in_b = _indexed(a, rows, key), _indexed(b, rows, key)

        def change(what, item, r, links, kind=kind, describe=describe):
            out.append(
                {
                    "vm": vm,
                    "snapshot_a": sid_a,
                    "snapshot_b": sid_b,
                    "kind": kind,
                    "change": what,
                    "item": item,
                    "description": describe(r),
                    "evidence": json.dumps(links),
                }
            )

        for item, j in in_b.items():
            if item not in in_a:
                change("new", item, b.loc[j], [link(table, sid_b, j)])
            elif content is not None and content(a.loc[in_a[item]]) != content(b.loc[j]):
                change("modified", item, b.loc[j], [link(table, sid_a, in_a[item]), link(table, sid_b, j)])
        for item, i in in_a.items():
            if item not in in_b:
                change("gone", item, a.loc[i], [link(table, sid_a, i)])
    return out


def _severity(change: dict, row) -> str | None:
    """How much a change matters, or None when it is only a vm/changes row (not a finding)."""
    kind, what = change["kind"], change["change"]
    if kind == "process":
        if truthy(value(row, "is_kernel_thread")):
            return "info"
        return "medium" if what == "new" else "low"
    if kind == "socket":
        return "medium" if what == "new" else "info"
    if kind in ("module", "kernel_check", "persistence"):
        return "high" if what in ("new", "modified") else "low"
    if kind == "file":
        # every file is in vm/changes; an executable or a file in a hidden or temporary place is a finding
        executable = value(row, "build_id") is not None or (value(row, "mode") or 0) & 0o111
        if executable or is_hidden_or_temp(value(row, "path")):
            return "medium" if what in ("new", "modified") else "low"
    return None


def _entity(change: dict, row) -> tuple[str, str]:
    kind = change["kind"]
    if kind in ("process", "socket") and pid_of(row) is not None:
        label = f"{value(row, 'process', '?')} (pid {pid_of(row)})"
        return f"process:{pid_of(row)}", label
    if kind == "module":
        return f"module:{value(row, 'name')}", f"kernel module {value(row, 'name')}"
    if kind == "kernel_check":
        return f"kernel:{value(row, 'check')}", f"kernel check {value(row, 'check')}"
    if kind == "persistence":
        target = value(row, "program_path") or value(row, "path")
        return f"file:{target}", target
    return f"file:{value(row, 'path')}", value(row, "path")


def change_findings(changes: list[dict], tables: dict[str, dict], times: dict) -> list[dict]:
    """Findings (``vm/findings`` rows without the VM columns) for the changes that matter.

    ``tables`` is {snapshot id: that snapshot's tables}; ``times`` {snapshot id: capture time}.
    """
    rows = []
    for c in changes:
        links = json.loads(c["evidence"])
        lk = links[-1]
        row = frame(tables.get(lk["snapshot_id"], {}), lk["table"]).loc[lk["row"]]
        severity = _severity(c, row)
        if severity is None:
            continue
        entity, label = _entity(c, row)
        when = times.get(c["snapshot_a"])
        since = c["snapshot_a"] + (f" ({when:%Y-%m-%d %H:%M:%S} UTC)" if when is not None else "")
        if c["change"] == "gone":
            rule_id = "vm.gone_since"
            why = f"{c['description']} was in snapshot {since} and is gone in snapshot {c['snapshot_b']}."
        else:
            rule_id = "vm.new_since"
            verb = "is new" if c["change"] == "new" else "changed"
            why = f"{c['description']} {verb} since snapshot {since}: seen in snapshot {c['snapshot_b']}."
        rows.append(
            {
                "rule_id": rule_id,
                "title": CHANGE_RULES[rule_id]["title"],
                "severity": severity,
                "confidence": 0.9,  # both snapshots' rows say so directly
                "attack_id": CHANGE_RULES[rule_id]["attack_id"],
                "explanation": why,
                "entity": entity,
                "entity_label": label,
                "pid": pid_of(row) if c["kind"] in ("process", "socket") else None,
                "path": value(row, "exe_path") or value(row, "path") or value(row, "program_path"),
                "subject": f"{c['kind']} {c['item']}",
                "seen_in": [c["snapshot_a"] if c["change"] == "gone" else c["snapshot_b"]],
                "evidence": links,
                "chain": [],
            }
        )
    return rows
