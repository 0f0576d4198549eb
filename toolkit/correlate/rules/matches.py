"""Rules over other tools' verdicts: YARA matches and Sigma matches become findings tied to the
entity behind them (a process, file or flow), each hit once per rule and entity.

Example::

    hits = list(yara_match(tables, build_graph(tables, "s1"), "s1"))
"""

from __future__ import annotations

from toolkit.correlate.graph import owner_process
from toolkit.correlate.links import frame, hit, link, pid_of, value
from toolkit.correlate.sigma.findings import sigma_match
from toolkit.correlate.vocabulary import files_by_path, package_owner
from toolkit.schemas import SEVERITY_RANK

PAGE = 4096  # physical memory is a heap of unrelated pages: a rule's strings count together within one


def strings_together(offsets_and_ids) -> bool:
    """Whether every distinct string a rule matched in physical memory lies within one page of the
    others somewhere. A rule scanned over gigabytes of unrelated pages meets an ``a and b`` condition
    by chance (a kernel-thread name in one task, a path in some library); only strings side by side
    are one artefact's.

    >>> strings_together([(10, "$a"), (900, "$b")]), strings_together([(10, "$a"), (1 << 20, "$b")])
    (True, False)
    """
    hits = sorted((int(o), str(s)) for o, s in offsets_and_ids if o is not None)
    wanted = {s for _, s in hits}
    if len(wanted) <= 1:
        return True
    start = 0
    for end in range(len(hits)):
        while hits[end][0] - hits[start][0] > PAGE:
            start += 1
        if {s for _, s in hits[start : end + 1]} == wanted:
            return True
    return False


def as_packaged(tables) -> set[str]:
    """Paths whose content the package database vouches for: the disk walk's md5 of the file equals
    the md5 dpkg recorded when the package installed it (a documentation example, a stock script)."""
    owned = package_owner(tables)
    if not owned:
        return set()
    return {
        path
        for path, row in files_by_path(tables).items()
        if value(row, "md5") and value(owned.get(path) or {}, "md5") == value(row, "md5")
    }


def _hex(offset) -> str:
    """An offset or address as responders read them (tables keep the integer)."""
    return f"{int(offset):#x}" if offset is not None else "?"


def yara_match(tables, graph, sid):
    """One finding per rule and entity. Process, file and stream hits are tied to the
    process behind them when the graph knows it; physical-memory hits become a finding
    of their own only for a rule that matched nowhere else (what no process maps)."""
    matches = frame(tables, "yara/matches")
    if not len(matches):
        return
    elsewhere = set(matches.loc[matches["target"] != "physical", "rule"]) if "target" in matches else set()
    physical = matches[matches["target"] == "physical"] if "target" in matches else matches.iloc[0:0]
    scattered = {
        rule
        for rule, rows in physical.groupby("rule")
        if "string_id" in rows and not strings_together(zip(rows["offset"], rows["string_id"]))
    }
    seen = set()
    vouched = as_packaged(tables) if "file" in set(matches.get("target", [])) else set()
    for i, r in matches.iterrows():
        target = value(r, "target")
        if target == "physical" and value(r, "rule") in elsewhere:
            continue
        node = {
            "process": f"process:{pid_of(r)}",
            "file": f"file:{value(r, 'path')}",
            "stream": f"flow:{value(r, 'flow_id')}",
        }.get(target, f"{target}:memory")
        owner = owner_process(graph, node) or node
        key = (value(r, "rule"), owner)
        if key in seen:
            continue  # the other hits are in the entity's chain
        seen.add(key)
        where = {
            "process": f"the memory of pid {pid_of(r)} ({value(r, 'process')!r})",
            "file": f"file {value(r, 'path')!r}",
            "stream": f"the network stream of flow {value(r, 'flow_id')}",
        }.get(target, f"{target} memory")
        also = int((physical["rule"] == value(r, "rule")).sum()) if target != "physical" else 0
        severity = value(r, "severity") or "medium"
        confidence, caveat = 0.7, ""
        if target == "file" and value(r, "path") in vouched:
            # The distribution's own bytes (an example bashrc that unsets HISTFILE): a rule's strings
            # in a file its package installed unchanged say nothing about this machine.
            severity, confidence, caveat = "low", 0.3, " (the file is as its package installed it: its md5 is dpkg's)"
        if target == "physical":
            # Bytes no process, file or stream holds: page cache, a tmpfs file or freed
            # memory. Worth a look, but the rows do not show anything running.
            severity = min(severity, "medium", key=lambda s: SEVERITY_RANK.get(s, 2))
            confidence, caveat = (
                0.4,
                " (no process, file or stream holds these bytes: page cache, tmpfs or freed memory)",
            )
            if value(r, "rule") in scattered:
                severity, confidence = "low", 0.2
                caveat += (
                    f"; its strings never lie within {PAGE} bytes of one another, so no one artefact holds them all"
                )
        why = (
            f"YARA rule {value(r, 'rule')!r} ({value(r, 'description') or 'no description'}) matched "
            f"in {where} at offset {_hex(value(r, 'offset'))}{caveat}"
            + (f"; {also} more hits in physical memory" if also else "")
            + "."
        )
        yield hit(
            owner,
            [link("yara/matches", sid, i)],
            confidence,
            why,
            severity=severity,
            attack_id=value(r, "attack_id"),
            subject=value(r, "rule"),
        )


RULES: dict[str, dict] = {
    "yara.match": {
        "title": "YARA rule match",
        "attack_id": None,
        "severity": "medium",
        "confidence": 0.7,
        "keys_on": "a YARA rule (shipped or the analyst's) matching process memory, a disk file or a "
        "reassembled stream; severity and ATT&CK id come from the rule's meta; hits in physical memory alone "
        "(page cache, tmpfs, freed memory) are capped at medium, and low when the rule's strings never lie within "
        "a page of one another (a condition met by unrelated pages); a disk file whose md5 is the one its package "
        "recorded is low (the distribution's own bytes)",
        "joins": ["yara/matches", "memory/processes", "disk/files", "network/flows", "memory/sockets"],
        "grading": "the rule's own severity; 0.7, or 0.4 for bytes no process, file or stream holds (0.2 and "
        "low when the strings are scattered over unrelated pages)",
        "chain": "the process the matched bytes belong to (its file, its stream) -> its whole chain",
        "fn": yara_match,
    },
    "sigma.match": {
        "title": "Sigma rule match",
        "attack_id": None,
        "severity": "medium",
        "confidence": 0.7,
        "keys_on": "rows of sigma/matches (`snapscope sigma`): each finding carries the Sigma rule's own id "
        "(sigma:<id>), title, level and ATT&CK techniques",
        "joins": ["sigma/matches", "memory/processes", "disk/files", "network/flows"],
        "grading": "the Sigma rule's level; 0.7",
        "chain": "the process, file or flow the matched row is about",
        "fn": sigma_match,
    },
}
