"""Findings travel (issue 18): Sigma over the lab case, its STIX bundle and MISP event, against ground truth."""

import json
import shutil
import subprocess
import sys

import pytest
from pymisp import MISPEvent
from stix2validator import ValidationOptions, validate_string

from toolkit.case import Case
from toolkit.shipped import SIGMA_RULES

pytestmark = pytest.mark.lab

MASQUERADE = "sigma:ed6deafa-586b-4ea1-9bd6-d7da7f447415"
DOWNLOAD_RUN = "sigma:6fb64d74-ba25-4dc2-99cd-5f26e1c5595d"


def _snapscope(*args):
    return subprocess.run(
        [sys.executable, "-m", "toolkit.cli", *map(str, args)], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def sigma_case(lab_case, tmp_path_factory):
    """A copy of the lab case (other lab tests count its findings) after `snapscope sigma` with the shipped rules."""
    case_dir = tmp_path_factory.mktemp("sigma") / "case"
    shutil.copytree(lab_case[0], case_dir)
    result = _snapscope("sigma", case_dir, SIGMA_RULES)
    assert result.returncode == 0, result.stderr
    return case_dir, result.stdout


def _service_strings(ground_truth) -> list[str]:
    service = ground_truth["service"]
    return [service["comm"], service["path"], service["sha256"], service["unit"]]


def test_sigma_rules_for_the_lab_behaviours_match(sigma_case, ground_truth):
    case_dir, stdout = sigma_case
    implant = ground_truth["implant"]
    findings = json.loads(_snapscope("findings", case_dir, "--json").stdout)
    snapshots = Case.open(case_dir).snapshots
    history = ground_truth["shell_history"]["lines"]
    analysed = [sid for sid, snap in snapshots.items() if not snap.get("same_moment_as")]  # the savevm is not
    assert analysed
    for sid in analysed:
        # `findings` lists each finding once per VM, with the snapshots it was seen in
        by_rule = {f["rule_id"]: f for f in findings if sid in json.loads(f["seen_in"] or "[]")}
        for rule_id in (MASQUERADE, DOWNLOAD_RUN):
            assert rule_id in by_rule, (sid, rule_id, stdout)
            assert by_rule[rule_id]["entity"] == f"process:{implant['pid']['qemu']}"
            assert by_rule[rule_id]["severity"] == "high"
        assert by_rule[MASQUERADE]["attack_id"] == "T1036.004"
        # the masquerade match is the implant's process row; its command line is the guest's own
        assert implant["ps_name"] in by_rule[MASQUERADE]["explanation"]
        # the download-and-run match rests on the two history lines: the download, then the run of that file
        rows = Case.open(case_dir).table("disk/shell_history", snapshot=sid).reset_index(drop=True)
        links = json.loads(by_rule[DOWNLOAD_RUN]["evidence"])
        commands = [rows.loc[lk["row"], "command"] for lk in links]
        download = next(line for line in history if line.startswith("wget") and implant["download_path"] in line)
        assert commands == [download, implant["download_path"]]
        assert history.index(commands[0]) < history.index(commands[1])


def test_stix_bundle_of_the_lab(sigma_case, ground_truth, tmp_path):
    case_dir, _ = sigma_case
    out = tmp_path / "lab.stix.json"
    result = _snapscope("report", case_dir, "--format", "stix", "--out", out)
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    results = validate_string(text, ValidationOptions(version="2.1"))
    results = results if isinstance(results, list) else [results]
    assert all(r.is_valid for r in results), [e.message for r in results for e in r.errors]
    assert not [e for r in results for e in r.errors]
    objects = json.loads(text)["objects"]
    peer = ground_truth["peer"]
    files = {o["hashes"]["SHA-256"] for o in objects if o["type"] == "file"}
    assert files == {ground_truth["implant"]["sha256"]}
    patterns = {o["pattern"] for o in objects if o["type"] == "indicator"}
    assert (
        f"[network-traffic:dst_ref.type = 'ipv4-addr' AND network-traffic:dst_ref.value = '{peer['ip']}' "
        f"AND network-traffic:dst_port = {peer['port']}]"
    ) in patterns
    findings = Case.open(case_dir).findings
    wanted = {t for ids in findings.loc[findings["severity_rank"] >= 2, "attack_id"].dropna() for t in ids.split(",")}
    got = {o["external_references"][0]["external_id"] for o in objects if o["type"] == "attack-pattern"}
    assert got == wanted and {"T1036.004", "T1105"} <= got
    for needle in _service_strings(ground_truth):
        assert needle not in text, needle


def test_misp_event_of_the_lab(sigma_case, ground_truth, tmp_path):
    case_dir, _ = sigma_case
    out = tmp_path / "lab.misp.json"
    result = _snapscope("report", case_dir, "--format", "misp", "--out", out)
    assert result.returncode == 0, result.stderr
    event = MISPEvent()
    event.from_json(out.read_text())
    peer = ground_truth["peer"]
    values = {(a.type, a.value) for a in event.attributes}
    assert ("sha256", ground_truth["implant"]["sha256"]) in values
    assert ("ip-dst|port", f"{peer['ip']}|{peer['port']}") in values
    findings = Case.open(case_dir).findings
    wanted = {t for ids in findings.loc[findings["severity_rank"] >= 2, "attack_id"].dropna() for t in ids.split(",")}
    assert {t.name for t in event.tags} == {f'mitre-attack:attack-pattern="{t}"' for t in wanted}
    text = out.read_text()
    for needle in _service_strings(ground_truth):
        assert needle not in text, needle
