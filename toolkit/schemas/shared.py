"""Tables of every snapshot and of the case: diagnostics, evidence, findings, timeline, audits."""

from toolkit.schemas.core import FLOAT, INT, STRING, TIME, declare

# --- shared tables -----------------------------------------------------------
declare(
    "diagnostics",
    {
        "severity": STRING,  # DIAGNOSTIC_SEVERITIES: error | warning | info
        "what": STRING,  # the thing that could not be read or was skipped
        "where": STRING,  # file, offset, plugin, table
        "why": STRING,
    },
    doc="Warnings are data: everything an engine could not read, with where and why.",
)

declare(
    "evidence",
    {"path": STRING, "format": STRING, "size": INT, "sha256": STRING, "role": STRING},
    doc="Every evidence file of a snapshot, as identified and hashed at intake.",
)

# --- correlation tables (toolkit/correlate/) ----------------------------------
declare(
    "findings",
    {
        "finding_id": STRING,  # stable hash of snapshot, rule, entity (and subject)
        "rule_id": STRING,
        "title": STRING,
        "severity": STRING,  # info | low | medium | high | critical
        "severity_rank": INT,  # 0..4, for sorting
        "confidence": FLOAT,  # 0..1: how directly the rows show it
        "attack_id": STRING,  # MITRE ATT&CK technique
        "explanation": STRING,  # plain language, built from the row values
        "entity": STRING,  # graph node id: process:PID, file:PATH, flow:ID, ...
        "entity_label": STRING,
        "pid": INT,
        "path": STRING,
        "flow_id": STRING,
        "evidence": STRING,  # JSON list of {table, snapshot_id, row}: the rows that prove it
        "chain": STRING,  # JSON list of entity-graph steps from the entity, each with its proving rows
        "subject": STRING,  # what besides the entity makes the finding distinct (the YARA rule of yara.match)
    },
    doc="Correlated findings: one per rule, entity (and subject) per snapshot, with every row that proves "
    "it and the entity chain.",
)

declare(
    "timeline",
    {
        "ts": TIME,
        "kind": STRING,
        "description": STRING,
        "table": STRING,
        "row": INT,  # the originating row
        "pid": INT,
        "path": STRING,
    },
    doc="Every timestamped event of a snapshot (memory, disk, network, capture times) in UTC, linked to its row.",
)

# --- audit tables (toolkit/audit.py) -------------------------------------------
declare(
    "audit/fleet",
    {
        "vm": STRING,
        "status": STRING,  # analysed | partial (some evidence unreadable) | reused | failed | skipped (a symlink)
        "critical": INT,
        "high": INT,
        "medium": INT,
        "low": INT,
        "info": INT,
        "reason": STRING,
        "source_path": STRING,
    },
    doc="One row per VM snapshot of an audit: its findings by severity, or why it could not be analysed.",
)
declare(
    "audit/changes",
    {
        "vm": STRING,
        "change": STRING,  # new finding | resolved finding | file added | file removed | file modified
        "rule_id": STRING,
        "severity": STRING,
        "entity_label": STRING,
        "explanation": STRING,
        "path": STRING,
    },
    doc="What changed per VM since a previous audit's case: findings and disk files.",
)
