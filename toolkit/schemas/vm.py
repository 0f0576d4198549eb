"""Tables of the VM view (toolkit/vms.py, toolkit/correlate/vm_findings.py, changes.py) and fleet stacking.

A VM table's file is keyed by the VM id (its provenance ``snapshot_id`` holds the
VM id, like ``audit/*`` tables hold "fleet"); ``vm`` names the VM in every row.
"""

from toolkit.schemas.core import BOOL, FLOAT, INT, STRING, TIME, declare

declare(
    "vm/moments",
    {
        "vm": STRING,
        "snapshot": STRING,  # a snapshot id of the case
        "moment": INT,  # 1, 2, ... in capture order; artefacts holding the same RAM share one
        "status": STRING,  # analysed | partial | reused | same moment | failed
        "same_moment_as": STRING,  # the snapshot analysed for this moment (itself when analysed)
        "captured_at": TIME,  # the moment's time, from the artefact of the moment that states it best
        "captured_at_source": STRING,  # snapshot XML, qcow2 snapshot date, kdump header, else a file mtime
        "memory_path": STRING,
        "memory_format": STRING,
        "pages_compared": INT,  # proof of "same moment": guest RAM pages compared with the analysed one
        "pages_differing": INT,
        "proof": STRING,  # JSON: the whole comparison (coverage, method, first differing page)
    },
    doc="Every snapshot of every VM in capture order; artefacts of one moment recognised by their RAM "
    "(compared page by page) are analysed once and point at the snapshot that was.",
)

declare(
    "vm/findings",
    {
        "vm": STRING,
        "finding_id": STRING,  # stable hash of VM, rule, entity (and subject)
        "rule_id": STRING,
        "title": STRING,
        "severity": STRING,
        "severity_rank": INT,
        "confidence": FLOAT,
        "attack_id": STRING,
        "explanation": STRING,  # from the latest snapshot that shows it
        "entity": STRING,
        "entity_label": STRING,
        "pid": INT,
        "path": STRING,
        "flow_id": STRING,
        "seen_in": STRING,  # JSON list of snapshot ids (same-moment artefacts included), oldest first
        "first_seen": STRING,  # snapshot id
        "last_seen": STRING,
        "first_seen_ts": TIME,
        "last_seen_ts": TIME,
        "moments": INT,  # how many distinct moments show it
        "evidence": STRING,  # JSON links of every snapshot's proving rows
        "chain": STRING,  # JSON entity chain, from the latest snapshot
        "subject": STRING,
        "fleet_note": STRING,  # set by fleet stacking: how rare the entity is across the audited VMs
    },
    doc="One finding per rule and entity per VM, with the snapshots it was seen in; what appeared or "
    "disappeared between two moments is a finding of its own (rules vm.new_since / vm.gone_since).",
)

CHANGE_COLUMNS = {
    "vm": STRING,
    "snapshot_a": STRING,  # the earlier snapshot
    "snapshot_b": STRING,  # the later one
    "kind": STRING,  # process | socket | module | kernel_check | persistence | file
    "change": STRING,  # new | gone | modified
    "item": STRING,  # what identifies it across the two snapshots
    "description": STRING,
    "evidence": STRING,  # JSON links to the row(s) in the snapshot(s) that show it
}
declare(
    "vm/changes",
    CHANGE_COLUMNS,
    doc="What appeared, disappeared or changed between consecutive moments of one VM "
    "(processes, sockets, modules, kernel checks, persistence entries, files).",
)
declare(
    "memory/diff",
    CHANGE_COLUMNS,
    doc="`snapscope diff --memory A B`: the same comparison between any two analysed snapshots of a case.",
)

declare(
    "audit/stacking",
    {
        "category": STRING,  # executable | process | persistence | listening port | outbound | kernel module
        "item": STRING,  # the stacked key (a sha256, name + path, proto/port, ...)
        "detail": STRING,  # a readable example of it
        "vms": INT,  # VMs it is on
        "fleet_size": INT,  # VMs analysed for this category
        "share": FLOAT,  # vms / fleet_size
        "rare": BOOL,  # on fewer than COMMON_SHARE of the fleet (see toolkit/correlate/stacking.py)
        "vm_ids": STRING,  # JSON list
    },
    doc="Least-frequency-of-occurrence across the VMs of an audit: what appears on few of N VMs.",
)
