import struct
import subprocess

import pytest
from dissect.util.compression import lzo

import toolkit.memory as M
from tests.helpers import memory_writers as W
from tests.helpers.memory_samples import PS, page

PAGES = {0: page(0), 1: bytes(PS), 2: page(2), 9: page(9), 10: bytes(PS), 63: page(63)}


@pytest.mark.parametrize("flat", [True, False], ids=["flattened", "raw"])
@pytest.mark.parametrize("comp", [None, "zlib", "lzo", "snappy"])
def test_kdump_pages(tmp_path, flat, comp):
    p = tmp_path / "g.kdump"
    W.kdump(
        p,
        PAGES,
        64,
        comp=comp,
        flattened=flat,
        notes=W.qemu_cpu_note(0x42000),
        vmcoreinfo=b"OSRELEASE=6.1.0\n",
        shuffle=flat,
    )
    with M.open_image(p) as img:
        assert img.format == "kdump" and img.info["flattened"] is flat
        assert img.info["compression"] == ([comp] if comp else [])
        assert img.runs == [(0, 3 * PS), (9 * PS, 2 * PS), (63 * PS, PS)]
        for pfn, data in PAGES.items():
            assert img.read(pfn * PS, PS) == data
        assert img.read(5 * PS, PS) == bytes(PS)  # not dumped: absent, reads as zeros
        assert img.info["cr3"] == [0x42000] and img.info["vmcoreinfo"]["OSRELEASE"] == "6.1.0"
        assert img.info["utsname"]["release"] == "6.1.0-test"
        assert img.diagnostics == []


def test_literal_lzo_encoder_roundtrips():
    for n in (4, 18, 19, 273, 274, PS):
        data = bytes(range(256)) * (n // 256) + bytes(n % 256)
        assert lzo.decompress(W.lzo1x_literal(data), False, n) == data


def test_kdump_lzo_pages_made_by_lzop(tmp_path):
    # LZO1X-1 data from the real lzop tool: its block payload is a bare LZO1X stream.
    data = page(5)
    out = subprocess.run(["lzop", "-c"], input=data, capture_output=True, check=True).stdout
    block = 0x22 + out[0x21] + 4  # after the file name and the header checksum
    dst_len, src_len = struct.unpack_from(">II", out, block)
    body = out[block + 12 : block + 12 + src_len]  # lengths, then the adler32 of the data
    assert dst_len == PS and src_len < PS
    assert lzo.decompress(body, False, PS) == data
    p = tmp_path / "lzop.kdump"
    W.kdump(p, {3: data}, 8, comp=None, flattened=False)
    raw = bytearray(p.read_bytes())
    desc_at = PS * 4
    off = struct.unpack_from("<q", raw, desc_at)[0]
    raw[off : off + len(body)] = body
    struct.pack_into("<qII", raw, desc_at, off, len(body), 2)
    p.write_bytes(raw)
    with M.open_image(p) as img:
        assert img.read(3 * PS, PS) == data and img.info["compression"] == ["lzo"]


def test_kdump_corrupt_page_is_a_diagnostic(tmp_path):
    p = tmp_path / "bad.kdump"
    W.kdump(p, {0: page(0), 1: page(1)}, 8, comp="zlib", flattened=False)
    raw = bytearray(p.read_bytes())
    off, size = struct.unpack_from("<qI", raw, PS * 4 + 24)
    raw[off : off + 8] = b"\xde\xad\xbe\xef" * 2
    p.write_bytes(raw)
    with M.open_image(p) as img:
        assert img.read(0, PS) == page(0)
        assert img.read(PS, PS) == bytes(PS)
        (d,) = img.diagnostics
        assert d["what"] == "corrupt compressed page" and d["missing"] == [(PS, PS)]
        assert d["where"] == f"{p}@{off:#x}"


def test_kdump_flattened_truncated_keeps_what_is_there(tmp_path):
    p = tmp_path / "cut.kdump"
    W.kdump(p, {i: page(i) for i in range(8)}, 8, flattened=True)
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) - 3 * PS])
    with M.open_image(p) as img:
        assert img.read(0, PS) == page(0)
        assert any(d["what"] == "flattened stream truncated" for d in img.diagnostics)


