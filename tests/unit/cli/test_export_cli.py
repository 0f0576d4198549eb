"""snapscope sigma and report --format stix|misp|timesketch through the CLI: results, and bad input as one line."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers.synthetic_case import write_case
from toolkit.case import init_case
from toolkit.shipped import SIGMA_RULES

SNAPSCOPE = [sys.executable, "-m", "toolkit.cli"]


def run(*args, env=None):
    return subprocess.run(
        [*SNAPSCOPE, *map(str, args)], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
    )


def _one_line_error(result, needle):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr


def test_sigma_findings_appear_in_findings(tmp_path):
    case = write_case(tmp_path / "case")
    result = run("sigma", case)
    assert result.returncode == 0, result.stderr
    assert "s1: 2 matches" in result.stdout  # no cmdlines in this case: the masquerade rule has no CommandLine
    findings = json.loads(run("findings", case, "--json").stdout)
    rule_ids = {f["rule_id"] for f in findings}
    assert {"sigma:6fb64d74-ba25-4dc2-99cd-5f26e1c5595d", "sigma:11f884f3-6cf5-4d54-80bb-77ff9e28620b"} <= rule_ids


def test_bad_sigma_input(tmp_path):
    case = write_case(tmp_path / "case")
    bad = tmp_path / "bad.yml"
    bad.write_text("title: broken\nlogsource:\n  product: linux\ndetection: [\n")
    _one_line_error(run("sigma", case, bad), "bad.yml:5:1: YAML syntax error")
    (tmp_path / "norules").mkdir()
    _one_line_error(run("sigma", case, tmp_path / "norules"), "no Sigma rules (*.yml, *.yaml) in this directory")
    empty = tmp_path / "empty"
    init_case(empty)
    _one_line_error(run("sigma", empty, SIGMA_RULES), "holds no analysed snapshot")
    _one_line_error(run("sigma", tmp_path / "nocase"), "not a snapscope case")


@pytest.mark.parametrize("fmt", ["stix", "misp"])
def test_exports_write_files_and_refuse_empty_cases(tmp_path, fmt):
    case = write_case(tmp_path / "case")
    out = tmp_path / f"out.{fmt}.json"
    result = run("report", case, "--format", fmt, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "10.0.2.100" in out.read_text()
    empty = tmp_path / "empty"
    init_case(empty)
    _one_line_error(run("report", empty, "--format", fmt, "--out", tmp_path / "e"), "holds no analysed snapshot")
    assert not (tmp_path / "e").exists()


def test_report_bad_options(tmp_path):
    case = write_case(tmp_path / "case")
    _one_line_error(run("report", case, "--format", "stix2", "--out", tmp_path / "x"), "--format must be one of")
    _one_line_error(
        run("report", case, "--format", "stix", "--out", tmp_path / "x", "--timesketch-url", "http://127.0.0.1:1"),
        "--timesketch-url goes with --format timesketch",
    )
    _one_line_error(
        run("report", case, "--format", "timesketch", "--out", tmp_path / "t.jsonl", "--timesketch-url", "http://h"),
        "TIMESKETCH_PASSWORD",
    )


def test_report_never_replaces_evidence_or_the_case(tmp_path):
    """--out naming the case's evidence (itself, a symbolic or a hard link) or a record inside the case is
    refused before anything is written; under the case's reports/ it is fine."""
    from toolkit.case import load_manifest, save_manifest

    case = write_case(tmp_path / "case")
    evidence = tmp_path / "memory.elf"
    evidence.write_bytes(b"\x7fELF guest memory")
    manifest = load_manifest(case)
    manifest["evidence"][str(evidence)] = {"sha256": "0" * 64, "size": evidence.stat().st_size}
    save_manifest(case, manifest)
    (tmp_path / "soft").symlink_to(evidence)
    os.link(evidence, tmp_path / "hard")
    for target in (evidence, tmp_path / "soft", tmp_path / "hard"):
        _one_line_error(run("report", case, "--format", "json", "--out", target), "is the case's evidence")
    assert evidence.read_bytes() == b"\x7fELF guest memory"
    records = {p: p.read_bytes() for p in (case / "case.json", case / "custody.jsonl") if p.exists()}
    for target in (case / "case.json", case / "custody.jsonl", case / "findings.parquet", case / "derived" / "x"):
        _one_line_error(run("report", case, "--format", "json", "--out", target), "is inside the case")
    assert {p: p.read_bytes() for p in records} == records
    assert not (case / "derived" / "x").exists()
    result = run("report", case, "--format", "json", "--out", case / "reports" / "r.json")
    assert result.returncode == 0, result.stderr
    assert json.loads((case / "reports" / "r.json").read_text())
