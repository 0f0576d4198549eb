"""Hostile QEMU streams: declared RAM, page index, spill and inflation bounded (issue 13).

Crafted streams opened in a child interpreter (tests/helpers/bounded.py): peak
RSS above the child's own after imports, time, exact outcome. Before the page
index was sparse and the spill kept one slot per page, a stream declaring
1 TiB took 912 MiB, and 4.4 KiB of zstd resending one page made a 40 MiB spill.
"""

from __future__ import annotations

import os
import struct

import pytest

import toolkit.memory as M
from tests.helpers import hostile_memory as H
from tests.helpers import memory_writers as W
from tests.helpers.bounded import measure
from tests.helpers.memory_samples import PS, page

SETUP, GROWTH_MB = H.SETUP, H.GROWTH_MB


def test_migration_stream_declaring_a_terabyte(tmp_path):
    qevm = H.qevm_huge_ram(tmp_path / "huge.qevm")
    r = measure(
        """
        with M.open_image(P) as img:
            out = [img.runs, img.read(0, 4096) == A, img.read(LAST, 4096) == B,
                   [(d["what"], d.get("missing")) for d in img.diagnostics]]
        """,
        setup=SETUP,
        P=str(qevm["path"]),
        A=page(1),
        B=page(2),
        LAST=(1 << 32) + qevm["declared"] - PS - 0xC0000000,  # pc.ram above 3 GiB sits above the PCI hole
    )
    assert r["ok"] and r["grew_mb"] < GROWTH_MB, r
    runs, first_ok, last_ok, diags = r["out"]
    assert runs == [[0, 2 * PS], [(1 << 32) + H.TIB - PS - 0xC0000000, PS]] and first_ok and last_ok
    assert diags == [
        ["memory range missing", [[2 * PS, 0xC0000000 - 2 * PS]]],
        ["memory range missing", [[1 << 32, H.TIB - PS - 0xC0000000]]],
    ]


def _scattered_zero_records(path, chunks):
    """One ZERO record in each of ``chunks`` 512-page chunks of a 1 TiB block."""
    q = W.Qevm().start_ram([("pc.ram", H.TIB)]).eos().part()
    for i in range(chunks):
        q.zero("pc.ram", i * 512 * PS)
    path.write_bytes(q.eos().end().eos().devices().bytes())


def test_records_scattered_over_declared_ram_meet_the_index_budget(tmp_path):
    p = tmp_path / "scattered.qevm"
    _scattered_zero_records(p, 4000)  # 36 KiB of records, 4000 chunks (16 MiB) of index
    body = """
    with M.open_image(P) as img:
        out = [len(img.runs), [(d["what"], d["where"], d["why"]) for d in img.diagnostics if "missing" not in d]]
    """
    r = measure(body, setup=SETUP, P=str(p), env={"SNAPSCOPE_INDEX_FLOOR": "1M"})
    assert r["ok"] and r["grew_mb"] < GROWTH_MB, r
    runs, ((what, where, why),) = r["out"]
    # what 1 MiB of index, and 2 bytes per byte read, pay for; the rest is reported, not indexed
    assert 256 < runs < 256 + 2 * p.stat().st_size // 4096 + 2
    assert what == "stream incomplete" and where.startswith(f"{p}@0x")
    assert why.startswith("page index needs more than 1") and "SNAPSCOPE_INDEX_FLOOR" in why
    r = measure(body, setup=SETUP, P=str(p))  # the default floor (64 MiB) pays for 16 MiB
    assert r["out"] == [4000, []]


def test_declared_ram_above_the_ceiling_is_refused(tmp_path):
    p = tmp_path / "big.qevm"
    p.write_bytes(W.Qevm().start_ram([("pc.ram", 1 << 50)]).eos().end().eos().bytes())
    r = measure(
        "try:\n    M.open_image(P)\nexcept M.MemoryFormatError as exc:\n    out = str(exc)", setup=SETUP, P=str(p)
    )
    assert r["out"] == f"{p}: at offset 0x2b: stream declares 1024 TiB of RAM, above 64 TiB (raise " + (
        "SNAPSCOPE_MAX_GUEST_RAM if this is real)"
    )


