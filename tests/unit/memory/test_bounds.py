"""Hostile memory artefacts cannot exhaust memory, disk or time (issue 13).

Each test opens a crafted file from tests/helpers/hostile_memory.py in a child
interpreter (tests/helpers/bounded.py) and asserts the outcome exactly and
the child's peak RSS above its own after imports. The crafted files are the
issue's reproductions: before the readers were bounded, each of these tests
failed on RSS (1 GiB, 130 MiB, 912 MiB) or on time (the notes: a minute).
QEMU streams (declared RAM, page index, spill, inflation) are in
test_bounds_streams.py.
"""

from __future__ import annotations

import pytest

from tests.helpers import hostile_memory as H
from tests.helpers import memory_writers as W
from tests.helpers.bounded import measure
from tests.helpers.memory_samples import PS, page

SETUP, GROWTH_MB = H.SETUP, H.GROWTH_MB


def test_qcow2_zstd_cluster_inflating_to_a_gigabyte(tmp_path):
    bomb = H.qcow2_zstd_bomb(tmp_path / "bomb.qcow2")
    r = measure(
        """
        try:
            M.open_image(P)
        except M.MemoryFormatError as exc:
            out = str(exc)
        """,
        setup=SETUP,
        P=str(bomb["path"]),
    )
    assert r["ok"] and r["grew_mb"] < GROWTH_MB, r
    assert r["out"].startswith(f"{bomb['path']}: at offset 0x")
    assert "compressed cluster: zstd data inflates past 65536 bytes" in r["out"]


def test_kdump_zlib_page_inflating_past_its_block(tmp_path):
    bomb = H.kdump_zlib_bomb(tmp_path / "bomb.kdump")
    bs = bomb["block_size"]
    r = measure(
        """
        with M.open_image(P) as img:
            first, bad = img.read(0, BS), img.read(BS, BS)
            out = [first == bytes(range(256)) * (BS // 256), bad == bytes(BS), img.diagnostics]
        """,
        setup=SETUP,
        P=str(bomb["path"]),
        BS=bs,
    )
    assert r["ok"] and r["grew_mb"] < GROWTH_MB, r
    intact, zeros, diags = r["out"]
    assert intact and zeros
    (d,) = diags
    assert d["what"] == "corrupt compressed page" and d["missing"] == [[bs, bs]]
    assert "zlib data inflates past 65536 bytes" in d["why"]


def test_elf_core_with_thousands_of_note_headers_over_the_same_bytes(tmp_path):
    core = H.elf_repeated_notes(tmp_path / "notes.elf")
    assert core["note_headers"] > 10000
    r = measure(
        """
        facts = M.probe(P)
        with M.open_image(P) as img:
            out = [facts["vcpus"], facts["cr3"], img.info["cr3"], img.read(0, 4096) == RAM,
                   [d["what"] for d in img.diagnostics], len(img.notes)]
        """,
        setup=SETUP,
        P=str(core["path"]),
        RAM=core["ram"],
        timeout=30,
    )
    assert r["ok"] and r["grew_mb"] < GROWTH_MB and r["seconds"] < 10, r
    vcpus, probe_cr3, open_cr3, ram_ok, whats, note_bytes = r["out"]
    assert (vcpus, probe_cr3, open_cr3, ram_ok) == (1, [0x1000], [0x1000], True)
    assert whats == ["overlapping PT_NOTE segments"]
    assert note_bytes == 256 << 10  # the note area once


def test_elf_note_ceilings_name_the_file_and_offset(tmp_path):
    p = tmp_path / "many.elf"
    W.elf_core(p, [(0, page(1), None)], notes=W.note("CORE", 1, b"") * 5000)
    r = measure(
        "try:\n    M.open_image(P)\nexcept M.MemoryFormatError as exc:\n    out = str(exc)",
        setup=SETUP,
        P=str(p),
        env={"SNAPSCOPE_MAX_ELF_NOTES": "4096"},
    )
    assert r["out"].startswith(f"{p}: at offset 0x") and "more than 4096 ELF notes" in r["out"]
    assert "SNAPSCOPE_MAX_ELF_NOTES" in r["out"]
    r = measure(
        "try:\n    M.open_image(P)\nexcept M.MemoryFormatError as exc:\n    out = str(exc)",
        setup=SETUP,
        P=str(p),
        env={"SNAPSCOPE_MAX_NOTE_BYTES": "16K"},
    )
    assert "PT_NOTE segments hold 97.7 KiB of notes, above 16 KiB" in r["out"]


def test_flattened_kdump_declaring_a_terabyte(tmp_path):
    dump = H.kdump_flat_huge(tmp_path / "huge.kdump")
    assert dump["path"].stat().st_size < 16 << 10
    r = measure(
        """
        with M.open_image(P) as img:
            out = [img.runs, img.read(0, 4096) == A, img.info["max_mapnr"]]
        """,
        setup=SETUP,
        P=str(dump["path"]),
        A=dump["page0"],
        timeout=30,
    )
    assert r["ok"] and r["grew_mb"] < GROWTH_MB and r["seconds"] < 10, r
    assert r["out"] == [[[0, PS]], True, H.TIB // PS]


def test_snappy_page_declaring_gigabytes_is_refused_before_decoding(tmp_path):
    p = tmp_path / "snappy.kdump"
    lying = b"\xff\xff\xff\xff\x0f" + b"\x00" * 20  # preamble: 4 GiB of output
    W.kdump(p, {0: page(0)}, 8, flattened=False, packed={1: (0x4, lying)})
    r = measure(
        "with M.open_image(P) as img:\n    img.read(4096, 4096)\n    out = img.diagnostics", setup=SETUP, P=str(p)
    )
    assert r["ok"] and r["grew_mb"] < GROWTH_MB, r
    (d,) = r["out"]
    assert "snappy data declares 4294967295 bytes, not 4096" in d["why"]


def test_elf_core_with_two_hundred_thousand_loads(tmp_path):
    core = H.elf_many_loads(tmp_path / "loads.elf")
    r = measure(
        """
        facts = M.probe(P)
        with M.open_image(P) as img:
            out = [facts["loads"], len(img.runs), img.runs[1], img.read(8192 * 7, 2) == b"Z\\0", img.diagnostics]
        """,
        setup=SETUP,
        P=str(core["path"]),
    )
    # 11 MiB of program headers: the runs alone are 200000 tuples (~20 MiB); was 260 MiB and 7 s
    assert r["ok"] and r["grew_mb"] < 96 and r["seconds"] < 10, r
    assert r["out"] == [200_000, 200_000, [8192, 1], True, []]


@pytest.mark.parametrize("overlapping", [False, True], ids=["apart", "overlapping"])
def test_flattened_kdump_of_a_million_tiny_records(tmp_path, overlapping):
    dump = H.flattened_tiny_records(tmp_path / "tiny.kdump", overlapping=overlapping)
    r = measure(
        "try:\n    M.open_image(P).close()\n    out = 'opened'\nexcept M.MemoryFormatError as exc:\n    out = str(exc)",
        setup=SETUP,
        P=str(dump["path"]),
    )
    assert r["ok"] and r["grew_mb"] < GROWTH_MB and r["seconds"] < 15, r
    if overlapping:
        assert r["out"] == (
            f"{dump['path']}: at offset 0x1000: 1000000 flattened records overwrite one another, more than 65536 "
            "(raise SNAPSCOPE_MAX_OVERLAPPING_RECORDS if this is real)"
        )
    else:
        assert r["out"] == "opened"
