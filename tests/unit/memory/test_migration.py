import struct

import pytest

import toolkit.memory as M
from tests.helpers import memory_writers as W
from tests.helpers.memory_samples import PS, complete_stream, page
from toolkit.memory import guest_layout, migration

GIB = 1 << 30


def _open(tmp_path, data, name="s.qevm", **kw):
    p = tmp_path / name
    p.write_bytes(data)
    return M.open_image(p, **kw)


def test_complete_stream_all_pages(tmp_path, stream):
    data, expect = stream
    with _open(tmp_path, data) as img:
        assert img.format == "qemu-migration"
        assert img.runs == [(0, len(expect))]
        assert img.read(0, len(expect)) == expect
        assert img.diagnostics == []
        assert img.info["machine"] == "pc-i440fx-7.2" and img.info["complete"]
        assert [b["name"] for b in img.info["ram_blocks"]] == ["pc.ram", "vga.vram"]
        assert img.info["ram_bytes"] == len(expect)


def test_every_record_type_and_last_copy_wins(tmp_path):
    old, new = page(1), page(1)[:100] + b"Z" * 50 + page(1)[150:]
    q = W.Qevm(uuid=True).start_ram([("pc.ram", 8 * PS)])
    q.page("pc.ram", 0, page(0)).zero("pc.ram", PS, fill=0x5A).eos()
    q.part().page("pc.ram", 2 * PS, old).flush().xbzrle("pc.ram", 2 * PS, W.xbzrle_encode(old, new))
    q.compressed("pc.ram", 3 * PS, page(3)).page("pc.ram", 4 * PS, page(4)).page("pc.ram", 4 * PS, page(44))
    q.zero("pc.ram", 0).eos()
    q.end().zero("pc.ram", 5 * PS).zero("pc.ram", 6 * PS).zero("pc.ram", 7 * PS).eos().devices()
    with _open(tmp_path, q.bytes()) as img:
        assert img.read(0, PS) == bytes(PS)  # PAGE then ZERO: the zero wins
        assert img.read(PS, PS) == b"\x5a" * PS  # ZERO with a fill byte
        assert img.read(2 * PS, PS) == new  # XBZRLE against the earlier copy
        assert img.read(3 * PS, PS) == page(3)  # COMPRESS_PAGE
        assert img.read(4 * PS, PS) == page(44)  # repeated page
        assert img.diagnostics == [] and img.info["uuid"] == bytes(range(16)).hex()


def test_continue_across_sections(tmp_path):
    # Real QEMU 7.2 streams start PART sections with CONTINUE records.
    q = W.Qevm().start_ram([("pc.ram", 2 * PS)]).page("pc.ram", 0, page(0)).eos(forget_block=False)
    q.part().page("pc.ram", PS, page(1)).eos(forget_block=False).end().eos()
    assert q.bytes().count(b"pc.ram") == 2  # in MEM_SIZE and the first page only
    with _open(tmp_path, q.bytes()) as img:
        assert img.read(0, 2 * PS) == page(0) + page(1) and img.diagnostics == []


def test_no_footers_and_capabilities(tmp_path):
    q = W.Qevm(footer=False, caps=["x-ignore-shared"])
    q.b += b""  # x-ignore-shared adds a be64 host address after each block length
    total = 2 * PS
    q.b += b"\x01" + struct.pack(">I", 0) + b"\x03ram" + struct.pack(">II", 0, 4)
    q.b += struct.pack(">Q", total | 4) + b"\x06pc.ram" + struct.pack(">QQ", total, 0x7F0000000000)
    q.sid = 0
    q.page("pc.ram", 0, page(1)).page("pc.ram", PS, page(2)).eos().end().eos()
    with _open(tmp_path, q.bytes()) as img:
        assert img.read(0, 2 * PS) == page(1) + page(2)
        assert img.info["capabilities"] == ["x-ignore-shared"]


def test_unknown_configuration_subsection_is_skipped(tmp_path):
    data, expect = complete_stream(unknown_subsection=True)
    with _open(tmp_path, data) as img:
        assert img.read(0, len(expect)) == expect
        assert [d["what"] for d in img.diagnostics] == ["configuration skipped"]


def test_numa_blocks_concatenate_in_node_order(tmp_path):
    q = W.Qevm(machine="pc-q35-7.2").start_ram([("ram-node1", 2 * PS), ("ram-node0", 2 * PS)])
    for i in range(2):
        q.page("ram-node0", i * PS, page(i)).page("ram-node1", i * PS, page(10 + i))
    q.eos().end().eos()
    with _open(tmp_path, q.bytes()) as img:
        assert img.read(0, 4 * PS) == page(0) + page(1) + page(10) + page(11)
        assert img.runs == [(0, 4 * PS)]


@pytest.mark.parametrize(
    "machine,ram,low",
    [
        ("pc-i440fx-7.2", 0xE0000000, 0xC0000000),
        ("pc-i440fx-7.2", 0xD0000000, 0xD0000000),
        ("pc-q35-7.2", 0xB0000000, 0x80000000),
        ("pc-q35-7.2", 0xA0000000, 0xA0000000),
    ],
)
def test_pci_hole_split(tmp_path, machine, ram, low):
    q = W.Qevm(machine=machine).start_ram([("pc.ram", ram)])
    q.page("pc.ram", low - PS, page(1))
    if ram > low:
        q.page("pc.ram", low, page(2))
    q.eos().end().eos()
    with _open(tmp_path, q.bytes()) as img:
        assert img.read(low - PS, PS) == page(1)
        if ram > low:
            assert img.read(4 * GIB, PS) == page(2)
            assert img.read(low, PS) == bytes(PS)  # the PCI hole holds no RAM
            assert img.info["gpa_map"][1] == {"gpa": 4 * GIB, "block": "pc.ram", "offset": low, "length": ram - low}
        assert img.runs == [(low - PS, 2 * PS)] if ram > low and low == 4 * GIB else True
        missing = [d for d in img.diagnostics if d["what"] == "memory range missing"]
        assert missing  # the stream sent 1-2 pages of a large block: said, not hidden


