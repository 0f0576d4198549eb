#!/usr/bin/env python3
"""YARA over a >= 2 GiB lab dump with per-process attribution vs one flat yara-x scan (issue 6).

Produces a real guest dump: boots the lab guest once, infected, with
``-m 2048`` through the lab's own ``booted_guest`` (fixtures/lab/qemu_run.py,
loaded through fixtures/build_lab.py's loader; networking is the lab's
``user,restrict=on`` + guestfwd to a local echo, nothing leaves QEMU), on a
throw-away overlay of a fleet lab's base.qcow2 with that fleet's
guest/vmlinuz + initrd.img, waits for a few beacons, ``stop`` and
``dump-guest-memory`` (ELF, paging=false) into a scratch dir in /tmp. The dump
(~2.1 GB) and the overlay are deleted at the end unless ``--keep``.

Then, with the same compiled rules (``compile_rules()`` over rules/yara/*.yar;
the flat scan uses that rule set's yara-x ``Rules`` object itself) and the
dump in the page cache for both (one untimed read first):

(a) flat: ``yara_x.Scanner(rules["yarax"]).scan_file(dump)`` — one pass over
    the file as a responder would run it;
(b) snapscope with per-process attribution, split into
    - Volatility set-up: ``open_memory`` (ISF lookup — the ISF cache
      at ~/.cache/snapscope stays warm — kernel discovery; Volatility's own
      cache dir is fresh, as in a new case) and ``process_regions`` (walking
      tasks and VMAs, materialised into a list);
    - process scan: ``scan_regions`` over every user VMA (reads through each
      process's page tables; the time spent inside the Volatility reads is
      reported separately);
    - physical scan: ``toolkit.memory.open_image`` + ``scan_physical``.

Reported: seconds of each, (b)/(a) with and without set-up, match counts, and
whether the beacon marker rule has a process hit attributed to the implant's
pid (from the guest's own ground truth on the serial console). ``--rounds R``
repeats (a) and (b)'s scans alternately (set-up is done once: it is cached per
process) and reports the best and median.

Usage::

    python benchmarks/yara_2gib.py                     # boot, dump, measure, delete
    python benchmarks/yara_2gib.py --ram 2048 --rounds 2 --keep --scratch /tmp/y2g
    python benchmarks/yara_2gib.py --dump /tmp/y2g/memory.elf --implant-pid 123   # reuse a kept dump
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yara_x  # noqa: E402

from fixtures.build_lab import _load_package, build_fleet  # noqa: E402
from toolkit.engines import EngineContext, memory  # noqa: E402
from toolkit.engines.memory.session import open_memory  # noqa: E402
from toolkit.engines.yara.rules import compile_rules  # noqa: E402
from toolkit.engines.yara.scan import scan_physical, scan_regions  # noqa: E402
from toolkit.memory import open_image  # noqa: E402
from toolkit.memory.image import merge_runs  # noqa: E402
from toolkit.profiles import load_profile  # noqa: E402

MARKER_RULE = "SnapscopeLab_Beacon_Marker"


def find_fleet(arg: Path | None) -> Path:
    """A fleet lab to take the guest kernel/initramfs and base image from (built or reused)."""
    if arg:
        return arg.expanduser().resolve()
    return build_fleet(progress=lambda m: print(f"[fleet] {m}", file=sys.stderr, flush=True))


def boot_and_dump(fleet: Path, work: Path, ram_mib: int, progress) -> dict:
    qemu_run = _load_package("qemu_run")
    beacons = _load_package("beacons")
    scenario = _load_package("scenario")
    disk = _load_package("disk")
    report = _load_package("guest_report")
    gtmod = _load_package("ground_truth")
    guest = fleet / "guest"
    disk.make_overlay(work / "disk.qcow2", str(fleet / "base.qcow2"))  # absolute backing: only QEMU reads it
    cmdline = f"{scenario.KERNEL_CMDLINE} lab.scenario=infected"
    t0 = time.time()
    with qemu_run.booted_guest(
        work,
        guest / "vmlinuz",
        guest / "initrd.img",
        ram_mib=ram_mib,
        cmdline=cmdline,
        mac="52:54:00:5c:02:01",
        label=f"yara2g ({ram_mib} MiB)",
        progress=progress,
    ) as g:
        boot_s = time.time() - t0
        beacons.wait_for_beacons(
            work / "serial.log", work / "net.pcap", lambda: g.proc.poll() is None, f"yara2g ({ram_mib} MiB)", progress
        )
        g.qmp.cmd("stop")
        t1 = time.time()
        qemu_run.dump_elf(g.qmp, work / "memory.elf")
        dump_s = time.time() - t1
        qemu_run.quit_qemu(g)
    gt = report.ground_truth_from_serial((work / "serial.log").read_text("latin-1"))
    implants = gtmod.find_implant(gt)
    if not implants:
        raise SystemExit("the guest reports no implant process")
    return {
        "dump": work / "memory.elf",
        "implant_pid": implants[0]["pid"],
        "boot_s": boot_s,
        "dump_s": dump_s,
        "argv": g.argv,
    }


class TimedReader:
    """Wraps a read(addr, n) and adds the time spent in it to a shared counter."""

    def __init__(self, counter: list):
        self.counter = counter

    def wrap(self, read):
        counter = self.counter

        def timed(addr, n):
            t = time.perf_counter()
            try:
                return read(addr, n)
            finally:
                counter[0] += time.perf_counter() - t

        return timed


def flat_scan(rules: dict, dump: Path) -> tuple[float, collections.Counter]:
    scanner = yara_x.Scanner(rules["yarax"])
    t0 = time.perf_counter()
    res = scanner.scan_file(str(dump))
    elapsed = time.perf_counter() - t0
    counts = collections.Counter()
    for rule in res.matching_rules:
        counts[rule.identifier] += sum(len(p.matches) for p in rule.patterns)
    return elapsed, counts


def snapscope_setup(dump: Path, work: Path) -> tuple[dict, list, dict]:
    snapshot = {"id": "yara2g", "name": "yara2g", "memory": {"path": str(dump), "format": "elf-core"}}
    ctx = EngineContext(
        snapshot_id="yara2g",
        cache_dir=work / "case-cache",
        derived_dir=work / "derived",
        profile=load_profile("linux-triage"),
    )
    for d in (ctx.cache_dir, ctx.derived_dir):
        d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    session, info, diags = open_memory(snapshot, ctx)
    t_open = time.perf_counter() - t0
    if session is None:
        raise SystemExit(f"open_memory failed: {diags}")
    t1 = time.perf_counter()
    regions = list(memory.process_regions(snapshot, ctx))  # cached session: only the task/VMA walk
    t_regions = time.perf_counter() - t1
    return (
        session,
        regions,
        {
            "open_memory_s": t_open,
            "process_regions_s": t_regions,
            "isf_origin": info.get("isf_origin"),
            "banner": info.get("banner"),
        },
    )


def snapscope_scan(rules: dict, session: dict, regions: list) -> dict:
    vol_read = [0.0]
    wrapped = [{**r, "read": TimedReader(vol_read).wrap(r["read"])} for r in regions]
    t0 = time.perf_counter()
    prow, pdiag = scan_regions(rules, wrapped)
    t_proc = time.perf_counter() - t0
    phys_read = [0.0]
    t1 = time.perf_counter()
    with open_image(session["image"]) as img:
        t_open_img = time.perf_counter() - t1
        timed = types.SimpleNamespace(runs=img.runs, read=TimedReader(phys_read).wrap(img.read))
        xrow, xdiag = scan_physical(rules, timed)
        physical_bytes = sum(n for _, n in merge_runs(img.runs))
    t_phys = time.perf_counter() - t1
    return {
        "scan_regions_s": t_proc,
        "scan_regions_read_s": vol_read[0],
        "scan_physical_s": t_phys,
        "scan_physical_read_s": phys_read[0],
        "open_image_s": t_open_img,
        "process_rows": prow,
        "physical_rows": xrow,
        "diagnostics": len(pdiag) + len(xdiag),
        "region_bytes": sum(r["end"] - r["start"] for r in regions),
        "physical_bytes": physical_bytes,
    }


def warm_page_cache(path: Path) -> float:
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(64 << 20):
            pass
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fleet", type=Path, help="fleet lab dir for guest/ and base.qcow2 (default: build or reuse one)")
    ap.add_argument("--ram", type=int, default=2048, help="guest RAM in MiB (default 2048)")
    ap.add_argument("--dump", type=Path, help="use this ELF dump instead of booting (give --implant-pid)")
    ap.add_argument("--implant-pid", type=int)
    ap.add_argument("--rounds", type=int, default=1, help="repeat the scans (a),(b) alternately")
    ap.add_argument("--scratch", type=Path, help="work dir (default: new dir in /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the dump and scratch dir")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    t_start = time.time()

    def progress(msg):
        print(f"[{time.time() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    work = args.scratch or Path(tempfile.mkdtemp(prefix="snapscope-yara2g-"))
    work.mkdir(parents=True, exist_ok=True)
    out = {"load_start": os.getloadavg()}
    created: list[Path] = []
    try:
        if args.dump:
            dump, implant_pid = args.dump, args.implant_pid
        else:
            fleet = find_fleet(args.fleet)
            progress(f"booting the infected guest with {args.ram} MiB (guest files from {fleet})")
            created += [work / "memory.elf", work / "disk.qcow2"]
            booted = boot_and_dump(fleet, work, args.ram, progress)
            dump, implant_pid = booted["dump"], booted["implant_pid"]
            out.update(boot_s=booted["boot_s"], dump_s=booted["dump_s"])
            progress(f"dumped {dump} in {booted['dump_s']:.1f}s; implant pid {implant_pid}")
        size = dump.stat().st_size
        out.update(dump=str(dump), dump_bytes=size, implant_pid=implant_pid)
        if size < 2 << 30:
            progress(f"WARNING: dump is {size} bytes, under 2 GiB")
        t0 = time.perf_counter()
        rules = compile_rules(cache_dir=work / "rules-cache")
        out["compile_s"] = time.perf_counter() - t0
        out["rule_engines"] = {f["namespace"]: f["engine"] for f in rules["files"]}
        out["warm_read_s"] = warm_page_cache(dump)
        progress(f"page cache warmed ({out['warm_read_s']:.1f}s); (a) flat yara-x scan")
        flats, scans = [], []
        flat_s, flat_counts = flat_scan(rules, dump)
        flats.append(flat_s)
        progress(f"(a) {flat_s:.1f}s; (b) Volatility set-up")
        session, regions, setup = snapscope_setup(dump, work)
        progress(
            f"(b) set-up {setup['open_memory_s']:.1f}s + {setup['process_regions_s']:.1f}s "
            f"({len(regions)} regions); scanning"
        )
        scan = snapscope_scan(rules, session, regions)
        scans.append(scan)
        for _ in range(args.rounds - 1):
            flats.append(flat_scan(rules, dump)[0])
            scans.append(snapscope_scan(rules, session, regions))
        scan_tot = [s["scan_regions_s"] + s["scan_physical_s"] for s in scans]
        flat_best, scan_best = min(flats), min(scan_tot)
        setup_s = setup["open_memory_s"] + setup["process_regions_s"]
        b_total = setup_s + scan_best
        proc_rows, phys_rows = scan["process_rows"], scan["physical_rows"]
        marker_proc = [r for r in proc_rows if r["rule"] == MARKER_RULE]
        marker_pids = collections.Counter(r["pid"] for r in marker_proc)
        marker_procs = sorted({(r["pid"], r["process"]) for r in marker_proc})
        out.update(
            setup,
            flat_s=flats,
            scan_s=scan_tot,
            regions=len(regions),
            region_bytes=scan["region_bytes"],
            physical_bytes=scan["physical_bytes"],
            diagnostics=scan["diagnostics"],
            marker_hits_by_pid=dict(marker_pids),
            marker_attributed_to_implant=implant_pid in marker_pids,
            load_end=os.getloadavg(),
        )
        mb = size / 1e6
        ram = (
            f"guest RAM {args.ram} MiB, boot {out['boot_s']:.0f}s, dump {out['dump_s']:.0f}s"
            if "boot_s" in out
            else "given dump"
        )
        print(f"\ndump: {dump} ({size} bytes = {size / (1 << 30):.2f} GiB), {ram}, implant pid {implant_pid}")
        print(
            f"rules: {len(rules['files'])} files, engines {out['rule_engines']}; compile {out['compile_s']:.2f}s "
            "(not counted on either side)"
        )
        print(f"load average: start {out['load_start']}, end {out['load_end']}")
        print("\nstep | seconds | note")
        print("---|---|---")
        print(
            f"(a) flat yara-x scan_file | {flat_best:.1f} | {mb / flat_best:.0f} MB/s over the whole file"
            + (f"; rounds {', '.join(f'{x:.1f}' for x in flats)}" if len(flats) > 1 else "")
        )
        print(f"(b) open_memory (ISF lookup, kernel discovery) | {setup['open_memory_s']:.1f} | Volatility set-up")
        print(
            f"(b) process_regions (tasks + VMAs) | {setup['process_regions_s']:.1f} | {len(regions)} regions, "
            f"{scan['region_bytes'] / 1e6:.0f} MB of virtual ranges"
        )
        print(
            f"(b) scan_regions | {scan['scan_regions_s']:.1f} | of which Volatility reads "
            f"{scan['scan_regions_read_s']:.1f}s"
        )
        print(
            f"(b) open_image + scan_physical | {scan['scan_physical_s']:.1f} | of which reads "
            f"{scan['scan_physical_read_s']:.1f}s; {scan['physical_bytes'] / 1e6:.0f} MB of RAM runs"
        )
        print(
            f"(b) total | {b_total:.1f} | set-up {setup_s:.1f}s ({100 * setup_s / b_total:.0f}%), scanning "
            f"{scan_best:.1f}s" + (f"; scan rounds {', '.join(f'{x:.1f}' for x in scan_tot)}" if len(scans) > 1 else "")
        )
        print(
            f"\n(b)/(a) = {b_total / flat_best:.2f}x   (scanning only, without Volatility set-up: "
            f"{scan_best / flat_best:.2f}x; physical scan alone: {scans[0]['scan_physical_s'] / flat_best:.2f}x)"
        )
        print("\nmatches per rule: flat (file) | snapscope process | snapscope physical")
        pc = collections.Counter(r["rule"] for r in proc_rows)
        xc = collections.Counter(r["rule"] for r in phys_rows)
        for rule in sorted(set(flat_counts) | set(pc) | set(xc)):
            print(f"  {rule:45} {flat_counts.get(rule, 0):6} | {pc.get(rule, 0):6} | {xc.get(rule, 0):6}")
        print(f"\nmarker hits in process memory by (pid, process): {marker_procs} counts {dict(marker_pids)}")
        print(
            f"marker attributed to the implant's pid {implant_pid}: "
            f"{'YES' if out['marker_attributed_to_implant'] else 'NO'}"
        )
        if args.json:
            args.json.write_text(json.dumps(out, indent=1, default=str))
    finally:
        if not args.keep and not args.scratch:
            shutil.rmtree(work, ignore_errors=True)
        elif not args.keep:
            for path in created:  # only what this run made: never a --dump given by the caller
                path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
