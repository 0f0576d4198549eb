"""Detection catalogue, measured: recall on the intrusion labs, false alarms on the clean server.

For every lab scenario found (the busybox lab, the server baseline, the server intrusion variants),
``snapscope analyze`` runs on the plain-QEMU run's evidence (``qemu/memory.elf``,
``qemu/disk.qcow2``, ``qemu/net.pcap``) with the linux-full profile (``--profile``), as a user would, and the
findings of the ELF snapshot are compared with the lab's ``ground_truth.json``:

- recall: planted techniques surfaced by a finding of severity >= medium about the right entity
  (the technique's ground-truth entity: its pid, file, unit, module, account or peer) / planted;
- false alarms: findings >= medium about nothing planted (on the baseline every one is a false
  alarm: the aim is 0); findings about the lab's own scaffolding (listed per run in the ground
  truth) are set apart; every low finding is listed;
- a confusion table per technique (planted / found / the rules that found it) and per rule
  (findings >= medium / true / false alarms);
- time: the analysis's wall time and the share correlation takes (rules + graph + timeline over
  the stored tables, timed in-process on the same tables).

Usage::

    .venv/bin/python benchmarks/detection.py                       # every lab under the lab root
    .venv/bin/python benchmarks/detection.py --lab /work/labcache-15a/server-intrusion-<key> --readme
    .venv/bin/python benchmarks/detection.py --case-root /tmp/det --reuse --out /tmp/det.json

``--readme`` rewrites the results section of benchmarks/README.md. Needs the labs built
(``python fixtures/build_lab.py``, ``python fixtures/build_server_lab.py --variant ...``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from toolkit.case import Case  # noqa: E402
from toolkit.correlate.findings import correlate_snapshot  # noqa: E402
from toolkit.correlate.timeline import build_timeline  # noqa: E402
from toolkit.pipeline import analyze, recorrelate  # noqa: E402
from toolkit.programs import is_interpreter  # noqa: E402
from toolkit.schemas import SEVERITY_RANK  # noqa: E402

MEDIUM = SEVERITY_RANK["medium"]
README = REPO / "benchmarks" / "README.md"
BEGIN, END = "<!-- detection:begin -->", "<!-- detection:end -->"
RUN = "qemu"  # the plain-QEMU run: its ELF dump, its disk overlay, its capture
# the shipped profile that reads what the catalogue's log and package rules need (linux-triage skips
# the logs and the package database: it is for a first look, not a sweep)
PROFILE = "linux-full"


def lab_root() -> Path:
    return Path(os.environ.get("SNAPSCOPE_LAB_DIR") or Path.home() / ".cache" / "snapscope" / "lab")


def discover(root: Path) -> list[Path]:
    """The newest complete lab of each kind under ``root``: busybox, server-<variant> for each variant."""
    labs: dict[str, Path] = {}
    for d in sorted(root.iterdir(), key=lambda p: p.stat().st_mtime) if root.is_dir() else []:
        gt = d / "ground_truth.json"
        if not gt.is_file() or not (d / RUN / "memory.elf").is_file():
            continue
        truth = json.loads(gt.read_text())
        kind = f"server-{truth['variant']}" if "server_lab_version" in truth else "busybox"
        labs[kind] = d
    return list(labs.values())


def scenario_name(truth: dict) -> str:
    return f"server {truth['variant']}" if "server_lab_version" in truth else "busybox lab"


def busybox_techniques(truth: dict) -> list[dict]:
    """The busybox lab's planted scenario in the server labs' shape (it predates techniques[])."""
    pid = truth["runs"][RUN]["implant_pid"]
    beacon = truth["runs"][RUN]["beacon"]
    return [
        {"id": "B1-masquerade", "attack_id": "T1036.004", "entity": {RUN: {"pid": pid}}},
        {"id": "B2-deleted-exe", "attack_id": "T1070.004", "entity": {RUN: {"pid": pid}}},
        {"id": "B3-temp-exec", "attack_id": "T1564.001", "entity": {RUN: {"pid": pid}}},
        {
            "id": "B4-beacon",
            "attack_id": "T1071",
            "entity": {RUN: {"pid": pid, "remote_ip": beacon["remote_ip"], "remote_port": beacon["remote_port"]}},
        },
        {"id": "B5-cron", "attack_id": "T1053.003", "entity": {RUN: {"path": truth["cron"]["path"]}}},
        {
            "id": "B6-download-run",
            "attack_id": "T1105",
            "entity": {RUN: {"path": truth["shell_history"]["path"], "pid": pid}},
        },
    ]


def techniques(truth: dict) -> list[dict]:
    return truth["techniques"] if "server_lab_version" in truth else busybox_techniques(truth)


ENTITY_KEYS = {
    "pid": ("pid",),
    "path": (
        "path",
        "exe",
        "file",
        "unit",
        "unit_path",
        "service_path",
        "exec_path",
        "ko_path",
        "library",
        "target",
        "script",
        "log",
        "program",
        "planted",
    ),
    "module": ("module", "module_name"),
    "account": ("user", "account"),
    "peer": ("remote_ip",),
}


def entity_keys(entity: dict) -> dict:
    """The keys to read for each way of naming an entity; a module's or an account's ground truth
    calls it ``name``."""
    keys = dict(ENTITY_KEYS)
    for kind in ("module", "account"):
        if entity.get("kind") == kind:
            keys[kind] = (*keys[kind], "name")
    return keys


def _values(entity: dict, keys) -> list:
    out = []
    for k in keys:
        v = entity.get(k)
        out += v if isinstance(v, list) else [v]
    return [v for v in out if v not in (None, "", [])]


def planted_paths(technique: dict) -> list[str]:
    """Absolute paths the technique's plan names besides its entity (the wrapper's hidden copy of the
    real binary, a payload's drop path): artefacts of the same planting."""
    params = technique.get("params") or {}
    return [v for v in params.values() if isinstance(v, str) and v.startswith("/") and len(v) > 4]


