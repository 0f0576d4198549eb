"""One finding per rule and entity per VM, listing the snapshots it was seen in.

Correlation runs per snapshot (its graph joins one moment's tables); a VM has
several snapshots, and a paused moment saved as an ELF dump, a kdump and a
savevm is one moment analysed once. This module folds the per-snapshot findings
of one VM into the VM's: the same rule on the same entity (same label, same
subject) in several snapshots is one finding, ``seen_in`` those snapshots (and
the artefacts recorded as the same moment as them), first and last seen, with
every snapshot's proving rows. The explanation and chain are the latest
snapshot's. Changes between moments (toolkit/correlate/changes.py) join as
findings of their own.

Example::

    rows = vm_findings(vm, case.findings, same_moment_as={"qemu-memory.kdump": "qemu-memory.elf"},
                       times={"qemu-memory.elf": "2026-12-02T00:30:33+00:00"})
"""

from __future__ import annotations

import hashlib
import json

import pandas as pd

from toolkit.schemas import SEVERITY_RANK


def vm_finding_id(vm_id: str, rule_id: str, entity: str, label: str | None, subject: str | None) -> str:
    key = "\0".join(str(x or "") for x in (vm_id, rule_id, entity, label, subject))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _plain(v):
    return None if v is None or v is pd.NA or (isinstance(v, float) and v != v) else v


def vm_findings(vm: dict, findings: pd.DataFrame, same_moment_as: dict[str, str], times: dict, extra=()) -> list[dict]:
    """``vm/findings`` rows (without provenance) for one VM.

    ``vm`` is a :func:`toolkit.evidence.vms.group_vms` entry (its ``snapshots`` in capture order);
    ``findings`` the per-snapshot findings of its analysed snapshots; ``same_moment_as``
    {snapshot: the snapshot analysed for its moment}; ``times`` {snapshot: capture time (a Timestamp)};
    ``extra`` findings made at VM level (changes), each with its own ``seen_in`` list.
    """
    order = {sid: n for n, sid in enumerate(vm["snapshots"])}
    members: dict[str, list[str]] = {}
    for sid in vm["snapshots"]:
        members.setdefault(same_moment_as.get(sid, sid), []).append(sid)
    groups: dict[tuple, list[dict]] = {}
    mine = findings[findings["snapshot_id"].isin(order)] if len(findings) else findings
    for r in mine.to_dict("records"):
        r = {k: _plain(v) for k, v in r.items()}
        r["seen_in"] = members.get(r["snapshot_id"], [r["snapshot_id"]])
        r["evidence"] = json.loads(r["evidence"] or "[]")
        r["chain"] = json.loads(r["chain"] or "[]")
        key = (r["rule_id"], r["entity"], r["entity_label"], r.get("subject"))
        groups.setdefault(key, []).append(r)
    for r in extra:
        key = (r["rule_id"], r["entity"], r["entity_label"], r.get("subject"))
        groups.setdefault(key, []).append(dict(r))
    rows = []
    for (rule_id, entity, label, subject), hits in groups.items():
        hits.sort(key=lambda h: max(order.get(s, -1) for s in h["seen_in"]))
        latest = hits[-1]
        seen = sorted({s for h in hits for s in h["seen_in"]}, key=lambda s: order.get(s, len(order)))
        severity = max((h["severity"] for h in hits), key=lambda s: SEVERITY_RANK.get(s, 2))
        evidence = []
        for h in hits:
            evidence += [lk for lk in h["evidence"] if lk not in evidence]
        rows.append(
            {
                "vm": vm["id"],
                "finding_id": vm_finding_id(vm["id"], rule_id, entity, label, subject),
                "rule_id": rule_id,
                "title": latest["title"],
                "severity": severity,
                "severity_rank": SEVERITY_RANK.get(severity, 2),
                "confidence": max(float(h["confidence"]) for h in hits),
                "attack_id": latest.get("attack_id"),
                "explanation": latest["explanation"],
                "entity": entity,
                "entity_label": label,
                "pid": latest.get("pid"),
                "path": latest.get("path"),
                "flow_id": latest.get("flow_id"),
                "subject": subject,
                "seen_in": json.dumps(seen),
                "first_seen": seen[0],
                "last_seen": seen[-1],
                "first_seen_ts": times.get(seen[0]),
                "last_seen_ts": times.get(seen[-1]),
                "moments": len({same_moment_as.get(s, s) for s in seen}),
                "evidence": json.dumps(evidence),
                "chain": json.dumps(latest["chain"], default=str),
            }
        )
    rows.sort(key=lambda r: (-r["severity_rank"], -r["confidence"], r["rule_id"], r["entity"]))
    return rows
