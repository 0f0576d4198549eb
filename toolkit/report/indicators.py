"""What a case's findings implicate, as plain dicts for the STIX and MISP exports.

Only findings of ``medium`` severity or worse count (low and info findings are
notes: an authorised SSH key, a benign service that is running); file hashes
only come from ``high`` and ``critical`` ones. From each finding's evidence
rows and its entity chain's rows:

- files: disk files that are executables (ELF build-id, first-page hash or an
  execute bit), persistence programs and files YARA matched, by sha256;
- endpoints: the remote address, port and protocol of connected sockets and
  capture flows;
- domains: DNS names, HTTP hosts and TLS SNIs;
- YARA rule names; ATT&CK techniques of the finding.

Every indicator keeps the findings and rows it came from.

Example::

    found = implicated(Case.open("case"))
    [f["sha256"] for f in found["findings"][0]["files"]]
"""

from __future__ import annotations

import json

import pandas as pd

from toolkit.errors import CaseError
from toolkit.schemas import SEVERITY_RANK

MIN_SEVERITY = "medium"
HASH_SEVERITY = "high"
WILDCARD_IPS = {None, "", "0.0.0.0", "::", "*"}


def _clean(v):
    if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and v != v):
        return None
    return v.item() if hasattr(v, "item") else v


def row_reader(case):
    """A function from a row link to that row as a dict (None if it is not there); each table read once."""
    frames: dict[tuple, pd.DataFrame] = {}

    def get(lk: dict) -> dict | None:
        key = (lk["table"], lk["snapshot_id"])
        if key not in frames:
            try:
                frames[key] = case.table(*key[:1], snapshot=key[1]).reset_index(drop=True)
            except KeyError:
                frames[key] = pd.DataFrame()
        df = frames[key]
        if not 0 <= lk["row"] < len(df):
            return None
        return {c: _clean(v) for c, v in df.iloc[lk["row"]].items()}

    return get


def _is_executable(row: dict) -> bool:
    mode = row.get("mode")
    return bool(row.get("build_id") or row.get("first_page_sha256") or (mode is not None and int(mode) & 0o111))


def _indicators(table: str, row: dict, local_ips: set, with_hashes: bool) -> list[tuple[str, tuple, dict]]:
    """(kind, key, fields) of every indicator one row holds."""
    out = []
    if with_hashes and table == "disk/files" and row.get("sha256") and _is_executable(row):
        out.append(("file", (row["sha256"],), {"sha256": row["sha256"], "path": row.get("path")}))
    if with_hashes and table == "disk/persistence" and row.get("program_sha256"):
        out.append(
            ("file", (row["program_sha256"],), {"sha256": row["program_sha256"], "path": row.get("program_path")})
        )
    if table == "yara/matches":
        out.append(("yara", (row.get("rule"),), {"rule": row.get("rule"), "description": row.get("description")}))
        if with_hashes and row.get("target") == "file" and row.get("sha256"):
            out.append(("file", (row["sha256"],), {"sha256": row["sha256"], "path": row.get("path")}))
    if table in ("memory/sockets", "network/flows") and row.get("dst_port"):
        ip, port = row.get("dst_ip"), row.get("dst_port")
        if ip in local_ips and row.get("src_ip") not in WILDCARD_IPS:  # an inbound flow: the remote is its source
            ip, port = row.get("src_ip"), row.get("src_port")
        if ip not in WILDCARD_IPS and port:
            proto = row.get("proto")
            out.append(("endpoint", (ip, int(port), proto), {"ip": ip, "port": int(port), "proto": proto}))
    column = {"network/dns": "qname", "network/http": "host", "network/tls": "sni"}.get(table)
    if column and row.get(column):
        name = str(row[column]).rstrip(".")
        out.append(("domain", (name.lower(),), {"name": name}))
    return out


def _local_ips(case, sid: str) -> set:
    try:
        system = case.table("disk/system", snapshot=sid)
    except KeyError:
        return set()
    return {ip.strip() for ips in system.get("ips", pd.Series(dtype=str)).dropna() for ip in str(ips).split(",")}


def _vm(case, sid: str) -> dict:
    entry = case.snapshots.get(sid, {})
    try:
        system = case.table("disk/system", snapshot=sid)
    except KeyError:
        system = pd.DataFrame()
    first = {c: _clean(v) for c, v in system.iloc[0].items()} if len(system) else {}
    return {
        "snapshot_id": sid,
        "name": entry.get("name") or sid,
        "domain": (entry.get("domain") or {}).get("name") if isinstance(entry.get("domain"), dict) else None,
        "hostname": first.get("hostname"),
        "os": first.get("os_version") or first.get("os"),
        "ips": first.get("ips"),
    }


def implicated(case, min_severity: str = MIN_SEVERITY) -> dict:
    """``{"vms": [...], "findings": [...], "created": ISO time}`` for the findings at or above ``min_severity``.

    Each finding: its id, rule, title, severity, ATT&CK techniques, explanation, snapshot, evidence
    links and ``indicators`` ``{kind: [{..fields, "links": [...]}]}``. A CaseError for a case with no
    snapshot.
    """
    if not case.snapshots:
        raise CaseError(f"{case.path}: the case holds no analysed snapshot; nothing to export")
    read, threshold = row_reader(case), SEVERITY_RANK[min_severity]
    local = {sid: _local_ips(case, sid) for sid in case.snapshots}
    findings = []
    ordered = case.findings.sort_values(["snapshot_id", "severity_rank", "finding_id"], ascending=[True, False, True])
    for f in ordered.itertuples(index=False):
        if f.severity_rank < threshold:
            continue
        evidence = json.loads(f.evidence or "[]")
        links = evidence + [lk for step in json.loads(f.chain or "[]") for lk in step.get("links", [])]
        found: dict[str, dict] = {}
        with_hashes = f.severity_rank >= SEVERITY_RANK[HASH_SEVERITY]
        for lk in links:
            row = read(lk)
            if row is None:
                continue
            for kind, key, fields in _indicators(lk["table"], row, local.get(lk["snapshot_id"], set()), with_hashes):
                item = found.setdefault(kind, {}).setdefault(key, {**fields, "links": []})
                if lk not in item["links"]:
                    item["links"].append(lk)
        attack = f.attack_id if isinstance(f.attack_id, str) else ""
        findings.append(
            {
                "finding_id": f.finding_id,
                "rule_id": f.rule_id,
                "title": f.title,
                "severity": f.severity,
                "confidence": float(f.confidence),
                "attack_ids": [t.strip() for t in attack.split(",") if t.strip()],
                "explanation": f.explanation,
                "entity_label": f.entity_label,
                "snapshot_id": f.snapshot_id,
                "evidence": evidence,
                "indicators": {kind: list(items.values()) for kind, items in found.items()},
            }
        )
    return {
        "created": case.manifest.get("created"),
        "vms": [_vm(case, sid) for sid in case.snapshots],
        "findings": findings,
    }
