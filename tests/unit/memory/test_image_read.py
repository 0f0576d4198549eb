"""MemoryImage.read answers what the segments hold, zeros elsewhere, whichever path it takes
(one segment covering the read returns that segment's bytes as they come)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit.memory.image import MemoryImage


def _segment(gpa: int, content: bytes, short_by: int, kind):
    def read(offset, length):
        # the segment's last short_by bytes cannot be read: the reader returns less than asked
        return kind(content[offset : max(offset, min(offset + length, len(content) - short_by))])

    return {"gpa": gpa, "length": len(content), "read": read, "runs": None}


@st.composite
def images(draw):
    segments, expected, gpa = [], {}, draw(st.integers(0, 64))
    for _ in range(draw(st.integers(1, 4))):
        content = draw(st.binary(min_size=1, max_size=200))
        short_by = draw(st.sampled_from([0, 0, 0, 3]))
        kind = draw(st.sampled_from([bytes, bytearray, memoryview]))
        segments.append(_segment(gpa, content, short_by, kind))
        for k, byte in enumerate(content):
            expected[gpa + k] = byte
        for k in range(max(0, len(content) - short_by), len(content)):  # unreadable: zeros
            expected[gpa + k] = 0
        gpa += len(content) + draw(st.integers(0, 50))
    return segments, expected, gpa


@settings(max_examples=400, deadline=None)
@given(images(), st.data())
def test_read_is_the_segments_bytes_and_zeros(image, data):
    segments, expected, top = image
    _check_a_read(MemoryImage(format="raw", path="x", info={}, segments=segments), expected, top, data)


def _check_a_read(img, expected: dict, top: int, data):
    """One read anywhere around [0, top): bytes, its length, the expected bytes and zeros elsewhere."""
    gpa = data.draw(st.integers(0, top + 10))
    length = data.draw(st.integers(0, top + 20 - gpa))
    got = img.read(gpa, length)
    assert type(got) is bytes and len(got) == length
    assert got == bytes(expected.get(gpa + k, 0) for k in range(length))


@st.composite
def elf_loads(draw):
    """PT_LOADs over one file: each with file data (perhaps cut by the end of the file) and a zero tail."""
    import numpy as np

    gpa, off, rows, expected = draw(st.integers(0, 64)), 0, [], {}
    file = bytearray()
    for _ in range(draw(st.integers(1, 4))):
        content = draw(st.binary(min_size=0, max_size=120))
        tail = draw(st.integers(0, 40))
        rows.append((gpa, len(content), len(content) + tail, off))
        for k, byte in enumerate(content):
            expected[gpa + k] = byte
        file += content
        off += len(content)
        gpa += len(content) + tail + draw(st.integers(0, 50))
    cut = draw(st.integers(0, 30))  # the file ends early: the loads' last bytes are missing (zeros)
    size = max(0, len(file) - cut)
    for g, filesz, _, o in rows:
        for j in range(filesz):
            if o + j >= size:
                expected[g + j] = 0
    phdrs = np.array(
        [(1, g, filesz, memsz, o) for g, filesz, memsz, o in rows],
        dtype=[("type", "u4"), ("paddr", "u8"), ("filesz", "u8"), ("memsz", "u8"), ("offset", "u8")],
    )
    return phdrs, bytes(file[:size]), expected, gpa


class _Source:
    def __init__(self, data):
        self.data = data

    def pread(self, offset, length):
        return self.data[offset : offset + length]


@settings(max_examples=400, deadline=None)
@given(elf_loads(), st.data())
def test_an_elf_cores_loads_read_as_their_file_bytes_and_zeros(loads, data):
    from toolkit.memory import elf_loads as el

    phdrs, file, expected, top = loads
    table, _ = el.load_table(phdrs, len(file), "x")
    seg = el.segment(table, _Source(file), "x")
    if seg is None:
        return
    _check_a_read(MemoryImage(format="elf-core", path="x", info={}, segments=[seg]), expected, top, data)


@st.composite
def page_layouts(draw):
    """Pages of 16 bytes in a source file, as a migration stream lays them: runs at a stride a
    little over a page (a record header before each), some contiguous, some absent, some filled."""
    from toolkit.memory.pages import KIND_FILL, KIND_SRC, enc

    ps, npages = 16, draw(st.integers(1, 40))
    file, entries = bytearray(), {}
    page_no = 0
    while page_no < npages:
        kind = draw(st.sampled_from(["strided", "strided", "contiguous", "absent", "fill"]))
        n = min(draw(st.integers(1, 8)), npages - page_no)
        gap = draw(st.sampled_from([1, 8, 9])) if kind == "strided" else 0
        for _ in range(n):
            if kind in ("strided", "contiguous"):
                file += bytes(gap) * (kind == "strided")
                entries[page_no] = enc(KIND_SRC, len(file))
                file += draw(st.binary(min_size=ps, max_size=ps))
            elif kind == "fill":
                entries[page_no] = enc(KIND_FILL, draw(st.integers(0, 255)))
            page_no += 1
    cut = draw(st.integers(0, 20))  # the source ends early: the last page's bytes are short
    return ps, npages, entries, bytes(file[: max(0, len(file) - cut)])


@settings(max_examples=400, deadline=None)
@given(page_layouts(), st.data())
def test_strided_source_pages_read_as_page_by_page(layout, data):
    from toolkit.memory.pages import _SHIFT, _VALUE_MASK, KIND_FILL, KIND_SRC, PageMap

    ps, npages, entries, file = layout
    pm = PageMap(npages, ps)
    if entries:
        pm.set(list(entries), list(entries.values()))

    def fetch(kind, value, page_no, n=1):
        assert kind == KIND_SRC
        return file[value : value + n * ps].ljust(n * ps, b"\0")

    def one(page_no):
        v = entries.get(page_no, 0)
        if v >> _SHIFT == KIND_SRC:
            return file[v & _VALUE_MASK : (v & _VALUE_MASK) + ps].ljust(ps, b"\0")
        if v >> _SHIFT == KIND_FILL:
            return bytes([v & 0xFF]) * ps
        return bytes(ps)

    read = pm.reader(fetch, read_source=lambda offset, n: file[offset : offset + n])
    start = data.draw(st.integers(0, npages * ps - 1))
    length = data.draw(st.integers(1, npages * ps - start))
    expected = b"".join(one(p) for p in range(npages))[start : start + length]
    assert read(start, length) == expected
