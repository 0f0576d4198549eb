#!/usr/bin/env python3
"""Issue 14's scale aims, measured on the 2 GiB and the 8 GiB Debian server guests, every memory format.

For each lab (default: the newest ``server-intrusion-*`` and ``server-scale-*`` under the lab root)
and each memory artefact of its plain-QEMU run (``memory.elf``, ``memory.kdump``, ``migration.qevm``):

1. **cold read**: the file's pages dropped from the page cache (``posix_fadvise DONTNEED``), then
   ``dd bs=16M`` of the whole file to /dev/null;
2. **analyze**: the file's pages dropped again, then
   ``snapscope analyze FILE --case FRESH --profile linux-triage`` (memory only: Volatility, YARA,
   tables, findings): wall seconds, peak anonymous RSS summed over the process tree (sampled every
   0.25 s; pages of the dump mapped from the page cache are not anonymous), and the bytes the case
   holds under ``derived/`` (what snapscope wrote beside the evidence);
3. **Volatility, ELF only**: the profile's Volatility plugins in one snapscope process vs one
   ``vol`` process per plugin (what a responder scripting ``vol`` does), warm: the same ISF for
   both, ``vol``'s cache filled by an untimed first run, the dump in the page cache; each side's
   wall time and peak RSS.

The aims of issue 14 are printed beside the figures: analyze ≤ 5× the cold read; time(8 GiB) /
time(2 GiB) ≤ 4; peak anonymous RSS ≤ 1.5 GiB and ≤ 1.25× the 2 GiB guest's; Volatility plugins
≥ 5× faster than ``vol``; ``derived/`` ≤ 5 % of guest RAM.

Usage::

    .venv/bin/python benchmarks/scale.py --out /tmp/scale.json
    .venv/bin/python benchmarks/scale.py --lab ~/.cache/snapscope/lab/server-scale-<key> --formats elf
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from analyze_vs_manual import REPO, SNAPSCOPE, load, timed  # noqa: E402
from vol_triage import SNAPSCOPE_RUN, VOL  # noqa: E402

from toolkit.engines.memory import symbols  # noqa: E402
from toolkit.profiles import load_profile  # noqa: E402

FORMATS = {"elf": "memory.elf", "kdump": "memory.kdump", "migration": "migration.qevm"}


def lab_root() -> Path:
    return Path(os.environ.get("SNAPSCOPE_LAB_DIR") or Path.home() / ".cache" / "snapscope" / "lab")


def newest(variant: str) -> Path | None:
    """The newest built lab of ``variant`` (server-<variant>-<16 hex digits>, with its ground truth)."""
    pattern = re.compile(rf"server-{re.escape(variant)}-[0-9a-f]{{16}}")
    found = [p for p in lab_root().glob(f"server-{variant}-*") if pattern.fullmatch(p.name)]
    found = sorted((p for p in found if (p / "ground_truth.json").exists()), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cold_read(path: Path) -> float:
    drop_from_page_cache(path)
    started = time.monotonic()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=16M"], check=True, capture_output=True)
    return time.monotonic() - started


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def analyze(dump: Path, work: Path, profile: str) -> dict:
    case = work / f"case-{dump.parent.parent.name}-{dump.stem}"
    shutil.rmtree(case, ignore_errors=True)
    drop_from_page_cache(dump)
    before = load()
    r = timed([SNAPSCOPE, "analyze", dump, "--case", case, "--profile", profile], stdout=case.with_suffix(".log"))
    out = {
        "seconds": round(r["seconds"], 1),
        "peak_anon_rss_mib": r["peak_anon_rss_mib"],
        "derived_bytes": du(case / "derived"),
        "case_bytes": du(case),
        "load_before": before,
    }
    shutil.rmtree(case, ignore_errors=True)
    return out


def volatility_side_by_side(image: Path, work: Path, profile: str) -> dict:
    """The profile's plugins: one snapscope process vs one ``vol`` per plugin, warm, with peak RSS."""
    plugins = [p["name"] for p in load_profile(profile)["memory"]["plugins"] if not p["name"].startswith("snapscope.")]
    vw = work / f"vol-{image.parent.parent.name}"
    shutil.rmtree(vw, ignore_errors=True)
    (vw / "isf").mkdir(parents=True)
    found = symbols.resolve_isf(image, cache_dir=vw / "symbols-cache")
    shutil.copy2(found["isf_path"], vw / "isf" / Path(found["isf_path"]).name)
    env = dict(os.environ, XDG_CACHE_HOME=str(vw / "xdg"), PYTHONPATH=str(REPO))
    (vw / "vol-cache").mkdir()

    def vol(plugin):
        cmd = [VOL, "-q", "--offline", "--cache-path", vw / "vol-cache", "-s", vw / "isf", "-f", image, "-r", "csv"]
        return timed([*cmd, plugin], env=env, check=False)

    vol("linux.lsmod.Lsmod")  # untimed: fills vol's cache (the warm-up a responder pays once)
    args = [image, profile, vw / "snapscope-cache", vw / "derived", vw / "isf"]
    timed([sys.executable, "-c", SNAPSCOPE_RUN, *args], env=env, cwd=REPO)  # untimed: snapscope's cache
    ours = timed([sys.executable, "-c", SNAPSCOPE_RUN, *args], env=env, cwd=REPO)
    theirs = {p: vol(p) for p in plugins}
    facts = json.loads(ours["stdout"].strip().splitlines()[-1])
    vol_seconds = sum(r["seconds"] for r in theirs.values())
    shutil.rmtree(vw, ignore_errors=True)
    return {
        "snapscope_seconds": round(ours["seconds"], 1),
        "snapscope_peak_rss_mib": ours["peak_rss_mib"],
        "snapscope_peak_anon_rss_mib": ours["peak_anon_rss_mib"],
        "snapscope_failed": facts["failed"],
        "snapscope_plugin_seconds": facts["plugin_seconds"],
        "vol_seconds": round(vol_seconds, 1),
        "vol_peak_rss_mib": max(r["peak_rss_mib"] for r in theirs.values()),
        "vol_failed": [p for p, r in theirs.items() if r["rc"]],
        "vol_plugin_seconds": {p: round(r["seconds"], 2) for p, r in theirs.items()},
        "ratio": round(vol_seconds / ours["seconds"], 2),
    }