def test_layout_rules_directly():
    assert guest_layout.guest_ram_pieces("pc-i440fx-2.0", [("pc.ram", 4 * GIB)]) == [
        (0, "pc.ram", 0, 3 * GIB),
        (4 * GIB, "pc.ram", 3 * GIB, GIB),
    ]
    assert guest_layout.guest_ram_pieces("pc-q35-8.0", [("ram-node0", GIB), ("ram-node1", 2 * GIB)]) == [
        (0, "ram-node0", 0, GIB),
        (GIB, "ram-node1", 0, GIB),
        (4 * GIB, "ram-node1", GIB, GIB),
    ]


def mapped_ram(blocks_pages):
    """A mapped-ram stream (QEMU 9+ layout, built per the spec: 28-byte block
    header with absolute bitmap/pages offsets; pages at 1 MiB-aligned offsets)."""
    q = W.Qevm(machine="pc-q35-9.0", caps=["mapped-ram"])

    def header(self, name, length):
        npages = length // PS
        base = len(self.b) + 28
        bitmap = bytearray((npages + 63) // 64 * 8)
        pages_off = -(-(base + len(bitmap)) // (1 << 20)) * (1 << 20)
        body = bytearray(pages_off + length - base)
        for i, data in blocks_pages[name].items():
            bitmap[i // 8] |= 1 << (i % 8)
            at = pages_off - base + i * PS
            body[at : at + PS] = data
        body[: len(bitmap)] = bitmap
        return struct.pack(">IQQQ", 1, PS, base, pages_off) + bytes(body)

    q.start_ram([(n, 8 * PS) for n in blocks_pages], mapped_ram=header)
    q.eos().end().eos().devices()
    return q.bytes()


def test_mapped_ram(tmp_path):
    data = mapped_ram({"pc.ram": {0: page(0), 5: page(5)}, "vga.vram": {1: page(9)}})
    with _open(tmp_path, data) as img:
        assert img.info["mapped_ram"] is True
        assert img.read(0, PS) == page(0) and img.read(5 * PS, PS) == page(5)
        assert img.read(PS, PS) == bytes(PS)  # bit clear: a zero page
        assert img.runs == [(0, 8 * PS)] and img.diagnostics == []
    cut = tmp_path / "cut.qevm"
    cut.write_bytes(data[: len(data) - 12 * PS])
    with M.open_image(cut) as img:
        assert img.read(0, PS) == page(0)
        assert any(d["what"] == "memory range missing" for d in img.diagnostics)


def test_truncated_stream_lists_missing_ranges(tmp_path, stream):
    data, expect = stream
    cut = data.index(page(8)) + 100  # inside page 8's payload
    with _open(tmp_path, data[:cut]) as img:
        assert img.read(0, 8 * PS) == expect[: 8 * PS]
        whats = [d["what"] for d in img.diagnostics]
        assert whats == ["stream incomplete", "memory range missing"]
        assert img.diagnostics[1]["missing"] == [(8 * PS, 8 * PS)]
        assert img.runs == [(0, 8 * PS)]


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda b: b"QEVX" + b[4:], "QEVM magic missing"),
        (lambda b: b[:4] + struct.pack(">I", 2) + b[8:], "stream version 2"),
        (lambda b: b[:8], "stream ends before the RAM section"),
    ],
)
def test_bad_stream_head(tmp_path, stream, mutate, match):
    with pytest.raises(M.MemoryFormatError, match=match):
        _open(tmp_path, mutate(stream[0]), name="bad.qevm", format="qemu-migration")


def test_unknown_section_and_flags(tmp_path):
    q = W.Qevm().start_ram([("pc.ram", 2 * PS)]).page("pc.ram", 0, page(0)).eos()
    q.b += b"\x42"  # no such section type
    with _open(tmp_path, q.bytes()) as img:
        assert img.read(0, PS) == page(0)
        assert "unknown section type 0x42" in img.diagnostics[0]["why"]
    q = W.Qevm().start_ram([("pc.ram", 2 * PS)])
    q.b += struct.pack(">Q", 0x80)  # RDMA hook: not in a file
    with _open(tmp_path, q.bytes()) as img:
        assert "unknown RAM record flags 0x80" in img.diagnostics[0]["why"]


def test_lying_block_length(tmp_path):
    q = W.Qevm()
    q.b += b"\x01" + struct.pack(">I", 0) + b"\x03ram" + struct.pack(">II", 0, 4)
    q.b += struct.pack(">Q", PS | 4) + b"\x06pc.ram" + struct.pack(">Q", 1 << 60)
    with pytest.raises(M.MemoryFormatError, match="exceeds the announced total"):
        _open(tmp_path, q.bytes())


def test_xbzrle_decoder_rejects_overflow():
    with pytest.raises(M.MemoryFormatError, match="overflows"):
        migration.xbzrle_decode(bytes([0x7F, 0x7F]) + b"x" * 200, bytes(100))
