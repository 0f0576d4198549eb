"""Acquired bytes are hashed as they are written: copies with holes, pipes a writer fills, early stops."""

import errno
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from toolkit.acquire import streams
from toolkit.errors import AcquireError

REPO = Path(__file__).resolve().parents[3]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_copy_hashes_every_byte_and_keeps_holes(tmp_path):
    data = os.urandom(1 << 20) + bytes(16 << 20) + b"tail"
    src = tmp_path / "disk.qcow2"
    src.write_bytes(data)
    entry = streams.copy_file(src, tmp_path / "copy.qcow2", threading.Event())
    copy = tmp_path / "copy.qcow2"
    assert entry["sha256"] == _sha(data) == _sha(copy.read_bytes())
    assert entry["size"] == len(data) and entry["complete"] and entry["error"] is None
    assert copy.stat().st_mode & 0o777 == 0o444  # evidence: read-only once written
    # the 16 MiB of zeros stayed a hole: far fewer blocks than bytes
    assert copy.stat().st_blocks * 512 < 8 << 20


def test_copy_stops_when_asked_and_says_so(tmp_path):
    src = tmp_path / "disk.qcow2"
    src.write_bytes(os.urandom(12 << 20))
    stop = threading.Event()
    stop.set()
    entry = streams.copy_file(src, tmp_path / "copy.qcow2", stop)
    assert not entry["complete"] and entry["size"] == 0 == (tmp_path / "copy.qcow2").stat().st_size
    assert entry["sha256"] == _sha(b"")


def test_never_writes_over_a_file(tmp_path):
    (tmp_path / "copy.qcow2").write_bytes(b"earlier evidence")
    with pytest.raises(AcquireError, match="exists already"):
        streams.copy_file(tmp_path / "copy.qcow2", tmp_path / "copy.qcow2", threading.Event())
    assert (tmp_path / "copy.qcow2").read_bytes() == b"earlier evidence"


WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
for n in range(int(sys.argv[2])):
    os.write(fd, bytes([n % 251]) * 65536)
os.close(fd)
"""


def test_a_pipe_filled_by_another_process(tmp_path):
    sink = streams.start_sink(tmp_path / "mem.fifo", tmp_path / "memory.elf", threading.Event())
    subprocess.run([sys.executable, "-c", WRITER, str(sink["fifo"]), "300"], check=True, timeout=60)
    entry = streams.finish_sink(sink)
    expected = b"".join(bytes([n % 251]) * 65536 for n in range(300))
    assert entry["complete"] and entry["size"] == len(expected) and entry["sha256"] == _sha(expected)
    assert (tmp_path / "memory.elf").read_bytes() == expected and not (tmp_path / "mem.fifo").exists()


def test_a_writer_that_never_came(tmp_path):
    # libvirt refused the job before opening the pipe: the sink ends, empty, once told the job is over
    sink = streams.start_sink(tmp_path / "mem.fifo", tmp_path / "memory.elf", threading.Event())
    entry = streams.finish_sink(sink)
    assert entry["size"] == 0 and entry["sha256"] == _sha(b"")


def test_aborting_a_sink_ends_the_writer(tmp_path):
    sink = streams.start_sink(tmp_path / "mem.fifo", tmp_path / "memory.elf", threading.Event())
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(sink["fifo"]), "100000"], stderr=subprocess.PIPE, text=True
    )
    while (tmp_path / "memory.elf").stat().st_size < 1 << 20:
        time.sleep(0.05)
    streams.abort_sink(sink)
    # the reader's end closed: the writer's next write fails (EPIPE), as QEMU's dump does
    assert writer.wait(timeout=30) != 0 and "BrokenPipeError" in writer.stderr.read()
    entry = streams.finish_sink(sink)
    data = (tmp_path / "memory.elf").read_bytes()
    assert not entry["complete"] and entry["size"] == len(data) and entry["sha256"] == _sha(data)


FULL_VOLUME = """
import json, resource, signal, sys, threading
from toolkit.acquire import streams
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
print(json.dumps(streams.copy_file(sys.argv[1], sys.argv[2], threading.Event())))
"""


def test_aborted_before_the_writer_opened_the_pipe(tmp_path):
    # Ctrl-C while libvirt is still opening the pipe: its open must not hang on a pipe with no
    # reader; the sink lets it open, then gives up at its first write
    sink = streams.start_sink(tmp_path / "mem.fifo", tmp_path / "memory.elf", threading.Event())
    streams.abort_sink(sink)
    writer = subprocess.run(
        [sys.executable, "-c", WRITER, str(sink["fifo"]), "100000"], capture_output=True, text=True, timeout=60
    )
    assert writer.returncode != 0 and "BrokenPipeError" in writer.stderr
    entry = streams.finish_sink(sink)
    assert not entry["complete"] and entry["size"] == (tmp_path / "memory.elf").stat().st_size <= 65536


def test_a_write_that_fails_part_way_is_recorded_with_what_was_written(tmp_path):
    # a file-size limit makes the volume "full" after 1 MiB for this process alone
    src = tmp_path / "disk.qcow2"
    src.write_bytes(os.urandom(4 << 20))
    dest = tmp_path / "copy.qcow2"
    out = subprocess.run(
        [sys.executable, "-c", FULL_VOLUME, str(src), str(dest)], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    entry = json.loads(out.stdout)
    assert entry["error"] == f"{dest}: cannot write: File too large" and not entry["complete"]
    assert entry["size"] == dest.stat().st_size == 1 << 20 and entry["sha256"] == _sha(dest.read_bytes())


def test_no_space_is_named_as_such():
    assert streams.write_error("out/memory.elf", OSError(errno.ENOSPC, "No space left on device")) == (
        "out/memory.elf: no space left on the output volume"
    )
