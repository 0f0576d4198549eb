#!/usr/bin/env python3
"""Conversion throughput and peak memory of ``toolkit.memory.convert.to_elf``.

For each artefact: the time of ``cat FILE > /dev/null`` with the page cache
warm (the floor any reader pays), the time of a conversion to ELF in a child
process, their ratio, and the child's peak RSS (ru_maxrss from wait4).

Usage::

    python benchmarks/memory_convert.py ~/.cache/snapscope/lab/*/memory/*.{elf,qevm,save}
    python benchmarks/memory_convert.py --synthetic-gib 2 --workdir /var/tmp/bench

``--synthetic-gib N`` writes an N GiB guest as an uncompressed migration
stream, a libvirt save image around it and an ELF core (content: distinct
non-zero pages, one in eight zero), for when no large real guest is at hand.
"""
from __future__ import annotations

import argparse
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
    """Write <workdir>/synthetic.{qevm,save,elf}: the same N GiB guest."""
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
    subprocess.run([sys.executable, "-c", "import sys; from toolkit.memory.convert import to_elf; "
                    "to_elf(sys.argv[1], sys.argv[2])", str(qevm), str(elf)], check=True, cwd=REPO)
    return [elf, qevm, save]


def cat_seconds(path):
    for _ in range(2):  # first run warms the page cache
        t = time.perf_counter()
        subprocess.run(f"cat '{path}' > /dev/null", shell=True, check=True)
        elapsed = time.perf_counter() - t
    return elapsed


def convert_child(path, out, derived):
    code = ("import sys; from toolkit.memory.convert import to_elf; "
            "r = to_elf(sys.argv[1], sys.argv[2], derived_dir=sys.argv[3]); print(r['format'], r['bytes'])")
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), str(out), str(derived)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t
    stdout = proc.stdout.read().decode().split()
    if status != 0:
        raise SystemExit(f"conversion of {path} failed: {proc.stderr.read().decode()[-2000:]}")
    return elapsed, usage.ru_maxrss / 1024, stdout


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", type=Path)
    ap.add_argument("--synthetic-gib", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--outdir", type=Path, default=None,
                    help="where converted ELFs go (default: workdir); a tmpfs such as /dev/shm "
                         "measures the converter rather than the disk's write speed")
    ap.add_argument("--keep", action="store_true", help="keep outputs (and synthetic inputs)")
    args = ap.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="snapscope-bench-"))
    paths = list(args.paths)
    if args.synthetic_gib:
        existing = [workdir / f"synthetic.{x}" for x in ("elf", "qevm", "save")]
        paths += existing if all(p.exists() for p in existing) else synthesize(workdir, args.synthetic_gib)
    if not paths:
        ap.error("give artefact paths or --synthetic-gib")
    print(f"{'artefact':40} {'format':26} {'GiB':>6} {'cat s':>7} {'conv s':>7} {'ratio':>6} {'MiB/s':>7} {'RSS MiB':>8}")
    for path in paths:
        out = (args.outdir or workdir) / (path.name + ".bench.elf")
        cat = cat_seconds(path)
        conv, rss, (fmt, nbytes) = convert_child(path, out, workdir / "derived")
        size = path.stat().st_size
        print(f"{path.name[:40]:40} {fmt:26} {size / 2**30:6.2f} {cat:7.2f} {conv:7.2f} "
              f"{conv / cat:6.1f} {int(nbytes) / 2**20 / conv:7.0f} {rss:8.0f}")
        if not args.keep:
            out.unlink(missing_ok=True)
    if args.synthetic_gib and not args.keep:
        for p in workdir.glob("synthetic.*"):
            p.unlink()


if __name__ == "__main__":
    main()