def matches(finding: dict, entity: dict) -> str | None:
    """How a finding is about a technique's entity (None when it is not): the same process, file,
    module, account or peer address; for typed history, also the terminal it was typed into (the
    shell's parent, a tmux server, holds the keystrokes)."""
    chain = " ".join(step.get("label", "") for step in json.loads(finding.get("chain") or "[]"))
    text = f"{finding.get('explanation') or ''} {chain}"
    keys = entity_keys(entity)
    for pid in _values(entity, keys["pid"]):
        if finding.get("entity") == f"process:{pid}" or finding.get("pid") == pid:
            return f"pid {pid}"
    for path in _values(entity, keys["path"]):
        path = str(path).replace(" (deleted)", "")
        if entity.get("pid") and is_interpreter(path) and path in (entity.get("exe"), entity.get("program")):
            continue  # a shared interpreter is no identity: every python or bash process runs it
        if len(path) > 4 and (
            finding.get("path") == path
            or finding.get("entity") == f"file:{path}"
            or re.search(rf"'{re.escape(path)}'", text)
        ):
            return f"path {path}"
    if entity.get("kind") == "history" and entity.get("tty") and (entity.get("ppid") or 0) > 1:
        if finding.get("entity") == f"process:{entity['ppid']}":
            return f"terminal pid {entity['ppid']}"
    for name in _values(entity, keys["module"]):
        if finding.get("entity") == f"module:{name}" or f"'{name}'" in text:
            return f"module {name}"
    for user in _values(entity, keys["account"]):
        if finding.get("entity") == f"account:{user}":
            return f"account {user}"
    for ip in _values(entity, keys["peer"]):
        port = entity.get("remote_port")
        if re.search(
            rf"(?<![\d.]){re.escape(str(ip))}:{port}\b" if port else rf"(?<![\d.]){re.escape(str(ip))}\b", text
        ):
            return f"peer {ip}" + (f":{port}" if port else "")
    return None


def same_technique(attack_id, technique: dict) -> bool:
    """A finding's ATT&CK id names one of the technique's (T1036.004 and T1036.005 are both T1036)."""
    planted = {str(a).split(".")[0] for a in technique.get("attack_ids") or [technique.get("attack_id")] if a}
    return bool(attack_id) and str(attack_id).split(".")[0] in planted


# What the server lab's hook unpacks onto tmpfs under /run/gt (scaffolding the ground truth lists): its
# scripts and payload sources hold every planted one-liner, including the other implementation's.
HOOK_DIR = REPO / "fixtures" / "server" / "guest" / "hook"


def hook_bytes() -> bytes:
    return b"\n".join(p.read_bytes() for p in sorted(HOOK_DIR.rglob("*")) if p.is_file())


def physical_from_hook(case: Case, sid: str) -> set[str]:
    """YARA rules whose physical-memory hits (bytes no process, file or stream holds) are all text of
    the lab's hook files: the hook's copy on tmpfs, not something the guest ran."""
    hits = case.table("yara/matches", snapshot=sid)
    if not len(hits) or "matched" not in hits:
        return set()
    hook, out = hook_bytes(), set()
    for rule, rows in hits[hits["target"] == "physical"].groupby("rule"):
        matched = [bytes(m) for m in rows["matched"] if m is not None]
        if matched and all(m in hook for m in matched):
            out.add(rule)
    return out


