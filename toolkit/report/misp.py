"""A MISP event of what a case's findings implicate, built with ``pymisp.MISPEvent`` (no server).

Per snapshot, the VM is a ``device`` object (name, guest OS, addresses,
status Infected when a finding implicates it). Per finding of medium severity
or worse (``toolkit.report.indicators``) an ``annotation`` object holds the
explanation; the implicated values are attributes — ``sha256`` of executables
(high findings only), ``ip-dst|port`` of remote endpoints, ``domain`` names —
and a ``yara`` object per YARA rule name. Every attribute's comment names the
findings and rows (table#row@snapshot) it came from, the annotation names its
finding and rule, and the ATT&CK techniques are tags
(``mitre-attack:attack-pattern="T1036.004"``) on the event and on the
finding's annotation. Guest strings are attribute values, never markup: the
event is JSON, written with every non-ASCII character escaped.

Example::

    text = misp_event_json(Case.open("case"))
    MISPEvent().from_json(text)   # round-trips
"""

from __future__ import annotations

import datetime as dt
import json

from pymisp import MISPEvent, MISPObject

from toolkit.report.indicators import implicated

THREAT_LEVEL = {"critical": 1, "high": 1, "medium": 2, "low": 3, "info": 4}  # MISP: 1 high .. 4 undefined


def attack_tag(technique: str) -> str:
    return f'mitre-attack:attack-pattern="{technique}"'


def _rows(links: list[dict]) -> str:
    return ", ".join(f"{lk['table']}#{lk['row']}@{lk['snapshot_id']}" for lk in links)


def _comment(findings: list[str], links: list[dict]) -> str:
    return f"snapscope finding(s) {', '.join(dict.fromkeys(findings))}; rows {_rows(links)}"


def build_event(case) -> MISPEvent:
    """The MISP event of ``case`` (see the module doc for its shape)."""
    found = implicated(case)
    event = MISPEvent()
    hosts = sorted({vm["hostname"] or vm["name"] for vm in found["vms"]})
    event.info = f"snapscope: findings on {', '.join(hosts)} (case {case.path.name})"
    created = dt.datetime.fromisoformat(found["created"]) if found["created"] else dt.datetime.now(dt.UTC)
    event.set_date(created.date())
    # a severity outside SEVERITIES (a crafted case) is "undefined" (4), not a crash
    worst = min((THREAT_LEVEL.get(f["severity"], 4) for f in found["findings"]), default=4)
    event.threat_level_id, event.analysis, event.distribution = worst, 2, 0  # analysis completed, own org only
    implicated_vms = {f["snapshot_id"] for f in found["findings"]}
    for vm in found["vms"]:
        device = MISPObject("device", standalone=False)
        device.comment = f"snapscope snapshot {vm['snapshot_id']}"
        device.add_attribute("name", value=vm["hostname"] or vm["name"])
        device.add_attribute("alias", value=vm["snapshot_id"])
        device.add_attribute("device-type", value="Other")
        device.add_attribute("description", value=f"virtual machine snapshot {vm['name']}")
        device.add_attribute("status", value="Infected" if vm["snapshot_id"] in implicated_vms else "Unknown")
        if vm["os"]:
            device.add_attribute("OS", value=vm["os"])
        for ip in [ip.strip() for ip in str(vm["ips"] or "").split(",") if ip.strip()]:
            device.add_attribute("ip-address", value=ip, to_ids=False)
        event.add_object(device)
    values: dict[tuple, dict] = {}  # one attribute per value, naming every finding and row (of any snapshot) behind it
    for finding in found["findings"]:
        for technique in finding["attack_ids"]:
            event.add_tag(attack_tag(technique))
        note = MISPObject("annotation", standalone=False)
        note.comment = f"snapscope finding {finding['finding_id']} ({finding['rule_id']}, {finding['severity']})"
        text = note.add_attribute("text", value=finding["explanation"], to_ids=False)
        for technique in finding["attack_ids"]:
            text.add_tag(attack_tag(technique))
        note.add_attribute("type", value="Annotation")
        note.add_attribute("format", value="text")
        event.add_object(note)
        for kind, items in finding["indicators"].items():
            for item in items:
                key = (kind, *[item[k] for k in sorted(item) if k not in ("links", "path")])
                entry = values.setdefault(key, {"kind": kind, "item": item, "findings": [], "links": []})
                entry["findings"].append(finding["finding_id"])
                entry["links"] += [lk for lk in item["links"] if lk not in entry["links"]]
                entry.setdefault("techniques", set()).update(finding["attack_ids"])
    for entry in values.values():
        _add_value(event, entry)
    return event


def _add_value(event: MISPEvent, entry: dict) -> None:
    kind, item = entry["kind"], entry["item"]
    comment = _comment(entry["findings"], entry["links"])
    if kind == "yara":
        rule = MISPObject("yara", standalone=False)
        rule.comment = comment
        rule.add_attribute("yara-rule-name", value=item["rule"])
        if item.get("description"):
            rule.add_attribute("comment", value=item["description"])
        event.add_object(rule)
        return
    if kind == "file":
        attribute = event.add_attribute("sha256", item["sha256"], category="Payload installation", comment=comment)
    elif kind == "endpoint":
        attribute = event.add_attribute("ip-dst|port", f"{item['ip']}|{item['port']}", comment=comment)
    else:
        attribute = event.add_attribute("domain", item["name"], comment=comment)
    for technique in sorted(entry["techniques"]):
        attribute.add_tag(attack_tag(technique))


def misp_event_json(case) -> str:
    """The event as MISP JSON (``{"Event": ...}``), every non-ASCII and control character escaped."""
    return json.dumps(json.loads(build_event(case).to_json()), indent=2, ensure_ascii=True)
