"""Shared synthetic inputs for the memory reader tests: distinctive pages and whole QEVM streams."""

from __future__ import annotations

import random

from tests.helpers import memory_writers as W

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
            expect[i * PS : (i + 1) * PS] = page(i)
    q.eos().end().page("vga.vram", 0, page(99)).eos().devices()
    return q.bytes(), bytes(expect)
