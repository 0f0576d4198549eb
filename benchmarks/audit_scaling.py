#!/usr/bin/env python3
"""Audit scaling (issue 8): `audit` of N linked clones vs `snapscope analyze` run N times.

For each N (default 1, 3, 6) the script runs, in the same run and one after
the other (so both sides see the same machine load):

* ``toolkit.audit.audit(dirs, fresh_case, jobs=J)`` in one subprocess;
* ``snapscope analyze DIR --case fresh_case`` once per VM dir, N subprocesses in
  sequence (all N into the same case, as an analyst would do it by hand, so both
  sides share the per-case caches the same way).

Measured per side: wall time; bytes read by the whole process tree —
``read_bytes`` (storage reads, from wait4()'s ru_inblock x 512, which includes
every waited-for descendant) and ``rchar`` (bytes passed through read()-family
syscalls: the root process's final /proc/<pid>/io, captured by an atexit hook
from a generated sitecustomize.py; Linux folds each reaped child's counters
into its parent's, so this covers the whole tree once every descendant has
been waited for — audit's pool workers are joined before it returns;
per-process finals and psutil samples are kept in the JSON); CPU user+sys of the
tree; load average before each run.

Page cache: with ``--cache cold`` (default) the fleet's evidence files (every
VM's memory.elf, disk.qcow2, net.pcap and the shared base.qcow2) are evicted
with posix_fadvise(DONTNEED) before each side, so read_bytes shows what a cold
audit actually pulls from storage (the shared base once vs once per analyze);
only the evidence is evicted, nothing else on the machine. ``--cache warm``
leaves everything cached (read_bytes then reads ~0; rchar still counts).
Reads through mmap are in read_bytes (cold) but never in rchar.

Evidence: by default a fleet of 7 is built with ``build_fleet(count=7)``
(vm01..vm06 healthy, vm07 corrupt) under a temporary root in /tmp, reusing
the main cache's kernel download, and deleted at the end (``--keep`` keeps
it). ``--fleet DIR`` uses an existing fleet instead; if it has fewer healthy
VMs than the largest N, the missing ones are *hard-linked copies* of healthy
VMs (a directory vmNNdupK/ of hard links to that VM's files; discovery does
not follow symlinks). Such a copy is a distinct snapshot to discovery and
analysis (its own id, fully analysed, its files hashed under their own paths),
like a real distinct clone. Every run is given the fleet directory as
``--search-path``: the clones name ``../base.qcow2``, outside the VM
directories given, which snapscope refuses to read otherwise.

After the timed runs, ``page_overlap`` measures what cross-clone page
sharing could save in memory: per clone, how many of its 4 KiB guest pages
are all zero and how many non-zero pages have content already seen in an
earlier clone, and what hashing every page costs (the price of skipping the
shared ones), next to the clone's whole-memory passes (psscan and physical
YARA) from the audit's own plugin_runs/yara timings.

Usage::

    python benchmarks/audit_scaling.py                   # build a 7-VM fleet in /tmp, N = 1 3 6, cold cache
    python benchmarks/audit_scaling.py --fleet ~/.cache/snapscope/lab/fleet-<key> --cache warm
    python benchmarks/audit_scaling.py --counts 1 2 --jobs 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

SITECUSTOMIZE = r"""
import atexit, os
_dir = os.environ.get("SNAPSCOPE_BENCH_IODIR")
def _dump():
    try:
        with open("/proc/self/io") as f:
            data = f.read()
        with open(os.path.join(_dir, f"{os.getpid()}.io"), "w") as f:
            f.write(data)
    except Exception:
        pass
if _dir:
    atexit.register(_dump)
