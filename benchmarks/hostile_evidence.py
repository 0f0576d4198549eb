#!/usr/bin/env python3
"""The crafted files of issue 13 through the real CLI: peak RSS, time, output size.

Each hostile file (tests/helpers/hostile_memory.py: a qcow2 zstd cluster of 1 GiB,
a kdump zlib page of 130 MiB, an ELF core of 18000 PT_NOTEs over the same bytes
and one of 200000 PT_LOADs, a stream and a flattened kdump declaring 1 TiB, a
flattened kdump of a million overlapping records, a zstd save resending one page
10000 times, a qcow2 whose 40960 L1 entries share one L2 table) is given to
``snapscope inspect`` and to ``snapscope analyze --case``, each in its own child
interpreter (``python -m toolkit.cli``, this checkout's code), under a 6 GiB
address-space cap. Per command: exit code, wall seconds, the child's peak RSS
(ru_maxrss from wait4), the bytes it wrote (the case directory, spills included;
``inspect`` spills to an unlinked temporary file, not counted)
and the first line of stderr. The issue's bar: within 60 s and 512 MiB, or exit 2
with one line naming the file.

Usage::

    nice -n 10 python benchmarks/hostile_evidence.py [--workdir DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import hostile_memory as H  # noqa: E402

ADDRESS_SPACE = 6 << 30
FILES = {
    "qcow2 zstd cluster of 1 GiB": ("bomb.qcow2", H.qcow2_zstd_bomb),
    "kdump zlib page of 130 MiB": ("bomb.kdump", H.kdump_zlib_bomb),
    "ELF with 18000 PT_NOTEs": ("notes.elf", H.elf_repeated_notes),
    "ELF with 200000 PT_LOADs": ("loads.elf", H.elf_many_loads),
    "stream declaring 1 TiB": ("huge.qevm", H.qevm_huge_ram),
    "flattened kdump declaring 1 TiB": ("huge.kdump", H.kdump_flat_huge),
    "flattened kdump of overlapping records": ("tiny.kdump", lambda p: H.flattened_tiny_records(p, overlapping=True)),
    "zstd save resending one page": ("resend.save", H.zstd_save_resending_one_page),
    "qcow2 with one L2 table under 40960 L1 entries": ("shared.qcow2", H.qcow2_shared_l2),
}


def _cap() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def _tree_bytes(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def run_cli(argv: list[str], env: dict, stderr_path: Path, timeout: float = 600) -> dict:
    """One ``snapscope`` command in a child; its exit code, seconds, peak RSS and stderr.

    The child is reaped here with wait4 (not by Popen) so that its own ru_maxrss
    is read; a child past ``timeout`` is killed (code -9).
    """
    t0 = time.monotonic()
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "toolkit.cli", *argv],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            preexec_fn=_cap,
        )
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    _, status, usage = os.wait4(proc.pid, 0)
    timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped: Popen must not wait again
    return {
        "code": proc.returncode,
        "seconds": round(time.monotonic() - t0, 2),
        "peak_mb": usage.ru_maxrss / 1024,
        "stderr": stderr_path.read_text(errors="replace"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=None, help="where the crafted files and cases go (deleted after)")
    ap.add_argument("--json", type=Path, default=None, help="append one JSON line per command here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hostile-", dir=args.workdir))
    env = dict(os.environ, COLUMNS="200", SNAPSCOPE_CACHE=str(work / "cache"))
    rows = []
    print(f"{'file':48} {'command':8} {'size':>9} {'exit':>4} {'s':>6} {'peak MiB':>8} {'written':>10}  first line")
    for i, (name, (filename, build)) in enumerate(FILES.items()):
        path = work / filename
        build(path)
        size = path.stat().st_size
        for command in ("inspect", "analyze"):
            case = work / f"case{i}"
            argv = [command, str(path)] + (["--case", str(case)] if command == "analyze" else [])
            r = run_cli(argv, env, work / "stderr.txt")
            written = _tree_bytes(case) if command == "analyze" else 0
            first = (r["stderr"].strip().splitlines() or [""])[0]
            row = {
                "file": name,
                "command": command,
                "file_bytes": size,
                "code": r["code"],
                "seconds": r["seconds"],
                "peak_mb": round(r["peak_mb"], 1),
                "written_bytes": written,
                "stderr_lines": len(r["stderr"].strip().splitlines()),
                "first_line": first.replace(str(work) + "/", "")[:160],
            }
            rows.append(row)
            print(
                f"{name:48} {command:8} {size:9d} {r['code']:4d} {r['seconds']:6.1f} {row['peak_mb']:8.1f}"
                f" {written:10d}  {row['first_line'][:90]}",
                flush=True,
            )
            if args.json:
                with open(args.json, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
        path.unlink()
    shutil.rmtree(work, ignore_errors=True)
    worst = max(rows, key=lambda r: r["peak_mb"])
    slowest = max(rows, key=lambda r: r["seconds"])
    print(f"worst peak RSS {worst['peak_mb']} MiB ({worst['command']} {worst['file']});", end=" ")
    print(f"slowest {slowest['seconds']} s ({slowest['command']} {slowest['file']})")


if __name__ == "__main__":
    main()
