#!/usr/bin/env python3
"""Conversion throughput and peak memory of ``toolkit.memory.convert.to_elf``.

For each artefact, with the page cache warm (best of several runs each):

* ``cat s``  — ``cat FILE > /dev/null``: reading the file once, the issue's yardstick;
* ``copy s`` — ``cat FILE > OUTDIR/x`` into a new file: read plus writing as many
  bytes to fresh pages of the output filesystem, which no conversion can beat
  (on this VM fresh tmpfs pages cost far more than the read);
* per hash mode (``none``: ``hash=False``; ``output``: ``hash="output"``, the
  source hashed at intake; ``full``: source and output hashed, the default), the
  conversion time measured inside a child process (``proc s`` adds interpreter
  start and imports), its ratio to ``cat`` and to ``copy``, guest MiB/s, and the
  child's peak RSS (ru_maxrss from wait4). The output sha256 must agree across
  modes.

Usage::

    python benchmarks/memory_convert.py ~/.cache/snapscope/lab/*/libvirt/*.{elf,qevm,save}
    python benchmarks/memory_convert.py --synthetic-gib 2 --workdir /var/tmp/bench

``--synthetic-gib N`` writes an N GiB guest as an uncompressed migration
stream, a libvirt save image around it, a qcow2 whose internal snapshot holds
it as vmstate, and an ELF core (content: distinct non-zero pages, one in eight
zero), for when no large real guest is at hand. Outputs go to ``--outdir``
(default /dev/shm, so the disk's write speed is not measured) and are deleted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PS = 4096


def _pages(n_distinct=64):
    import random

    rnd = random.Random(7)
    return [bytes(rnd.getrandbits(8) for _ in range(PS)) for _ in range(n_distinct)]


def synthesize(workdir, gib):
    """Write <workdir>/synthetic.{elf,qevm,save,qcow2}: the same N GiB guest."""
    workdir.mkdir(parents=True, exist_ok=True)
    ram = gib << 30
    pool = _pages()
    qevm = workdir / "synthetic.qevm"
    with open(qevm, "wb") as f:
        machine = b"pc-i440fx-7.2"
        f.write(b"QEVM" + struct.pack(">I", 3) + b"\x07" + struct.pack(">I", len(machine)) + machine)
        f.write(b"\x01" + struct.pack(">I", 2) + b"\x03ram" + struct.pack(">II", 0, 4))
        f.write(struct.pack(">Q", ram | 4) + b"\x06pc.ram" + struct.pack(">Q", ram))
        f.write(struct.pack(">Q", 0x10) + b"\x7e" + struct.pack(">I", 2) + b"\x02" + struct.pack(">I", 2))
        first = True
        for i in range(ram // PS):
            flags = 0x20 if not first else 0
            if i % 8 == 7:
                rec = struct.pack(">Q", i * PS | 0x02 | flags) + (b"" if flags else b"\x06pc.ram") + b"\0"
            else:
                rec = struct.pack(">Q", i * PS | 0x08 | flags) + (b"" if flags else b"\x06pc.ram") + pool[i % 64]
            first = False
            f.write(rec)
        f.write(struct.pack(">Q", 0x10) + b"\x7e" + struct.pack(">I", 2))
        f.write(b"\x03" + struct.pack(">I", 2) + struct.pack(">Q", 0x10) + b"\x7e" + struct.pack(">I", 2))
    save = workdir / "synthetic.save"
    xml = b"<domain type='qemu'><name>bench</name></domain>\0".ljust(4096 - 0x5C, b"\0")
    with open(save, "wb") as out, open(qevm, "rb") as src:
        out.write(b"LibvirtQemudSave" + struct.pack("<5I", 2, len(xml), 1, 0, 0) + bytes(56) + xml)
        while block := src.read(1 << 24):
            out.write(block)
    elf = workdir / "synthetic.elf"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from toolkit.memory.convert import to_elf; to_elf(sys.argv[1], sys.argv[2], hash=False)",
            str(qevm),
            str(elf),
        ],
        check=True,
        cwd=REPO,
    )
    qcow = workdir / "synthetic.qcow2"
    qcow2_around(qevm, qcow)
    return [elf, qevm, save, qcow]


def qcow2_around(qevm, out, cluster_bits=16, disk_size=1 << 20):
    """A qcow2 (v3, no backing file) whose one internal snapshot's vmstate is
    ``qevm``, in host-contiguous clusters as savevm mostly leaves it."""
    C = 1 << cluster_bits
    l2_entries = C // 8
    span = C * l2_entries  # guest bytes one L2 table maps
    vm_off = -(-disk_size // span) * span  # where qcow2 puts the vmstate
    vm_size = qevm.stat().st_size
    nclusters = -(-vm_size // C)
    nl1 = (vm_off + vm_size) // span + 1
    n_l2 = -(-nclusters // l2_entries)
    l1_at, l2_at = 2 * C, 3 * C  # cluster 0 header, 1 snapshot table
    data_at = l2_at + n_l2 * C
    head = bytearray(data_at)
    struct.pack_into(">4sIQIIQIIQQIIQ", head, 0, b"QFI\xfb", 3, 0, 0, cluster_bits, disk_size, 0, 0, 0, 0, 0, 1, C)
    struct.pack_into(">QQQII", head, 72, 0, 0, 0, 4, 104)
    extra = struct.pack(">QQ", vm_size, disk_size)
    struct.pack_into(
        ">QIHHIIQII", head, C, l1_at, nl1, 1, 5, int(time.time()), 0, 0, vm_size if vm_size < 1 << 32 else 0, len(extra)
    )
    head[C + 40 : C + 40 + len(extra) + 6] = extra + b"1bench"
    for k in range(n_l2):
        struct.pack_into(">Q", head, l1_at + 8 * (vm_off // span + k), (l2_at + k * C) | 1 << 63)
    for c in range(nclusters):
        struct.pack_into(">Q", head, l2_at + 8 * c, (data_at + c * C) | 1 << 63)
    with open(out, "wb") as f, open(qevm, "rb") as src:
        f.write(head)
        while block := src.read(1 << 24):
            f.write(block)
        f.truncate(data_at + nclusters * C)


def best_of(n, fn):
    return min(fn() for _ in range(n))


def timed_shell(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True)
    return time.perf_counter() - t


def cat_seconds(path, repeat):
    timed_shell(f"cat '{path}' > /dev/null")  # warms the page cache
    return best_of(repeat, lambda: timed_shell(f"cat '{path}' > /dev/null"))


def copy_seconds(path, outdir, repeat):
    tmp = outdir / (path.name + ".bench.copy")
    try:
        return best_of(repeat, lambda: timed_shell(f"rm -f '{tmp}'; cat '{path}' > '{tmp}'"))
    finally:
        tmp.unlink(missing_ok=True)


CHILD = """import json, sys, time
from toolkit.memory.convert import to_elf
mode = {"none": False, "output": "output", "full": True}[sys.argv[4]]
t = time.perf_counter()
r = to_elf(sys.argv[1], sys.argv[2], derived_dir=sys.argv[3], hash=mode)
print(json.dumps({"seconds": time.perf_counter() - t, "format": r["format"], "bytes": r["bytes"],
                  "dst_sha256": r["dst_sha256"]}))
