"""docs/detections.md is generated from the rule registry and must be current; every rule carries
what the catalogue promises (ATT&CK id, behaviour, joins, grading, chain)."""

from __future__ import annotations

import re

from toolkit.correlate.docs import DOC_PATH, main, render_catalogue
from toolkit.correlate.rules import RULES
from toolkit.schemas import SEVERITIES

ATTACK_ID = re.compile(r"^T\d{4}(\.\d{3})?$")


def test_detections_page_is_current():
    assert DOC_PATH.read_text() == render_catalogue(RULES), "run: python -m toolkit.correlate.docs"
    assert main(["--check"]) == 0


def test_check_fails_on_a_stale_page(tmp_path):
    stale = tmp_path / "detections.md"
    stale.write_text(render_catalogue(RULES).replace("rules.", "rules (edited by hand).", 1))
    assert main(["--check", "--out", str(stale)]) == 1
    assert main(["--out", str(stale)]) == 0 and main(["--check", "--out", str(stale)]) == 0


def test_catalogue_has_25_described_detections():
    own = {rid: r for rid, r in RULES.items() if not rid.endswith(".match")}  # yara/sigma carry their rules' ids
    assert len(own) >= 25
    for rule_id, rule in own.items():
        assert ATTACK_ID.match(rule["attack_id"] or ""), rule_id
        assert rule["severity"] in SEVERITIES and 0 < rule["confidence"] <= 1, rule_id
        assert rule["keys_on"] and rule["grading"] and rule["chain"] and rule["joins"], rule_id
        assert f"### {rule_id}" in DOC_PATH.read_text()
