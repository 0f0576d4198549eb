"""The user's levers on the command line: --rules (a file or a directory, repeatable), a profile
file, --analyse-every-artefact; and what analyze, findings and diff --memory print."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tests.helpers.pcap_writer import session, write_pcap
from tests.unit.correlate.test_vm_view import _two_moments
from toolkit.case import Case
from toolkit.cli.app import app
from toolkit.profiles import PROFILES_DIR

MARK = b"CLI-RULES-MARK-8812"


def _rule(name: str) -> str:
    return f'rule {name} {{ meta: severity = "high" strings: $a = "CLI-RULES-MARK-8812" condition: $a }}\n'


@pytest.fixture
def capture(tmp_path):
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    frames = session("10.0.2.15", 40000, "10.0.2.100", 8443, [(b"hello " + MARK, b"ok")])
    return write_pcap(evidence / "net.pcap", frames)


def _stream_rules(case_dir) -> set:
    matches = Case.open(case_dir).table("yara/matches")
    return set(matches[matches["target"] == "stream"]["rule"])


def test_rules_option_adds_user_rules_and_an_edit_means_a_rescan(capture, tmp_path):
    rules = tmp_path / "my.yar"
    rules.write_text(_rule("my_mark"))
    more = tmp_path / "more-rules"
    more.mkdir()
    (more / "other.yar").write_text(_rule("my_other_mark"))
    case_dir = tmp_path / "case"
    runner = CliRunner()
    args = ["analyze", str(capture), "--case", str(case_dir), "--rules", str(rules), "--rules", str(more)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert _stream_rules(case_dir) == {"my_mark", "my_other_mark"}
    # the incident summary follows the snapshots: the flow that carries the marker is the story
    assert "VM " in first.output and "my_mark" in first.output
    rules.write_text(_rule("my_mark_edited"))
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "reused" not in second.output  # the edited file's content is in the fingerprint
    assert _stream_rules(case_dir) == {"my_mark_edited", "my_other_mark"}
    third = runner.invoke(app, args)
    assert "reused" in third.output  # unchanged rules: nothing redone


def test_profile_option_takes_a_file(capture, tmp_path):
    profile = tmp_path / "mine.toml"
    text = (PROFILES_DIR / "linux-triage.toml").read_text().replace('name = "linux-triage"', 'name = "my-triage"')
    profile.write_text(text)
    result = CliRunner().invoke(
        app, ["analyze", str(capture), "--case", str(tmp_path / "c"), "--profile", str(profile)]
    )
    assert result.exit_code == 0, result.output
    assert Case.open(tmp_path / "c").manifest["runs"][-1]["profile"] == "my-triage"


def test_missing_rules_path_is_one_line_and_no_case(capture, tmp_path):
    case_dir = tmp_path / "case"
    missing = tmp_path / "nope.yar"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "toolkit.cli",
            "analyze",
            str(capture),
            "--case",
            str(case_dir),
            "--rules",
            str(missing),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: {missing}: no such YARA rule file or directory"
    ]
    assert not case_dir.exists()


def test_findings_tell_the_story_first_then_each_finding_once_per_vm(tmp_path):
    case = _two_moments(tmp_path)
    result = CliRunner().invoke(app, ["findings", str(case.path)])
    assert result.exit_code == 0, result.output
    out = result.output
    story = out.index("VM web01")
    assert story < out.index("findings by severity")
    assert "file on disk /var/tmp/.cache/.kworker-upd" in out and "started by cron /etc/cron.d/upd" in out
    assert "seen in 2 snapshot(s), 1 moment(s): web01-tuesday, web01-tuesday-kdump" in out
    assert "Appeared since the previous snapshot" in out
    as_json = json.loads(CliRunner().invoke(app, ["findings", str(case.path), "--json"]).output)
    assert sorted(r["finding_id"] for r in as_json) == sorted(case.table("vm/findings")["finding_id"])


def test_diff_memory_between_two_snapshots_of_a_case(tmp_path):
    case = _two_moments(tmp_path)
    result = CliRunner().invoke(app, ["diff", "--memory", "web01-monday", "web01-tuesday", "--case", str(case.path)])
    assert result.exit_code == 0, result.output
    assert "1 new process" in result.output and "kworker/0:2H" in result.output
    missing = CliRunner().invoke(app, ["diff", "--memory", "web01-monday", "nope", "--case", str(case.path)])
    assert missing.exit_code == 2 and "no snapshot 'nope' in this case" in missing.output
