#!/usr/bin/env python3
"""`snapscope analyze` end to end vs the same triage done by hand, one tool at a time.

Input: the lab's plain-QEMU snapshot (``qemu/memory.elf``, ``qemu/disk.qcow2``
with ``base.qcow2`` beside it, ``qemu/net.pcap``) and a profile (default
``linux-triage``). Both sides run in this one script, back to back.

snapscope side::

    snapscope analyze memory.elf disk.qcow2 net.pcap --case <fresh dir> --profile linux-triage

timed as one process, end to end. Note: ``disk.qcow2`` carries an internal
snapshot with VM state (``lab-savevm``), so this command analyses *two*
snapshots (memory.elf + disk, and the savevm state + disk). The script
therefore also times an **equal-work** run: the same command on a copy of
the disk whose internal snapshot was deleted (``qemu-img snapshot -d``; the
active disk state is unchanged), which analyses exactly one snapshot, like
the manual side.

manual side (what a responder does with the stock tools, one process each):

1. ``sha256sum`` of the evidence files (custody; snapscope hashes them before and after);
2. ``vol -f memory.elf -s <ISF dir snapscope used> --cache-path <cache warmed by one
   prior vol run> -r json <plugin>`` per Volatility plugin of the profile;
3. ``target-query -q -j -f <fn> disk.qcow2`` per dissect function of the profile
   (group names expanded as ``toolkit/engines/disk_tables.py`` does);
4. one dissect-API process (as ``target-fs walk`` + ``cp`` would do, without a
   tool start per path): list every file with its stat, copy out the files
   snapscope hashes and scans (regular files that are executable or under the
   profile's ``disk.hash.paths``, size <= ``disk.hash.max_size``);
5. ``sha256sum`` of the copied files;
6. a dpkt script: flows, DNS, HTTP request lines, TLS SNI, TCP payloads per
   direction written out;
7. the ``yara`` CLI (Debian's yara 4.x; rules/yara/*.yar, one namespace per
   file) over the memory dump;
8. the ``yara`` CLI over the copied files and the TCP payloads.

The ISF cache (``$SNAPSCOPE_CACHE`` or ~/.cache/snapscope, ``symbols/``) is
warm for the timed runs (if it was empty, a first snapscope run fills it and
is reported as cold). ``--cold`` also times a snapscope run with an empty
``SNAPSCOPE_CACHE`` (ISF built from the dump) and reports the vol warm-up run
(first plugin, empty vol cache). Everything temporary lives under one
directory in /tmp, removed at the end unless ``--keep``.

Usage::

    .venv/bin/python benchmarks/analyze_vs_manual.py                  # newest lab, warm
    .venv/bin/python benchmarks/analyze_vs_manual.py --cold --out /tmp/bench.json
    .venv/bin/python benchmarks/analyze_vs_manual.py --lab ~/.cache/snapscope/lab/<key> --no-equal-work
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

from toolkit.engines.disk.functions import expand_functions  # noqa: E402
from toolkit.engines.yara.rules import DEFAULT_RULES_DIR  # noqa: E402
from toolkit.profiles import load_profile  # noqa: E402

BIN = Path(sys.executable).parent
SNAPSCOPE, VOL, TARGET_QUERY = BIN / "snapscope", BIN / "vol", BIN / "target-query"
PY = sys.executable

# Step 4: list every file (stat) and copy out the ones snapscope hashes/scans.
# Stock dissect API only; argv: disk, out_dir, listing.jsonl, max_size, path prefixes...
EXTRACT = r"""
import fnmatch, json, stat, sys
from pathlib import Path
from dissect.target import Target
disk, out, listing, max_size, prefixes = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5:]
globs = [p if any(c in p for c in "*?[") else p.rstrip("/") + "/*" for p in prefixes]
t = Target.open(disk)
fs = t.fs
copied = listed = nbytes = 0
with open(listing, "w") as lst:
    stack, seen = ["/"], set()
    while stack:
        d = stack.pop()
        try:
            entries = list(fs.get(d).scandir())
        except Exception as e:
            continue
        for e in entries:
            p = d.rstrip("/") + "/" + e.name
            if p.startswith(("/proc", "/sys", "/$fs$")):
                continue
            try:
                st = e.get().lstat()
            except Exception:
                continue
            listed += 1
            lst.write(json.dumps({"path": p, "mode": st.st_mode, "size": st.st_size, "uid": st.st_uid,
                                  "gid": st.st_gid, "ino": st.st_ino, "mtime": st.st_mtime,
                                  "ctime": st.st_ctime, "atime": st.st_atime}) + "\n")
            if stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    stack.append(p)
            elif stat.S_ISREG(st.st_mode) and st.st_size <= max_size and (
                    st.st_mode & 0o111 or any(fnmatch.fnmatchcase(p, g) for g in globs)):
                dst = out / p.lstrip("/")
                dst.parent.mkdir(parents=True, exist_ok=True)
                with e.get().open() as src, open(dst, "wb") as fh:
                    while chunk := src.read(1 << 20):
                        fh.write(chunk)
                copied += 1
                nbytes += st.st_size
