"""The HTML report of a small hand-made case, read back as a DOM (no browser needed)."""

from __future__ import annotations

from html.parser import HTMLParser

import pandas as pd

from tests.helpers.synthetic_case import implant_tables, write_case
from toolkit.case import Case
from toolkit.report.html import render_html
from toolkit.schemas import SEVERITY_RANK

HOSTILE = "\x1b[2J<script>alert(1)</script>\x07"


class Dom(HTMLParser):
    """Tags, the text of every <summary>, and every text node, in document order."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.summaries: list[str] = []
        self.text: list[str] = []
        self._in_summary = 0

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "summary":
            self._in_summary += 1
            self.summaries.append("")

    def handle_endtag(self, tag):
        if tag == "summary":
            self._in_summary -= 1

    def handle_data(self, data):
        self.text.append(data)
        if self._in_summary:
            self.summaries[-1] += data


def _report(tmp_path, tables=None) -> tuple[str, Dom, Case]:
    case = Case.open(write_case(tmp_path / "case", tables))
    html = render_html(case)
    dom = Dom()
    dom.feed(html)
    return html, dom, case


def test_findings_most_severe_first_each_with_its_chain(tmp_path):
    html, dom, case = _report(tmp_path)
    findings = case.table("vm/findings")
    finding_summaries = [s for s in dom.summaries if "confidence" in s]
    assert len(finding_summaries) == len(findings) == 8
    ranks = [SEVERITY_RANK[s.split()[0].lower()] for s in finding_summaries]
    assert ranks == sorted(ranks, reverse=True)
    top = findings.sort_values(["severity_rank", "confidence"], ascending=False, kind="stable").iloc[0]
    assert top["title"] in finding_summaries[0] and top["rule_id"] in finding_summaries[0]
    details = [attrs for tag, attrs in dom.tags if tag == "details"]
    assert "open" in details[0]  # the first finding is unfolded
    high = int((findings["severity_rank"] >= SEVERITY_RANK["high"]).sum())
    chains = [a for tag, a in dom.tags if tag == "svg" and a.get("aria-label") == "entity chain"]
    assert len(chains) == high  # a chain picture for each high finding
    assert "<script" not in html.lower()


def test_incident_summary_comes_first_with_the_story_and_a_timeline(tmp_path):
    html, dom, case = _report(tmp_path)
    ids = [a.get("id") for tag, a in dom.tags if a.get("id")]
    assert ids.index("summary") < ids.index("findings") < ids.index("moments") < ids.index("timeline")
    start, end = html.index("id=summary"), html.index("id=findings")
    summary = html[start:end]
    # the implant (pid 77) told as one story: its file, what starts it, whom it talks to, what matched
    assert "kworker/0:2H (pid 77)" in summary
    for part, text in [
        ("file on disk", "/var/tmp/.cache/.kworker-upd"),
        ("started by", "cron /etc/cron.d/upd"),
        ("talks to", "10.0.2.100:8443"),
        ("matched", "lab_marker"),
    ]:
        assert f"<b>{part}</b> " in summary and text in summary, part
    assert "labsvc" not in summary  # the benign service carries nothing high
    timeline = [a for tag, a in dom.tags if tag == "svg" and a.get("aria-label") == "incident timeline"]
    assert len(timeline) == 1 and summary.count("<circle") >= 3  # process start, file time, flow marked


def test_addresses_are_hex_in_evidence_rows(tmp_path):
    tables = implant_tables()
    tables["memory/kernel_checks"] = pd.DataFrame(
        [{"check": "check_syscall", "item": "sys_call_table[59]", "address": 0xFFFFFFFFC0A01230, "suspicious": True}]
    )
    html, _dom, case = _report(tmp_path, tables)
    assert "0xffffffffc0a01230" in html and str(0xFFFFFFFFC0A01230) not in html
    assert case.table("memory/kernel_checks")["address"].iloc[0] == 0xFFFFFFFFC0A01230  # raw in the table


def test_guest_strings_are_text_never_markup(tmp_path):
    tables = implant_tables()
    procs = tables["memory/processes"]
    tables["memory/processes"] = pd.concat(
        [procs, pd.DataFrame([{**procs.iloc[2].to_dict(), "pid": 99, "process": HOSTILE}])], ignore_index=True
    )
    tables["memory/sockets"] = pd.concat(
        [
            tables["memory/sockets"],
            pd.DataFrame([{**tables["memory/sockets"].iloc[0].to_dict(), "pid": 99, "src_port": 40001}]),
        ],
        ignore_index=True,
    )
    html, dom, _case = _report(tmp_path, tables)
    assert "<script>alert(1)</script>" not in html and "\x1b" not in html and "\x07" not in html
    assert not [tag for tag, _ in dom.tags if tag == "script"]
    visible = "".join(dom.text)
    assert "\\x1b[2J<script>alert(1)</script>\\x07" in visible  # shown, escaped, as text


def test_an_empty_case_says_so(tmp_path):
    empty = {name: df.iloc[0:0] for name, df in implant_tables().items()}
    _html, dom, case = _report(tmp_path, empty)
    assert len(case.findings) == 0 and "No findings." in "".join(dom.text)
    assert "Nothing of high severity" in "".join(dom.text)


def test_a_fleet_summary_opens_on_the_vm_where_something_happened(tmp_path):
    from tests.helpers.synthetic_case import write_snapshots

    clean = {name: df.iloc[0:0] for name, df in implant_tables().items()}
    snapshots = {"a-web": clean, "b-db": clean, "c-app": implant_tables()}
    entries = {sid: {"disks": [{"path": f"/vms/{sid}/disk.qcow2", "role": "disk"}]} for sid in snapshots}
    case = Case.open(write_snapshots(tmp_path / "case", snapshots, entries))
    html = render_html(case)
    summary = html[html.index("id=summary") : html.index("id=findings")]
    assert summary.index("VM c-app") < summary.index("kworker/0:2H (pid 77)")
    assert "Nothing of high severity on 2 VMs: a-web, b-db." in summary and "VM a-web" not in summary