def test_zstd_save_resending_one_page_keeps_one_slot(tmp_path):
    save = H.zstd_save_resending_one_page(tmp_path / "resend.save")
    assert save["path"].stat().st_size < 8 << 10
    derived = tmp_path / "derived"
    r = measure(
        """
        import os
        with M.open_image(P, derived_dir=D) as img:
            out = [img.read(0, 4096) == A, os.path.getsize(img.info["derived"]["pages"])]
        """,
        setup=SETUP,
        P=str(save["path"]),
        D=str(derived),
        A=save["page"],
    )
    assert r["ok"] and r["grew_mb"] < GROWTH_MB, r
    assert r["out"] == [True, PS]  # 10000 copies sent, one page stored


def _resend_every_page(path, pages):
    q = W.Qevm().start_ram([("pc.ram", pages * PS)]).eos().part()
    for i in range(pages):
        q.page("pc.ram", i * PS, page(i))
    path.write_bytes(W.libvirt_save(q.eos().end().eos().devices().bytes(), "zstd"))


@pytest.mark.parametrize(
    ("env", "why"),
    [
        ({"SNAPSCOPE_MAX_SPILL": "64K"}, "decompressed pages would exceed 64 KiB"),
        ({"SNAPSCOPE_MIN_FREE_DISK": "1P"}, "stopped before the disk fills"),
    ],
)
def test_spill_stops_at_its_ceilings(tmp_path, env, why):
    p = tmp_path / "many.save"
    _resend_every_page(p, 32)
    r = measure(
        """
        with M.open_image(P, derived_dir=D) as img:
            out = [(d["what"], d["where"], d["why"]) for d in img.diagnostics if "missing" not in d]
        """,
        setup=SETUP,
        P=str(p),
        D=str(tmp_path / "derived"),
        env=env,
    )
    assert r["ok"], r
    ((what, where, text),) = r["out"]
    assert what == "stream incomplete" and where.startswith(f"{p}@0x") and why in text


def test_spill_never_outgrows_the_declared_ram(tmp_path):
    # A 4-page block whose pages are sent 50 times each with new contents: 4 slots.
    q = W.Qevm().start_ram([("pc.ram", 4 * PS)]).eos().part()
    for rnd in range(50):
        for i in range(4):
            q.page("pc.ram", i * PS, page(100 * rnd + i))
    p = tmp_path / "churn.save"
    p.write_bytes(W.libvirt_save(q.eos().end().eos().devices().bytes(), "gzip"))
    with M.open_image(p, derived_dir=tmp_path / "d") as img:
        assert [img.read(i * PS, PS) == page(4900 + i) for i in range(4)] == [True] * 4
        assert os.path.getsize(img.info["derived"]["pages"]) == 4 * PS


def test_one_byte_pages_are_fills_not_spill(tmp_path):
    q = W.Qevm().start_ram([("pc.ram", 2 * PS)]).eos().part()
    q.page("pc.ram", 0, b"\xab" * PS).page("pc.ram", PS, page(3))
    p = tmp_path / "fill.save"
    p.write_bytes(W.libvirt_save(q.eos().end().eos().devices().bytes(), "xz"))
    with M.open_image(p, derived_dir=tmp_path / "d") as img:
        assert img.read(0, 2 * PS) == b"\xab" * PS + page(3)
        assert os.path.getsize(img.info["derived"]["pages"]) == PS


