import gzip
import struct

import pytest

import toolkit.memory as M
from tests.helpers import memory_writers as W

CODECS = ["raw", "gzip", "bzip2", "xz", "lzop", "zstd"]


@pytest.mark.parametrize("codec", CODECS)
def test_save_image_each_compression(tmp_path, stream, codec):
    data, expect = stream
    p = tmp_path / f"vm.{codec}.save"
    p.write_bytes(W.libvirt_save(data, codec))
    derived = tmp_path / "derived"
    with M.open_image(p, derived_dir=derived) as img:
        assert img.format == "libvirt-save"
        assert img.read(0, len(expect)) == expect and img.runs == [(0, len(expect))]
        assert img.info["compression"] == codec and img.info["complete"] is True
        assert img.info["domain_xml"].startswith("<domain type='qemu'>")
        assert img.info["cookie"] == "<qemu-migration/>"
        assert img.diagnostics == []
        if codec != "raw":
            assert img.info["derived"]["reused"] is False
    if codec != "raw":  # a second open reuses the decompressed index
        with M.open_image(p, derived_dir=derived) as img:
            assert img.info["derived"]["reused"] is True
            assert img.read(0, len(expect)) == expect
    facts = M.probe(p)
    assert facts["compression"] == codec and facts["format"] == "libvirt-save"


def test_compressed_without_derived_dir_uses_a_temporary_file(tmp_path, stream):
    p = tmp_path / "vm.save"
    p.write_bytes(W.libvirt_save(stream[0], "zstd"))
    with M.open_image(p) as img:
        assert img.read(0, len(stream[1])) == stream[1]
        assert [d["what"] for d in img.diagnostics] == ["decompressed to a temporary file"]


def test_part_magic_is_incomplete_evidence(tmp_path, stream):
    data, expect = stream
    p = tmp_path / "vm.part"
    p.write_bytes(W.libvirt_save(data[: len(data) // 2], "raw", part=True))
    with M.open_image(p) as img:
        assert img.info["complete"] is False
        whats = [d["what"] for d in img.diagnostics]
        assert whats[0] == "incomplete evidence" and "stream incomplete" in whats


def test_big_endian_header_and_no_cookie(tmp_path, stream):
    p = tmp_path / "be.save"
    p.write_bytes(W.libvirt_save(stream[0], "raw", big_endian=True, cookie=None))
    with M.open_image(p) as img:
        assert img.info["byte_order"] == "big" and img.info["cookie"] is None
        assert img.read(0, len(stream[1])) == stream[1]


def test_lying_header(tmp_path, stream):
    raw = bytearray(W.libvirt_save(stream[0], "raw"))
    struct.pack_into("<I", raw, 0x14, 1 << 30)
    p = tmp_path / "lie.save"
    p.write_bytes(raw)
    with pytest.raises(M.MemoryFormatError, match=r"lie.save: at offset 0x14: data_len"):
        M.open_image(p)
    raw = bytearray(W.libvirt_save(stream[0], "raw"))
    struct.pack_into("<I", raw, 0x1C, 9)
    p.write_bytes(raw)
    with pytest.raises(M.MemoryFormatError, match="at offset 0x1c: unknown stream format 9"):
        M.open_image(p)


def test_corrupt_compressed_stream(tmp_path, stream):
    blob = bytearray(W.libvirt_save(stream[0], "gzip"))
    blob[len(blob) // 2 : len(blob) // 2 + 64] = bytes(64)
    p = tmp_path / "corrupt.save"
    p.write_bytes(blob)
    try:
        with M.open_image(p, derived_dir=tmp_path / "d") as img:
            assert any(d["severity"] == "error" for d in img.diagnostics)
    except M.MemoryFormatError as exc:
        assert "corrupt.save" in str(exc)


@pytest.mark.parametrize("codec", CODECS[1:])
def test_virsh_dump_full_compressed_whole(tmp_path, stream, codec):
    data, expect = stream
    p = tmp_path / f"dump.{codec}"
    p.write_bytes(W.COMPRESS[codec](data))
    with M.open_image(p, derived_dir=tmp_path / "d") as img:
        assert img.format == "compressed-qemu-migration" and img.info["compression"] == codec
        assert img.read(0, len(expect)) == expect


def test_compressed_non_qevm_is_not_claimed(tmp_path):
    p = tmp_path / "notes.gz"
    p.write_bytes(gzip.compress(b"hello world" * 100))
    assert M.detect(p)["name"] == "raw"
