"""Property-based fuzzing: any damage to any format yields a MemoryFormatError
naming the file, or an image that reads without error — never another
exception type, never a hang."""

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import toolkit.memory as M
from tests.helpers import memory_writers as W
from tests.helpers.memory_samples import PS, complete_stream, page

STREAM = complete_stream(ram=8 * PS)[0]


def _samples(tmp):
    out = {}
    p = tmp / "e.elf"
    out["elf"] = W.elf_core(
        p, [(0, page(1), None), (0x10000, page(2), 2 * PS)], notes=W.qemu_cpu_note(0x1000), xnum=True
    )
    for flat in (True, False):
        p = tmp / "k"
        W.kdump(
            p, {0: page(0), 1: bytes(PS), 3: page(3)}, 8, comp="zlib", flattened=flat, notes=W.qemu_cpu_note(0x1000)
        )
        out[f"kdump-{flat}"] = p.read_bytes()
    out["qevm"] = STREAM
    out["save-raw"] = W.libvirt_save(STREAM, "raw")
    out["save-zstd"] = W.libvirt_save(STREAM, "zstd")
    out["save-lzop"] = W.libvirt_save(STREAM, "lzop")
    p = tmp / "q.qcow2"
    W.qcow2(p, snapshots=[{"id": "1", "name": "s", "vmstate": STREAM}], compress="zlib")
    out["qcow2"] = p.read_bytes()
    out["lime"] = struct.pack("<4sIQQQ", b"EMiL", 1, 0, PS - 1, 0) + page(4)
    return out


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return _samples(tmp_path_factory.mktemp("fuzz"))


def _exercise(path):
    try:
        img = M.open_image(path, derived_dir=path.parent / "derived")
    except M.MemoryFormatError as exc:
        assert str(path) in str(exc)
        return
    with img:
        for start, n in img.runs[:8]:
            img.read(start, min(n, 4 * PS))
        M.probe(path) if img.format != "raw" else None


NAMES = ["elf", "kdump-True", "kdump-False", "qevm", "save-raw", "save-zstd", "save-lzop", "qcow2", "lime"]
FUZZ = settings(
    max_examples=int(os.environ.get("SNAPSCOPE_FUZZ_EXAMPLES", 25)),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.data())
def test_truncation_and_byte_damage(tmp_path_factory, samples, name, data):
    blob = bytearray(samples[name])
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    else:
        for _ in range(data.draw(st.integers(1, 8))):
            if not blob:
                break
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] = data.draw(st.integers(0, 255))
    p = tmp_path_factory.mktemp("f") / f"{name}.bin"
    p.write_bytes(bytes(blob))
    try:
        _exercise(p)
    except M.MemoryFormatError as exc:  # read-time errors name the file too
        assert str(p) in str(exc) or exc.path.startswith(str(p))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["elf", "kdump-False", "qevm", "save-raw", "qcow2"])
def test_truncated_at_every_64th_offset(tmp_path, samples, name):
    blob = samples[name]
    for cut in range(0, len(blob), max(64, len(blob) // 150)):
        p = tmp_path / f"{name}.{cut}"
        p.write_bytes(blob[:cut])
        try:
            _exercise(p)
        except M.MemoryFormatError as exc:
            assert exc.path.startswith(str(p))
        p.unlink()