print(json.dumps({"listed": listed, "copied": copied, "bytes": nbytes}))
"""

# Step 6: flows, DNS, HTTP, TLS SNI with dpkt; TCP payload per direction to files. argv: pcap, out_dir
PCAP = r"""
import collections, json, socket, sys
from pathlib import Path
import dpkt
pcap, out = sys.argv[1], Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
flows = collections.OrderedDict()
payload = collections.defaultdict(dict)   # (flow, dir) -> {seq: bytes}
dns, http, sni = [], [], []
def ip(a):
    return socket.inet_ntop(socket.AF_INET6 if len(a) == 16 else socket.AF_INET, a)
with open(pcap, "rb") as fh:
    try:
        reader = dpkt.pcap.Reader(fh)
    except ValueError:
        fh.seek(0)
        reader = dpkt.pcapng.Reader(fh)
    for ts, buf in reader:
        try:
            eth = dpkt.ethernet.Ethernet(buf)
        except Exception:
            continue
        pkt = eth.data
        if not isinstance(pkt, (dpkt.ip.IP, dpkt.ip6.IP6)):
            continue
        l4 = pkt.data
        if isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP)):
            proto = "tcp" if isinstance(l4, dpkt.tcp.TCP) else "udp"
            a, b = (ip(pkt.src), l4.sport), (ip(pkt.dst), l4.dport)
        else:   # ICMP, ICMPv6, ...: one flow per protocol and address pair
            proto = type(l4).__name__.lower() if not isinstance(l4, bytes) else f"ip-proto-{getattr(pkt, 'p', None)}"
            a, b = (ip(pkt.src), None), (ip(pkt.dst), None)
        key = (proto,) + tuple(sorted([a, b], key=str))
        f = flows.get(key)
        if f is None:
            f = flows[key] = {"proto": proto, "src": a, "dst": b, "first": ts, "last": ts, "packets": 0, "bytes": 0}
        f["last"], f["packets"] = ts, f["packets"] + 1
        if proto not in ("tcp", "udp"):
            continue
        f["bytes"] += len(l4.data)
        direction = "c2s" if a == f["src"] else "s2c"
        if proto == "tcp" and l4.data:
            payload[(list(flows).index(key), direction)].setdefault(l4.seq, bytes(l4.data))
            data = bytes(l4.data)
            if data[:4] in (b"GET ", b"POST", b"HEAD", b"PUT ") :
                http.append({"ts": ts, "flow": f["src"], "line": data.split(b"\r\n", 1)[0].decode("latin-1")})
            if data[:1] == b"\x16" and len(data) > 5:
                try:
                    for rec in dpkt.ssl.tls_multi_factory(data)[0]:
                        hs = dpkt.ssl.TLSHandshake(rec.data)
                        if isinstance(hs.data, dpkt.ssl.TLSClientHello):
                            for ext_type, ext in hs.data.extensions:
                                if ext_type == 0:
                                    sni.append({"ts": ts, "flow": f["src"], "sni": ext[5:].decode("latin-1")})
                except Exception:
                    pass
        if proto == "udp" and 53 in (l4.sport, l4.dport):
            try:
                m = dpkt.dns.DNS(l4.data)
                dns.append({"ts": ts, "qr": m.qr, "names": [q.name for q in m.qd]})
            except Exception:
                pass