def test_mapped_ram_of_a_terabyte_with_one_page(tmp_path):
    bitmap_at, pages_at = 1 << 20, 64 << 20  # the bitmap of 1 TiB of pages is 32 MiB
    nbits = H.TIB // PS

    def header(q, name, length):
        return struct.pack(">IQQQ", 1, PS, bitmap_at, pages_at)

    q = W.Qevm(caps=("mapped-ram",)).start_ram([("pc.ram", H.TIB)], mapped_ram=header)
    stream = bytearray(q.bytes())
    # The bitmap (32 MiB for 1 TiB) is in the file; one bit set; one page present.
    stream += bytes(bitmap_at - len(stream))
    stream += b"\x01" + bytes(nbits // 8 - 1)
    p = tmp_path / "mapped.qevm"
    with open(p, "wb") as fh:
        fh.write(stream)
        fh.seek(pages_at)
        fh.write(page(9))
        fh.seek(pages_at + H.TIB)
        fh.write(struct.pack(">Q", 0x10) + b"\x03" + struct.pack(">I", 2))  # EOS, END
    r = measure(
        """
        from toolkit.engines.memory.symbols import _banner_haystacks
        with M.open_image(P) as img:
            # what scanners (YARA, the banner search, the in-place layer) read: the one page of data
            out = [img.read(0, 4096) == A, img.runs[:2], len(img.runs), img.data_runs,
                   [len(h) for _, h in _banner_haystacks(img)]]
        """,
        setup=SETUP,
        P=str(p),
        A=page(9),
        timeout=60,
    )
    # Every chunk is known (zero pages) and holds one value: ~70 MiB of index
    # entries for 1 TiB, about twice the 32 MiB bitmap the file must hold.
    assert r["ok"] and r["grew_mb"] < 128 and r["seconds"] < 30, r
    assert r["out"] == [True, [[0, 0xC0000000], [1 << 32, H.TIB - 0xC0000000]], 2, [[0, PS]], [PS]]


def _zero_flood(path, times, compression="zstd"):
    """A 16-page block, then ``times`` ZERO records for page 0: tiny compressed, long inflated."""
    import zstandard

    q = W.Qevm().start_ram([("pc.ram", 16 * PS)]).eos().part().zero("pc.ram", 0)
    head = q.bytes()
    q.b = bytearray()
    one = q.zero("pc.ram", 0).bytes()
    q.b = bytearray()
    tail = q.eos().end().eos().devices().bytes()
    co = zstandard.ZstdCompressor(level=19).compressobj()
    z = co.compress(head) + b"".join(co.compress(one * (1 << 20)) for _ in range(times >> 20))
    z += co.compress(tail) + co.flush()
    path.write_bytes(W.libvirt_save(b"", "raw") + z)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, 0x1C, W.FORMAT_NO[compression])  # the header's stream format
    path.write_bytes(raw)


def test_compressed_stream_inflating_far_past_its_declared_ram(tmp_path):
    p = tmp_path / "flood.save"
    _zero_flood(p, 8 << 20)  # 72 MiB of ZERO records for one page, a few KiB of zstd
    assert p.stat().st_size < 64 << 10
    r = measure(
        """
        with M.open_image(P, derived_dir=D) as img:
            out = [img.runs, [(d["what"], d["where"], d["why"]) for d in img.diagnostics if "missing" not in d]]
        """,
        setup=SETUP,
        P=str(p),
        D=str(tmp_path / "d"),
        env={"SNAPSCOPE_MAX_INFLATE": "1M"},
    )
    assert r["ok"] and r["grew_mb"] < GROWTH_MB, r
    runs, ((what, where, why),) = r["out"]
    assert runs == [[0, PS]] and what == "stream incomplete" and where.startswith(f"{p}@0x")
    assert why.startswith("the compressed stream inflates past 1.5 MiB (8x the 64 KiB of RAM it declares")
    # The default ceiling (256 MiB above 8x the declared RAM) lets all 72 MiB through, quickly.
    r = measure(
        "with M.open_image(P, derived_dir=D) as img:\n    out = [img.runs, img.diagnostics]",
        setup=SETUP,
        P=str(p),
        D=str(tmp_path / "d2"),
    )
    assert r["ok"] and r["out"][0] == [[0, PS]] and r["seconds"] < 20, r
    assert [d["what"] for d in r["out"][1]] == ["memory range missing"]


@pytest.mark.parametrize("compression", ["raw", "gzip"])
def test_runs_of_zero_records_keep_each_pages_last_record(tmp_path, compression):
    # Runs of ZERO records (decoded at once) between page records; pages sent
    # again in both directions: the last record of each page wins.
    q = W.Qevm().start_ram([("pc.ram", 64 * PS)]).eos().part()
    expect = {}
    for i in range(64):
        q.zero("pc.ram", i * PS, fill=i % 3)
        expect[i] = bytes([i % 3]) * PS
    for i in (5, 6, 7, 40):
        q.page("pc.ram", i * PS, page(i))
        expect[i] = page(i)
    for i in range(30, 50):
        q.zero("pc.ram", i * PS, fill=0xEE)
        expect[i] = b"\xee" * PS
    q.page("pc.ram", 63 * PS, page(63))
    expect[63] = page(63)
    p = tmp_path / "mixed.save"
    p.write_bytes(W.libvirt_save(q.eos().end().eos().devices().bytes(), compression))
    with M.open_image(p, derived_dir=tmp_path / "d") as img:
        assert img.diagnostics == [] and img.runs == [(0, 64 * PS)]
        assert img.read(0, 64 * PS) == b"".join(expect[i] for i in range(64))
        # what a scanner reads: every page but those known to be zero
        covered = {i for i in range(64) if any(s <= i * PS < s + n for s, n in img.data_runs)}
        assert covered == {i for i in range(64) if expect[i] != bytes(PS)} and len(covered) == 51
