"""Write any memory artefact as a standard ELF64 core that Volatility 3 and
pakunoda open directly.

Layout: ELF header, program headers (one PT_NOTE when the source carried ELF
notes — the QEMU per-vCPU and VMCOREINFO notes — then one PT_LOAD per run
with p_paddr = guest-physical address, p_vaddr = 0, p_filesz = p_memsz since
Volatility's ELF layer skips segments where they differ), the notes, then
page-aligned segment data. All-zero pages are not written: the output seeks
over them, so the file is sparse on filesystems that support holes.

Volatility reads e_phnum directly (no PN_XNUM), so runs are coalesced over
small gaps until fewer than 0xFFFF segments remain.

How the copy is kept near the speed of reading the file once (see
benchmarks/memory_convert.py for the figures):

* Readers that know where their bytes lie give each segment ``extents`` and
  ``source`` (``PageMap.extents``, the ELF reader): the copier reads source
  ranges with ``os.preadv`` into reused buffers, one call per source window
  (a migration stream's pages are 4 KiB apart from one another by an 8-byte
  record header, so a window of pages is one read and a memcpy per page).
  Segments without them are read through their ``read`` function.
* Buffers are anonymous mmaps, i.e. page-aligned, and a source window lands
  at the same offset modulo the page as in the file: the kernel's copy to user
  space runs 4-5x slower on this hardware when source and destination are
  misaligned by 8 or 16 bytes (which a bytearray's data always is).
* Hashing (sha256 of source and output, ~1.2 GB/s here and the largest cost)
  runs in threads beside the copy: the source is hashed by its own sequential
  reader from the start (overlapping the migration index pass), the output
  from the very buffers written. ``hash="output"`` skips the source hash for
  callers that already hold it (custody hashes evidence at intake);
  ``hash=False`` skips both.
* copy_file_range is not used: it fails across filesystems (EXDEV, e.g. disk
  to /dev/shm), cannot drop zero pages, and was slower than preadv + pwrite
  between two ext4 files here.

The output never overwrites evidence: a destination that is the source, a
link to it, a ``protect``-ed file or any file the conversion has open for
reading (a backing file) is refused before a byte is written, and the core is
written to a temporary file beside the destination and renamed over it, so
even a path that names evidence in a way not caught here replaces a
directory entry and never truncates the evidence's bytes.

>>> to_elf("vm.save", "vm.elf", derived_dir="case/derived")["runs"]  # doctest: +SKIP
3
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import mmap
import os
import queue
import struct
import threading

import numpy as np

from toolkit.case.store import same_file
from toolkit.errors import EvidenceError
from toolkit.hashing import sha256_file
from toolkit.memory import open_image
from toolkit.memory.image import FileSource
from toolkit.memory.pages import EXT_READ, EXT_ZERO

CHUNK = 8 << 20  # output buffer: per-call costs amortised, RSS small
GAP = 64 << 10  # source pieces this close are fetched with one read (skipping the gap)
ALIGN = 64  # kernel copies are fast when source and destination agree modulo this
LONG_RUN = 32  # pieces in a constant-stride run before a numpy strided copy beats a loop
PAGE = 4096
MAX_LOADS = 0xFFFE - 1  # leaves room for the PT_NOTE below PN_XNUM
ZERO_PAGE = bytes(PAGE)
_ZEROS = memoryview(mmap.mmap(-1, CHUNK))  # never written: reads as zeros, costs no RSS


def _coalesce(runs, limit=MAX_LOADS):
    gap = PAGE
    while len(runs) > limit:
        merged = []
        for start, n in runs:
            if merged and start - (merged[-1][0] + merged[-1][1]) <= gap:
                merged[-1] = (merged[-1][0], start + n - merged[-1][0])
            else:
                merged.append((start, n))
        runs, gap = merged, gap * 4
    return runs


def _in_thread(fn, *args):
    """Start fn(*args) in a thread; the returned callable joins and returns its result."""
    box = {}

    def run():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def result():
        t.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    return result


class _Sink:
    """Output buffers and the output hash.

    With hashing, a thread hashes each buffer after it was written and only
    then hands it back for reuse (so the hash runs beside the next chunk's
    copy); without, one buffer is reused at once.
    """

    def __init__(self, hashing):
        self.free = queue.SimpleQueue()
        for _ in range(3 if hashing else 1):
            self.free.put(mmap.mmap(-1, CHUNK))
        self.todo = queue.SimpleQueue() if hashing else None
        self.digest = _in_thread(self._hash) if hashing else (lambda: None)

    def _hash(self):
        h = hashlib.sha256()
        while (item := self.todo.get()) is not None:
            data, n = item
            if isinstance(data, mmap.mmap):
                with memoryview(data) as mv:
                    h.update(mv[:n])
                self.free.put(data)
            else:
                h.update(data)
        return h.hexdigest()

    def done(self, data, n):
        """``data`` (a buffer from ``free`` or bytes) was written: hash then recycle it."""
        if self.todo is not None:
            self.todo.put((data, n))
        elif isinstance(data, mmap.mmap):
            self.free.put(data)

    def close(self):
        if self.todo is not None:
            self.todo.put(None)
        return self.digest()


def _readinto(src, off, mv):
    """Fill ``mv`` from ``src`` at ``off``; zeros past its end (as the readers do)."""
    if isinstance(src, FileSource):
        got = 0
        while got < len(mv):
            n = os.preadv(src.fd, [mv[got:]], off + got)
            if n <= 0:
                mv[got:] = _ZEROS[: len(mv) - got]
                break
            got += n
    elif hasattr(src, "readinto"):
        src.readinto(off, mv)
    else:
        data = src.pread(off, len(mv))
        mv[: len(data)] = data
        mv[len(data) :] = _ZEROS[: len(mv) - len(data)]


def _slices(img, gpa, length):
    """(rel, segment or None, extents) covering [gpa, gpa+length) in order; a
    None segment is a gap between segments (zeros). See PageMap.extents."""
    segs, end = img._segs, gpa + length
    i = max(bisect.bisect_right(img._starts, gpa) - 1, 0)
    pos = gpa
    while pos < end:
        if i >= len(segs) or segs[i]["gpa"] >= end:
            yield pos - gpa, None, [(0, end - pos, EXT_ZERO)]
            return
        s = segs[i]
        i += 1
        hi = min(end, s["gpa"] + s["length"])
        if hi <= pos:
            continue
        if s["gpa"] > pos:  # a gap between segments inside a coalesced run
            yield pos - gpa, None, [(0, s["gpa"] - pos, EXT_ZERO)]
            pos = s["gpa"]
        ext = s.get("extents")
        if ext is None or s.get("source") is None:
            yield pos - gpa, s, [(0, hi - pos, EXT_READ)]
        else:
            yield pos - gpa, s, ext(pos - s["gpa"], hi - pos)
        pos = hi


def _fill(img, gpa, mv, stage):
    """Guest bytes [gpa, gpa+len(mv)) into ``mv`` (``stage``: a scratch buffer)."""
    for base, seg, ext in _slices(img, gpa, len(mv)):
        e = ext if isinstance(ext, np.ndarray) else np.array(ext, dtype=np.int64).reshape(-1, 3)
        e[:, 0] += base
        for rel, n, where in e[e[:, 2] < 0].tolist():
            if where == EXT_ZERO:
                mv[rel : rel + n] = _ZEROS[:n]
            else:
                data = seg["read"](gpa + rel - seg["gpa"], n)
                mv[rel : rel + len(data)] = data
                mv[rel + len(data) : rel + n] = _ZEROS[: n - len(data)]
        e = e[e[:, 2] >= 0]
        if len(e):
            _copy_windows(seg["source"], e[:, 0], e[:, 1], e[:, 2], mv, stage)


def _copy_windows(src, rel, n, where, mv, stage):
    """Copy source pieces (output offset, length, source offset) into ``mv``.

    Pieces in source order and at most GAP apart form a window read with one
    preadv into ``stage`` (at the file's offset modulo the page, so the kernel
    copy is aligned), unless a window is one piece that can land in place.
    """
    end = where + n
    brk = np.flatnonzero((where[1:] < end[:-1]) | (where[1:] > end[:-1] + GAP)) + 1
    limit = len(stage) - PAGE
    for lo, hi in zip([0, *brk.tolist()], [*brk.tolist(), len(where)]):
        while lo < hi:  # split a region into windows that fit the stage
            top = lo + max(1, int(np.searchsorted(end[lo:hi], where[lo] + limit, side="right")))
            w0, w1 = int(where[lo]), int(end[top - 1])
            if top - lo == 1 and (w0 - int(rel[lo])) % ALIGN == 0:
                _readinto(src, w0, mv[int(rel[lo]) : int(rel[lo]) + w1 - w0])
            else:
                a = w0 % PAGE
                _readinto(src, w0, stage[a : a + w1 - w0])
                _scatter(stage, where[lo:top] + (a - w0), mv, rel[lo:top], n[lo:top])
            lo = top


def _scatter(stage, at, mv, rel, n):
    """mv[rel:rel+n] = stage[at:at+n] for each piece.

    A plain loop over Python ints costs ~0.7 us a piece (5.6 GB/s for 4 KiB
    pages here). Long runs of equal pieces, consecutive in the output and at
    a constant stride in the stage (a migration stream's pages, 4104 bytes
    apart), are one strided numpy copy instead (~13 GB/s); numpy's per-call
    cost makes that a loss for short runs.
    """
    loop = np.ones(len(at), dtype=bool)
    if len(at) >= LONG_RUN:
        link = (n[1:] == n[:-1]) & (rel[1:] == rel[:-1] + n[:-1])
        stride = np.diff(at)
        link[1:] &= stride[1:] == stride[:-1]
        starts = np.flatnonzero(np.concatenate(([True], ~link)))
        sizes = np.diff(np.append(starts, len(at)))
        big = sizes >= LONG_RUN
        src, dst = np.frombuffer(stage, dtype=np.uint8), np.frombuffer(mv, dtype=np.uint8)
        for s, k in zip(starts[big].tolist(), sizes[big].tolist()):
            r, m, o = int(rel[s]), int(n[s]), int(at[s])
            dst[r : r + k * m].reshape(k, m)[:] = np.ndarray((k, m), np.uint8, src, o, (int(at[s + 1]) - o, 1))
        loop = ~np.repeat(big, sizes)
    for r, m, o in zip(rel[loop].tolist(), n[loop].tolist(), at[loop].tolist()):
        mv[r : r + m] = stage[o : o + m]


def _write_sparse(fd, at, mv):
    """pwrite ``mv`` at ``at``, leaving holes where whole pages are zero."""
    full = len(mv) // PAGE
    runs = []
    if full:
        words = np.frombuffer(mv, dtype=np.uint64, count=full * PAGE // 8).reshape(full, PAGE // 8)
        nonzero = np.bitwise_or.reduce(words, axis=1) != 0  # fastest page test measured here
        edges = np.flatnonzero(np.diff(np.concatenate(([False], nonzero, [False])).astype(np.int8)))
        runs = [(s * PAGE, e * PAGE) for s, e in zip(edges[0::2].tolist(), edges[1::2].tolist())]
    if len(mv) > full * PAGE:
        runs.append((full * PAGE, len(mv)))
    for lo, hi in runs:
        while lo < hi:
            lo += os.pwrite(fd, mv[lo:hi], at + lo)


def _identity(path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _files_open_for_reading() -> set[tuple[int, int]]:
    """(device, inode) of every file this process holds open read-only: what a reader is reading."""
    found = set()
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return found  # not Linux: the source and protected paths are still compared
    for fd in fds:
        try:
            with open(f"/proc/self/fdinfo/{fd}") as info:
                flags = next(int(line.split()[1], 8) for line in info if line.startswith("flags:"))
            if flags & os.O_ACCMODE != os.O_RDONLY:
                continue
            st = os.fstat(int(fd))
        except (OSError, StopIteration, ValueError):
            continue
        found.add((st.st_dev, st.st_ino))
    return found


def refuse_overwriting_inputs(src, dst, protect=()) -> None:
    """EvidenceError when writing ``dst`` would overwrite ``src``, a ``protect``-ed file or a file being read.

    Compares real paths (symbolic links resolved) and device/inode (hard links).

    >>> refuse_overwriting_inputs("vm.save", "vm.save")  # doctest: +SKIP
    EvidenceError: vm.save: is the evidence being converted (vm.save); refusing to overwrite evidence
    """
    if os.path.isdir(dst):
        raise EvidenceError(dst, "is a directory; name the ELF file to write")
    target_id = _identity(dst)
    for path in (src, *protect):
        if same_file(dst, path):
            what = "the evidence being converted" if path == src else "evidence"
            raise EvidenceError(dst, f"is {what} ({path}), or a link to it; refusing to overwrite evidence")
    if target_id is not None and target_id in _files_open_for_reading():
        raise EvidenceError(dst, "is a file this conversion reads (a backing file?); refusing to overwrite it")


def to_elf(
    src, dst, *, snapshot=None, derived_dir=None, progress=None, image=None, hash=True, references=None, protect=()
):
    """Convert ``src`` (any supported format) into an ELF64 core at ``dst``.

    ``dst`` may not be ``src``, a ``protect``-ed path or a file being read
    (EvidenceError, nothing written); it appears whole or not at all.
    ``progress(done_bytes, total_bytes)`` is called as data is written.
    ``hash``: True hashes source and output, "output" only the output (for
    callers that hashed the source already), False neither; a hash not
    computed is None in the result. ``references``: where a qcow2's backing
    files may be read from (:class:`toolkit.references.ReferencePolicy`).
    Returns {src_sha256, dst_sha256, runs, bytes, format, diagnostics}.

    >>> r = to_elf("guest.kdump", "guest.elf")  # doctest: +SKIP
    >>> r["bytes"] == sum(n for _, n in r["ranges"])  # doctest: +SKIP
    True
    """
    own = image is None
    img = image or open_image(src, snapshot=snapshot, derived_dir=derived_dir, references=references)
    sink = fd = None
    partial = os.path.join(os.path.dirname(os.path.abspath(dst)), f".{os.path.basename(dst)}.{os.getpid()}.part")
    try:
        refuse_overwriting_inputs(src, dst, protect)  # with the image open: its backing files are open too
        # Started before the copy so that it overlaps the migration index pass and the copy.
        src_sha = _in_thread(sha256_file, src) if hash is True else (lambda: None)
        runs = _coalesce(list(img.runs))
        notes = img.notes or b""
        nph = len(runs) + (1 if notes else 0)
        off = 64 + 56 * nph
        note_off = off
        off += len(notes)
        loads = []
        for gpa, n in runs:
            off = (off + PAGE - 1) & ~(PAGE - 1)
            loads.append((off, gpa, n))
            off += n
        total_out = off
        header = [_ehdr(nph)]
        if notes:
            header.append(struct.pack("<IIQQQQQQ", 4, 0, note_off, 0, 0, len(notes), len(notes), 4))
        header += [struct.pack("<IIQQQQQQ", 1, 7, foff, 0, gpa, n, n, PAGE) for foff, gpa, n in loads]
        header = b"".join(header) + notes
        total = sum(n for _, n in runs)
        done = 0
        sink = _Sink(bool(hash))
        stage = memoryview(mmap.mmap(-1, CHUNK + PAGE))
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        _write_sparse(fd, 0, memoryview(header))
        sink.done(header, len(header))
        pos = len(header)
        for foff, gpa, n in loads:
            sink.done(bytes(foff - pos), foff - pos)
            for rel in range(0, n, CHUNK):
                m = min(CHUNK, n - rel)
                buf = sink.free.get()
                with memoryview(buf) as whole:
                    mv = whole[:m]
                    _fill(img, gpa + rel, mv, stage)
                    _write_sparse(fd, foff + rel, mv)
                    mv.release()
                sink.done(buf, m)
                done += m
                if progress:
                    progress(done, total)
            pos = foff + n
        os.ftruncate(fd, total_out)  # a trailing hole still counts as file length
        dst_sha, sink = sink.close(), None
        os.close(fd)
        fd = None
        os.replace(partial, dst)
        partial = None
        return {
            "src_sha256": src_sha(),
            "dst_sha256": dst_sha,
            "runs": len(runs),
            "path": str(dst),
            "bytes": total,
            "ranges": runs,
            "format": img.format,
            "diagnostics": list(img.diagnostics),
        }
    finally:
        if sink is not None:
            sink.close()
        if fd is not None:
            os.close(fd)
        if partial is not None:  # a failed or interrupted conversion leaves no half-written core
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
        if own:
            img.close()


def _ehdr(nph):
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    return ident + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, nph, 0, 0, 0)
