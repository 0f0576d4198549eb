"""The incident summary: per VM, the few entities that carry the high findings, each told as
a short story — the process, its file on disk, what starts it, whom it talks to, what matched.

Built from the VM findings (``vm/findings``): their entity chains are walks of the
entity graph (toolkit/correlate/graph.py), so each step already says how it is
joined to the entity ("runs", "image matches (same build-id)", "run by persistence
entry", "owns socket", "YARA match"). This module only sorts those steps into the
parts of a story; renderers (terminal, HTML) decide how they look and escape them.

Example::

    for vm in incident_summary(case):
        for story in vm["stories"]:
            print(story["label"], [(part, text) for part, text in story["parts"]])
    # kworker/0:2H (pid 122) [('runs', '/tmp/.kw (deleted)'), ('file on disk', '/var/tmp/.cache/.kworker-upd'), ...]
"""

from __future__ import annotations

import json
import re

import pandas as pd

from toolkit.schemas import SEVERITIES, SEVERITY_RANK

HIGH = SEVERITY_RANK["high"]
MAX_STORIES = 3
# The parts of a story, in the order they are told.
PARTS = ("runs", "file on disk", "started by", "talks to", "seen on the wire", "named in shell history", "matched")


def _part(step: dict) -> str | None:
    """Which part of the story a chain step tells, from the node it reaches and how."""
    kind, via = step["node"].split(":", 1)[0], step.get("via") or ""
    if kind == "file":
        return "runs" if via == "runs" else "file on disk"
    if kind == "persistence":
        return "started by"
    if kind == "socket":
        return "talks to"
    if kind == "flow":
        return "seen on the wire"
    if kind == "command":
        return "named in shell history"
    if kind == "yara":
        return "matched"
    return None


YARA_STEP = re.compile(r"^YARA (?P<rule>\S+) in (?P<where>\S+)(?: \((?P<hits>\d+) hits\))?$")


def _yara_by_rule(labels: list[str]) -> list[str]:
    """'YARA X in process (4 hits)', 'YARA X in file' -> 'X (process ×4, file)': one entry per rule."""
    by_rule: dict[str, list[str]] = {}
    other = []
    for label in labels:
        m = YARA_STEP.match(label)
        if not m:
            other.append(label)
            continue
        where = m["where"] + (f" ×{m['hits']}" if m["hits"] else "")
        by_rule.setdefault(m["rule"], []).append(where)
    return [f"{rule} ({', '.join(where)})" for rule, where in by_rule.items()] + other


def _story(entity: str, rows: pd.DataFrame) -> dict:
    top = rows.iloc[0]
    parts: dict[str, list[str]] = {}
    for chain in rows["chain"]:
        for step in json.loads(chain or "[]")[1:]:
            part = _part(step)
            if part and step["label"] not in parts.setdefault(part, []):
                parts[part].append(step["label"])
    if parts.get("matched"):
        parts["matched"] = _yara_by_rule(parts["matched"])
    exe = next((p for p in rows["path"] if isinstance(p, str) and p), None)
    deleted = (rows["rule_id"] == "proc.deleted_executable").any()
    if entity.startswith("process:") and exe and "runs" not in parts:
        parts["runs"] = [exe + (" (deleted)" if deleted else "")]
    seen = json.loads(top["seen_in"] or "[]")
    return {
        "entity": entity,
        "label": top["entity_label"],
        "severity": top["severity"],
        "findings": int(len(rows)),
        "why": list(dict.fromkeys(rows["title"])),
        "parts": [(part, "; ".join(parts[part])) for part in PARTS if parts.get(part)],
        "seen_in": seen,
        "fleet_note": next((n for n in rows["fleet_note"] if isinstance(n, str) and n), None),
        "finding_ids": list(rows["finding_id"]),
    }


def vm_stories(vm_findings: pd.DataFrame, limit: int = MAX_STORIES) -> list[dict]:
    """The entities of one VM with a finding of high severity or worse, most serious first, as stories."""
    high = vm_findings[vm_findings["severity_rank"] >= HIGH]
    if not len(high):
        return []
    ranked = (
        high.groupby("entity")
        .agg(rank=("severity_rank", "max"), n=("rule_id", "size"), conf=("confidence", "max"))
        .sort_values(["rank", "n", "conf"], ascending=False)
    )
    stories = []
    for entity in list(ranked.index)[:limit]:
        rows = vm_findings[vm_findings["entity"] == entity].sort_values(
            ["severity_rank", "confidence"], ascending=False, kind="stable"
        )
        stories.append(_story(entity, rows))
    return stories


def incident_summary(case) -> list[dict]:
    """Per VM of the case: name, moments, counts by severity, the stories, and what is left out;
    the VMs with the most critical, then high findings first.

    Example::

        incident_summary(Case.open("case"))[0]["stories"][0]["why"]
        # ['User process posing as a kernel thread', 'Process running from a deleted file', ...]
    """
    findings = case.table("vm/findings") if "vm/findings" in case.tables() else None
    moments = case.table("vm/moments") if "vm/moments" in case.tables() else None
    out = []
    for vm_id, info in sorted((case.manifest.get("vms") or {}).items()):
        mine = findings[findings["vm"] == vm_id] if findings is not None else pd.DataFrame()
        times = moments[moments["vm"] == vm_id] if moments is not None else pd.DataFrame()
        stories = vm_stories(mine) if len(mine) else []
        told = {s["entity"] for s in stories}
        high_left = int(((mine["severity_rank"] >= HIGH) & ~mine["entity"].isin(told)).sum()) if len(mine) else 0
        out.append(
            {
                "vm": vm_id,
                "name": info.get("name") or vm_id,
                "snapshots": list(info.get("snapshots") or []),
                "moments": int(times["moment"].nunique()) if len(times) else 0,
                "first_capture": times["captured_at"].min() if len(times) else None,
                "last_capture": times["captured_at"].max() if len(times) else None,
                "counts": {s: int((mine["severity"] == s).sum()) for s in SEVERITIES} if len(mine) else {},
                "stories": stories,
                "high_not_told": high_left,
            }
        )
    # the VMs with the worst findings first: on a fleet, the first screen is where something happened
    return sorted(out, key=lambda vm: tuple(-vm["counts"].get(s, 0) for s in SEVERITIES[:2]) + (vm["vm"],))
