#!/usr/bin/env python3
"""Flat yara-x scan of a whole memory dump vs snapscope's chunked physical scan.

The flat scan is what a responder would run: ``yara-x`` over the dump file as
one buffer (memory-mapped by yara-x). snapscope reads the dump as guest-physical
memory (``toolkit.memory.open_image``) and scans it in 16 MiB windows with a
64 KiB overlap. Reported: wall time of each, their ratio, and match counts per
rule (offsets differ by design: file offsets vs guest-physical addresses).

Usage::

    python benchmarks/yara_memory.py DUMP.elf [--rules DIR ...]
    python benchmarks/yara_memory.py --synthetic 256   # builds a 256 MiB ELF core with planted markers
"""

from __future__ import annotations

import argparse
import collections
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yara_x  # noqa: E402

from toolkit.engines.yara.rules import DEFAULT_RULES_DIR, compile_rules, find_rule_files  # noqa: E402
from toolkit.engines.yara.scan import scan_physical  # noqa: E402
from toolkit.memory import open_image  # noqa: E402

MARKER = b"BEACON SNAPSCOPE-LAB-BEACON-7f3a9c seq=1 host=bench\n"


def synthetic_elf(path: Path, mib: int) -> int:
    """An ELF core with two PT_LOAD segments of pseudo-random pages and markers every ~3 MiB,
    some planted across 16 MiB window boundaries. Returns the number of markers."""
    size = mib * 1024 * 1024
    low = min(size, 0xA0000)
    loads = [(0, low), (0x100000, size - low)]
    64 + 56 * len(loads)
    ehdr = (
        b"\x7fELF\x02\x01\x01"
        + b"\0" * 9
        + struct.pack("<HHIQQQIHHHHHH", 4, 0x3E, 1, 0, 64, 0, 0, 64, 56, len(loads), 64, 0, 0)
    )
    phdrs, off = b"", 4096
    for gpa, n in loads:
        phdrs += struct.pack("<IIQQQQQQ", 1, 7, off, gpa, gpa, n, n, 4096)
        off += n
    block = bytes((i * 2654435761 >> 13) & 0xFF for i in range(1 << 16))
    markers = 0
    with open(path, "wb") as fh:
        fh.write((ehdr + phdrs).ljust(4096, b"\0"))
        written = 0
        for _gpa, n in loads:
            end, seg_start = written + n, written
            while written < end:
                chunk = bytearray(block[: min(len(block), end - written)])
                spot = 3 * 1024 * 1024
                if written // spot != (written + len(chunk)) // spot and len(chunk) > len(MARKER) + 64:
                    chunk[16 : 16 + len(MARKER)] = MARKER
                    markers += 1
                boundary = 16 * 1024 * 1024
                # a marker crossing a 16 MiB scan-window edge (windows start at each run's GPA)
                edge = seg_start + ((written - seg_start) // boundary + 1) * boundary - 20
                if written <= edge < written + len(chunk) - len(MARKER):
                    rel = edge - written
                    chunk[rel : rel + len(MARKER)] = MARKER
                    markers += 1
                fh.write(chunk)
                written += len(chunk)
    return markers


def flat_scan(path: Path, rules_dirs) -> tuple[float, collections.Counter]:
    compiler = yara_x.Compiler()
    for f, ns in find_rule_files(rules_dirs):
        compiler.new_namespace(ns)
        compiler.add_source(f.read_text(), origin=str(f))
    scanner = yara_x.Scanner(compiler.build())
    t0 = time.perf_counter()
    res = scanner.scan_file(str(path))
    elapsed = time.perf_counter() - t0
    counts = collections.Counter()
    for rule in res.matching_rules:
        for p in rule.patterns:
            counts[rule.identifier] += len(p.matches)
    return elapsed, counts


def chunked_scan(path: Path, rules_dirs, prefer: str) -> tuple[float, collections.Counter, int]:
    rules = compile_rules(rules_dirs, prefer=prefer)
    t0 = time.perf_counter()
    with open_image(path) as img:
        rows, diags = scan_physical(rules, img)
    elapsed = time.perf_counter() - t0
    return elapsed, collections.Counter(r["rule"] for r in rows), len(diags)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dump", nargs="?", type=Path, help="ELF memory dump (virsh dump --memory-only)")
    ap.add_argument("--rules", type=Path, action="append", help="rule directory (default: the shipped rules)")
    ap.add_argument("--synthetic", type=int, metavar="MIB", help="generate an ELF core of this size instead")
    ap.add_argument("--engine", default="yara-x", choices=["yara-x", "yara-python"])
    args = ap.parse_args(argv)
    rules_dirs = args.rules or [DEFAULT_RULES_DIR]
    tmp = None
    if args.synthetic:
        tmp = tempfile.TemporaryDirectory(prefix="snapscope-yara-bench-")
        args.dump = Path(tmp.name) / "synthetic.elf"
        planted = synthetic_elf(args.dump, args.synthetic)
        print(f"synthetic ELF core: {args.synthetic} MiB, {planted} markers planted")
    if not args.dump or not args.dump.is_file():
        ap.error("give a dump path or --synthetic MIB")
    size_mb = args.dump.stat().st_size / 1e6
    flat_s, flat = flat_scan(args.dump, rules_dirs)
    chunk_s, chunked, ndiag = chunked_scan(args.dump, rules_dirs, args.engine)
    print(f"dump: {args.dump} ({size_mb:.0f} MB)")
    print(f"flat yara-x scan_file:          {flat_s:6.2f} s  ({size_mb / flat_s:6.0f} MB/s)")
    print(f"snapscope scan_physical ({args.engine}): {chunk_s:6.2f} s  ({size_mb / chunk_s:6.0f} MB/s)")
    print(f"ratio chunked/flat: {chunk_s / flat_s:.2f}x   diagnostics: {ndiag}")
    for rule in sorted(set(flat) | set(chunked)):
        print(f"  {rule:50} flat {flat.get(rule, 0):6}  chunked {chunked.get(rule, 0):6}")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
