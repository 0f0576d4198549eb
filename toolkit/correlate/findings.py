"""Run the correlation rules over one snapshot's tables -> ``findings`` table.

Example::

    tables = {name: case.table(name, snapshot="lab-qemu") for name in case.tables()}
    df = correlate_snapshot(tables, "lab-qemu")
"""

from __future__ import annotations

import hashlib
import json

from toolkit.correlate.graph import build_graph, chain
from toolkit.correlate.rules import RULES
from toolkit.schemas import SEVERITY_RANK, diagnostic, make_table


def _finding_id(snapshot_id, rule_id, entity, explanation) -> str:
    return hashlib.sha256(f"{snapshot_id}\0{rule_id}\0{entity}\0{explanation}".encode()).hexdigest()[:16]


def correlate_snapshot(tables: dict, snapshot_id: str, rules: dict | None = None):
    """Findings for one snapshot, each with its evidence rows and entity chain; plus diagnostics."""
    graph = build_graph(tables, snapshot_id)
    rows, problems = [], []
    for rule_id, rule in (rules or RULES).items():
        try:
            hits = list(rule["fn"](tables, graph, snapshot_id))
        except Exception as exc:  # a rule tripping over odd data must not hide the others' findings
            problems.append(diagnostic("error", f"rule {rule_id}", snapshot_id, f"{type(exc).__name__}: {exc}"))
            continue
        for hit in hits:
            severity = str(hit.get("severity") or rule["severity"]).lower()
            entity = hit["entity"]
            hit_rule_id = hit.get("rule_id") or rule_id  # sigma.match: the Sigma rule's own id
            node = graph["nodes"].get(entity, {})
            steps = chain(graph, entity) if entity in graph["nodes"] else []
            rows.append(
                {
                    "finding_id": _finding_id(snapshot_id, hit_rule_id, entity, hit["explanation"]),
                    "rule_id": hit_rule_id,
                    "title": hit.get("title") or rule["title"],
                    "severity": severity,
                    "severity_rank": SEVERITY_RANK.get(severity, 2),
                    "confidence": hit.get("confidence", 0.5),
                    "attack_id": hit.get("attack_id") or rule.get("attack_id"),
                    "explanation": hit["explanation"],
                    "entity": entity,
                    "entity_label": node.get("label", entity),
                    "pid": node.get("pid"),
                    "path": node.get("path") or node.get("exe"),
                    "flow_id": node.get("flow_id"),
                    "evidence": json.dumps(hit["links"]),
                    "chain": json.dumps(steps, default=str),
                }
            )
    rows.sort(key=lambda r: (-r["severity_rank"], -r["confidence"], r["rule_id"], r["entity"]))
    source = "correlate"
    return (
        make_table("findings", rows, snapshot_id=snapshot_id, source=source),
        make_table("diagnostics", problems, snapshot_id=snapshot_id, source=source),
        graph,
    )
