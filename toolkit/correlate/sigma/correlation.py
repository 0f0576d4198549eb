"""Sigma correlation rules over the events their rules matched in one snapshot.

Supported: ``temporal``, ``temporal_ordered``, ``event_count`` and
``value_count``, with ``group-by`` and ``aliases``. Events are ordered by
time; where a source has no times (shell history without HISTTIMEFORMAT)
events of that one source keep their order in it and are joined without a
time-span check — the match's description says so, because the rows cannot
show how far apart the commands were. Events of different sources without
times are never joined.

Example::

    found, problem = correlation_matches(rule, events, "lab-qemu")
    # found: [(view, last event, links of every joined event, description)]
"""

from __future__ import annotations

import operator

import pandas as pd
from sigma.correlations import SigmaCorrelationCondition, SigmaCorrelationType
from sigma.correlations import SigmaCorrelationConditionOperator as Op

from toolkit.correlate.links import link, value
from toolkit.correlate.sigma.taxonomy import VIEWS

COMPARE = {Op.LT: operator.lt, Op.LTE: operator.le, Op.GT: operator.gt, Op.GTE: operator.ge, Op.EQ: operator.eq}
COMPARE[Op.NEQ] = operator.ne
SUPPORTED = {
    SigmaCorrelationType.TEMPORAL,
    SigmaCorrelationType.TEMPORAL_ORDERED,
    SigmaCorrelationType.EVENT_COUNT,
    SigmaCorrelationType.VALUE_COUNT,
}


def _column(rule, ref, sigma_field: str, view: str) -> str | None:
    """Our column holding ``sigma_field`` (or its alias for this referenced rule) in ``view``."""
    alias = rule.aliases.aliases.get(sigma_field) if rule.aliases else None
    if alias is not None:
        sigma_field = next((f for r, f in alias.mapping.items() if r.reference == ref.reference), sigma_field)
    return VIEWS[view]["fields"].get(sigma_field)


def _events(rule, events: dict) -> list[dict] | str:
    """Every event of the referenced rules: {rule index, view, row, key (group-by values), ts, source, seq}."""
    out = []
    for index, ref in enumerate(rule.rules or []):
        target = getattr(ref, "rule", None)
        if target is None or id(target) not in events:
            continue  # a rule that matched nothing here, or could not run (its own diagnostic says why)
        view, frame = events[id(target)]
        columns = [_column(rule, ref, f, view) for f in rule.group_by or []]
        if any(c is None for c in columns):
            return f"group-by field not in snapscope's {view} view: {', '.join(rule.group_by)}"
        for _, row in frame.iterrows():
            key = tuple(value(row, c) for c in columns)
            if any(k is None for k in key):
                continue  # an event without the group-by value joins no group
            field = rule.condition.fieldref if isinstance(rule.condition, SigmaCorrelationCondition) else None
            counted = value(row, VIEWS[view]["fields"].get(field, "")) if field else None
            ts = value(row, "ts")
            out.append(
                {"index": index, "view": view, "row": row, "key": key, "ts": ts, "counted": counted}
                | {"source": value(row, "_source"), "seq": value(row, "_seq", 0)}
            )
    return out


def _close(first: dict, other: dict, seconds: float) -> tuple[bool, bool]:
    """(within the time span, checked by time) for two events."""
    if first["ts"] is not None and other["ts"] is not None:
        return (other["ts"] - first["ts"]).total_seconds() <= seconds, True
    return first["ts"] is None and other["ts"] is None and first["source"] == other["source"], False


def _windows(group: list[dict], seconds: float):
    """For each event, it and the events after it within the time span (and whether times were checked)."""
    for i, first in enumerate(group):
        window, timed = [first], first["ts"] is not None
        for other in group[i + 1 :]:
            close, checked = _close(first, other, seconds)
            if close:
                window.append(other)
                timed = timed and checked
        yield window, timed


def _ordered(window: list[dict], count: int) -> list[dict] | None:
    """The first subsequence of ``window`` holding rule 0, then rule 1, ... in that order."""
    chain = []
    for event in window:
        if event["index"] == len(chain):
            chain.append(event)
            if len(chain) == count:
                return chain
    return None


def _satisfied(rule, window: list[dict]) -> list[dict] | None:
    wanted = len(rule.rules or [])
    if rule.type == SigmaCorrelationType.TEMPORAL_ORDERED:
        return _ordered(window, wanted) if window[0]["index"] == 0 else None
    if rule.type == SigmaCorrelationType.TEMPORAL:
        firsts = {}
        for event in window:
            firsts.setdefault(event["index"], event)
        return list(firsts.values()) if len(firsts) == wanted else None
    condition = rule.condition
    measured = len(window) if rule.type == SigmaCorrelationType.EVENT_COUNT else len({e["counted"] for e in window})
    return window if COMPARE[condition.op](measured, condition.count) else None


def _order(event: dict):
    ts = event["ts"]
    return (ts is None, ts if ts is not None else pd.Timestamp(0, tz="UTC"), str(event["source"]), event["seq"])


def correlation_matches(rule, events: dict, snapshot_id: str) -> tuple[list[tuple], str | None]:
    """The groups of events that satisfy ``rule`` (a SigmaCorrelationRule), one match per group;
    or a reason it cannot be evaluated."""
    if rule.type not in SUPPORTED:
        return (
            [],
            f"correlation type {rule.type.name.lower()} is not supported "
            "(temporal, temporal_ordered, event_count and value_count are)",
        )
    if any(getattr(ref, "rule", None) is None or not hasattr(ref.rule, "logsource") for ref in rule.rules or []):
        return [], "correlation of correlation rules is not supported"
    if rule.type in (SigmaCorrelationType.EVENT_COUNT, SigmaCorrelationType.VALUE_COUNT) and not isinstance(
        rule.condition, SigmaCorrelationCondition
    ):
        return [], "extended correlation conditions are not supported"
    found = _events(rule, events)
    if isinstance(found, str):
        return [], found
    groups: dict[tuple, list[dict]] = {}
    for event in found:
        groups.setdefault(event["key"], []).append(event)
    matches = []
    for key, group in groups.items():
        group.sort(key=_order)
        for window, timed in _windows(group, rule.timespan.seconds):
            chain = _satisfied(rule, window)
            if chain:
                matches.append(_describe(rule, key, chain, timed, snapshot_id))
                break  # one match per group: the earliest
    return matches, None


def _describe(rule, key: tuple, chain: list[dict], timed: bool, snapshot_id: str) -> tuple:
    last = chain[-1]
    links = [link(e["row"]["_table"], snapshot_id, e["row"]["_row"]) for e in chain]
    text = " -> ".join(str(value(e["row"], "_raw") or "") for e in chain)
    grouped = ", ".join(f"{f}={k}" for f, k in zip(rule.group_by or [], key))
    note = "" if timed else f" (no timestamps: in the order of {last['source']}, time span not checked)"
    return last["view"], last["row"], links, f"{text}" + (f" [{grouped}]" if grouped else "") + note
