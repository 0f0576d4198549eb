"""QEMU migration stream (``QEVM``, stream version 3): RAM only.

Used for ``migrate`` to a file, ``virsh dump`` (full), the stream inside a
libvirt save image and the vmstate of a qcow2 internal snapshot. One streaming
pass indexes where every RAM page lives (``pages.PageMap``); page bytes are
not copied when the source can be seeked. From a non-seekable source (a
decompressor) page payloads go to a *spill* file instead, which is how a
compressed stream becomes seekable.

Device sections carry no length, so the parse stops once the ``ram`` section
has ended (its END section); everything needed is before that point.

>>> detect(b"QEVM\\x00\\x00\\x00\\x03")
True
"""

from __future__ import annotations

import re
import struct

import numpy as np

from toolkit.errors import MemoryFormatError
from toolkit.limits import env_name, human, limit
from toolkit.memory import mapped_ram
from toolkit.memory.inflate import inflate
from toolkit.memory.pages import _SHIFT, _VALUE_MASK, KIND_FILL, KIND_SPILL, KIND_SRC, IndexBudget, PageMap, enc
from toolkit.memory.spill import Spill
from toolkit.memory.xbzrle import xbzrle_decode
from toolkit.schemas import diagnostic

__all__ = ["MAGIC", "Spill", "detect", "index_stream", "xbzrle_decode"]

MAGIC = b"QEVM"
EOF_, START, PART, END, FULL, SUBSECTION, VMDESC, CONFIG, COMMAND, FOOTER = (
    0x00,
    0x01,
    0x02,
    0x03,
    0x04,
    0x05,
    0x06,
    0x07,
    0x08,
    0x7E,
)
F_FULL, F_ZERO, F_MEM_SIZE, F_PAGE, F_EOS, F_CONTINUE = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
F_XBZRLE, F_HOOK, F_COMPRESS, F_MULTIFD_FLUSH = 0x40, 0x80, 0x100, 0x200
_PAGE_KINDS = F_ZERO | F_PAGE | F_XBZRLE | F_COMPRESS
_KNOWN = _PAGE_KINDS | F_MEM_SIZE | F_EOS | F_CONTINUE | F_MULTIFD_FLUSH


def detect(head):
    return head[:4] == MAGIC


def _config(cur, st):
    n = cur.be32()
    if n > 256:
        raise MemoryFormatError(cur.path, cur.tell() - 4, f"machine name length {n} is implausible")
    st["machine"] = cur.read(n).decode("ascii", "replace")
    while cur.peek(1) == bytes([SUBSECTION]):
        at = cur.tell()
        cur.u8()
        name = cur.read(cur.u8()).decode("ascii", "replace")
        cur.be32()  # subsection version
        if name == "configuration/target-page-bits":
            bits = cur.be32()
            if not 9 <= bits <= 16:
                raise MemoryFormatError(cur.path, at, f"target page bits {bits} unsupported")
            st["page_size"] = 1 << bits
        elif name == "configuration/capabilities":
            count = cur.be32()
            if count > 64:
                raise MemoryFormatError(cur.path, at, f"{count} capabilities is implausible")
            st["capabilities"] = [cur.read(cur.u8()).decode("ascii", "replace") for _ in range(count)]
        elif name == "configuration/uuid":
            st["uuid"] = cur.read(16).hex()
        else:
            _resync(cur, st, at, f"unknown configuration subsection {name!r}")
            return


def _resync(cur, st, at, why):
    """Skip an unparseable configuration tail by finding the ram START section."""
    window = cur.peek(1 << 16)
    m = re.search(rb"\x01[\x00-\xff]{4}\x03ram", window)
    if not m:
        raise MemoryFormatError(cur.path, at, f"{why}; no ram section follows")
    st["diagnostics"].append(diagnostic("info", "configuration skipped", f"{cur.path}@{at:#x}", why))
    cur.skip(m.start())


