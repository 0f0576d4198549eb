"""The detection catalogue on the real Debian server guest (fixtures/build_server_lab.py), measured as
benchmarks/detection.py measures it: the clean baseline raises nothing of medium or more (findings about
the lab's own scaffolding, listed in its ground truth, set apart), and each intrusion variant's planted
techniques are found (severity >= medium, about the technique's ground-truth entity) at >= 90 %.

Opt-in like the server lab's own tests (a cold build is ~10 GB and 10-40 min per variant, an analysis
~15 min): SNAPSCOPE_SERVER_LAB=1; variants in SNAPSCOPE_DETECTION_VARIANTS (default "baseline intrusion
intrusion-b")."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from toolkit.case import Case

OPT_IN = "SNAPSCOPE_SERVER_LAB"  # the server lab tests' own switch (tests/lab/test_server_lab_builder.py)
REPO = Path(__file__).resolve().parents[2]
VARIANTS = os.environ.get("SNAPSCOPE_DETECTION_VARIANTS", "baseline intrusion intrusion-b").split()
RECALL_TARGET = 0.9
ANALYSIS_SECONDS = 2400  # one server snapshot's analysis on a loaded 2-CPU host (~20 min), with margin
pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(not os.environ.get(OPT_IN), reason=f"opt-in: set {OPT_IN}=1"),
    # the module fixture analyses every variant inside the first test's timeout
    pytest.mark.timeout(ANALYSIS_SECONDS * len(VARIANTS)),
]


def _load(name: str, path: Path):
    """A script outside the package (the benchmark, the lab builder) as a module."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """variant -> benchmarks/detection.py's result for that lab, each analysed once."""
    bench = _load("snapscope_detection_bench_t", REPO / "benchmarks" / "detection.py")
    builder = _load("snapscope_build_server_lab_d", REPO / "fixtures" / "build_server_lab.py")
    root = Path(os.environ["SNAPSCOPE_LAB_DIR"]) if os.environ.get("SNAPSCOPE_LAB_DIR") else None
    cases = tmp_path_factory.mktemp("detection")
    out = {}
    for variant in VARIANTS:
        lab = builder.build_server_lab(root, variant=variant)
        out[variant] = bench.run_lab(lab, cases, reuse=False)
        out[variant]["truth"] = json.loads((lab / "ground_truth.json").read_text())
        out[variant]["case"] = Case.open(cases / lab.name)
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_nothing_unplanted_of_medium_or_more(measured, variant):
    result = measured[variant]
    assert result["rule_errors"] == [], result["rule_errors"]  # a rule that failed hides its false alarms
    assert result["false_alarms"] == [], json.dumps(result["false_alarms"], indent=1, default=str)
    # every finding the lab's scaffolding raised really is about it (a path, unit or pid the truth lists)
    lab = result["truth"]["runs"]["qemu"]["lab_scaffolding"]
    for f in result["scaffolding"]:
        text = f"{f['entity']} {f['explanation']}"
        assert any(p in text for p in lab["paths"] + lab["units"]) or f["entity"] in {
            f"process:{p}" for p in lab["pids"]
        }, f


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "baseline"])
def test_planted_techniques_are_found(measured, variant):
    result = measured[variant]
    assert result["planted"] >= 3, "an intrusion variant plants techniques"
    missed = [t["id"] for t in result["techniques"] if not t["found"]]
    assert result["recall"] >= RECALL_TARGET, f"recall {result['recall']:.0%}, missed {missed}"


def test_the_same_rules_find_both_implementations(measured):
    """Each technique planted under two sets of names, paths and ports is found by a common rule in
    both: the rules key on the behaviour. Techniques either variant missed are the recall test's."""
    if not {"intrusion", "intrusion-b"} <= set(measured):
        pytest.skip("needs both intrusion variants in SNAPSCOPE_DETECTION_VARIANTS")
    a, b = ({t["id"]: set(t["rules"]) for t in measured[v]["techniques"]} for v in ("intrusion", "intrusion-b"))
    found_in_both = [t for t in a if a[t] and b.get(t)]
    apart = {t: (sorted(a[t]), sorted(b[t])) for t in found_in_both if not a[t] & b[t]}
    assert len(found_in_both) >= 5 and not apart, apart


def test_baseline_benign_service_is_quiet(measured):
    """The baseline's own python service (its process, unit, timer, health-check cron, collector
    connections) raises nothing at all, not even low."""
    if "baseline" not in measured:
        pytest.skip("baseline not in SNAPSCOPE_DETECTION_VARIANTS")
    result = measured["baseline"]
    app = result["truth"]["app"]
    pid = result["truth"]["runs"]["qemu"]["app_pid"]
    names = [app[k] for k in ("path", "unit", "client_unit", "client_timer", "health_cron", "collector_ip")]
    f = result["case"].findings
    text = f["entity"].astype(str) + " " + f["explanation"].astype(str)
    about = f[(f["pid"] == pid) | (f["entity"] == f"process:{pid}") | text.apply(lambda t: any(n in t for n in names))]
    assert about.empty, about[["rule_id", "severity", "explanation"]].to_dict("records")
