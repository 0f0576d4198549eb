"""Shared synthetic inputs for the memory reader tests."""
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import writers as W  # noqa: E402

PS = 4096


def page(seed):
    """A compressible but distinctive page."""
    rnd = random.Random(seed)
    return bytes(rnd.choice(b"ab\0\xff") for _ in range(PS))


def complete_stream(machine="pc-i440fx-7.2", ram=16 * PS, extra_blocks=(("vga.vram", 2 * PS),), **kw):
    """A QEVM stream where every guest page is sent, plus the expected RAM bytes."""
    q = W.Qevm(machine=machine, **kw).start_ram([("pc.ram", ram), *extra_blocks])
    expect = bytearray(ram)
    q.eos().part()
    for i in range(ram // PS):
        if i % 3 == 0:
            q.zero("pc.ram", i * PS)
        else:
            q.page("pc.ram", i * PS, page(i))
            expect[i * PS:(i + 1) * PS] = page(i)
    q.eos().end().page("vga.vram", 0, page(99)).eos().devices()
    return q.bytes(), bytes(expect)


@pytest.fixture
def stream():
    return complete_stream()