for (fi, direction), segs in payload.items():
    (out / f"flow{fi:05d}.{direction}.bin").write_bytes(b"".join(segs[s] for s in sorted(segs)))
(out.parent / "flows.json").write_text(json.dumps({"flows": list(flows.values()), "dns": dns, "http": http,
                                                   "tls_sni": sni}, default=str))
print(json.dumps({"flows": len(flows), "dns": len(dns), "http": len(http), "tls_sni": len(sni),
                  "stream_files": len(payload)}))
"""


def newest_lab() -> Path:
    root = Path(os.environ.get("SNAPSCOPE_LAB_DIR") or Path.home() / ".cache" / "snapscope" / "lab")
    labs = [
        d
        for d in root.iterdir()
        if d.is_dir()
        and not d.name.startswith((".", "fleet-"))
        and (d / "ground_truth.json").is_file()
        and (d / "qemu" / "memory.elf").is_file()
    ]
    if not labs:
        raise SystemExit(f"no lab under {root}: run `python fixtures/build_lab.py` first")
    return max(labs, key=lambda d: (d / "ground_truth.json").stat().st_mtime)


def snapscope_cache(env=None) -> Path:
    env = env if env is not None else os.environ
    return Path(env.get("SNAPSCOPE_CACHE") or Path.home() / ".cache" / "snapscope").expanduser()


def isf_files(cache: Path) -> list[Path]:
    return sorted((cache / "symbols").rglob("*.json*")) if (cache / "symbols").is_dir() else []


def load() -> tuple[float, float, float]:
    return tuple(round(x, 2) for x in os.getloadavg())


def tree_rss(root: int) -> tuple[int, int]:
    """(anonymous, total) RSS in bytes summed over ``root`` and its descendants. Anonymous is what
    grows with the work: pages of a dump mapped from the page cache are RssFile, not RssAnon."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    anon = total = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("RssAnon:"):
                anon += int(line.split()[1]) * 1024
            elif line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return anon, total


def timed(cmd, *, stdout=None, env=None, cwd=None, check=True) -> dict:
    """Run one command; wall seconds, rc, the tail of stderr and the peak anonymous and total RSS of
    its process tree (sampled every 0.25 s)."""
    started = time.monotonic()
    out = open(stdout, "wb") if stdout else tempfile.TemporaryFile()  # a file: a full pipe would block the tool
    peak = peak_total = 0
    try:
        with tempfile.TemporaryFile() as err_file:
            proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=err_file, env=env, cwd=cwd)
            while proc.poll() is None:
                anon, total = tree_rss(proc.pid)
                peak, peak_total = max(peak, anon), max(peak_total, total)
                time.sleep(0.25)
            seconds = time.monotonic() - started
            if not stdout:
                out.seek(0)
            captured = None if stdout else out.read()
            err_file.seek(0)
            err = err_file.read().decode("utf-8", "replace")
    finally:
        out.close()
    if check and proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{err[-3000:]}")
    return {
        "seconds": seconds,
        "rc": proc.returncode,
        "stderr": err[-400:],
        "stdout": captured.decode("utf-8", "replace") if captured is not None else None,
        "peak_anon_rss_mib": round(peak / 2**20, 1),
        "peak_rss_mib": round(peak_total / 2**20, 1),
    }


