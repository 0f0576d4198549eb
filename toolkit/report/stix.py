"""A STIX 2.1 bundle of what a case's findings implicate, built with the ``stix2`` library.

Per snapshot, the VM is an ``identity`` (class ``system``). Per finding of
medium severity or worse (``toolkit.report.indicators``): a ``grouping``
(context suspicious-activity) named after the finding, holding
``indicator`` objects (file hashes, remote address and port, domain names;
patterns built with stix2's pattern classes, so guest strings are quoted as
data), the observed SCOs (``file``, ``ipv4-addr``/``ipv6-addr``,
``network-traffic``, ``domain-name``), a ``malware-analysis`` per YARA rule
(product yara, the rule's name as result), an ``attack-pattern`` per ATT&CK
technique (``indicates`` relationships from the indicators), and a
``sighting`` of each indicator on the VM. Every object carries the findings
(``snapscope_finding_ids``) and rows (``snapscope_evidence``: table, snapshot,
row) it came from, declared by one ``extension-definition`` (a top-level
property extension).

Example::

    text = stix_bundle_json(Case.open("case"))
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import uuid

import stix2
from stix2.patterns import (
    AndBooleanExpression,
    EqualityComparisonExpression,
    IntegerConstant,
    ObjectPath,
    ObservationExpression,
    StringConstant,
)

from toolkit.report.indicators import implicated

ATTACK_URL = "https://attack.mitre.org/techniques/{}/"
# The provenance properties every object carries, declared once as a STIX 2.1 top-level property
# extension (a fixed id: consumers can recognise snapscope's properties across exports).
EXTENSION_ID = "extension-definition--0c5e7c32-4f8e-4b0a-9a57-3f0f2c5d9e61"
EXTENSION_PROPERTIES = {
    "snapscope_finding_ids": "ids of the snapscope findings (findings.finding_id) the object comes from",
    "snapscope_evidence": "the rows that prove it: [{table, snapshot_id, row}], row = position in the snapshot's table",
    "snapscope_rule_id": "the correlation or Sigma rule of a finding (groupings)",
    "snapscope_severity": "the finding's severity (groupings): info, low, medium, high, critical",
    "snapscope_snapshot_id": "the snapshot a VM identity stands for",
}


def _extension(tool_id: str, created) -> stix2.ExtensionDefinition:
    return stix2.ExtensionDefinition(
        id=EXTENSION_ID,
        created_by_ref=tool_id,
        created=created,
        name="snapscope provenance",
        description="Links each object to the snapscope findings and case-table rows it was built from.",
        schema="; ".join(f"{k}: {v}" for k, v in EXTENSION_PROPERTIES.items()),
        version="1.0",
        extension_types=["toplevel-property-extension"],
        extension_properties=list(EXTENSION_PROPERTIES),
    )


def _extended(**props) -> dict:
    """Keyword arguments adding snapscope's top-level properties to an object."""
    return {
        "extensions": {EXTENSION_ID: {"extension_type": "toplevel-property-extension"}},
        "allow_custom": True,
        **props,
    }


def _pattern(*comparisons) -> str:
    expression = comparisons[0] if len(comparisons) == 1 else AndBooleanExpression(list(comparisons))
    return str(ObservationExpression(expression))


def _eq(path: str, constant) -> EqualityComparisonExpression:
    return EqualityComparisonExpression(ObjectPath.make_object_path(path), constant)


def _ip_type(ip: str) -> str:
    try:
        return "ipv6-addr" if ipaddress.ip_address(ip).version == 6 else "ipv4-addr"
    except ValueError:
        return "ipv4-addr"


def _provenance(findings: list[str], links: list[dict]) -> dict:
    """Keyword arguments naming the findings and rows an object comes from."""
    return _extended(
        snapscope_finding_ids=sorted(set(findings)),
        snapscope_evidence=[{"table": lk["table"], "snapshot_id": lk["snapshot_id"], "row": lk["row"]} for lk in links],
    )