def _mem_size(cur, st, total):
    ps = st["page_size"]
    caps = st["capabilities"]
    ceiling = limit("max_guest_ram")
    if total > ceiling:
        raise MemoryFormatError(
            cur.path,
            cur.tell() - 8,
            f"stream declares {human(total)} of RAM, above {human(ceiling)} "
            f"(raise {env_name('max_guest_ram')} if this is real)",
        )
    while total > 0:
        at = cur.tell()
        name = cur.read(cur.u8()).decode("ascii", "replace")
        length = cur.be64()
        if length > total:
            raise MemoryFormatError(
                cur.path, at, f"RAM block {name!r} length {length:#x} exceeds the announced total {total:#x}"
            )
        if "x-ignore-shared" in caps:
            cur.be64()  # host region address: irrelevant offline
        pm = PageMap((length + ps - 1) // ps, ps, budget=st.get("budget"))
        st["blocks"][name] = {"length": length, "map": pm}
        if st["mapped_ram"]:
            mapped_ram.index_block(cur, st, name, length, pm)
        total -= length


def _ram_records(cur, st):
    """Parse RAM records up to EOS; fills the page maps."""
    ps = st["page_size"]
    mask = ps - 1
    blocks = st["blocks"]
    seekable = cur.seekable
    src_kind = enc(KIND_SRC, 0)
    # CONTINUE refers to the block of the previous page record, even one in
    # an earlier section (QEMU keeps last_sent_block across iterations).
    block = st.get("block")
    while True:
        if block is not None:
            _fast_continue(cur, block["map"], ps)
        at = cur.tell()
        word = cur.be64()
        flags, addr = word & mask, word & ~mask
        if flags & _PAGE_KINDS:
            if not flags & F_CONTINUE:
                name = cur.read(cur.u8()).decode("ascii", "replace")
                block = st["block"] = blocks.get(name)
                if block is None:
                    raise MemoryFormatError(cur.path, at, f"page for unknown RAM block {name!r}")
            elif block is None:
                raise MemoryFormatError(cur.path, at, "CONTINUE record before any RAM block")
            page = addr // ps
            pm = block["map"]
            if page >= pm.npages:
                raise MemoryFormatError(cur.path, at, f"page offset {addr:#x} beyond block length {block['length']:#x}")
            if flags & F_PAGE:
                if seekable:
                    where = cur.tell()
                    cur.skip(ps)  # first: a page cut short must stay absent
                    pm.set_one(page, src_kind | where, at)
                else:
                    pm.set_one(page, _store(st, pm, page, cur.read(ps), at), at)
            elif flags & F_ZERO:
                pm.set_one(page, enc(KIND_FILL, cur.u8()), at)
            elif flags & F_COMPRESS:
                n = cur.be32()
                if n > 2 * ps:
                    raise MemoryFormatError(cur.path, at, f"compressed page length {n} is implausible")
                try:
                    data = inflate("zlib", cur.read(n), ps)
                except ValueError as exc:
                    raise MemoryFormatError(cur.path, at, f"compressed page: {exc}") from None
                pm.set_one(page, _store(st, pm, page, data, at), at)
            else:  # XBZRLE: a delta against the page as it was before this record
                hflag, n = cur.u8(), cur.be16()
                if hflag != 1 or n > ps:
                    raise MemoryFormatError(cur.path, at, f"XBZRLE header flag {hflag} / length {n} invalid")
                old = st["fetch_page"](pm, page)
                pm.set_one(page, _store(st, pm, page, xbzrle_decode(cur.read(n), old, cur.path, at), at), at)
            continue
        if flags & F_MEM_SIZE:
            if st["blocks"]:
                raise MemoryFormatError(cur.path, at, "second MEM_SIZE block list")
            _mem_size(cur, st, addr)
            continue
        if flags & F_EOS:
            return
        if flags == F_MULTIFD_FLUSH:
            continue
        if flags & ~_KNOWN or flags & F_HOOK or not flags:
            raise MemoryFormatError(cur.path, at, f"unknown RAM record flags {flags:#x}")


def _store(st, pm, page, data, at):
    """Index entry for a page whose bytes must be kept: a fill for a page of one
    repeated byte, else the page's own spill slot (reused when it is sent again)."""
    if data.count(data[0]) == len(data):
        return enc(KIND_FILL, data[0])
    old = pm.get(page)
    slot = old & _VALUE_MASK if old >> _SHIFT == KIND_SPILL else None
    return enc(KIND_SPILL, st["spill"]().put(data, slot, at))


def _fast_continue(cur, pm, ps):
    """Index CONTINUE page/zero records straight out of the cursor's buffer: a big
    stream is almost only these, and the general loop costs ~3 us each (seconds
    per GiB). Anything else (block name, EOS, a page cut short, an offset past the
    block) is left to the general loop, which reports errors with their offset.
    From a stream that cannot be seeked (a decompressor) only zero records are
    taken here: page bytes must go to the spill. Runs of zero records (idle
    RAM, or a stream made of nothing else) are decoded with numpy."""
    mask, bits, rec, be64 = ps - 1, ps.bit_length() - 1, 8 + ps, struct.Struct(">Q").unpack_from
    page_cont, zero_cont = F_PAGE | F_CONTINUE, F_ZERO | F_CONTINUE
    if not cur.seekable:
        page_cont = -1  # never matches a flags value
    src_kind, zero_kind = enc(KIND_SRC, 0), enc(KIND_FILL, 0)
    while True:
        if len(cur._buf) - cur._bpos < rec and (cur._fill(rec) or len(cur._buf) - cur._bpos < rec):
            return
        buf, start, base = cur._buf, cur._bpos, cur._base
        last = len(buf) - rec  # only whole page records are taken here
        pos, pages, vals, ends, parts = start, [], [], [], []
        while pos <= last:
            word = be64(buf, pos)[0]
            flags = word & mask
            if flags == page_cont:
                pages.append(word >> bits)
                vals.append(src_kind | (base + pos + 8))
                pos += rec
                ends.append(pos)
            elif flags == zero_cont:
                if be64(buf, pos + 9)[0] & mask == zero_cont:  # a run: decode it at once
                    parts.append((pages, vals, ends))
                    run_pages, fills, pos = _zero_run(buf, pos, last + rec, mask, bits, zero_cont)
                    parts.append(
                        (run_pages, zero_kind | fills, pos - 9 * len(fills) + 9 * np.arange(1, len(fills) + 1))
                    )
                    pages, vals, ends = [], [], []
                    continue
                pages.append(word >> bits)
                vals.append(zero_kind | buf[pos + 8])
                pos += 9
                ends.append(pos)
            else:
                break
        parts.append((pages, vals, ends))
        idx = np.concatenate([np.asarray(p, dtype=np.int64) for p, _, _ in parts])
        if not len(idx):
            return
        values = np.concatenate([np.asarray(v, dtype=np.int64) for _, v, _ in parts])
        if idx.max() >= pm.npages:  # keep the records before the bad one, then stop
            keep = int(np.argmax(idx >= pm.npages))
            pos = int(np.concatenate([np.asarray(e, dtype=np.int64) for _, _, e in parts])[keep - 1]) if keep else start
            idx, values = idx[:keep], values[:keep]
        cur._bpos = pos  # first: the index budget is paid for by the records read
        pm.set(idx, values)  # a page sent twice: its last record wins
        if pos <= last:
            return


def _zero_run(buf, pos, end, mask, bits, zero_cont, most=1 << 16):
    """(pages, fill bytes, position after) of the zero records from ``pos``
    (at least two), at most ``most`` of them, all before ``end``."""
    n = min((end - pos) // 9, most)
    recs = np.frombuffer(buf, np.uint8, count=n * 9, offset=pos).reshape(n, 9)
    words = recs[:, :8].copy().view(">u8").ravel()
    other = np.flatnonzero(words & np.uint64(mask) != zero_cont)
    k = int(other[0]) if len(other) else n
    return (words[:k] >> np.uint64(bits)).astype(np.int64), recs[:k, 8].astype(np.int64), pos + 9 * k


def index_stream(cur, *, spill_factory=None, source=None, cap=None):
    """Index the RAM of the QEVM stream under ``cur`` in one pass.

    Returns a state dict: machine, page_size, capabilities, blocks
    {name: {length, map}}, complete, diagnostics, stream_end.
    ``source`` (a pread-able object) is needed for mapped-ram and XBZRLE.
    ``cap(st) -> (bytes, why)``: how far ``cur`` may read given the state so
    far (a decompressor: see ``streams.inflate_cap``).

    >>> import io; from toolkit.memory.cursor import Cursor
    >>> index_stream(Cursor("x", stream=io.BytesIO(b"QEVM\\0\\0\\0\\3\\0")))
    Traceback (most recent call last):
    toolkit.errors.MemoryFormatError: x: at offset 0x8: stream ends before the RAM section completed
    """
    st = {
        "machine": None,
        "page_size": 4096,
        "capabilities": [],
        "blocks": {},
        "complete": False,
        "diagnostics": [],
        "source": source,
        "spill_obj": None,
        "mapped_ram": False,
    }

    def spill():
        if st["spill_obj"] is None:
            if spill_factory is None:
                raise MemoryFormatError(cur.path, cur.tell(), "page needs a spill file but none was given")
            sp = spill_factory()
            # One slot per page: never more than the RAM the stream declared.
            sp.path = cur.path
            sp.cap = min(sp.cap, sum(b["map"].npages * b["map"].page_size for b in st["blocks"].values()))
            st["spill_obj"] = sp
        return st["spill_obj"]

    st["spill"] = spill
    st["fetch_page"] = lambda pm, page: _fetch_one(st, pm, page)
    source_size = getattr(source, "size", None) or 0
    # Index memory is paid for by evidence read: the stream so far, or the
    # whole file for mapped-ram (its pages lie at fixed offsets, read by bitmap).
    st["budget"] = IndexBudget(cur.path, lambda: max(cur.tell(), source_size if st["mapped_ram"] else 0))
    if cap is not None:
        cur.cap = lambda: cap(st)
    start = cur.tell()
    if cur.read(4) != MAGIC:
        raise MemoryFormatError(cur.path, start, "QEVM magic missing")
    version = cur.be32()
    if version != 3:
        raise MemoryFormatError(cur.path, start + 4, f"stream version {version} unsupported (3 expected)")
    ram_id = None
    try:
        while True:
            at = cur.tell()
            head = cur.peek(1)
            if not head:
                raise MemoryFormatError(cur.path, at, "stream ends before the RAM section completed")
            kind = cur.u8()
            if kind == CONFIG:
                _config(cur, st)
                st["mapped_ram"] = "mapped-ram" in st["capabilities"]
            elif kind in (START, FULL):
                sid = cur.be32()
                name = cur.read(cur.u8()).decode("ascii", "replace")
                cur.be32()
                sver = cur.be32()
                if name != "ram":
                    raise MemoryFormatError(
                        cur.path, at, f"section {name!r} before RAM completed (its layout is not self-describing)"
                    )
                if sver != 4:
                    raise MemoryFormatError(cur.path, at, f"ram section version {sver} (4 expected)")
                ram_id = sid
                _ram_records(cur, st)
                _footer(cur)
                if kind == FULL:
                    break
            elif kind in (PART, END):
                sid = cur.be32()
                if sid != ram_id:
                    raise MemoryFormatError(cur.path, at, f"section id {sid} is not the ram section")
                _ram_records(cur, st)
                _footer(cur)
                if kind == END:
                    break
            elif kind == COMMAND:
                cur.be16()
                cur.skip(cur.be16())
            elif kind == FOOTER:
                cur.be32()
            elif kind in (EOF_, VMDESC):
                raise MemoryFormatError(cur.path, at, "stream ends before the RAM section completed")
            else:
                raise MemoryFormatError(cur.path, at, f"unknown section type {kind:#x}")
        st["complete"] = True
    except MemoryFormatError as exc:
        if not st["blocks"]:
            raise
        st["diagnostics"].append(
            diagnostic(
                "error",
                "stream incomplete",
                f"{exc.path}@{exc.offset:#x}" if isinstance(exc.offset, int) else exc.path,
                exc.message,
            )
        )
    st["stream_end"] = cur.tell()
    return st


def _footer(cur):
    if cur.peek(1) == bytes([FOOTER]):
        cur.u8()
        cur.be32()


def _fetch_one(st, pm, page):
    v = pm.get(page)
    ps = pm.page_size
    if v == 0:
        return bytes(ps)
    kind, val = v >> _SHIFT, v & _VALUE_MASK
    if kind == KIND_SRC:
        return st["source"].pread(val, ps)
    if kind == KIND_FILL:
        return bytes([val & 0xFF]) * ps
    return st["spill_obj"].pread(val, ps)
