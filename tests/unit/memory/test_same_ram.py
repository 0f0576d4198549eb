"""Same RAM in two memory artefacts (toolkit/memory/same_ram.py): an ELF core, a kdump and a
migration stream written from the spec with the same guest RAM, and one page changed."""

from __future__ import annotations

import functools

import pytest

import toolkit.memory as M
from tests.helpers import memory_writers as W
from tests.helpers.memory_samples import PS, page
from toolkit.memory.same_ram import compare_ram, ram_signature

PAGES = 768  # 3 MiB of guest RAM: 2 MiB of it above the 1 MiB the signature samples from


@functools.cache
def _ram(changed: int | None = None) -> bytes:
    ram = bytearray()
    for pfn in range(PAGES):
        data = bytes(PS) if pfn % 4 == 1 else page(pfn)
        if pfn == changed:
            data = page(10_000)
        ram += data
    return bytes(ram)


def _elf(path, ram):
    W.elf_core(path, [(0, ram, None)], notes=W.qemu_cpu_note(0x1000))
    return path


def _kdump(path, ram):
    W.kdump(path, {pfn: ram[pfn * PS : (pfn + 1) * PS] for pfn in range(PAGES)}, PAGES, comp="zlib")
    return path


def _migration(path, ram):
    q = W.Qevm(machine="pc-i440fx-7.2").start_ram([("pc.ram", len(ram))])
    q.eos().part()
    for pfn in range(PAGES):
        data = ram[pfn * PS : (pfn + 1) * PS]
        if data == bytes(PS):
            q.zero("pc.ram", pfn * PS)
        else:
            q.page("pc.ram", pfn * PS, data)
    q.eos().end().eos().devices()
    path.write_bytes(q.bytes())
    return path


@pytest.fixture
def artefacts(tmp_path):
    ram = _ram()
    return {
        "elf": _elf(tmp_path / "m.elf", ram),
        "kdump": _kdump(tmp_path / "m.kdump", ram),
        "migration": _migration(tmp_path / "m.qevm", ram),
        # one page changed, at a place a sample of 16 pages does not look
        "later": _elf(tmp_path / "later.elf", _ram(changed=300)),
    }


def test_one_moment_in_three_formats_is_the_same_ram(artefacts, tmp_path):
    with (
        M.open_image(artefacts["elf"]) as elf,
        M.open_image(artefacts["kdump"]) as kdump,
        M.open_image(artefacts["migration"], derived_dir=tmp_path / "d") as migration,
    ):
        signatures = {ram_signature(img)["digest"] for img in (elf, kdump, migration)}
        assert len(signatures) == 1
        for other in (kdump, migration):
            proof = compare_ram(elf, other)
            # every page but the legacy window's 96 (0xA0000-0xFFFFF) compared, none differs
            assert proof == {**proof, "same": True, "pages_compared": PAGES - 96, "pages_differing": 0}
            assert proof["first_differing_gpa"] is None and proof["coverage"] == 1.0


def test_one_changed_page_the_sample_misses_is_found_by_the_comparison(artefacts):
    with M.open_image(artefacts["elf"]) as elf, M.open_image(artefacts["later"]) as later:
        sample = ram_signature(elf, samples=16)
        assert sample["pages"] == 16 and sample["nonzero"] > 0
        assert sample == ram_signature(later, samples=16)  # the sample alone would say "same"
        assert ram_signature(elf)["digest"] != ram_signature(later)["digest"]  # a full-density sample sees it
        proof = compare_ram(elf, later)
        assert not proof["same"] and proof["pages_differing"] == 1
        assert proof["first_differing_gpa"] == hex(300 * PS)


def test_artefacts_sharing_too_little_ram_are_not_compared(artefacts, tmp_path):
    small = _elf(tmp_path / "small.elf", _ram()[: 300 * PS])
    with M.open_image(artefacts["elf"]) as elf, M.open_image(small) as part:
        proof = compare_ram(elf, part)
        assert not proof["same"] and proof["pages_compared"] == 0 and "not compared" in proof["method"]
