"""The entity graph of one snapshot: processes, files, sockets, flows,
persistence entries, shell commands and YARA matches, joined on shared keys.

Nodes are dicts keyed by an id such as ``process:1234`` or ``file:/usr/bin/x``;
edges are ``(a, b, relation, links)`` where ``links`` are the table rows that
justify the join. Built from tables only (never evidence).

Example::

    g = build_graph(tables, "lab-qemu")
    chain(g, "process:812")   # the nodes reachable from the implant, with why
"""

from __future__ import annotations

import ipaddress
import re
import shlex

import pandas as pd

from toolkit.correlate.links import endpoints, frame, link, pid_of, truthy, value
from toolkit.correlate.vocabulary import is_inet
from toolkit.programs import interpreter_script, is_interpreter
from toolkit.schemas import split_deleted


def _norm_ip(ip) -> str | None:
    if ip is None or ip is pd.NA:
        return None
    try:
        addr = ipaddress.ip_address(str(ip))
    except ValueError:
        return str(ip)
    if addr.version == 6 and addr.ipv4_mapped:
        return str(addr.ipv4_mapped)
    return str(addr)


def endpoint_key(a_ip, a_port, b_ip, b_port, proto) -> tuple | None:
    """Direction-free 5-tuple key so a socket matches its flow either way round."""
    if a_port is None or b_port is None:
        return None
    ends = sorted([(_norm_ip(a_ip) or "", int(a_port)), (_norm_ip(b_ip) or "", int(b_port))])
    return (str(proto or "").lower(), *ends[0], *ends[1])


def new_graph(snapshot_id: str) -> dict:
    return {"snapshot_id": snapshot_id, "nodes": {}, "edges": []}


def add_node(graph, node_id: str, kind: str, label: str, links=(), **attrs) -> str:
    node = graph["nodes"].setdefault(node_id, {"id": node_id, "kind": kind, "label": label, "links": []})
    node["links"].extend(lk for lk in links if lk not in node["links"])
    node.update({k: v for k, v in attrs.items() if v is not None})
    return node_id


def add_edge(graph, a: str, b: str, relation: str, links=()) -> None:
    graph["edges"].append((a, b, relation, list(links)))


def _processes(graph, tables, sid):
    procs = frame(tables, "memory/processes")
    argv = {}
    for i, row in frame(tables, "memory/cmdlines").iterrows():
        argv.setdefault(pid_of(row), (i, str(value(row, "args") or "").split()))
    for i, row in procs.iterrows():
        pid = pid_of(row)
        if pid is None:
            continue
        exe, deleted_suffix = split_deleted(value(row, "exe_path") or None)
        j, words = argv.get(pid, (None, []))
        # An interpreter's identity is the script it runs, not the binary every such process shares.
        script = interpreter_script([exe or "", *words[1:]]) if words and is_interpreter(exe) else None
        add_node(
            graph,
            f"process:{pid}",
            "process",
            f"{value(row, 'process', '?')} (pid {pid})",
            [link("memory/processes", sid, i)] + ([link("memory/cmdlines", sid, j)] if j is not None else []),
            pid=int(pid),
            process=value(row, "process"),
            exe=exe,
            deleted=truthy(value(row, "exe_deleted")) or deleted_suffix,
            uid=pid_of(row, "uid"),
            args=" ".join(words) if words else None,
            script=script,
        )
        ppid = pid_of(row, "ppid")
        if ppid is not None and f"process:{ppid}" in graph["nodes"]:
            add_edge(graph, f"process:{ppid}", f"process:{pid}", "parent of", [link("memory/processes", sid, i)])


def _executables(graph, tables, sid):
    """process -> file on disk: by path, or for deleted/memfd images by build-id or first-page hash."""
    files = frame(tables, "disk/files")
    by_path = {value(r, "path"): i for i, r in files.iterrows()} if len(files) else {}
    by_build_id, by_first_page = {}, {}
    for i, r in files.iterrows():
        if value(r, "build_id"):
            by_build_id.setdefault(value(r, "build_id"), []).append(i)
        if value(r, "first_page_sha256"):
            by_first_page.setdefault(value(r, "first_page_sha256"), []).append(i)
    for node in list(graph["nodes"].values()):
        if node["kind"] != "process" or not node.get("exe"):
            continue
        i = by_path.get(node["exe"])
        if i is not None and not node.get("deleted"):
            _file_node(graph, files, sid, i)
            add_edge(graph, node["id"], f"file:{node['exe']}", "runs", [link("disk/files", sid, i)])
            if is_interpreter(node["exe"]):
                graph["nodes"][f"file:{node['exe']}"]["shared"] = True
        script = node.get("script")
        if script:
            k = by_path.get(script)
            if k is not None:
                _file_node(graph, files, sid, k)
            else:
                add_node(graph, f"file:{script}", "file", script, path=script)
            add_edge(graph, node["id"], f"file:{script}", "runs script", node["links"][1:])
    exes = frame(tables, "memory/executables")
    for j, r in exes.iterrows():
        proc_id = f"process:{pid_of(r)}"
        if proc_id not in graph["nodes"]:
            continue
        matches = []
        if value(r, "build_id"):
            matches += [(i, "same build-id") for i in by_build_id.get(value(r, "build_id"), [])]
        if value(r, "first_page_sha256"):
            matches += [(i, "same first-page hash") for i in by_first_page.get(value(r, "first_page_sha256"), [])]
        for i, why in matches:
            _file_node(graph, files, sid, i)
            add_edge(
                graph,
                proc_id,
                f"file:{value(files.loc[i], 'path')}",
                f"image matches ({why})",
                [link("memory/executables", sid, j), link("disk/files", sid, i)],
            )


