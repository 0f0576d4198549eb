#!/usr/bin/env python3
"""Linux triage in one snapscope process vs the same plugins one by one with `vol`.

Both sides use the same memory image, the same ISF (``vol -s DIR``) and their
own cache directories (``vol --cache-path``, XDG_CACHE_HOME pointed into the
benchmark dir so nothing lands in ~/.cache). Reported:

- warm: caches filled; snapscope = one process running the whole profile,
  vol = one process per plugin (what a responder scripting `vol` does);
- cold: the first run with an empty cache, separately (snapscope: the whole
  profile; vol: its first plugin only, since every later plugin is warm).

Usage::

    .venv/bin/python benchmarks/vol_triage.py                 # the lab's qemu/memory.elf
    .venv/bin/python benchmarks/vol_triage.py --image dump.elf --out bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from toolkit.engines.memory import symbols  # noqa: E402
from toolkit.profiles import load_profile  # noqa: E402

VOL = Path(sys.executable).with_name("vol")

# One snapscope process: import, open the image, run every plugin, build tables.
SNAPSCOPE_RUN = """
import json, sys, time
t0 = time.monotonic()
from pathlib import Path
from toolkit.engines import EngineContext, memory
from toolkit.profiles import load_profile
profile = load_profile(sys.argv[2])
profile["memory"]["plugins"] = [p for p in profile["memory"]["plugins"] if not p["name"].startswith("snapscope.")]
tables = memory.run({"id": "bench", "memory": sys.argv[1]},
                    EngineContext(snapshot_id="bench", cache_dir=Path(sys.argv[3]), derived_dir=Path(sys.argv[4]),
                                  profile=profile, symbols=(Path(sys.argv[5]),)))
runs = tables["memory/plugin_runs"]
print(json.dumps({"engine_seconds": time.monotonic() - t0, "failed": runs[runs.status != "ok"].plugin.tolist(),
                  "plugin_seconds": dict(zip(runs.plugin, runs.seconds.round(2)))}))
"""


def default_image() -> Path:
    sys.path.insert(0, str(REPO / "fixtures"))
    from build_lab import build_lab

    return Path(build_lab()) / "qemu" / "memory.elf"


def run_snapscope(image, profile, cache, derived, isf_dir, env):
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", SNAPSCOPE_RUN, str(image), profile, str(cache), str(derived), str(isf_dir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    wall = time.monotonic() - started
    if done.returncode:
        raise SystemExit(f"snapscope run failed:\n{done.stderr[-3000:]}")
    return {"wall_seconds": wall, **json.loads(done.stdout.strip().splitlines()[-1])}


def run_vol(image, plugin, isf_dir, cache, env):
    cache.mkdir(parents=True, exist_ok=True)  # vol --cache-path expects an existing directory
    started = time.monotonic()
    done = subprocess.run(
        [
            str(VOL),
            "-q",
            "--offline",
            "--cache-path",
            str(cache),
            "-s",
            str(isf_dir),
            "-f",
            str(image),
            "-r",
            "csv",
            plugin,
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    return {
        "plugin": plugin,
        "seconds": time.monotonic() - started,
        "ok": done.returncode == 0,
        "rows": max(0, len(done.stdout.splitlines()) - 1),
        "error": done.stderr[-300:] if done.returncode else None,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, help="Linux memory image (default: the lab's qemu/memory.elf)")
    parser.add_argument("--profile", default="linux-triage")
    parser.add_argument("--work", type=Path, help="benchmark directory (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here too")
    args = parser.parse_args(argv)
    image = (args.image or default_image()).resolve()
    work = Path(args.work or tempfile.mkdtemp(prefix="vol-triage-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, XDG_CACHE_HOME=str(work / "xdg"), PYTHONPATH=str(REPO))
    plugins = [
        p["name"] for p in load_profile(args.profile)["memory"]["plugins"] if not p["name"].startswith("snapscope.")
    ]

    # The same ISF for both sides, resolved (or built) once and outside the timings.
    found = symbols.resolve_isf(image, cache_dir=work / "symbols-cache")
    isf_dir = work / "isf"
    isf_dir.mkdir(exist_ok=True)
    shutil.copy2(found["isf_path"], isf_dir / Path(found["isf_path"]).name)
    print(
        f"image {image} ({image.stat().st_size / 2**20:.0f} MiB), ISF {found['origin']}, {len(plugins)} plugins",
        file=sys.stderr,
    )

    snap_cache, vol_cache = work / "snapscope-cache", work / "vol-cache"
    for d in (snap_cache, vol_cache, work / "derived"):
        shutil.rmtree(d, ignore_errors=True)
    cold_snapscope = run_snapscope(image, args.profile, snap_cache, work / "derived", isf_dir, env)
    cold_vol = run_vol(image, plugins[0], isf_dir, vol_cache, env)
    if not cold_vol["ok"]:
        raise SystemExit(f"vol {plugins[0]} failed:\n{cold_vol['error']}")
    print(
        f"cold: snapscope {cold_snapscope['wall_seconds']:.1f} s (whole profile); "
        f"vol {cold_vol['seconds']:.1f} s ({plugins[0]} only)",
        file=sys.stderr,
    )

    warm_snapscope = run_snapscope(image, args.profile, snap_cache, work / "derived", isf_dir, env)
    warm_vol = [run_vol(image, p, isf_dir, vol_cache, env) for p in plugins]
    vol_total = sum(r["seconds"] for r in warm_vol)
    result = {
        "image": str(image),
        "image_mib": round(image.stat().st_size / 2**20),
        "profile": args.profile,
        "plugins": plugins,
        "cpus": os.cpu_count(),
        "load_avg_start": os.getloadavg(),
        "cold": {
            "snapscope_profile_seconds": round(cold_snapscope["wall_seconds"], 1),
            "vol_first_plugin_seconds": round(cold_vol["seconds"], 1),
        },
        "warm": {
            "snapscope_seconds": round(warm_snapscope["wall_seconds"], 1),
            "snapscope_plugin_seconds": warm_snapscope["plugin_seconds"],
            "vol_seconds": round(vol_total, 1),
            "vol_per_plugin": {r["plugin"]: round(r["seconds"], 1) for r in warm_vol},
            "ratio_vol_over_snapscope": round(vol_total / warm_snapscope["wall_seconds"], 2),
        },
        "failures": {"snapscope": warm_snapscope["failed"], "vol": [r["plugin"] for r in warm_vol if not r["ok"]]},
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
