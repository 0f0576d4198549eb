"""The correlation rule ``sigma.match``: rows of ``sigma/matches`` become findings.

A match is about the process its row names (by pid, or as the process whose
executable the command ran), else the file or flow, else the row itself; all
matches of one Sigma rule about one entity are one finding carrying every
matched row. The finding keeps the Sigma rule's id (``sigma:<id>``), title,
level and ATT&CK techniques.
"""

from __future__ import annotations

import json

from toolkit.correlate.graph import owner_process
from toolkit.correlate.links import frame, hit, pid_of, value


def _entity(graph, row) -> str:
    pid, path, flow_id = pid_of(row), value(row, "path"), value(row, "flow_id")
    if pid is not None and f"process:{pid}" in graph["nodes"]:
        return f"process:{pid}"
    if path:
        running = next(
            (n["id"] for n in graph["nodes"].values() if n["kind"] == "process" and n.get("exe") == path), None
        )
        if running:
            return running
        if f"file:{path}" in graph["nodes"]:
            return f"file:{path}"
    if flow_id:
        return owner_process(graph, f"flow:{flow_id}") or f"flow:{flow_id}"
    return f"{value(row, 'table')}#{value(row, 'row')}"


def sigma_match(tables, graph, sid):
    """A row (or, for a Sigma correlation rule, a chain of rows) that a Sigma rule matched (snapscope sigma)."""
    matches = frame(tables, "sigma/matches")
    found: dict[tuple, dict] = {}
    for _, r in matches.iterrows():
        entity = _entity(graph, r)
        key = (value(r, "sigma_id"), entity)
        links = json.loads(value(r, "evidence") or "[]")
        if key in found:
            found[key]["links"] += [lk for lk in links if lk not in found[key]["links"]]
            found[key]["count"] += 1
            continue
        found[key] = {"row": r, "links": links, "count": 1}
    for (sigma_id, entity), item in found.items():
        r = item["row"]
        kind = "correlation rule" if value(r, "kind") == "correlation" else "rule"
        more = f" (and {item['count'] - 1} more rows)" if item["count"] > 1 else ""
        why = (
            f"Sigma {kind} {value(r, 'title')!r} ({sigma_id}) matched {value(r, 'table')} row "
            f"{value(r, 'row')}{more}: {value(r, 'description')!r}."
        )
        yield hit(
            entity,
            item["links"],
            0.7,
            why,
            rule_id=f"sigma:{sigma_id}",
            title=value(r, "title"),
            severity=value(r, "severity") or "medium",
            attack_id=value(r, "attack_id"),
        )
