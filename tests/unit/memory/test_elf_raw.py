import struct

import pytest

import toolkit.memory as M
from tests.helpers import memory_writers as W
from tests.helpers.memory_samples import PS, page


def _notes():
    return (
        W.note("CORE", 1, bytes(336))
        + W.qemu_cpu_note(0x1AB000)
        + W.note("VMCOREINFO", 0, b"OSRELEASE=6.1.0-13-cloud-amd64\nPAGESIZE=4096\n")
    )


@pytest.mark.parametrize("cls", [64, 32])
def test_elf_core_segments_and_notes(tmp_path, cls):
    p = tmp_path / "g.elf"
    W.elf_core(p, [(0, page(1) + page(2), None), (0x100000, page(3), 3 * PS)], notes=_notes(), cls=cls)
    with M.open_image(p) as img:
        assert img.format == "elf-core"
        assert img.runs == [(0, 2 * PS), (0x100000, 3 * PS)]
        assert img.read(PS, PS) == page(2)
        assert img.read(0x100000 - 8, 16) == bytes(8) + page(3)[:8]
        assert img.read(0x101000, PS) == bytes(PS)  # memsz > filesz: zeros
        assert img.info["cr3"] == [0x1AB000] and img.info["vcpus"] == 1
        assert img.info["vmcoreinfo"]["OSRELEASE"] == "6.1.0-13-cloud-amd64"
        assert img.diagnostics == []
        assert b"VMCOREINFO" in img.notes


def test_elf_pn_xnum(tmp_path):
    p = tmp_path / "many.elf"
    segs = [(i * 2 * PS, page(i), None) for i in range(40)]
    W.elf_core(p, segs, notes=_notes(), xnum=True)
    assert struct.unpack_from("<H", p.read_bytes(), 56)[0] == 0xFFFF
    with M.open_image(p) as img:
        assert len(img.runs) == 40
        assert img.read(39 * 2 * PS, PS) == page(39)
    assert M.probe(p)["loads"] == 40


def test_elf_truncated_segment_is_a_diagnostic(tmp_path):
    p = tmp_path / "cut.elf"
    full = W.elf_core(p, [(0, page(1) + page(2), None)])
    p.write_bytes(full[: -PS + 100])
    with M.open_image(p) as img:
        assert img.read(0, PS) == page(1)
        (d,) = img.diagnostics
        assert d["what"] == "memory range missing" and d["missing"] == [(PS + 100, PS - 100)]


def test_elf_bad_headers(tmp_path):
    p = tmp_path / "bad.elf"
    full = bytearray(W.elf_core(p, [(0, page(1), None)]))
    struct.pack_into("<H", full, 56, 5000)  # e_phnum lies
    p.write_bytes(full)
    with pytest.raises(M.MemoryFormatError, match=r"bad.elf: at offset 0x40: 5000 program headers"):
        M.open_image(p)


def test_lime(tmp_path):
    p = tmp_path / "g.lime"

    def hdr(s, e):
        return struct.pack("<4sIQQQ", b"EMiL", 1, s, e, 0)

    p.write_bytes(hdr(0, PS - 1) + page(1) + hdr(0x100000, 0x100000 + 2 * PS - 1) + page(2) + page(3))
    with M.open_image(p) as img:
        assert img.format == "lime" and img.runs == [(0, PS), (0x100000, 2 * PS)]
        assert img.read(0x101000, PS) == page(3)
    p.write_bytes(hdr(0, PS - 1) + page(1) + b"XXXX" + bytes(28))
    with pytest.raises(M.MemoryFormatError, match="at offset 0x1020: LiME header magic"):
        M.open_image(p)


def test_raw_is_the_fallback(tmp_path):
    p = tmp_path / "g.raw"
    p.write_bytes(page(1) + page(2))
    with M.open_image(p) as img:
        assert img.format == "raw" and img.runs == [(0, 2 * PS)] and img.read(PS, 4) == page(2)[:4]
    assert M.probe(p) is None


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(M.MemoryFormatError, match="No such file"):
        M.open_image(tmp_path / "nope")
    with pytest.raises(M.MemoryFormatError, match="directory"):
        M.open_image(tmp_path)
