"""docs/detections.md, generated from the rule registry (toolkit.correlate.rules.RULES).

Run ``python -m toolkit.correlate.docs`` to rewrite the file, ``--check`` to fail when it is not
current (a test does the same).

Example::

    text = render_catalogue(RULES)
    text.splitlines()[0]    # '# Detection catalogue'
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from toolkit.correlate.rules import DOMAINS, RULES

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "detections.md"
DOMAIN_TITLES = {
    "processes": "Processes",
    "memory": "Memory",
    "history": "Shell history",
    "kernel": "Kernel",
    "persistence": "Persistence",
    "accounts": "Accounts and privileges",
    "tampering": "Tampering",
    "network": "Network",
    "matches": "Other tools' verdicts",
}


def _cell(text) -> str:
    return str(text if text is not None else "—").replace("|", "\\|").replace("\n", " ")


def render_catalogue(rules: dict) -> str:
    """The whole markdown page: a summary table, then one section per rule, grouped by domain."""
    out = [
        "# Detection catalogue",
        "",
        "Generated from `toolkit/correlate/rules/` by `python -m toolkit.correlate.docs`; do not edit by hand",
        "(a test fails when this page and the registry disagree).",
        "",
        "Every rule reads tables only (never evidence), keys on a behaviour — never on a name, path, port or",
        "string one intrusion used — and yields findings with the rows that prove them and the entity's",
        "evidence chain (`findings.chain`). Severity and confidence are the rule's defaults; a rule may",
        "raise or lower them per finding for the reasons given. How the catalogue is measured (recall on",
        "the intrusion labs, false alarms on the clean server): `benchmarks/README.md`.",
        "",
        f"{len(rules)} rules.",
        "",
        "| rule | ATT&CK | severity | confidence | title |",
        "|---|---|---|---|---|",
    ]
    for rule_id, rule in rules.items():
        out.append(
            f"| [`{rule_id}`](#{rule_id.replace('.', '')}) | {_cell(rule.get('attack_id'))} | {rule['severity']} | "
            f"{rule.get('confidence', 0.5):.2f} | {_cell(rule['title'])} |"
        )
    for domain in DOMAINS:
        members = [(rid, r) for rid, r in rules.items() if r.get("domain") == domain]
        if not members:
            continue
        out += ["", f"## {DOMAIN_TITLES.get(domain, domain)}"]
        for rule_id, rule in members:
            out += [
                "",
                f"### {rule_id}",
                "",
                f"**{rule['title']}** — ATT&CK {rule.get('attack_id') or 'per matched rule'}, "
                f"severity {rule['severity']}, confidence {rule.get('confidence', 0.5):.2f}.",
                "",
                f"- Keys on: {rule['keys_on']}.",
                f"- Joins: {', '.join(f'`{t}`' for t in rule['joins'])}.",
                f"- Severity and confidence: {rule['grading']}.",
                f"- Evidence chain: {rule['chain']}.",
                f"- Function: `{rule['fn'].__module__}.{rule['fn'].__name__}`.",
            ]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m toolkit.correlate.docs",
        description="Write docs/detections.md from the rule registry. "
        "Example: python -m toolkit.correlate.docs --check",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is not current, write nothing")
    parser.add_argument("--out", type=Path, default=DOC_PATH, help=f"where to write (default {DOC_PATH})")
    args = parser.parse_args(argv)
    text = render_catalogue(RULES)
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is not current: run python -m toolkit.correlate.docs", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
