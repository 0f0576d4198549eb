"""analyze on the real lab snapshot: custody, hashes, case layout (the foundation issue)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.lab_story import implant_story
from toolkit.case import Case, custody
from toolkit.case.derived import derived_files
from toolkit.hashing import sha256_file

pytestmark = pytest.mark.lab


def test_evidence_unchanged_and_logged(lab_case):
    case_dir, before = lab_case
    after = {p: sha256_file(p) for p in before}
    assert after == before
    manifest = json.loads((case_dir / "case.json").read_text())
    events = list(map(json.loads, (case_dir / "custody.jsonl").read_text().splitlines()))
    ours = {str(p.resolve()): digest for p, digest in before.items()}
    analysed = set(manifest["evidence"])
    # the ELF, the disk overlay, its base image (found through the backing chain) and the capture
    assert len(analysed) == 4 and analysed <= set(ours), analysed
    for phase in ("before", "after"):
        logged = {e["path"]: e["sha256"] for e in events if e["action"] == f"evidence.hash.{phase}"}
        assert set(logged) == analysed, phase  # every evidence file, each hash as the test computed it
        assert logged == {path: ours[path] for path in analysed}, phase
    assert {path: entry["sha256"] for path, entry in manifest["evidence"].items()} == {p: ours[p] for p in analysed}
    assert manifest["runs"][-1]["evidence_unchanged"] is True
    assert manifest["tools"]["volatility3"]


def test_isf_and_every_derived_file_are_in_custody(lab_case):
    case_dir, before = lab_case
    events = custody.read_events(case_dir)
    isfs = {e["detail"]["snapshot"]: e for e in events if e["action"] == "symbols.isf"}
    snapshots = Case.open(case_dir).snapshots
    # one ISF per analysed snapshot; the savevm in the disk holds the ELF's moment and is not analysed again
    analysed = {sid for sid, snap in snapshots.items() if not snap.get("same_moment_as")}
    assert set(isfs) == analysed and len(analysed) < len(snapshots)
    for isf in isfs.values():
        copy = Path(isf["detail"]["case_copy"])
        assert copy.is_relative_to(case_dir / "derived" / "isf") and sha256_file(copy) == isf["sha256"]
        assert isf["detail"]["origin"] in ("built", "cache")
    elf = next(p for p in before if p.name == "memory.elf")
    # keyed by the image it was built from: the ELF's own sha256 for the ELF's snapshot
    assert before[elf] in {isf["detail"]["built_from_image_sha256"] for isf in isfs.values()}
    logged = {e["path"]: e["sha256"] for e in events if e["action"] == "derived.write"}
    present = derived_files(case_dir)
    assert any(rel.startswith("derived/isf/") for rel in present)
    assert logged == {rel: sha256_file(path) for rel, path in present.items()}


def test_case_layout_and_notebook_api(lab_case):
    case_dir, _ = lab_case
    for sub in ("tables", "derived", "reports"):
        assert (case_dir / sub).is_dir()
    case = Case.open(case_dir)
    assert "evidence" in case.tables()
    ev = case.table("evidence")
    assert set(ev["sha256"]) and ev["sha256"].str.len().eq(64).all()
    assert int(case.sql("SELECT count(*) AS n FROM evidence")["n"][0]) == len(ev)


def test_case_verify_detects_tampering(lab_case, tmp_path):
    import shutil

    case_dir, _ = lab_case
    ok = subprocess.run(
        [sys.executable, "-m", "toolkit.cli", "case", "verify", str(case_dir)], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    copy = tmp_path / "tampered"
    shutil.copytree(case_dir, copy, ignore=shutil.ignore_patterns("derived"))
    lines = (copy / "custody.jsonl").read_text().splitlines()
    record = json.loads(lines[2])
    record["sha256"] = "0" * 64
    lines[2] = json.dumps(record, sort_keys=True)
    (copy / "custody.jsonl").write_text("\n".join(lines) + "\n")
    bad = subprocess.run(
        [sys.executable, "-m", "toolkit.cli", "case", "verify", str(copy)], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert "line 3" in bad.stdout + bad.stderr


def _lab_rule(name: str, marker: str) -> str:
    return f'rule {name} {{ meta: severity = "high" strings: $a = "{marker}" condition: $a }}\n'


def test_user_rules_on_the_lab_dump_and_an_edit_rescans(lab, ground_truth, tmp_path):
    """`snapscope analyze DUMP --case C --rules my.yar` matches my.yar's rule in the implant's memory;
    after an edit of my.yar the same command scans again (its content is in the fingerprint)."""
    from typer.testing import CliRunner

    from toolkit.cli.app import app

    marker = ground_truth["marker"]
    pid = ground_truth["runs"]["qemu"]["implant_pid"]
    rules = tmp_path / "my.yar"
    rules.write_text(_lab_rule("My_Lab_Marker", marker))
    case_dir = tmp_path / "case"
    args = ["analyze", str(lab / "qemu" / "memory.elf"), "--case", str(case_dir), "--rules", str(rules)]

    def mine() -> dict:
        hits = Case.open(case_dir).table("yara/matches")
        hits = hits[hits["rule"].str.startswith("My_Lab_Marker")]
        return {rule: set(group["pid"].dropna()) for rule, group in hits[hits["target"] == "process"].groupby("rule")}

    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert mine() == {"My_Lab_Marker": {pid}}
    rules.write_text(_lab_rule("My_Lab_Marker_Edited", marker))
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "reused" not in second.output
    assert mine() == {"My_Lab_Marker_Edited": {pid}}  # scanned again with the edited rules, nothing stale


def test_demo_tells_what_happened_and_where_the_report_is(lab, ground_truth, tmp_path):
    """`snapscope demo` reuses the built lab, analyses its main snapshot and ends with the incident
    summary (the implant's story, not table row counts) and the path of the HTML report it wrote."""
    from typer.testing import CliRunner

    from toolkit.cli.app import app

    case_dir = tmp_path / "demo-case"
    # a wide terminal: a story step wraps under its branch at 80 columns
    result = CliRunner().invoke(app, ["demo", "--case", str(case_dir)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    pid = ground_truth["runs"]["qemu"]["implant_pid"]
    assert f"lab snapshot: {lab}" in out  # the cached lab, not a rebuild elsewhere
    assert not re.search(r"^\s+\S+/\S+\s+\d+ rows$", out, re.M)  # no table row counts any more
    story = out[out.index("What happened") : out.index("HTML report:")]
    for told in implant_story(ground_truth):
        assert told in story, (told, story[:3000])
    report = (case_dir / "reports" / "report.html").resolve()
    assert f"HTML report: {report}" in out and out.rstrip().endswith(f"snapscope findings {case_dir}")
    html = report.read_text()
    assert html.index("<section id=summary") < html.index("<h2 id=findings>") and f"(pid {pid})" in html