def scaffolding(finding: dict, truth: dict, from_hook: set[str] = frozenset()) -> bool:
    """A finding about the lab's own machinery (listed per run in the ground truth)."""
    lab = (truth.get("runs", {}).get(RUN) or {}).get("lab_scaffolding") or {}
    if finding.get("pid") in set(lab.get("pids") or []):
        return True
    if finding.get("entity") == "physical:memory" and finding.get("subject") in from_hook:
        return True
    text = f"{finding.get('explanation')} {finding.get('path')} {finding.get('entity')}"
    return any(p and p in text for p in (lab.get("paths") or []) + (lab.get("units") or []))


def evaluate(case: Case, sid: str, truth: dict) -> dict:
    f = case.findings
    rows = f[f["snapshot_id"] == sid].to_dict("records")
    planted = techniques(truth)
    from_hook = physical_from_hook(case, sid) if truth.get("techniques") else set()
    result = {"techniques": [], "false_alarms": [], "scaffolding": [], "low": [], "rules": {}}
    claimed = set()
    for t in planted:
        entity = dict((t.get("entity") or {}).get(RUN) or {})
        entity["planted"] = planted_paths(t)
        hits = []
        for i, r in enumerate(rows):
            how = matches(r, entity)
            if how and r["severity_rank"] >= MEDIUM:
                hits.append({"rule": r["rule_id"], "severity": r["severity"], "how": how, "attack_id": r["attack_id"]})
                claimed.add(i)
        result["techniques"].append(
            {
                "id": t["id"],
                "attack_id": t.get("attack_id"),
                "found": bool(hits),
                "rules": sorted({h["rule"] for h in hits}),
                # the finding names the planted technique itself (same ATT&CK technique, any sub-technique),
                # not only something else about the same entity
                "by_technique": sorted({h["rule"] for h in hits if same_technique(h["attack_id"], t)}),
                "hits": hits,
            }
        )
    for i, r in enumerate(rows):
        rule = result["rules"].setdefault(r["rule_id"], {"medium_or_more": 0, "true": 0, "false": 0, "low": 0})
        brief = {k: r[k] for k in ("rule_id", "severity", "entity", "explanation")}
        if r["severity_rank"] < MEDIUM:
            rule["low"] += 1
            result["low"].append(brief)
            continue
        rule["medium_or_more"] += 1
        if i in claimed:
            rule["true"] += 1
        elif scaffolding(r, truth, from_hook):
            result["scaffolding"].append(brief)
        else:
            rule["false"] += 1
            result["false_alarms"].append(brief)
    found = sum(t["found"] for t in result["techniques"])
    result["planted"], result["found"] = len(planted), found
    result["found_by_technique"] = sum(bool(t["by_technique"]) for t in result["techniques"])
    result["recall"] = found / len(planted) if planted else None
    return result


def time_correlation(case: Case, sid: str) -> float:
    """Seconds for the rules, the entity graph and the timeline over this snapshot's stored tables."""
    tables = {n: case.table(n, snapshot=sid).reset_index(drop=True) for n in case.tables()}
    tables = {n: df for n, df in tables.items() if n not in ("findings", "timeline")}
    started = time.monotonic()
    correlate_snapshot(tables, sid)
    build_timeline(tables, sid, case.snapshots[sid].get("times") or {})
    return time.monotonic() - started


def run_lab(lab: Path, case_root: Path, reuse: bool, profile: str = PROFILE) -> dict:
    truth = json.loads((lab / "ground_truth.json").read_text())
    name = scenario_name(truth)
    case_dir = case_root / lab.name
    evidence = [lab / RUN / "memory.elf", lab / RUN / "disk.qcow2", lab / RUN / "net.pcap"]
    timing = case_root / f"{lab.name}.analyze-seconds"  # beside the case: a reused case keeps its figure
    if not (reuse and (case_dir / "case.json").is_file()):
        shutil.rmtree(case_dir, ignore_errors=True)
        started = time.monotonic()
        analyze([p for p in evidence if p.exists()], case_dir, profile=profile)
        timing.write_text(f"{time.monotonic() - started:.1f}\n")
    else:
        recorrelate(case_dir)  # the stored tables, read by today's rules
    wall = float(timing.read_text()) if timing.is_file() else None
    case = Case.open(case_dir)
    sid = next(
        s for s, snap in case.snapshots.items() if (snap.get("memory") or {}).get("path", "").endswith("memory.elf")
    )
    result = evaluate(case, sid, truth)
    diagnostics = case.table("diagnostics", snapshot=sid)
    broken = diagnostics[(diagnostics["source"] == "correlate") & (diagnostics["severity"] == "error")]
    result["rule_errors"] = [f"{r.what}: {r.why}" for r in broken.itertuples()]  # a rule that yielded nothing
    result.update(
        scenario=name,
        lab=str(lab),
        snapshots=len(case.snapshots),
        analyze_seconds=wall,
        correlation_seconds=time_correlation(case, sid),
    )
    return result