def case_facts(case: Path) -> dict:
    """What a snapscope case holds: snapshots, ISF used, engine seconds, row counts."""
    import pandas as pd

    t = case / "tables"

    def frames(name):
        files = sorted((t / name).glob("*.parquet"))
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()

    info, runs, yara = frames("memory/info"), frames("memory/plugin_runs"), frames("yara/matches")
    snapshots = json.loads((case / "case.json").read_text())["snapshots"]
    return {
        "snapshots": sorted(info.snapshot_id) if len(info) else [],
        "isf_path": info.isf_path.iloc[0] if len(info) else None,
        "isf_origin": sorted(set(info.isf_origin)) if len(info) else [],
        "memory_engine_seconds": {r.snapshot_id: round(float(r.seconds), 1) for r in info.itertuples()},
        "plugins_failed": int(info.plugins_failed.sum()) if len(info) else None,
        "engine_seconds": {sid: snap.get("engine_seconds") for sid, snap in snapshots.items()},
        "plugin_seconds": {f"{r.snapshot_id}:{r.plugin}": round(float(r.seconds), 2) for r in runs.itertuples()},
        "yara_string_matches": len(yara),
        "yara_by_target": {f"{k[0]}:{k[1]}": int(v) for k, v in yara.groupby(["snapshot_id", "target"]).size().items()}
        if len(yara)
        else {},
    }


def run_snapscope(paths, case: Path, profile: str, env=None) -> dict:
    shutil.rmtree(case, ignore_errors=True)
    load_before = load()
    r = timed(
        [SNAPSCOPE, "analyze", *paths, "--case", case, "--profile", profile], stdout=case.with_suffix(".log"), env=env
    )
    return {
        "seconds": r["seconds"],
        "peak_anon_rss_mib": r["peak_anon_rss_mib"],
        "load_before": load_before,
        "load_after": load(),
        **case_facts(case),
    }


def equal_work_disk(qemu: Path, work: Path) -> Path | None:
    """A copy of disk.qcow2 (+ its backing file) without internal snapshots: one snapshot to analyse."""
    if not shutil.which("qemu-img"):
        return None
    dst = work / "equal-work"
    dst.mkdir()
    listed = subprocess.run(
        ["qemu-img", "info", "--output=json", "--backing-chain", str(qemu / "disk.qcow2")],
        capture_output=True,
        text=True,
        check=True,
    )
    chain = json.loads(listed.stdout)
    if any(Path(layer["filename"]).parent != qemu for layer in chain):
        return None  # only the lab's layout (backing file beside the overlay) is handled
    for layer in chain:  # every layer first: qemu-img opens the chain to delete a snapshot
        src = Path(layer["filename"])
        shutil.copy2(src, dst / src.name)
        os.chmod(dst / src.name, 0o644)
    for layer in chain:
        src = Path(layer["filename"])
        for snap in layer.get("snapshots") or []:
            subprocess.run(["qemu-img", "snapshot", "-d", snap["name"], str(dst / src.name)], check=True)
    return dst / "disk.qcow2"


def isf_dir_for(isf_path: Path, work: Path) -> Path:
    """A symbol dir for `vol -s` holding exactly the ISF snapscope used (linux/<name>)."""
    d = work / "isf"
    (d / "linux").mkdir(parents=True, exist_ok=True)
    shutil.copy2(isf_path, d / "linux" / isf_path.name)
    return d


def vol_cmd(image, isf_dir, cache, plugin):
    return [VOL, "-q", "--offline", "-f", image, "-s", isf_dir, "--cache-path", cache, "-r", "json", plugin]


