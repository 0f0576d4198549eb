"""The real server guest's memory in every format, read in place, page-identical to the ELF.

For each run of the baseline server lab, every memory artefact of the moment its ELF was taken
(QEMU: kdump-zlib, migration stream, savevm state in the disk overlay; libvirt: the internal
snapshot's VM state beside `virsh dump --memory-only`'s ELF) is opened with snapscope's readers
and compared with the ELF over guest RAM, page for page: nothing converted, and the derived files
the readers keep (stream indexes) stay under 5 % of guest RAM.

Opt-in like every `server` test (tests/conftest.py, SERVER_LAB_ENV).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import toolkit.memory as M
from toolkit.memory import qcow2
from toolkit.memory.same_ram import intersect_runs

from .test_memory_formats import _ram_ranges

pytestmark = [pytest.mark.lab, pytest.mark.server, pytest.mark.timeout(3600)]

PS = 4096
CHUNK = 4 << 20
MEMORY = {"kdump-flattened", "qemu-migration", "qcow2"}


def _same_moment(lab: Path, truth: dict) -> list[tuple[dict, dict]]:
    """(artefact, ELF of the same run and moment) for every non-ELF memory artefact."""
    arts = [dict(a, path=lab / a["path"]) for a in truth["artefacts"]]
    elves = {(a["run"], a["moment"]): a for a in arts if a["format"] == "elf-core"}
    out = []
    for a in arts:
        if a["format"] not in MEMORY or (a["run"], a["moment"]) not in elves:
            continue
        if a["format"] == "qcow2":
            snaps = [s for s in qcow2.read_header(a["path"])["snapshots"] if s["vm_state_size"]]
            if not snaps:
                continue
            a = dict(a, snapshot=snaps[0]["name"])
        out.append((a, elves[(a["run"], a["moment"])]))
    return out


def _derived_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) if directory.exists() else 0


def test_every_format_page_identical_to_the_elf_read_in_place(server_baseline, server_truth, tmp_path):
    pairs = _same_moment(server_baseline, server_truth)
    assert {(a["run"], a["format"]) for a, _ in pairs} == {
        ("qemu", "kdump-flattened"),
        ("qemu", "qemu-migration"),
        ("qemu", "qcow2"),
        ("libvirt", "qcow2"),
    }
    report = {}
    for art, ref in pairs:
        derived = tmp_path / f"{art['run']}-{art['format']}"
        with (
            M.open_image(art["path"], snapshot=art.get("snapshot"), derived_dir=derived) as src,
            M.open_image(ref["path"]) as elf,
        ):
            ram_bytes = src.info.get("ram_bytes") or sum(n for s, n in elf.runs if s < 0xE0000000 or s >= 1 << 32)
            ram = _ram_ranges(ram_bytes, src.info.get("machine"))
            common = intersect_runs(
                intersect_runs(ram, [(s, s + n) for s, n in src.runs]), [(s, s + n) for s, n in elf.runs]
            )
            covered = sum(hi - lo for lo, hi in common)
            assert covered >= 0.9 * sum(hi - lo for lo, hi in ram), (art["path"], covered)
            bad, nonzero = [], 0
            for lo, hi in common:
                for at in range(lo, hi, CHUNK):
                    n = min(CHUNK, hi - at)
                    a, b = src.read(at, n), elf.read(at, n)
                    nonzero += n - a.count(0) > 0
                    if a != b:
                        bad += [at + k for k in range(0, n, PS) if a[k : k + PS] != b[k : k + PS]]
            report[f"{art['run']}/{art['format']}"] = {
                "bytes": covered,
                "mismatched_pages": len(bad),
                "first": [hex(g) for g in bad[:4]],
                "derived_bytes": _derived_bytes(derived),
            }
            assert nonzero > 0
        # read in place: what the reader keeps on disk is an index, not a copy of RAM
        assert _derived_bytes(derived) <= 0.05 * ram_bytes, report
    assert all(r["mismatched_pages"] == 0 for r in report.values()), report