"""


def _parse_io(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if v.strip().isdigit():
            out[k.strip()] = int(v)
    return out


def measure(argv: list[str], *, env_extra: dict | None = None, cwd=None) -> dict:
    """Run argv; return wall, tree read_bytes (rusage), tree rchar/read_bytes (per-process), cpu, rc."""
    iodir = Path(tempfile.mkdtemp(prefix="snapscope-bench-io-"))
    sitedir = iodir / "site"
    sitedir.mkdir()
    (sitedir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(
        os.environ,
        SNAPSCOPE_BENCH_IODIR=str(iodir),
        PYTHONPATH=os.pathsep.join(filter(None, [str(sitedir), os.environ.get("PYTHONPATH")])),
    )
    env.update(env_extra or {})
    load = os.getloadavg()
    sampled: dict[int, dict] = {}
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stop = threading.Event()

    def sample():
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not stop.is_set():
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.Error:
                procs = []
            for p in procs:
                try:
                    c = p.io_counters()
                    sampled[p.pid] = {"rchar": c.read_chars, "read_bytes": c.read_bytes, "name": p.name()}
                except psutil.Error:
                    pass
            stop.wait(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out_chunks, err_chunks = [], []
    t_out = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True)
    t_err = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)
    t_out.start()
    t_err.start()
    _pid, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    stop.set()
    th.join()
    t_out.join()
    t_err.join()
    final = {int(p.stem): _parse_io(p.read_text()) for p in iodir.glob("*.io")}
    per_pid = {}
    for pid in set(sampled) | set(final):
        if pid in final:
            per_pid[pid] = {
                "rchar": final[pid].get("rchar", 0),
                "read_bytes": final[pid].get("read_bytes", 0),
                "exact": True,
            }
        else:
            per_pid[pid] = {**{k: sampled[pid][k] for k in ("rchar", "read_bytes")}, "exact": False}
    shutil.rmtree(iodir, ignore_errors=True)
    return {
        "argv": argv,
        "rc": proc.returncode,
        "wall": wall,
        "read_bytes": ru.ru_inblock * 512,  # whole tree (waited-for descendants included)
        # Linux adds a reaped child's I/O counters to its parent's (wait_task_zombie), so the root's
        # final /proc/<pid>/io already holds every descendant it (transitively) reaped: that is the
        # tree's rchar. Summing all processes would count reaped children twice.
        "rchar": (final.get(proc.pid) or sampled.get(proc.pid) or {}).get("rchar", 0),
        "rchar_root_is_final": proc.pid in final,
        "rchar_per_process": {pid: v["rchar"] for pid, v in per_pid.items()},
        "processes": len(per_pid),
        "cpu": ru.ru_utime + ru.ru_stime,
        "maxrss_mib": ru.ru_maxrss / 1024,
        "load_before": load,
        "stdout": (out_chunks[0] if out_chunks else b"").decode(errors="replace")[-4000:],
        "stderr": (err_chunks[0] if err_chunks else b"").decode(errors="replace")[-4000:],
    }


def evict(paths) -> None:
    """Drop these files' pages from the page cache (only these files)."""
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


AUDIT_CODE = """
import json, sys
from pathlib import Path
from toolkit.audit import audit
dirs, case, jobs, fleet = json.loads(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = audit([Path(d) for d in dirs], case, jobs=jobs, search_paths=[fleet])
print("AUDIT-RESULT " + json.dumps(s["fleet"][["vm", "status"]].to_dict("records")))
"""


def run_audit(dirs, case, jobs, fleet) -> dict:
    cmd = [sys.executable, "-c", AUDIT_CODE, json.dumps([str(d) for d in dirs]), str(case), str(jobs), str(fleet)]
    r = measure(cmd, cwd=REPO)
    line = next((ln for ln in r["stdout"].splitlines() if ln.startswith("AUDIT-RESULT ")), None)
    rows = json.loads(line[len("AUDIT-RESULT ") :]) if line else []
    r["analysed"] = sum(row["status"] == "analysed" for row in rows)
    r["fleet_rows"] = rows
    return r


def snapscope_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("snapscope")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "toolkit.cli"]


def run_analyze_each(dirs, case, fleet) -> dict:
    total = {"wall": 0.0, "read_bytes": 0, "rchar": 0, "cpu": 0.0, "rc": 0, "runs": []}
    for d in dirs:
        r = measure(snapscope_cmd() + ["analyze", str(d), "--case", str(case), "--search-path", str(fleet)], cwd=REPO)
        total["runs"].append({k: r[k] for k in ("wall", "read_bytes", "rchar", "cpu", "rc", "load_before")})
        for k in ("wall", "read_bytes", "rchar", "cpu"):
            total[k] += r[k]
        total["rc"] = total["rc"] or r["rc"]
        if r["rc"]:
            total["stderr"] = r["stderr"]
    total["load_before"] = total["runs"][0]["load_before"] if total["runs"] else None
    return total


def healthy_vms(fleet: Path) -> list[Path]:
    truth = json.loads((fleet / "fleet_truth.json").read_text())
    return [fleet / v["dir"] for v in truth["vms"] if v["scenario"] != "corrupt"]