def run_manual(qemu: Path, profile: dict, isf_dir: Path, vol_cache: Path, work: Path, env) -> dict:
    man = work / "manual"
    shutil.rmtree(man, ignore_errors=True)
    for sub in ("vol", "disk", "files", "streams", "yara"):
        (man / sub).mkdir(parents=True)
    image, disk, pcap = qemu / "memory.elf", qemu / "disk.qcow2", qemu / "net.pcap"
    steps: list[dict] = []
    load_before = load()

    def step(group, name, cmd, stdout=None, check=True):
        r = timed(cmd, stdout=stdout, env=env, check=check)
        steps.append(
            {
                "group": group,
                "name": name,
                "seconds": r["seconds"],
                "rc": r["rc"],
                "peak_anon_rss_mib": r["peak_anon_rss_mib"],
                "error": r["stderr"].strip().splitlines()[-1] if r["rc"] and r["stderr"].strip() else None,
            }
        )
        return r

    evidence = [image, disk, *(p for p in sorted(qemu.glob("*.qcow2")) if p != disk), pcap]
    step("custody", "sha256sum evidence", ["sha256sum", *evidence], stdout=man / "evidence.sha256")
    for p in profile["memory"]["plugins"]:
        if p["name"].startswith("snapscope."):
            continue
        step(
            "memory",
            f"vol {p['name']}",
            vol_cmd(image, isf_dir, vol_cache, p["name"]),
            stdout=man / "vol" / f"{p['name']}.json",
            check=False,
        )
    for fn in expand_functions(profile["disk"].get("functions") or []):
        if fn == "groups":  # snapscope reads /etc/group itself; by hand: target-fs cat
            step(
                "disk",
                "target-fs cat /etc/group",
                [BIN / "target-fs", "-q", disk, "cat", "/etc/group"],
                stdout=man / "disk" / "groups.txt",
                check=False,
            )
            continue
        step(
            "disk",
            f"target-query {fn}",
            [TARGET_QUERY, "-q", "-j", "-f", fn, disk],
            stdout=man / "disk" / f"{fn}.jsonl",
            check=False,
        )
        steps[-1]["records"] = sum(
            1
            for line in (man / "disk" / f"{fn}.jsonl").read_text(errors="replace").splitlines()
            if '"_type": "record"' in line
        )
    hash_cfg = profile["disk"].get("hash") or {}
    r = step(
        "files",
        "extract (dissect walk + copy)",
        [
            PY,
            "-c",
            EXTRACT,
            disk,
            man / "files",
            man / "files.jsonl",
            hash_cfg.get("max_size", 64 << 20),
            *(hash_cfg.get("paths") or []),
        ],
    )
    extracted = json.loads(r["stdout"].strip().splitlines()[-1])
    step(
        "files",
        "sha256sum extracted",
        ["sh", "-c", 'find "$1" -type f -exec sha256sum {} +', "sh", man / "files"],
        stdout=man / "files.sha256",
    )
    r = step("network", "dpkt flows script", [PY, "-c", PCAP, pcap, man / "streams"])
    net = json.loads(r["stdout"].strip().splitlines()[-1])
    rules = [f"{f.stem}:{f}" for f in sorted(Path(DEFAULT_RULES_DIR).glob("*.yar"))]
    step("yara", "yara memory.elf", ["yara", "-w", "-s", *rules, image], stdout=man / "yara" / "memory.txt")
    step(
        "yara",
        "yara extracted files",
        ["yara", "-w", "-s", "-r", *rules, man / "files"],
        stdout=man / "yara" / "files.txt",
    )
    step(
        "yara",
        "yara tcp payloads",
        ["yara", "-w", "-s", "-r", *rules, man / "streams"],
        stdout=man / "yara" / "streams.txt",
    )

    def yara_hits(name):  # `yara -s`: "RULE TARGET" lines, then "0xOFFSET:$id: data" lines
        lines = (man / "yara" / name).read_text(errors="replace").splitlines()
        return {
            "rule_hits": sum(1 for x in lines if x and not x.startswith("0x")),
            "string_matches": sum(1 for x in lines if x.startswith("0x")),
        }

    # A responder would not run functions that fail or find nothing on this guest (runkeys/tasks are
    # Windows-only; initd is no target-query function here): the conservative total leaves them out.
    idle = [s for s in steps if s["group"] == "disk" and (s["rc"] or s.get("records") == 0)]
    return {
        "seconds": sum(s["seconds"] for s in steps),
        "seconds_conservative": sum(s["seconds"] for s in steps if s not in idle),
        "left_out_of_conservative": [s["name"] for s in idle],
        "steps": steps,
        "load_before": load_before,
        "load_after": load(),
        "extracted": extracted,
        "network": net,
        "yara_hits": {k: yara_hits(f"{k}.txt") for k in ("memory", "files", "streams")},
        "failed": [s["name"] for s in steps if s["rc"]],
    }