def measure_lab(lab: Path, formats: list[str], work: Path, profile: str, with_vol: bool) -> dict:
    truth = json.loads((lab / "ground_truth.json").read_text())
    qemu = lab / "qemu"
    out = {"lab": lab.name, "ram_mib": truth["guest"]["ram_mib"], "formats": {}}
    for fmt in formats:
        dump = qemu / FORMATS[fmt]
        if not dump.exists():
            continue
        row = {"bytes": dump.stat().st_size, "cold_read_seconds": round(cold_read(dump), 2)}
        row["analyze"] = analyze(dump, work, profile)
        row["analyze_over_cold_read"] = round(row["analyze"]["seconds"] / row["cold_read_seconds"], 1)
        row["derived_percent_of_ram"] = round(100 * row["analyze"]["derived_bytes"] / (out["ram_mib"] << 20), 3)
        out["formats"][fmt] = row
        print(f"{lab.name} {fmt}: {json.dumps(row)}", file=sys.stderr, flush=True)
    if with_vol and (qemu / FORMATS["elf"]).exists():
        out["volatility"] = volatility_side_by_side(qemu / FORMATS["elf"], work, profile)
        print(f"{lab.name} volatility: {json.dumps(out['volatility'])}", file=sys.stderr, flush=True)
    return out


def aims(small: dict | None, large: dict) -> list[str]:
    """The issue's aims against the figures, one line each."""
    lines = []
    for fmt, row in large["formats"].items():
        a = row["analyze"]
        lines.append(f"{fmt}: analyze {a['seconds']} s = {row['analyze_over_cold_read']}x cold read (aim <= 5)")
        lines.append(f"{fmt}: peak anonymous RSS {a['peak_anon_rss_mib']} MiB (aim <= 1536)")
        lines.append(f"{fmt}: derived/ {row['derived_percent_of_ram']} % of RAM (aim <= 5)")
        if small and fmt in small["formats"]:
            s = small["formats"][fmt]["analyze"]
            lines.append(f"{fmt}: time(8)/time(2) = {a['seconds'] / s['seconds']:.2f} (aim <= 4)")
            lines.append(
                f"{fmt}: anon RSS(8)/anon RSS(2) = {a['peak_anon_rss_mib'] / s['peak_anon_rss_mib']:.2f} (aim <= 1.25)"
            )
    if "volatility" in large:
        v = large["volatility"]
        lines.append(
            f"vol/snapscope = {v['ratio']} (aim >= 5); peak RSS vol {v['vol_peak_rss_mib']} MiB, "
            f"snapscope {v['snapscope_peak_rss_mib']} MiB"
        )
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lab", type=Path, action="append", help="a lab dir (repeatable; default: newest 2 and 8 GiB)")
    ap.add_argument("--formats", default="elf,kdump,migration", help="comma-separated: elf, kdump, migration")
    ap.add_argument("--profile", default="linux-triage")
    ap.add_argument("--no-vol", action="store_true", help="skip the vol side-by-side")
    ap.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    # every child (snapscope, the in-process run) imports this checkout's toolkit, not an installed one
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    labs = args.lab or [p for p in (newest("intrusion"), newest("scale")) if p]
    if not labs:
        raise SystemExit("no server lab found: build one with fixtures/build_server_lab.py --variant scale")
    formats = [f for f in args.formats.split(",") if f]
    if unknown := set(formats) - set(FORMATS):
        raise SystemExit(f"unknown format(s): {', '.join(sorted(unknown))}")
    work = Path(tempfile.mkdtemp(prefix="snapscope-scale-"))
    try:
        results = [measure_lab(lab, formats, work, args.profile, not args.no_vol) for lab in labs]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results.sort(key=lambda r: r["ram_mib"])
    small, large = (results[0], results[-1]) if len(results) > 1 else (None, results[-1])
    report = {"results": results, "aims": aims(small, large)}
    print(json.dumps(report, indent=1))
    print("\n".join(report["aims"]), file=sys.stderr)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
