"""Run Sigma rules over one snapshot's views -> rows of ``sigma/matches``, plus diagnostics.

Rules are converted once (:func:`compile_rules`: a rule no view answers, or
one the backend cannot express, is kept with the reason) and run per snapshot
(:func:`run_rules`). Every match names the row it came from; a correlation
rule's match names every event it joined.

Example::

    compiled = compile_rules(load_rules([Path("rules/sigma")]))
    matches, problems = run_rules(compiled, tables, "lab-qemu")
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from pathlib import Path

import duckdb
import pandas as pd
from sigma.correlations import SigmaCorrelationRule
from sigma.exceptions import SigmaError

from toolkit.correlate.links import link, value
from toolkit.correlate.sigma.backend import CaseBackend
from toolkit.correlate.sigma.correlation import correlation_matches
from toolkit.correlate.sigma.taxonomy import view_for, view_pipeline
from toolkit.correlate.sigma.views import build_views
from toolkit.errors import one_line
from toolkit.schemas import diagnostic, make_table

LEVELS = {"informational": "info", "low": "low", "medium": "medium", "high": "high", "critical": "critical"}
ATTACK_TECHNIQUE = re.compile(r"t\d{4}(\.\d{3})?")


def rule_meta(rule) -> dict:
    """What a match row says about its rule: id, title, severity, ATT&CK techniques, tags, file."""
    source = getattr(rule, "source", None)
    path = str(source.path) if source is not None and source.path else None
    tags = [f"{t.namespace}.{t.name}" for t in (rule.tags or [])]
    techniques = [
        t.name.upper() for t in (rule.tags or []) if t.namespace == "attack" and ATTACK_TECHNIQUE.fullmatch(t.name)
    ]
    level = str(rule.level.name).lower() if rule.level is not None else None
    return {
        "sigma_id": str(rule.id) if rule.id else (rule.name or f"{Path(path or 'rule').name}:{rule.title}"),
        "title": rule.title,
        "severity": LEVELS.get(level or "", None),
        "attack_id": ",".join(dict.fromkeys(techniques)) or None,
        "tags": ",".join(tags) or None,
        "rule_path": path,
    }


def _logsource(rule) -> str:
    ls = rule.logsource
    return "/".join(
        f"{k}:{v}" for k, v in (("product", ls.product), ("category", ls.category), ("service", ls.service)) if v
    )


def compile_rules(rules) -> list[dict]:
    """Each rule of a SigmaCollection as ``{"rule", "meta", "view", "queries", "problem", "output"}``.

    Conversion works on a copy: pySigma's pipelines rewrite the rule they convert. ``output`` is
    False for a rule only a correlation rule reports (Sigma's ``generate: false``).
    """
    compiled = []
    for rule in rules:
        entry = {"rule": rule, "meta": rule_meta(rule), "view": None, "queries": [], "problem": None}
        entry["output"] = bool(getattr(rule, "_output", True))
        if isinstance(rule, SigmaCorrelationRule):
            entry["kind"] = "correlation"
        else:
            entry["kind"] = "event"
            entry["logsource"] = _logsource(rule)
            entry["view"] = view_for(rule.logsource)
            if entry["view"] is not None:
                target = copy.deepcopy(rule)
                target._output = True  # a correlation's rule (generate: false) is still run: its events are joined
                try:
                    entry["queries"] = CaseBackend(view_pipeline(entry["view"])).convert_rule(target)
                except (SigmaError, NotImplementedError) as exc:
                    entry["problem"] = f"cannot be converted: {one_line(exc)}"
        compiled.append(entry)
    return compiled


def _match_row(meta: dict, kind: str, view: str, event, links: list[dict], description: str) -> dict:
    return {
        **meta,
        "kind": kind,
        "view": view,
        "table": event["_table"],
        "row": int(event["_row"]),
        "pid": value(event, "pid"),
        "path": value(event, "exe_path"),
        "flow_id": value(event, "flow_id"),
        "description": description,
        "evidence": json.dumps(links),
    }


def run_rules(compiled: list[dict], tables: dict, snapshot_id: str) -> tuple[pd.DataFrame, list[dict]]:
    """The ``sigma/matches`` rows of one snapshot and the diagnostics of rules that could not run."""
    tables = {name: df.reset_index(drop=True) for name, df in tables.items()}
    views = build_views(tables)
    rows, problems, unanswered = [], [], Counter()
    events: dict[int, tuple[str, pd.DataFrame]] = {}  # id(rule) -> (view, matched view rows)
    con = duckdb.connect()
    try:
        for name, df in views.items():
            con.register(name, df)
        # Queries come from rule files (often third-party): they read the views and nothing else.
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        for entry in compiled:
            meta = entry["meta"]
            label = f"sigma rule {meta['sigma_id']} ({meta['title']})"
            if entry["kind"] != "event":
                continue
            if entry["view"] is None:
                unanswered[entry["logsource"]] += 1
                continue
            if entry["problem"]:
                problems.append(diagnostic("warning", label, meta["rule_path"], entry["problem"]))
                continue
            try:
                hits = pd.concat([con.execute(q).df() for q in entry["queries"]], ignore_index=True)
            except duckdb.Error as exc:
                why = f"query failed: {one_line(str(exc).splitlines()[0])}"
                problems.append(diagnostic("warning", label, meta["rule_path"], why))
                continue
            view = views[entry["view"]]
            matched = view.merge(hits.drop_duplicates(), on=["_table", "_row"]).sort_values(["_table", "_row"])
            events[id(entry["rule"])] = (entry["view"], matched)
            if entry["output"]:
                for _, event in matched.iterrows():
                    links = [link(event["_table"], snapshot_id, event["_row"])]
                    rows.append(_match_row(meta, "event", entry["view"], event, links, value(event, "_raw")))
    finally:
        con.close()
    for entry in compiled:
        if entry["kind"] == "correlation":
            found, problem = correlation_matches(entry["rule"], events, snapshot_id)
            if problem:
                problems.append(
                    diagnostic(
                        "warning", f"sigma rule {entry['meta']['sigma_id']}", entry["meta"]["rule_path"], problem
                    )
                )
            for view, last, links, description in found:
                meta = {**entry["meta"], "severity": entry["meta"]["severity"] or _referenced_level(entry["rule"])}
                rows.append(_match_row(meta, "correlation", view, last, links, description))
    for logsource, n in sorted(unanswered.items()):
        problems.append(
            diagnostic(
                "info",
                "sigma rules",
                logsource or "no logsource",
                f"{n} rule(s) skipped: no table of a case answers this log source",
            )
        )
    return make_table("sigma/matches", rows, snapshot_id=snapshot_id, source="sigma"), problems


def _referenced_level(rule) -> str | None:
    """A correlation rule without a level is as severe as the worst rule it joins."""
    order = list(LEVELS.values())
    levels = [rule_meta(ref.rule)["severity"] for ref in rule.rules or [] if getattr(ref, "rule", None) is not None]
    levels = [lv for lv in levels if lv]
    return max(levels, key=order.index) if levels else None