def _file_node(graph, files, sid, i) -> str:
    r = files.loc[i]
    path = value(r, "path")
    return add_node(
        graph, f"file:{path}", "file", path, [link("disk/files", sid, i)], path=path, sha256=value(r, "sha256")
    )


def _sockets_and_flows(graph, tables, sid):
    flows = frame(tables, "network/flows")
    flow_keys = {}
    for i, r in flows.iterrows():
        key = endpoint_key(
            value(r, "src_ip"), value(r, "src_port"), value(r, "dst_ip"), value(r, "dst_port"), value(r, "proto")
        )
        if key:
            flow_keys.setdefault(key, []).append(i)
        fid = value(r, "flow_id")
        add_node(graph, f"flow:{fid}", "flow", endpoints(r), [link("network/flows", sid, i)], flow_id=fid)
    sockets = frame(tables, "memory/sockets")
    for j, r in sockets.iterrows():
        pid = pid_of(r)
        if not is_inet(r) or value(r, "dst_port") in (None, 0):
            continue  # a unix socket is not a flow; listening or unconnected: no flow to join
        node_id = (
            f"socket:{pid}:{value(r, 'src_ip')}:{value(r, 'src_port')}-{value(r, 'dst_ip')}:{value(r, 'dst_port')}"
        )
        label = f"{endpoints(r)} {value(r, 'state', '')}"
        sock_id = add_node(graph, node_id, "socket", label, [link("memory/sockets", sid, j)], pid=pid)
        if f"process:{pid}" in graph["nodes"]:
            add_edge(graph, f"process:{pid}", sock_id, "owns socket", [link("memory/sockets", sid, j)])
        key = endpoint_key(
            value(r, "src_ip"), value(r, "src_port"), value(r, "dst_ip"), value(r, "dst_port"), value(r, "proto")
        )
        for i in flow_keys.get(key, []):
            add_edge(
                graph,
                sock_id,
                f"flow:{value(flows.loc[i], 'flow_id')}",
                "same 5-tuple as capture flow",
                [link("memory/sockets", sid, j), link("network/flows", sid, i)],
            )


def _persistence(graph, tables, sid):
    pers = frame(tables, "disk/persistence")
    files = frame(tables, "disk/files")
    by_path = {value(r, "path"): i for i, r in files.iterrows()} if len(files) else {}
    for i, r in pers.iterrows():
        pid = add_node(
            graph,
            f"persistence:{i}",
            "persistence",
            f"{value(r, 'kind', 'persistence')} {value(r, 'path', '')}",
            [link("disk/persistence", sid, i)],
            path=value(r, "path"),
            program_path=value(r, "program_path"),
            program_sha256=value(r, "program_sha256"),
        )
        target = value(r, "program_path")
        if target:
            links = [link("disk/persistence", sid, i)]
            if target in by_path:
                _file_node(graph, files, sid, by_path[target])
                links.append(link("disk/files", sid, by_path[target]))
            else:
                add_node(graph, f"file:{target}", "file", target, path=target, sha256=value(r, "program_sha256"))
            add_edge(graph, pid, f"file:{target}", "would run", links)


HISTORY_PATH = re.compile(r"(?:^|\s|[>=])(/[^\s;|&'\"<>]+)")


def history_paths(command: str) -> list[str]:
    try:
        words = shlex.split(command, comments=False)
    except ValueError:
        words = command.split()
    paths = [w for w in words if w.startswith("/")]
    paths += [m for m in HISTORY_PATH.findall(command) if m not in paths]
    return paths


def _shell_history(graph, tables, sid):
    for table in ("disk/shell_history", "memory/shell_history"):
        hist = frame(tables, table)
        for i, r in hist.iterrows():
            command = value(r, "command")
            if not command:
                continue
            node = add_node(graph, f"command:{table}:{i}", "command", command, [link(table, sid, i)], command=command)
            for path in history_paths(command):
                for other in list(graph["nodes"].values()):
                    if other["kind"] == "file" and other.get("path") == path:
                        add_edge(graph, node, other["id"], "names file", [link(table, sid, i)])
                    if other["kind"] == "process" and other.get("exe") == path:
                        add_edge(graph, node, other["id"], "names the executable of", [link(table, sid, i)])


