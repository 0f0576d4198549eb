"""The detection catalogue: correlation rules as plain functions over one snapshot's tables and
entity graph, assembled here into the one registry :data:`RULES` (rule id -> description + function).

Each rule yields *hits*: ``{"entity": node id, "explanation": text built from row values,
"links": [row links], "confidence": 0..1, "severity": optional override}`` (``sigma.match``,
which stands for many Sigma rules, also sets ``rule_id`` and ``title``). A rule states what the
rows show and keys on behaviour, never on a name, path, port or string one intrusion used.

Every entry says: ``title``, ``attack_id`` (MITRE ATT&CK), ``severity`` and ``confidence`` (the
defaults a hit may override) with ``grading`` (why), ``keys_on`` (the behaviour), ``joins`` (the
tables it reads) and ``chain`` (the evidence chain its findings carry). ``docs/detections.md`` is
generated from this registry (``python -m toolkit.correlate.docs``); tests walk it.

Modules by domain: ``processes``, ``memory``, ``history``, ``kernel``, ``persistence``,
``accounts``, ``tampering``, ``network``, ``matches`` (YARA and Sigma verdicts).

Example::

    RULES["proc.shell_on_socket"]["fn"](tables, build_graph(tables, "s1"), "s1")
"""

from __future__ import annotations

from toolkit.correlate.rules import (
    accounts,
    history,
    kernel,
    matches,
    memory,
    network,
    persistence,
    processes,
    tampering,
)

DOMAINS = {
    "processes": processes,
    "memory": memory,
    "history": history,
    "kernel": kernel,
    "persistence": persistence,
    "accounts": accounts,
    "tampering": tampering,
    "network": network,
    "matches": matches,
}


def _assemble() -> dict[str, dict]:
    rules: dict[str, dict] = {}
    for domain, module in DOMAINS.items():
        for rule_id, rule in module.RULES.items():
            if rule_id in rules:
                raise ValueError(f"rule {rule_id!r} defined twice")
            rules[rule_id] = {**rule, "domain": domain}
    return rules


RULES: dict[str, dict] = _assemble()