def _observables(kind: str, item: dict) -> tuple[list, str, str]:
    """(SCOs, indicator pattern, indicator name) of one implicated item."""
    if kind == "file":
        name = (item.get("path") or "").rsplit("/", 1)[-1] or None
        sco = stix2.File(hashes={"SHA-256": item["sha256"]}, name=name)
        pattern = _pattern(_eq("file:hashes.'SHA-256'", StringConstant(item["sha256"])))
        return [sco], pattern, f"file sha256 {item['sha256']}"
    if kind == "endpoint":
        ip_type = _ip_type(item["ip"])
        address = (stix2.IPv6Address if ip_type == "ipv6-addr" else stix2.IPv4Address)(value=item["ip"])
        protocols = [p for p in (ip_type.split("-")[0], item.get("proto")) if p]
        traffic = stix2.NetworkTraffic(dst_ref=address.id, dst_port=item["port"], protocols=protocols)
        pattern = _pattern(
            _eq("network-traffic:dst_ref.type", StringConstant(ip_type)),
            _eq("network-traffic:dst_ref.value", StringConstant(item["ip"])),
            _eq("network-traffic:dst_port", IntegerConstant(item["port"])),
        )
        return [address, traffic], pattern, f"{item.get('proto') or 'ip'} {item['ip']} port {item['port']}"
    sco = stix2.DomainName(value=item["name"])
    return [sco], _pattern(_eq("domain-name:value", StringConstant(item["name"]))), f"domain {item['name']}"


