"""Reports and notebooks on the analysed lab case (the correlation issue)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.case import Case

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]


def _snapscope(*args):
    return subprocess.run(
        [sys.executable, "-m", "toolkit.cli", *map(str, args)], capture_output=True, text=True, timeout=600
    )


def test_html_report_shows_top_finding_first_screen(lab_case, tmp_path):
    case_dir, _ = lab_case
    out = tmp_path / "report.html"
    result = _snapscope("report", case_dir, "--format", "html", "--out", out)
    assert result.returncode == 0, result.stderr
    html = out.read_text()
    assert "<script" not in html.lower(), "the report must be readable offline without scripts"
    top = Case.open(case_dir).findings.sort_values(["severity_rank", "confidence"], ascending=False).iloc[0]
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is installed by scripts/setup"
    shot = tmp_path / "first-screen.png"
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chrome'}",
            "--window-size=1280,800",
            f"--screenshot={shot}",
            out.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 1000, dom.stderr[-2000:]
    # Read the first screen (1280x800) back as text: the top finding's title must be on it.
    ocr = subprocess.run(["tesseract", str(shot), "-", "--psm", "3"], capture_output=True, text=True, timeout=120)
    words = " ".join(ocr.stdout.split()).lower()
    title_words = [w for w in top["title"].lower().split() if len(w) > 3]
    seen = [w for w in title_words if w in words]
    assert len(seen) >= max(1, len(title_words) - 1), (top["title"], ocr.stdout[:1500])
    # and the entity it is about (the severity badge is white on red: OCR reads it poorly)
    assert top["entity_label"].split()[0].lower()[:8] in words, (top["entity_label"], ocr.stdout[:1500])


def test_other_report_formats(lab_case, tmp_path):
    import csv

    import pandas as pd

    case_dir, _ = lab_case
    case = Case.open(case_dir)
    findings, timeline = case.findings, case.timeline
    for fmt in ("json", "csv", "parquet", "timesketch"):
        out = tmp_path / f"report.{fmt}"
        result = _snapscope("report", case_dir, "--format", fmt, "--out", out)
        assert result.returncode == 0, result.stderr
    as_json = json.loads((tmp_path / "report.json").read_text())
    assert sorted(f["finding_id"] for f in as_json) == sorted(findings["finding_id"])
    with open(tmp_path / "report.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["finding_id"] for r in rows) == sorted(findings["finding_id"])
    assert set(rows[0]) == set(findings.columns)
    back = pd.read_parquet(tmp_path / "report.parquet")
    pd.testing.assert_frame_equal(back.reset_index(drop=True), findings.reset_index(drop=True), check_dtype=False)
    events = [json.loads(line) for line in (tmp_path / "report.timesketch").read_text().splitlines()]
    assert len(events) == timeline["ts"].notna().sum()
    for event in events:
        assert {"message", "datetime", "timestamp", "timestamp_desc"} <= set(event)
        assert event["message"] and event["timestamp_desc"]


@pytest.mark.parametrize("notebook", ["triage.ipynb", "timeline.ipynb"])
def test_notebooks_execute(lab_case, notebook):
    import nbformat
    from nbclient import NotebookClient

    case_dir, _ = lab_case
    nb = nbformat.read(REPO / "notebooks" / notebook, as_version=4)
    os.environ["SNAPSCOPE_CASE"] = str(case_dir)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"
    ]
    assert not errors