def _yara(graph, tables, sid):
    """One node per (rule, where it matched): repeated hits of a rule in the same
    process, file or flow are one step of the chain carrying all their rows."""
    matches = frame(tables, "yara/matches")
    for i, r in matches.iterrows():
        target = value(r, "target")
        owner = None
        if target == "process" and pid_of(r) is not None:
            owner = f"process:{pid_of(r)}"
        elif target == "file" and value(r, "path"):
            owner = f"file:{value(r, 'path')}"
            if owner not in graph["nodes"]:
                add_node(graph, owner, "file", value(r, "path"), path=value(r, "path"), sha256=value(r, "sha256"))
        elif target == "stream" and value(r, "flow_id"):
            owner = f"flow:{value(r, 'flow_id')}"
        where = owner or target
        node_id = f"yara:{value(r, 'rule')}@{where}"
        fresh = node_id not in graph["nodes"]
        node = add_node(
            graph,
            node_id,
            "yara",
            f"YARA {value(r, 'rule')} in {target}",
            [link("yara/matches", sid, i)],
            rule=value(r, "rule"),
            severity=value(r, "severity"),
        )
        hits = graph["nodes"][node].setdefault("hits", 0) + 1
        graph["nodes"][node]["hits"] = hits
        graph["nodes"][node]["label"] = f"YARA {value(r, 'rule')} in {target}" + (f" ({hits} hits)" if hits > 1 else "")
        if owner and owner in graph["nodes"]:
            if fresh:
                add_edge(graph, owner, node, "YARA match", [link("yara/matches", sid, i)])
            else:
                for a, b, _rel, links in graph["edges"]:
                    if a == owner and b == node:
                        links.append(link("yara/matches", sid, i))


def build_graph(tables: dict, snapshot_id: str) -> dict:
    graph = new_graph(snapshot_id)
    for step in (_processes, _executables, _sockets_and_flows, _persistence, _shell_history, _yara):
        step(graph, tables, snapshot_id)
    return graph


# How an edge reads when walked from its far end.
INVERSE = {
    "parent of": "child of",
    "runs": "is the executable of",
    "runs script": "is the script of",
    "owns socket": "socket of",
    "same 5-tuple as capture flow": "capture flow of socket",
    "would run": "run by persistence entry",
    "names file": "named by shell command",
    "names the executable of": "executable named by shell command",
    "YARA match": "YARA match of",
}


def neighbours(graph, node_id: str):
    for a, b, relation, links in graph["edges"]:
        if a == node_id:
            yield b, relation, links
        elif b == node_id:
            inverse = INVERSE.get(relation.split(" (")[0], f"{relation} (reverse)")
            if relation.startswith("image matches"):
                inverse = relation.replace("image matches", "file matches the image of")
            yield a, inverse, links


def chain(graph, start: str, max_depth: int = 4) -> list[dict]:
    """Breadth-first walk from ``start``: each step says which node, how reached, and the proving rows."""
    seen = {start}
    out = [
        {
            "node": start,
            "label": graph["nodes"].get(start, {}).get("label", start),
            "via": None,
            "from": None,
            "links": graph["nodes"].get(start, {}).get("links", []),
        }
    ]
    frontier = [start]
    for _ in range(max_depth):
        nxt = []
        for node in frontier:
            for other, relation, links in neighbours(graph, node):
                if other in seen or other not in graph["nodes"]:
                    continue
                # Do not wander from one process to all its siblings via the parent.
                if relation in ("parent of", "child of") and graph["nodes"][other]["kind"] == "process":
                    continue
                # Nor through a binary many processes share (an interpreter, a service's
                # workers): a shared executable is not an identity.
                if node != start and shared_file(graph, node):
                    continue
                seen.add(other)
                nxt.append(other)
                out.append(
                    {
                        "node": other,
                        "label": graph["nodes"][other]["label"],
                        "via": relation,
                        "from": node,
                        "links": links,
                    }
                )
        frontier = nxt
    return out


def shared_file(graph, node_id: str) -> bool:
    """A file node that stands for no single process: an interpreter or shell binary, or the
    executable of more than one running process."""
    node = graph["nodes"].get(node_id) or {}
    if node.get("kind") != "file":
        return False
    if node.get("shared"):
        return True
    runners = {a for a, b, rel, _ in graph["edges"] if b == node_id and rel == "runs"}
    return len(runners) > 1


def owner_process(graph, node_id: str) -> str | None:
    """The process a file, socket or flow belongs to, when the graph says so."""
    if node_id.startswith("process:"):
        return node_id
    for a, b, relation, _ in graph["edges"]:
        if b == node_id and a.startswith("process:") and relation != "parent of":
            return a
    for a, b, _relation, _ in graph["edges"]:
        if b == node_id and a.startswith("socket:"):
            return owner_process(graph, a)
    return None
