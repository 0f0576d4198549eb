"""Reports and notebooks on the analysed lab case (the correlation issue)."""

import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.helpers.lab_story import implant_story
from toolkit.case import Case

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]


def _snapscope(*args):
    return subprocess.run(
        [sys.executable, "-m", "toolkit.cli", *map(str, args)], capture_output=True, text=True, timeout=600
    )


class _Dom(HTMLParser):
    """Elements with an id, in document order, and the text inside <section id=summary>."""

    def __init__(self):
        super().__init__()
        self.ids: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.summary_text: list[str] = []
        self._depth = 0  # inside the summary section

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if attrs.get("id"):
            self.ids.append(attrs["id"])
        if self._depth or attrs.get("id") == "summary":
            self._depth += tag not in ("circle", "line", "rect", "path")  # SVG leaves close themselves

    def handle_endtag(self, tag):
        if self._depth and tag not in ("circle", "line", "rect", "path"):
            self._depth -= 1

    def handle_data(self, data):
        if self._depth:
            self.summary_text.append(data)


def _chromium(tmp_path, url, *flags):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is installed by scripts/setup"
    return subprocess.run(
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
            "--window-size=1366,768",
            *flags,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_html_first_screen_is_the_incident_summary(lab_case, ground_truth, tmp_path):
    """How "on the first screen" is checked: Chromium renders the report at 1366x768. Its DOM
    (--dump-dom, as the browser parsed it) must put the summary before the findings, holding the
    implant's story; the screenshot of that first screen is read back with OCR, which must find the
    story's words on it (what is below the fold is not in a 1366x768 screenshot)."""
    case_dir, _ = lab_case
    out = tmp_path / "report.html"
    result = _snapscope("report", case_dir, "--format", "html", "--out", out)
    assert result.returncode == 0, result.stderr
    html = out.read_text()
    assert "<script" not in html.lower(), "the report must be readable offline without scripts"

    dom = _Dom()
    dumped = _chromium(tmp_path, out.as_uri(), "--dump-dom")
    assert dumped.returncode == 0 and "<html" in dumped.stdout, dumped.stderr[-2000:]
    dom.feed(dumped.stdout)
    assert dom.ids.index("summary") < dom.ids.index("findings")
    summary = " ".join("".join(dom.summary_text).split())
    for told in implant_story(ground_truth):
        assert told in summary, (told, summary[:2000])
    assert ground_truth["service"]["path"] not in summary  # the benign service tells no story
    timeline = [a for tag, a in dom.tags if tag == "svg" and a.get("aria-label") == "incident timeline"]
    assert len(timeline) == 1

    shot = tmp_path / "first-screen.png"
    taken = _chromium(tmp_path, out.as_uri(), f"--screenshot={shot}")
    assert shot.exists() and shot.stat().st_size > 1000, taken.stderr[-2000:]
    ocr = subprocess.run(["tesseract", str(shot), "-", "--psm", "3"], capture_output=True, text=True, timeout=120)
    words = " ".join(ocr.stdout.split()).lower()
    for seen in ("what happened", "kworker", "file on disk", "started by", "talks to", "8443", "kworker-upd"):
        assert seen in words, (seen, ocr.stdout[:2000])


def test_other_report_formats(lab_case, tmp_path):
    import csv

    import pandas as pd

    case_dir, _ = lab_case
    case = Case.open(case_dir)
    findings, timeline = case.table("vm/findings"), case.timeline  # exported once per VM
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
