"""Lab oracle: every memory artefact the lab writes holds the same guest RAM,
page for page, as the ELF dump (dump-guest-memory) of the same moment.

Compared: guest RAM only (formats.md) — below the PCI hole / above 4 GiB,
outside the legacy window 0xA0000-0xFFFFF, and not device memory (VRAM,
BIOS ROM), which only the ELF dump carries.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import toolkit.memory as M
from toolkit.memory import guest_layout, qcow2
from toolkit.memory.convert import to_elf
from toolkit.memory.same_ram import intersect_runs

pytestmark = pytest.mark.lab

PS = 4096
LEGACY = (0xA0000, 0x100000)
MEMORY_FORMATS = {
    "elf-core",
    "elf",
    "kdump",
    "kdump-flattened",
    "qemu-migration",
    "compressed-qemu-migration",
    "libvirt-save",
    "qcow2-snapshot",
    "qcow2",
    "lime",
    "raw-memory",
}


def _artefacts(lab, truth):
    out = []
    for a in truth.get("artefacts", []):
        path = Path(a["path"])
        path = path if path.is_absolute() else lab / path
        if a.get("format") not in MEMORY_FORMATS or not path.is_file():
            continue
        if a["format"] == "qcow2" and not any(s["vm_state_size"] for s in qcow2.read_header(path)["snapshots"]):
            continue  # a disk without VM state is not a memory artefact
        out.append(dict(a, path=path))
    return out


def _is_elf(a):
    return a["format"] in ("elf-core", "elf")


def _snapshot_of(a):
    facts = a.get("facts") or {}
    return facts.get("snapshot") or facts.get("snapshot_name")


def _ram_ranges(ram_bytes, machine):
    ranges = []
    for gpa, _, _, length in guest_layout.guest_ram_pieces(machine or "pc-i440fx", [("pc.ram", ram_bytes)]):
        ranges.append((gpa, gpa + length))
    cut = []
    for lo, hi in ranges:  # drop the legacy VGA/BIOS window
        if lo < LEGACY[0]:
            cut.append((lo, min(hi, LEGACY[0])))
        if hi > LEGACY[1]:
            cut.append((max(lo, LEGACY[1]), hi))
    return cut


def _page_hashes(img, ranges):
    hashes = {}
    for lo, hi in ranges:
        for at in range(lo, hi, 1 << 20):
            data = img.read(at, min(1 << 20, hi - at))
            for k in range(0, len(data), PS):
                hashes[at + k] = hashlib.sha256(data[k : k + PS]).digest()
    return hashes


def _cases(lab, truth):
    arts = _artefacts(lab, truth)
    refs = {(a.get("run"), a.get("moment")): a for a in arts if _is_elf(a)}
    return [(a, refs.get((a.get("run"), a.get("moment")))) for a in arts if not _is_elf(a)]


def test_lab_has_memory_artefacts(lab, ground_truth):
    cases = _cases(lab, ground_truth)
    formats = {a["format"] for a, ref in cases if ref is not None}
    # Some moments (a later `virsh dump`, `virsh save`) have no ELF twin: those
    # artefacts are only opened (below), not compared.
    assert {"kdump-flattened", "qemu-migration", "libvirt-save", "qcow2"} <= formats, formats


def test_every_artefact_opens_and_probes(lab, ground_truth, tmp_path):
    for a in _artefacts(lab, ground_truth):
        with M.open_image(a["path"], snapshot=_snapshot_of(a), derived_dir=tmp_path / "derived") as img:
            assert img.runs, a["path"]
            errors = [d for d in img.diagnostics if d["severity"] == "error"]
            assert not errors, (a["path"], errors)


def test_converted_ram_matches_elf_of_same_moment(lab, ground_truth, tmp_path):
    mismatches = {}
    for art, ref in _cases(lab, ground_truth):
        if ref is None:
            continue
        out = tmp_path / (art["path"].name + ".elf")
        result = to_elf(art["path"], out, snapshot=_snapshot_of(art), derived_dir=tmp_path / "derived")
        assert result["bytes"] > 0
        with (
            M.open_image(out) as conv,
            M.open_image(ref["path"]) as elf,
            M.open_image(art["path"], snapshot=_snapshot_of(art), derived_dir=tmp_path / "derived") as src,
        ):
            ram_bytes = src.info.get("ram_bytes") or sum(n for s, n in elf.runs if s < 0xE0000000 or s >= 1 << 32)
            ram = _ram_ranges(ram_bytes, src.info.get("machine"))
            conv_runs = [(s, s + n) for s, n in conv.runs]
            elf_runs = [(s, s + n) for s, n in elf.runs]
            common = intersect_runs(intersect_runs(ram, conv_runs), elf_runs)
            covered = sum(hi - lo for lo, hi in common)
            assert covered >= 0.9 * sum(hi - lo for lo, hi in ram), (art["path"], covered, ram)
            a, b = _page_hashes(conv, common), _page_hashes(elf, common)
            bad = [gpa for gpa in a if a[gpa] != b[gpa]]
            if bad:
                mismatches[str(art["path"])] = (len(bad), [hex(g) for g in bad[:8]])
    assert not mismatches, mismatches