"""


def convert_child(path, out, derived, mode):
    out.unlink(missing_ok=True)
    t = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(out), str(derived), mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    stdout, stderr = proc.stdout.read().decode(), proc.stderr.read().decode()
    out.unlink(missing_ok=True)
    if status != 0:
        raise SystemExit(f"conversion of {path} failed: {stderr[-2000:]}")
    res = json.loads(stdout.strip().splitlines()[-1])
    res.update(proc_seconds=wall, rss_mib=usage.ru_maxrss / 1024)
    return res


def sha256_rate():
    block = os.urandom(1 << 24)
    t = time.perf_counter()
    h = hashlib.sha256()
    for _ in range(32):
        h.update(block)
    return (32 << 24) / (time.perf_counter() - t) / 1e9


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", type=Path)
    ap.add_argument("--synthetic-gib", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument(
        "--outdir",
        type=Path,
        default=None,
        help="where converted ELFs go (default /dev/shm, else the workdir): a tmpfs "
        "measures the converter rather than the disk's write speed",
    )
    ap.add_argument("--repeat", type=int, default=2, help="runs per measurement; the best is shown")
    ap.add_argument("--modes", default="none,output,full", help="hash modes to run")
    ap.add_argument("--keep", action="store_true", help="keep synthetic inputs")
    args = ap.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="snapscope-bench-"))
    outdir = args.outdir or (Path("/dev/shm") if Path("/dev/shm").is_dir() else workdir)
    paths = list(args.paths)
    if args.synthetic_gib:
        existing = [workdir / f"synthetic.{x}" for x in ("elf", "qevm", "save", "qcow2")]
        paths += existing if all(p.exists() for p in existing) else synthesize(workdir, args.synthetic_gib)
    if not paths:
        ap.error("give artefact paths or --synthetic-gib")
    print(
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; sha256 {sha256_rate():.2f} GB/s; "
        f"output to {outdir}; best of {args.repeat}"
    )
    print(
        f"{'artefact':22} {'format':15} {'GiB':>5} {'cat s':>6} {'copy s':>6} {'hash':>6} {'conv s':>6} "
        f"{'x cat':>6} {'x copy':>6} {'proc s':>6} {'MiB/s':>6} {'RSS MiB':>7}"
    )
    try:
        for path in paths:
            out = outdir / (path.name + ".bench.elf")
            cat = cat_seconds(path, args.repeat + 1)
            copy = copy_seconds(path, outdir, args.repeat)
            size = path.stat().st_size
            digests = set()
            for mode in args.modes.split(","):
                runs = [convert_child(path, out, workdir / "derived", mode) for _ in range(args.repeat)]
                best = min(runs, key=lambda r: r["seconds"])
                digests.update(r["dst_sha256"] for r in runs if r["dst_sha256"])
                print(
                    f"{path.name[:22]:22} {best['format'][:15]:15} {size / 2**30:5.2f} {cat:6.2f} {copy:6.2f} "
                    f"{mode:>6} {best['seconds']:6.2f} {best['seconds'] / cat:6.1f} "
                    f"{best['seconds'] / copy:6.1f} {min(r['proc_seconds'] for r in runs):6.2f} "
                    f"{best['bytes'] / 2**20 / best['seconds']:6.0f} {max(r['rss_mib'] for r in runs):7.0f}",
                    flush=True,
                )
            if len(digests) > 1:
                raise SystemExit(f"{path}: output sha256 differs between runs: {digests}")
        print(f"load average {os.getloadavg()[0]:.2f} at the end")
    finally:
        for path in paths:  # only what this run wrote
            for suffix in (".bench.elf", ".bench.copy"):
                (outdir / (path.name + suffix)).unlink(missing_ok=True)
        if args.synthetic_gib and not args.keep:
            for p in workdir.glob("synthetic.*"):
                p.unlink()


if __name__ == "__main__":
    main()
