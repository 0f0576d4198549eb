"""Benchmark: snapshot diff by allocated clusters vs walking and hashing both trees.

Builds (once, cached under --work) a 1 GiB ext4 base in qcow2 holding a few
thousand files (~600 MB), and an overlay where a guest-like edit changed a
few MB (new files, a removed file, a rewritten binary, an in-place tamper).
Then times ``diff_disks(base, overlay)`` both ways, checks they agree, and
prints the figures.

Usage:  python benchmarks/disk_diff.py [--work DIR] [--size-mb 1024] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import disk_images as b  # noqa: E402
from toolkit.engines.disk.diff import diff_disks  # noqa: E402


def build(work: Path, size_mb: int) -> tuple[Path, Path]:
    base, overlay = work / "base.qcow2", work / "overlay.qcow2"
    if base.exists() and overlay.exists():
        return base, overlay
    rnd = random.Random(7)
    tree = work / "tree"
    files = dict(b.sample_linux_files())
    budget = int(size_mb * 0.55) << 20
    n = 0
    while budget > 0:  # a few big binaries and many small files, like a root filesystem
        size = rnd.choice([4 << 10, 16 << 10, 64 << 10, 256 << 10, 2 << 20, 8 << 20])
        files[f"usr/lib/pkg{n % 50}/file{n}.bin"] = (rnd.randbytes(size), 0o755 if n % 3 == 0 else 0o644)
        budget -= size
        n += 1
    b.write_tree(tree, files)
    base_raw = b.make_ext4(tree, work / "base.raw", size_mb)
    b.to_qcow2(base_raw, base)
    (work / "drop.bin").write_bytes(rnd.randbytes(3 << 20))
    (work / "small").write_bytes(b"changed config\n")
    victim = next(p for p in sorted(files) if p.startswith("usr/lib/pkg7/"))
    new_raw = b.edit_ext4(
        base_raw,
        work / "new.raw",
        [
            "mkdir /var/tmp",
            "mkdir /var/tmp/.cache",
            f"write {work / 'drop.bin'} /var/tmp/.cache/.kworker-upd",
            "rm /etc/hostname",
            f"write {work / 'small'} /etc/hostname",
            "rm /var/log/syslog",
            f"rm /{victim}",
            f"write {work / 'drop.bin'} /{victim}",
        ],
    )
    block = b.block_of(new_raw, "/usr/lib/x/implant")
    with open(new_raw, "r+b") as fh:
        fh.seek(block * 4096)
        fh.write(b"tamper")
    b.overlay_from(new_raw, base, overlay, base_raw=base_raw)
    for p in (base_raw, new_raw):
        p.unlink()
    return base, overlay


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "snapscope-bench-disk")
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument(
        "--repeat", type=int, default=2, help="runs per method; the fastest counts (first run pays imports)"
    )
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base, overlay = build(a.work, a.size_mb)
    print(
        f"images ready in {time.perf_counter() - t0:.1f}s: base {base.stat().st_size >> 20} MiB file, "
        f"overlay {overlay.stat().st_size >> 20} MiB file"
    )
    timings = {"allocated-clusters": [], "full-walk": []}
    results = {}
    for _ in range(a.repeat):
        for method, full in (("allocated-clusters", False), ("full-walk", True)):
            t = time.perf_counter()
            df = diff_disks(base, overlay, full_walk=full)
            timings[method].append(time.perf_counter() - t)
            results[method] = df
    fast, slow = (min(timings[m]) for m in ("allocated-clusters", "full-walk"))
    key = ["change", "path", "sha256_a", "sha256_b"]
    agree = (
        results["allocated-clusters"][key].astype(str).values.tolist()
        == results["full-walk"][key].astype(str).values.tolist()
    )
    print(
        f"changes found: {len(results['allocated-clusters'])} "
        f"({results['allocated-clusters']['change'].value_counts().to_dict()}); methods agree: {agree}"
    )
    print(
        f"allocated-cluster diff: {fast:.2f}s   full walk + hash both trees: {slow:.2f}s   speed-up: {slow / fast:.1f}x"
    )
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