def test_kdump_lying_header(tmp_path):
    p = tmp_path / "lie.kdump"
    W.kdump(p, {0: page(0)}, 8, flattened=False, version=5)
    raw = bytearray(p.read_bytes())
    struct.pack_into("<I", raw, 440, 1 << 30)  # max_mapnr far beyond the bitmap
    p.write_bytes(raw)
    with pytest.raises(M.MemoryFormatError, match=r"lie.kdump: at offset 0x1b8: max_mapnr"):
        M.open_image(p)
    struct.pack_into("<I", raw, 428, 12345)
    p.write_bytes(raw)
    with pytest.raises(M.MemoryFormatError, match="block_size 12345"):
        M.open_image(p)


def test_flattened_negative_record(tmp_path):
    p = tmp_path / "neg.kdump"
    p.write_bytes(
        b"makedumpfile".ljust(16, b"\0") + struct.pack(">qq", 1, 1) + bytes(PS - 32) + struct.pack(">qq", -5, 10)
    )
    with pytest.raises(M.MemoryFormatError, match="at offset 0x1000: record offset -5"):
        M.open_image(p)


def test_kdump_pages_read_together_keep_each_pages_fate(tmp_path):
    # one read over six compressed pages: records and data are fetched at once, yet a corrupt
    # page is lost alone, and a page whose data lies far away (a hostile table) is still found
    p = tmp_path / "batch.kdump"
    pages = {pfn: page(pfn) for pfn in range(6)}
    W.kdump(p, pages, 8, comp="zlib", flattened=False)
    raw = bytearray(p.read_bytes())
    desc_at = PS * 4
    off2, _ = struct.unpack_from("<qI", raw, desc_at + 2 * 24)
    raw[off2 : off2 + 8] = b"\xde\xad\xbe\xef" * 2
    off0, size0 = struct.unpack_from("<qI", raw, desc_at)
    far = len(raw) + 64 * PS  # page 0's data moved past 64 pages of padding
    raw += bytes(far - len(raw)) + raw[off0 : off0 + size0]
    struct.pack_into("<q", raw, desc_at, far)
    p.write_bytes(raw)
    expected = b"".join(bytes(PS) if k == 2 else pages[k] for k in range(6))
    with M.open_image(p) as img:
        assert img.read(PS, 5 * PS) == expected[PS:]  # pages 1-5: their data lies together
        assert img.read(0, 6 * PS) == expected  # with page 0: scattered, read page by page
        assert len(img.diagnostics) == 2  # the corrupt page, once per read of it
        for d in img.diagnostics:
            assert d["what"] == "corrupt compressed page" and d["missing"] == [(2 * PS, PS)]
            assert d["where"] == f"{p}@{off2:#x}" and "pfn 0x2" in d["why"]


@pytest.mark.parametrize("shuffle", [False, True], ids=["in order", "headers written last"])
@pytest.mark.parametrize("scan", ["one record", "half", "all"])
def test_probe_of_a_flattened_kdump_indexes_only_what_it_reads(tmp_path, monkeypatch, shuffle, scan):
    from toolkit.memory import kdump

    p = tmp_path / "g.kdump"
    pages = {pfn: page(pfn) for pfn in range(0, 64, 3)}
    W.kdump(p, pages, 64, comp="zlib", flattened=True, notes=W.qemu_cpu_note(0x42000), shuffle=shuffle)
    whole = kdump._probe(p, None)
    indexed = []
    real = kdump.FlatFile

    def counting(path, src, scan_limit=None):
        indexed.append(scan_limit)
        return real(path, src, scan_limit)

    limit = {"one record": 4096 + 16, "half": p.stat().st_size // 2, "all": 1 << 30}[scan]
    monkeypatch.setattr(kdump, "FlatFile", counting)
    monkeypatch.setattr(kdump, "PROBE_SCAN", limit)
    assert kdump.probe(p) == whole and whole["cr3"] == [0x42000]
    assert indexed[0] == limit
    if scan == "one record":  # the header's record alone: the sub-header is not there, all is indexed
        assert indexed == [limit, None]
    elif scan == "all" or not shuffle:  # the headers come first, as QEMU writes them: one partial index
        assert indexed == [limit]
