"""A case continues the custody chain that ``snapscope acquire`` started.

An acquisition leaves ``acquisition.json`` and ``custody.jsonl`` at the top
of its output directory, one directory per domain below
(:mod:`toolkit.acquire.record`). When a run's evidence lies in such a
directory (a file's own directory or the one above it), the case adopts the
acquisition before anything else is logged:

- the acquisition's chain must verify, else CaseError: the evidence's
  history cannot be trusted;
- a snapshot drawn from it must come from a domain whose acquisition
  completed, and must read nothing outside it (a domain XML taken with
  ``--disk none`` still names the live disk on the host): else CaseError,
  because the host's live files are no evidence of that moment;
- a case without a custody log yet *starts with* the acquisition's records,
  verbatim: the case's chain is the acquisition's chain, continued, and
  ``case verify`` walks one chain from the first byte acquired to the last
  table written;
- a case that already has a log keeps a copy of the acquisition's log under
  ``derived/acquisitions/`` (``case verify`` checks it too);
- either way one ``acquisition.adopt`` event names the acquisition's
  directory and the hash of its last record, and the manifest's
  ``acquisitions`` entry keeps what the acquisition said: complete or not,
  who, where, when, and per domain the mode, consistency and guest pause;
- once the evidence is hashed, every acquired file the run uses must have
  the sha256 it was written with (:func:`check_hashes`), else CaseError.

An acquisition the case adopted before (same last hash) is not adopted again.

Example::

    acquisitions = read_acquisitions(snapshots)               # checks, before the case is created
    adopt_acquisitions(case_dir, manifest, acquisitions)      # lock held, before the run's first event
    check_hashes(acquisitions, before_hashes)                 # once the evidence is hashed
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from toolkit.case import custody
from toolkit.case.store import save_manifest
from toolkit.errors import CaseError

ACQUISITION_MANIFEST = "acquisition.json"
ACQUISITION_FORMAT = "snapscope-acquisition/1"
ADOPTED_DIR = ("derived", "acquisitions")


def acquisition_dirs(paths) -> list[Path]:
    """The acquisition directories the evidence ``paths`` come from (each once, in order)."""
    found = []
    for path in paths:
        here = Path(path).resolve().parent
        for candidate in (here, here.parent):
            if (candidate / ACQUISITION_MANIFEST).is_file() and (candidate / custody.LOG_NAME).is_file():
                if candidate not in found:
                    found.append(candidate)
                break
    return found


def _read(acq_dir: Path) -> tuple[dict, list[dict]]:
    problems = custody.verify(acq_dir)
    if problems:
        raise CaseError(f"{acq_dir}: the acquisition's custody log does not verify: {problems[0]}")
    try:
        doc = json.loads((acq_dir / ACQUISITION_MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CaseError(f"{acq_dir / ACQUISITION_MANIFEST}: unreadable acquisition record ({exc})") from None
    if doc.get("format") != ACQUISITION_FORMAT:
        raise CaseError(f"{acq_dir / ACQUISITION_MANIFEST}: unknown acquisition format {doc.get('format')!r}")
    return doc, custody.read_events(acq_dir)


def _summary(acq_dir: Path, doc: dict, events: list[dict]) -> dict:
    """What the case keeps of an acquisition: enough to say how the evidence was taken."""
    files = {
        str((acq_dir / e["path"]).resolve()): e["sha256"]
        for e in events
        if e["action"] == "acquire.file" and (e.get("detail") or {}).get("complete")
    }
    domains = {
        name: {k: d.get(k) for k in ("status", "mode", "memory_format", "disk_mode", "consistency", "pause", "reason")}
        for name, d in (doc.get("domains") or {}).items()
    }
    return {
        "dir": str(acq_dir),
        "head": events[-1]["hash"],
        "records": len(events),
        "status": doc.get("status"),
        "reason": doc.get("reason"),
        "started": doc.get("started"),
        "ended": doc.get("ended"),
        "who": doc.get("who"),
        "libvirt": doc.get("libvirt"),
        "domains": domains,
        "files": files,
    }


def _refuse_unfinished(acq_dir: Path, doc: dict, path: Path) -> None:
    """CaseError when ``path`` (inside ``acq_dir``; the directory itself: every domain) belongs to a domain
    whose acquisition did not complete."""
    by_dir = {d.get("dir"): (name, d) for name, d in (doc.get("domains") or {}).items()}
    parts = path.relative_to(acq_dir).parts
    if not parts:
        covered = list(by_dir.values())
    else:  # a domain's directory or a file in it; the record's own files belong to none
        covered = [by_dir[parts[0]]] if parts[0] in by_dir else []
    for name, dom in covered:
        if dom.get("status") != "complete":
            raise CaseError(
                f"{acq_dir}: the acquisition of domain {name} is {dom.get('status')} ({dom.get('reason')}); "
                "its files are no evidence of one moment"
            )


def refuse_unfinished_inputs(paths) -> None:
    """Before discovery: an input inside an acquisition whose domain did not complete is refused by
    that name (discovery would otherwise look elsewhere for the files it never wrote).

    Example: ``refuse_unfinished_inputs([Path("evidence/web01-live")])``
    """
    for path in paths:
        path = Path(path).resolve()
        for candidate in (path, path.parent, path.parent.parent):
            if (candidate / ACQUISITION_MANIFEST).is_file():
                try:
                    doc = json.loads((candidate / ACQUISITION_MANIFEST).read_text())
                except (OSError, json.JSONDecodeError):
                    break  # not readable as one: adoption says so, naming it, once discovery found the evidence
                _refuse_unfinished(candidate, doc, path)
                break


def _check_snapshots(acq_dir: Path, doc: dict, snapshots: list[dict]) -> None:
    """Snapshots drawn from the acquisition: complete domains only, nothing read from outside it."""
    for snap in snapshots:
        paths = [Path(e["path"]).resolve() for e in snap["evidence"]]
        inside = [p for p in paths if acq_dir in p.parents]
        if not inside:
            continue
        for path in inside:
            _refuse_unfinished(acq_dir, doc, path)
        outside = [p for p in paths if acq_dir not in p.parents]
        if outside:
            raise CaseError(
                f"{outside[0]}: snapshot {snap['id']} from the acquisition {acq_dir} would read this file, which the "
                "acquisition did not capture (--disk none, read-only media); analyse its memory file on its own"
            )


def read_acquisitions(snapshots: list[dict]) -> list[dict]:
    """The acquisitions the snapshots' evidence comes from, each checked (see the module doc) and
    summarised; nothing is written. CaseError when one cannot be adopted."""
    found = []
    for acq_dir in acquisition_dirs(e["path"] for s in snapshots for e in s["evidence"]):
        doc, events = _read(acq_dir)
        if not events:
            raise CaseError(f"{acq_dir}: the acquisition's custody log is empty")
        _check_snapshots(acq_dir, doc, snapshots)
        found.append(_summary(acq_dir, doc, events))
    return found


def adopt_acquisitions(case_dir: Path, manifest: dict, acquisitions: list[dict]) -> None:
    """Continue (or keep) each acquisition's custody chain in the case and record it in the manifest.
    Call it with the case lock held, before the run logs anything."""
    case_dir = Path(case_dir)
    known = manifest.setdefault("acquisitions", {})
    for summary in acquisitions:
        if summary["head"] in known:
            continue
        acq_log = Path(summary["dir"]) / custody.LOG_NAME
        log = case_dir / custody.LOG_NAME
        if not log.exists() or log.stat().st_size == 0:
            shutil.copyfile(acq_log, log)  # the case's chain begins with the acquisition's
            how = "continued"
        else:
            copy = case_dir.joinpath(*ADOPTED_DIR, f"{summary['head'][:16]}.jsonl")
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(acq_log, copy)
            how = f"kept in {copy.relative_to(case_dir)}"
        custody.append_event(
            case_dir,
            action="acquisition.adopt",
            path=summary["dir"],
            detail={"head": summary["head"], "records": summary["records"], "status": summary["status"], "chain": how},
        )
        known[summary["head"]] = {k: v for k, v in summary.items() if k != "files"}
        save_manifest(case_dir, manifest)


def check_hashes(acquisitions: list[dict], hashes: dict[str, str]) -> None:
    """CaseError when an acquired file the run uses no longer has the sha256 it was written with."""
    for summary in acquisitions:
        for path, recorded in summary["files"].items():
            if path in hashes and hashes[path] != recorded:
                raise CaseError(
                    f"{path}: sha256 {hashes[path][:16]}... differs from {recorded[:16]}... recorded when it was "
                    f"acquired ({summary['dir']}); the evidence changed since"
                )


def verify_adopted(case_dir: Path) -> list[str]:
    """Problems with the acquisition logs a case keeps beside its own (empty: all intact and anchored)."""
    case_dir = Path(case_dir)
    anchors = {
        (e.get("detail") or {}).get("head") for e in custody.read_events(case_dir) if e["action"] == "acquisition.adopt"
    }
    problems = []
    for copy in sorted(case_dir.joinpath(*ADOPTED_DIR).glob("*.jsonl")):
        broken = [f"{copy.name}: {p}" for p in custody.verify_file(copy)]
        problems += broken
        if not broken:
            lines = copy.read_text().splitlines()
            head = json.loads(lines[-1])["hash"] if lines else None
            if head not in anchors:
                problems.append(f"{copy.name}: its last record is not the one the case adopted")
    return problems