def vm_dirs(fleet: Path, n_max: int, scratch: Path) -> tuple[list[Path], list[str]]:
    """n_max analysable VM dirs; hard-linked copies of healthy VMs fill any shortfall."""
    good = healthy_vms(fleet)
    notes = []
    dirs = list(good[:n_max])
    k = 0
    while len(dirs) < n_max:
        src = good[k % len(good)]
        dup = scratch / "dups" / fleet.name  # "../base.qcow2" is found through --search-path FLEET
        dup.mkdir(parents=True, exist_ok=True)
        d = dup / f"{src.name}dup{k + 1}"
        d.mkdir(exist_ok=True)
        for f in src.iterdir():
            if f.is_file() and not (d / f.name).exists():
                try:
                    os.link(f, d / f.name)
                except OSError:  # another filesystem: a copy reads the same
                    shutil.copyfile(f, d / f.name)
        dirs.append(d)
        notes.append(f"{d.name}: hard-linked copy of {src.name} (its own paths: hashed again, like a real clone)")
        k += 1
    return dirs, notes


def evidence_files(dirs) -> list[str]:
    files = set()
    for d in dirs:
        for name in ("memory.elf", "disk.qcow2", "net.pcap"):
            if (d / name).exists():
                files.add(str((d / name).resolve()))
        base = (d / "disk.qcow2").resolve().parent.parent / "base.qcow2"
        if base.exists():
            files.add(str(base.resolve()))
    return sorted(files)


def build_temp_fleet(count: int, scratch: Path, progress) -> Path:
    from fixtures.build_lab import build_fleet  # noqa: PLC0415

    root = scratch / "fleetroot"
    root.mkdir(parents=True, exist_ok=True)
    default = Path(os.environ.get("SNAPSCOPE_LAB_DIR") or "~/.cache/snapscope/lab").expanduser() / "downloads"
    if default.is_dir() and not (root / "downloads").exists():
        (root / "downloads").symlink_to(default)  # reuse the kernel download, read-only once complete
    return build_fleet(out_root=root, progress=progress, count=count)


def plugin_seconds(case_dir: Path) -> dict:
    """Mean seconds per Volatility plugin over the case's snapshots (where the memory time goes)."""
    try:
        from toolkit.case import Case

        runs = Case.open(case_dir).table("memory/plugin_runs")
    except Exception:
        return {}
    return {k: round(float(v), 2) for k, v in runs.groupby("plugin")["seconds"].mean().items()}


def page_overlap(dirs) -> list[dict]:
    """Per clone: 4 KiB pages, zero pages, non-zero pages whose content an earlier clone had, hashing seconds."""
    import hashlib

    from toolkit.memory import open_image

    zero = hashlib.blake2b(bytes(4096), digest_size=16).digest()
    seen: set[bytes] = set()
    rows = []
    for d in dirs:
        started = time.process_time()
        pages = zeros = shared = 0
        mine = set()
        with open_image(str(d / "memory.elf")) as img:
            for gpa, length in img.runs:
                for off in range(0, length, 1 << 20):
                    buf = img.read(gpa + off, min(1 << 20, length - off))
                    for i in range(0, len(buf), 4096):
                        h = hashlib.blake2b(buf[i : i + 4096], digest_size=16).digest()
                        pages += 1
                        if h == zero:
                            zeros += 1
                        elif h in seen:
                            shared += 1
                        mine.add(h)
        seen |= mine
        rows.append(
            {
                "vm": d.name,
                "pages": pages,
                "zero": zeros,
                "nonzero_shared": shared,
                "nonzero_new": pages - zeros - shared,
                "hash_cpu_s": round(time.process_time() - started, 2),
            }
        )
    return rows