def table(result: dict) -> str:
    lines = []
    add = lines.append
    warm = result["warm"]
    man = warm["manual"]
    groups: dict[str, float] = {}
    for s in man["steps"]:
        groups[s["group"]] = groups.get(s["group"], 0.0) + s["seconds"]
    add(f"{'step':58} {'seconds':>9}")
    add("-" * 68)
    for s in man["steps"]:
        flag = f"  (rc {s['rc']})" if s["rc"] else "  (no records)" if s.get("records") == 0 else ""
        add(f"  manual  {s['name']:48} {s['seconds']:9.1f}{flag}")
    add("-" * 68)
    for g, sec in groups.items():
        add(f"  manual  {g + ' subtotal':48} {sec:9.1f}")
    add(f"{'MANUAL total (one snapshot)':58} {man['seconds']:9.1f}")
    add(f"{'MANUAL conservative (without idle/failed target-query)':58} {man['seconds_conservative']:9.1f}")
    lit = warm["snapscope"]
    add(f"{'SNAPSCOPE analyze, as issued (' + str(len(lit['snapshots'])) + ' snapshots)':58} {lit['seconds']:9.1f}")
    eq = warm.get("snapscope_equal_work")
    if eq:
        add(f"{'SNAPSCOPE analyze, equal work (' + str(len(eq['snapshots'])) + ' snapshot)':58} {eq['seconds']:9.1f}")
    add("-" * 68)
    for label, run in (("as issued", lit), ("equal work", eq)):
        if run:
            add(
                f"ratio manual / snapscope {label + ':':12} {man['seconds'] / run['seconds']:.2f}x "
                f"(conservative manual: {man['seconds_conservative'] / run['seconds']:.2f}x)"
            )
    add(
        "snapscope memory engine seconds per snapshot: "
        + ", ".join(f"{k} {v}" for k, v in lit["memory_engine_seconds"].items())
    )
    cold = result.get("cold")
    if cold:
        add("cold (separately): " + ", ".join(f"{k} {v:.1f} s" for k, v in cold.items() if isinstance(v, float)))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lab", type=Path, help="lab dir (default: the newest one with ground_truth.json)")
    ap.add_argument("--profile", default="linux-triage")
    ap.add_argument("--cold", action="store_true", help="also time cold runs (empty ISF cache / empty vol cache)")
    ap.add_argument("--no-equal-work", action="store_true", help="skip the one-snapshot snapscope run")
    ap.add_argument(
        "--equal-work-only",
        action="store_true",
        help="time only the one-snapshot snapscope run (disk copy without its savevm state), not the two-snapshot one",
    )
    ap.add_argument("--out", type=Path, help="also write the figures as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (under /tmp)")
    args = ap.parse_args(argv)

    lab = (args.lab or newest_lab()).expanduser().resolve()
    qemu = lab / "qemu"
    profile = load_profile(args.profile)
    work = Path(tempfile.mkdtemp(prefix="analyze-vs-manual-", dir="/tmp"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    paths = [qemu / "memory.elf", qemu / "disk.qcow2", qemu / "net.pcap"]
    result = {
        "lab": str(lab),
        "profile": args.profile,
        "cpus": os.cpu_count(),
        "load_start": load(),
        "evidence_mib": {p.name: round(p.stat().st_size / 2**20, 1) for p in paths},
    }
    try:
        eq_disk = None if args.no_equal_work else equal_work_disk(qemu, work)
        cache = snapscope_cache(env)
        result["isf_cache"] = {"dir": str(cache / "symbols"), "files_before": [str(p) for p in isf_files(cache)]}
        result["isf_cache"]["warm"] = bool(result["isf_cache"]["files_before"])

        def log(*a):
            return print(*a, file=sys.stderr, flush=True)

        log(f"lab {lab}; ISF cache {'warm' if result['isf_cache']['warm'] else 'EMPTY'}; work {work}; load {load()}")

        cold = {}
        if args.cold:
            cold_env = dict(env, SNAPSCOPE_CACHE=str(work / "cold-snapscope-cache"))
            r = run_snapscope(paths, work / "case-cold", args.profile, env=cold_env)
            cold["snapscope_cold_isf_cache"] = r["seconds"]
            cold["snapscope_cold_isf_origin"] = r["isf_origin"]
            log(f"cold snapscope (empty ISF cache): {r['seconds']:.1f} s, ISF {r['isf_origin']}")
        if not result["isf_cache"]["warm"]:
            r = run_snapscope(paths, work / "case-warmup", args.profile, env=env)
            cold["snapscope_first_run_filled_isf_cache"] = r["seconds"]
            log(f"ISF cache was empty: first snapscope run {r['seconds']:.1f} s filled it")

        # Warm, back to back: snapscope as issued, manual, snapscope equal work.
        warm = {}
        if args.equal_work_only and eq_disk:  # the fair comparison only: one snapshot on each side
            paths = [qemu / "memory.elf", eq_disk, qemu / "net.pcap"]
            eq_disk = None
        warm["snapscope"] = run_snapscope(paths, work / "case-warm", args.profile, env=env)
        log(f"snapscope as issued: {warm['snapscope']['seconds']:.1f} s, snapshots {warm['snapscope']['snapshots']}")
        isf_path = Path(warm["snapscope"]["isf_path"])
        isf_dir = isf_dir_for(isf_path, work)
        vol_cache = work / "vol-cache"
        vol_cache.mkdir()
        first = next(p["name"] for p in profile["memory"]["plugins"] if not p["name"].startswith("snapscope."))
        r = timed(vol_cmd(qemu / "memory.elf", isf_dir, vol_cache, first), stdout=work / "vol-warmup.json", env=env)
        cold["vol_warmup_first_plugin_empty_cache"] = r["seconds"]
        log(f"vol cache warm-up ({first}, empty cache): {r['seconds']:.1f} s")
        warm["manual"] = run_manual(qemu, profile, isf_dir, vol_cache, work, env)
        log(f"manual: {warm['manual']['seconds']:.1f} s; failed steps {warm['manual']['failed']}")
        if eq_disk:
            eq_paths = [qemu / "memory.elf", eq_disk, qemu / "net.pcap"]
            warm["snapscope_equal_work"] = run_snapscope(eq_paths, work / "case-equal", args.profile, env=env)
            log(
                f"snapscope equal work: {warm['snapscope_equal_work']['seconds']:.1f} s, "
                f"snapshots {warm['snapscope_equal_work']['snapshots']}"
            )
        result.update(warm=warm, cold=cold, load_end=load(), isf_used=str(isf_path))
        result["ratio_manual_over_snapscope"] = round(warm["manual"]["seconds"] / warm["snapscope"]["seconds"], 2)
        result["ratio_conservative_manual_over_snapscope"] = round(
            warm["manual"]["seconds_conservative"] / warm["snapscope"]["seconds"], 2
        )
        if eq_disk:
            eq_s = warm["snapscope_equal_work"]["seconds"]
            result["ratio_manual_over_snapscope_equal_work"] = round(warm["manual"]["seconds"] / eq_s, 2)
            result["ratio_conservative_manual_over_snapscope_equal_work"] = round(
                warm["manual"]["seconds_conservative"] / eq_s, 2
            )
        print(json.dumps(result, indent=2, default=str))
        print()
        print(table(result))
        print(f"load average: start {result['load_start']}, end {result['load_end']} ({os.cpu_count()} CPUs)")
        if args.out:
            args.out.write_text(json.dumps(result, indent=2, default=str))
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