def render(results: list[dict]) -> str:
    out = [
        "| scenario | planted | found (>= medium, right entity) | recall | of which by a rule of that technique | "
        "false alarms >= medium | low findings | analyze s (snapshots) | correlation s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        wall = (
            f"{r['analyze_seconds']:.0f} ({r['snapshots']})" if r["analyze_seconds"] else f"reused ({r['snapshots']})"
        )
        recall = f"{r['recall']:.0%}" if r["recall"] is not None else "—"
        out.append(
            f"| {r['scenario']} | {r['planted']} | {r['found']} | {recall} | {r['found_by_technique']} | "
            f"{len(r['false_alarms'])} | "
            f"{len(r['low'])} | {wall} | {r['correlation_seconds']:.1f} |"
        )
    for r in results:
        out += ["", f"#### {r['scenario']} (`{Path(r['lab']).name}`)", ""]
        if r.get("rule_errors"):
            out += ["**Rules that failed (their findings are missing):**", ""]
            out += [f"- {e}" for e in r["rule_errors"]] + [""]
        if r["techniques"]:
            out += [
                "| technique | ATT&CK | planted | found | by a rule of that technique | all rules about its entity |",
                "|---|---|---:|---:|---|---|",
            ]
            for t in r["techniques"]:
                rules = ", ".join(f"`{x}`" for x in t["rules"]) or "—"
                own = ", ".join(f"`{x}`" for x in t["by_technique"]) or "—"
                out.append(f"| {t['id']} | {t['attack_id']} | 1 | {int(t['found'])} | {own} | {rules} |")
            out.append("")
        out += ["| rule | findings >= medium | true | false alarms | low |", "|---|---:|---:|---:|---:|"]
        for rule, c in sorted(r["rules"].items()):
            out.append(f"| `{rule}` | {c['medium_or_more']} | {c['true']} | {c['false']} | {c['low']} |")
        for title, items in (("False alarms (>= medium)", r["false_alarms"]), ("Low findings", r["low"])):
            if items:
                out += ["", f"{title}:", ""]
                out += [f"- `{x['rule_id']}` {x['severity']} {x['entity']}: {x['explanation']}" for x in items]
        if r["scaffolding"]:
            out += ["", f"Set apart as lab scaffolding: {len(r['scaffolding'])} finding(s)."]
    return "\n".join(out) + "\n"


def write_readme(text: str) -> None:
    current = README.read_text()
    block = f"{BEGIN}\n{text}{END}"
    if BEGIN in current:
        current = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, current, flags=re.S)
    else:
        current += f"\n{block}\n"
    README.write_text(current)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lab", action="append", type=Path, help="a lab directory (repeatable); default: discover")
    parser.add_argument("--case-root", type=Path, help="where the cases go (default: a temp dir, removed)")
    parser.add_argument("--reuse", action="store_true", help="reuse a case already in --case-root")
    parser.add_argument("--out", type=Path, help="write the full results as JSON")
    parser.add_argument("--profile", default=PROFILE, help=f"analysis profile (default {PROFILE})")
    parser.add_argument("--readme", action="store_true", help="rewrite the results section of benchmarks/README.md")
    args = parser.parse_args(argv)
    labs = args.lab or discover(lab_root())
    if not labs:
        print(f"no lab found under {lab_root()}", file=sys.stderr)
        return 2
    root = args.case_root or Path(tempfile.mkdtemp(prefix="detection-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        results = [run_lab(lab, root, args.reuse, args.profile) for lab in labs]
    finally:
        if args.case_root is None:
            shutil.rmtree(root, ignore_errors=True)
    text = render(results)
    print(text)
    broken = [(r["scenario"], e) for r in results for e in r.get("rule_errors", [])]
    for scenario, error in broken:
        print(f"error: {scenario}: {error}", file=sys.stderr)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=str))
    if args.readme:
        write_readme(text)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