def fmt_bytes(n) -> str:
    return f"{n / 1e6:8.1f} MB"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fleet", type=Path, help="existing fleet dir (default: build a 7-VM fleet under /tmp)")
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 3, 6])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cache", choices=["cold", "warm"], default="cold")
    ap.add_argument("--scratch", type=Path, help="work dir (default: a new dir in /tmp, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir (built fleet, cases)")
    ap.add_argument("--json", type=Path, help="also write all measurements here")
    args = ap.parse_args(argv)
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="snapscope-audit-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    def progress(msg):
        print(f"[{time.time() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    try:
        n_max = max(args.counts)
        if args.fleet:
            fleet = args.fleet.expanduser().resolve()
        else:
            progress(f"building a fleet of {n_max + 1} under {scratch}")
            fleet = build_temp_fleet(n_max + 1, scratch, progress)
        dirs, notes = vm_dirs(fleet, n_max, scratch)
        for n in notes:
            progress(n)
        progress("warm-up analyze (ISF cache, imports)")
        warm = measure(
            snapscope_cmd()
            + ["analyze", str(dirs[0]), "--case", str(scratch / "case-warmup"), "--search-path", str(fleet)],
            cwd=REPO,
        )
        if warm["rc"]:
            raise SystemExit(f"warm-up analyze failed:\n{warm['stderr']}")
        shutil.rmtree(scratch / "case-warmup", ignore_errors=True)
        results = []
        for n in args.counts:
            sel = dirs[:n]
            files = evidence_files(sel)
            if args.cache == "cold":
                evict(files)
            progress(f"N={n}: audit (jobs={args.jobs})")
            a = run_audit(sel, scratch / f"case-audit-{n}", args.jobs, fleet)
            if a["rc"] or a["analysed"] != n:
                progress(f"audit N={n}: rc={a['rc']} analysed={a['analysed']} rows={a['fleet_rows']}\n{a['stderr']}")
            if args.cache == "cold":
                evict(files)
            progress(f"N={n}: analyze x{n}")
            b = run_analyze_each(sel, scratch / f"case-analyze-{n}", fleet)
            if b["rc"]:
                progress(f"analyze N={n} failed: {b.get('stderr')}")
            a["plugin_seconds"] = plugin_seconds(scratch / f"case-audit-{n}")
            results.append({"n": n, "audit": a, "analyze": b})
            shutil.rmtree(scratch / f"case-audit-{n}", ignore_errors=True)
            shutil.rmtree(scratch / f"case-analyze-{n}", ignore_errors=True)
            progress(f"N={n}: audit {a['wall']:.1f}s, analyze x{n} {b['wall']:.1f}s")
        base = results[0]["audit"]["wall"] if results and results[0]["n"] == 1 else None
        print(f"\nfleet: {fleet}  cache: {args.cache}  jobs: {args.jobs}  cpus: {os.cpu_count()}")
        print(
            "N | audit s | audit read_bytes | audit rchar | audit cpu s | N×analyze s | N×analyze read_bytes | "
            "N×analyze rchar | N×analyze cpu s | audit/N×analyze | audit(N)/audit(1) | load1 before"
        )
        print("--|---|---|---|---|---|---|---|---|---|---|---")
        for r in results:
            a, b = r["audit"], r["analyze"]
            ratio = f"{a['wall'] / base:.2f}x" if base else "-"
            print(
                f"{r['n']} | {a['wall']:.1f} | {fmt_bytes(a['read_bytes'])} | {fmt_bytes(a['rchar'])} | "
                f"{a['cpu']:.1f} | "
                f"{b['wall']:.1f} | {fmt_bytes(b['read_bytes'])} | {fmt_bytes(b['rchar'])} | {b['cpu']:.1f} | "
                f"{a['wall'] / b['wall']:.2f} | {ratio} | {a['load_before'][0]:.2f} / {b['load_before'][0]:.2f}"
            )
        for r in results:
            if not r["audit"]["rchar_root_is_final"]:
                print(f"  N={r['n']}: the audit root's final /proc io was not captured: rchar is a sample")
        print(f"load average at end: {os.getloadavg()}")
        if results:
            print(
                f"\nmean seconds per plugin and snapshot, audit N={results[-1]['n']}:",
                json.dumps(results[-1]["audit"].get("plugin_seconds", {})),
            )
        overlap = page_overlap(dirs)
        print("\nVM | 4 KiB pages | zero | non-zero seen in an earlier clone | non-zero new | hashing CPU s")
        print("--|---|---|---|---|---")
        for r in overlap:
            print(
                f"{r['vm']} | {r['pages']} | {r['zero']} | {r['nonzero_shared']} | {r['nonzero_new']} | "
                f"{r['hash_cpu_s']}"
            )
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "fleet": str(fleet),
                        "cache": args.cache,
                        "jobs": args.jobs,
                        "notes": notes,
                        "results": results,
                        "page_overlap": overlap,
                    },
                    indent=1,
                    default=str,
                )
            )
    finally:
        if not args.keep and not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