def build_bundle(case) -> stix2.Bundle:
    """The STIX 2.1 bundle of ``case`` (see the module doc for its shape)."""
    found = implicated(case)
    # the case's creation time: a re-export of the same case gives the same objects
    created = dt.datetime.fromisoformat(found["created"]) if found["created"] else dt.datetime.now(dt.UTC)
    ids: dict[str, str] = {}

    def _id(kind: str, *parts) -> str:
        """A fresh UUIDv4 id per distinct object (STIX 2.1 asks v4 of domain objects), reused within the export."""
        return ids.setdefault(json.dumps([kind, *map(str, parts)]), f"{kind}--{uuid.uuid4()}")

    tool = stix2.Identity(id=_id("identity", "snapscope"), name="snapscope", identity_class="system", created=created)
    objects: dict[str, object] = {tool.id: tool}
    extension = _extension(tool.id, created)
    objects[extension.id] = extension
    vms = {}
    for vm in found["vms"]:
        name = vm["hostname"] or vm["name"]
        vms[vm["snapshot_id"]] = stix2.Identity(
            id=_id("identity", "vm", vm["snapshot_id"]),
            name=f"{name} (snapshot {vm['name']})",
            identity_class="system",
            description=f"virtual machine snapshot {vm['snapshot_id']}"
            + (f"; guest OS {vm['os']}" if vm["os"] else "")
            + (f"; addresses {vm['ips']}" if vm["ips"] else ""),
            created=created,
            created_by_ref=tool.id,
            **_extended(snapscope_snapshot_id=vm["snapshot_id"]),
        )
        objects[vms[vm["snapshot_id"]].id] = vms[vm["snapshot_id"]]
    # one indicator (and its SCOs) per observable across the case, carrying every finding it came from
    indicator_sources: dict[tuple, dict] = {}
    for finding in found["findings"]:
        for kind in ("file", "endpoint", "domain"):
            for item in finding["indicators"].get(kind, []):
                key = (finding["snapshot_id"], kind, *[item[k] for k in sorted(item) if k not in ("links", "path")])
                entry = indicator_sources.setdefault(key, {"kind": kind, "item": item, "findings": [], "links": []})
                entry["findings"].append(finding)
                entry["links"] += [lk for lk in item["links"] if lk not in entry["links"]]
    indicators_of: dict[str, list[str]] = {}
    for key, entry in indicator_sources.items():
        scos, pattern, name = _observables(entry["kind"], entry["item"])
        finding_ids = [f["finding_id"] for f in entry["findings"]]
        worst = "high" if any(f["severity"] in ("high", "critical") for f in entry["findings"]) else "medium"
        indicator = stix2.Indicator(
            id=_id("indicator", *key),
            name=name,
            description="Seen in: " + "; ".join(dict.fromkeys(f["title"] for f in entry["findings"])),
            pattern=pattern,
            pattern_type="stix",
            valid_from=created,
            created=created,
            created_by_ref=tool.id,
            indicator_types=["malicious-activity" if worst == "high" else "anomalous-activity"],
            **_provenance(finding_ids, entry["links"]),
        )
        sighting = stix2.Sighting(
            id=_id("sighting", *key),
            sighting_of_ref=indicator.id,
            where_sighted_refs=[vms[key[0]].id],
            count=len(entry["links"]),
            created=created,
            created_by_ref=tool.id,
            **_provenance(finding_ids, entry["links"]),
        )
        for obj in [*scos, indicator, sighting]:
            objects.setdefault(obj.id, obj)
        for f in entry["findings"]:
            indicators_of.setdefault(f["finding_id"], []).extend([indicator.id, sighting.id, *[s.id for s in scos]])
    for finding in found["findings"]:
        refs = [vms[finding["snapshot_id"]].id, *indicators_of.get(finding["finding_id"], [])]
        for technique in finding["attack_ids"]:
            pattern = stix2.AttackPattern(
                id=_id("attack-pattern", technique),
                name=technique,
                created=created,
                created_by_ref=tool.id,
                external_references=[
                    {
                        "source_name": "mitre-attack",
                        "external_id": technique,
                        "url": ATTACK_URL.format(technique.replace(".", "/")),
                    }
                ],
            )
            objects.setdefault(pattern.id, pattern)
            refs.append(pattern.id)
            for ind in [r for r in indicators_of.get(finding["finding_id"], []) if r.startswith("indicator--")]:
                rel = stix2.Relationship(
                    id=_id("relationship", ind, technique),
                    relationship_type="indicates",
                    source_ref=ind,
                    target_ref=pattern.id,
                    created=created,
                    created_by_ref=tool.id,
                )
                objects.setdefault(rel.id, rel)
        refs += [
            _id("malware-analysis", finding["snapshot_id"], item["rule"])
            for item in finding["indicators"].get("yara", [])
        ]
        grouping = stix2.Grouping(
            id=_id("grouping", finding["finding_id"]),
            name=finding["title"],
            description=finding["explanation"],
            context="suspicious-activity",
            object_refs=list(dict.fromkeys(refs)),
            created=created,
            created_by_ref=tool.id,
            external_references=[
                {"source_name": "snapscope", "external_id": finding["finding_id"], "description": finding["rule_id"]}
            ],
            **_provenance([finding["finding_id"]], finding["evidence"]),
            snapscope_rule_id=finding["rule_id"],
            snapscope_severity=finding["severity"],
        )
        objects[grouping.id] = grouping
    for analysis in _yara_analyses(found, tool, created, _id):
        objects[analysis.id] = analysis
    # allow_custom: the objects carry snapscope's extension properties
    return stix2.Bundle(objects=list(objects.values()), allow_custom=True)


def _yara_analyses(found: dict, tool, created, _id) -> list:
    """One malware-analysis per YARA rule and snapshot: YARA (the product) named the sample with the rule."""
    rules: dict[tuple, dict] = {}
    for finding in found["findings"]:
        for item in finding["indicators"].get("yara", []):
            entry = rules.setdefault(
                (finding["snapshot_id"], item["rule"]), {"findings": [], "links": [], "bad": False}
            )
            entry["findings"].append(finding["finding_id"])
            entry["links"] += [lk for lk in item["links"] if lk not in entry["links"]]
            entry["bad"] |= finding["severity"] in ("high", "critical")
    return [
        stix2.MalwareAnalysis(
            id=_id("malware-analysis", sid, rule),
            product="yara",
            result_name=rule,
            result="malicious" if entry["bad"] else "suspicious",
            created=created,
            created_by_ref=tool.id,
            **_provenance(entry["findings"], entry["links"]),
        )
        for (sid, rule), entry in rules.items()
    ]


def stix_bundle_json(case) -> str:
    """The bundle as JSON text; ``ensure_ascii`` so no control or bidi character of a guest string
    reaches the file raw."""
    return json.dumps(json.loads(build_bundle(case).serialize()), indent=2, ensure_ascii=True)
