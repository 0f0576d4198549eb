"""Run the correlation rules over one snapshot's tables -> ``findings`` table.

One finding per rule and entity: a rule that hits one entity through several
rows (one process holding six connections) gives one finding carrying every
row as its evidence, not six copies (:func:`merge_hits`).

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

# Explanations of merged hits quoted in full; the rest are counted.
MERGED_SHOWN = 3


def _finding_id(snapshot_id, rule_id, entity, subject=None) -> str:
    key = f"{snapshot_id}\0{rule_id}\0{entity}" + (f"\0{subject}" if subject else "")
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def merge_hits(hits: list[dict]) -> dict:
    """One hit from several hits of one rule on one entity: every row's link, the highest
    confidence and severity, the first explanation with the others appended.

    Example::

        merge_hits([hit("process:7", [a], 0.8, "x."), hit("process:7", [b], 0.6, "y.")])
        # {'entity': 'process:7', 'links': [a, b], 'confidence': 0.8, 'explanation': 'x. Also: y.'}
    """
    first = dict(hits[0])
    links = []
    for h in hits:
        links += [lk for lk in h["links"] if lk not in links]
    first["links"] = links
    first["confidence"] = max(h.get("confidence", 0.5) for h in hits)
    severities = [h["severity"] for h in hits if h.get("severity")]
    if severities:
        first["severity"] = max(severities, key=lambda s: SEVERITY_RANK.get(str(s).lower(), 2))
    others = list(dict.fromkeys(h["explanation"] for h in hits[1:] if h["explanation"] != first["explanation"]))
    if others:
        more = len(others) - MERGED_SHOWN
        first["explanation"] += (
            " Also: " + " ".join(others[:MERGED_SHOWN]) + (f" (and {more} more)" if more > 0 else "")
        )
    return first


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
        # one finding per rule (a sigma.match hit names its Sigma rule), entity and subject
        # (the YARA rule of a yara.match)
        by_entity: dict[tuple, list[dict]] = {}
        for hit in hits:
            by_entity.setdefault((hit.get("rule_id"), hit["entity"], hit.get("subject")), []).append(hit)
        for same in by_entity.values():
            hit = merge_hits(same)
            severity = str(hit.get("severity") or rule["severity"]).lower()
            entity = hit["entity"]
            hit_rule_id = hit.get("rule_id") or rule_id  # sigma.match: the Sigma rule's own id
            node = graph["nodes"].get(entity, {})
            steps = chain(graph, entity) if entity in graph["nodes"] else []
            rows.append(
                {
                    "finding_id": _finding_id(snapshot_id, hit_rule_id, entity, hit.get("subject")),
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
                    "subject": hit.get("subject"),
                }
            )
    rows.sort(key=lambda r: (-r["severity_rank"], -r["confidence"], r["rule_id"], r["entity"]))
    source = "correlate"
    return (
        make_table("findings", rows, snapshot_id=snapshot_id, source=source),
        make_table("diagnostics", problems, snapshot_id=snapshot_id, source=source),
        graph,
    )
