"""Writing acquired bytes: hashed as they are written, stoppable, never over a file.

QEMU and libvirt write memory dumps and packet captures into a named pipe
that snapscope reads (:func:`start_sink`): every byte is hashed on its way to
the output file, the output directory need not be reachable by the QEMU
user, and closing the pipe is how a dump is aborted (QEMU gets EPIPE). Disk
images are copied by :func:`copy_file` the same way, holes kept as holes.

Each returns a file entry: ``{"path", "sha256", "size", "complete", "how",
"error"}`` with the hash of exactly the bytes in the file, complete or not;
``error`` is the one-line reason a write failed (no space left), else None.

Example::

    sink = start_sink(staging / "mem.fifo", out / "memory.elf", stop)
    ... libvirt writes into staging/mem.fifo ...
    entry = finish_sink(sink)          # after the writer is done
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import select
import threading
from pathlib import Path

from toolkit.errors import AcquireError
from toolkit.hashing import CHUNK, sha256_copy, sha256_file

POLL_SECONDS = 0.2
# after the job that writes into a pipe has ended, how long the last bytes may take to arrive
DRAIN_SECONDS = 60


def _create(dest: Path) -> int:
    """The output file's descriptor; it must not exist (evidence is never written over)."""
    try:
        return os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise AcquireError(f"{dest}: exists already; acquisition never writes over a file") from None


def _close_read_only(fd: int) -> None:
    """Close an output file, made read-only first: acquired evidence is not written again."""
    try:
        os.fchmod(fd, 0o444)
    finally:
        os.close(fd)


def _writer(fd: int):
    """write(data) for an unbuffered descriptor: all of ``data`` or an OSError, nothing held back."""

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    return write


def write_error(dest: Path, exc: OSError) -> str:
    """The one-line reason a write failed: no room left, or the system's own words."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{dest}: no space left on the output volume"
    return f"{dest}: cannot write: {exc.strerror or exc}"


def _entry(dest: Path, digest: str | None, size: int, complete: bool, how: str, error: str | None) -> dict:
    if digest is None:  # the write failed part-way: hash what the file holds
        digest, size = sha256_file(dest), os.path.getsize(dest)
    return {"path": str(dest), "sha256": digest, "size": size, "complete": complete, "how": how, "error": error}


def start_sink(
    fifo: Path, dest: Path, stop: threading.Event, *, owner: tuple[int, int] | None = None, sync: bool = True
) -> dict:
    """Create the pipe ``fifo`` (for ``owner`` (uid, gid) to write, if given) and start copying
    what arrives into ``dest``, hashing it. Returns the sink (a dict) for :func:`finish_sink`.
    ``sync=False`` leaves flushing the file to disk to the caller (:func:`sync_files`): a guest
    paused for the dump need not wait for the host's writeback."""
    os.mkfifo(fifo, 0o600)
    if owner is not None:
        os.chown(fifo, *owner)
    read_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    # our own writer keeps the pipe from reading as ended before the real writer opens it
    keep_fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    sink = {
        "fifo": fifo,
        "dest": dest,
        "keep_fd": keep_fd,
        "abort": threading.Event(),
        "stop": stop,
        "entry": None,
        "sync": sync,
    }
    try:
        out_fd = _create(dest)
    except BaseException:
        os.close(read_fd)
        os.close(keep_fd)
        raise
    sink["thread"] = threading.Thread(target=_drain, args=(sink, read_fd, out_fd), daemon=True)
    sink["thread"].start()
    return sink


def _drain(sink: dict, read_fd: int, out_fd: int) -> None:
    cut, started = False, False

    def read(n: int) -> bytes:
        nonlocal cut, started
        while True:
            stopping = sink["abort"].is_set() or sink["stop"].is_set()
            # Give up only once the writer has opened the pipe and written: a writer still
            # opening it (libvirt, for QEMU) would block for ever on a pipe with no reader.
            if stopping and started:
                cut = True
                return b""
            ready, _, _ = select.select([read_fd], [], [], POLL_SECONDS)
            if not ready:
                continue
            try:
                data = os.read(read_fd, n)
            except BlockingIOError:
                continue
            if data and stopping:
                cut = True
                return b""
            started = started or bool(data)
            return data

    digest, size, error = None, 0, None
    try:
        digest, size = sha256_copy(read, _writer(out_fd))
        if sink["sync"]:
            os.fsync(out_fd)
    except OSError as exc:
        cut, digest, error = True, None, write_error(sink["dest"], exc)
    finally:
        _close_read_only(out_fd)
        # closing our end is what stops the writer (QEMU sees EPIPE) when we give up early
        os.close(read_fd)
    sink["entry"] = _entry(sink["dest"], digest, size, not cut, "hashed as written, through a pipe", error)


def abort_sink(sink: dict) -> None:
    """Stop reading as soon as the writer has written: its next write fails (EPIPE), which ends its job."""
    sink["abort"].set()


def writer_done(sink: dict) -> None:
    """The job writing into the pipe has ended: once its bytes are read, the sink ends."""
    with contextlib.suppress(OSError):
        os.close(sink["keep_fd"])
    sink["keep_fd"] = -1


def finish_sink(sink: dict) -> dict:
    """Wait for the sink to drain (the writer is done) and return its file entry."""
    writer_done(sink)
    sink["thread"].join(DRAIN_SECONDS)
    if sink["thread"].is_alive():
        abort_sink(sink)
        sink["thread"].join()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sink["fifo"])
    return sink["entry"]


def copy_file(src: Path | str, dest: Path, stop: threading.Event, *, sync: bool = True) -> dict:
    """Copy ``src`` to ``dest`` (new), hashing every byte, all-zero chunks left as holes;
    stops early (entry ``complete`` False) when ``stop`` is set. ``sync``: as for :func:`start_sink`.

    Example: ``copy_file("/var/lib/libvirt/images/web01.qcow2", out / "web01.qcow2", stop)["sha256"]``
    """
    cut, digest, size, error = False, None, 0, None
    out_fd = _create(dest)
    write_all = _writer(out_fd)

    def read(n: int) -> bytes:
        nonlocal cut
        if stop.is_set():
            cut = True
            return b""
        return fin.read(n)

    def write(data: bytes) -> None:
        if data.count(0) == len(data):
            os.lseek(out_fd, len(data), os.SEEK_CUR)
        else:
            write_all(data)

    try:
        with open(src, "rb") as fin:
            digest, size = sha256_copy(read, write, chunk=CHUNK)
        os.ftruncate(out_fd, size)
        if sync:
            os.fsync(out_fd)
    except OSError as exc:
        cut, digest, error = True, None, write_error(dest, exc)
    finally:
        _close_read_only(out_fd)
    return _entry(dest, digest, size, not cut, f"hashed as copied from {src}", error)


def sync_files(paths) -> None:
    """Flush written files to disk (those written with ``sync=False``)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(dest: Path, data: bytes, *, how: str) -> dict:
    """Write ``data`` to ``dest`` (new) and return its entry (hashed from the same bytes)."""
    out_fd = _create(dest)
    try:
        digest, size = sha256_copy(io.BytesIO(data).read, _writer(out_fd))
        os.fsync(out_fd)
    except OSError as exc:
        return _entry(dest, None, 0, False, how, write_error(dest, exc))
    finally:
        _close_read_only(out_fd)
    return _entry(dest, digest, size, True, how, None)
