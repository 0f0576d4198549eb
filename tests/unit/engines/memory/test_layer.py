"""snapscope's readers as a Volatility layer, stacked by Volatility's own LayerStacker on real files
written from the format spec: reads, validity and scans agree with the reader; nothing is converted."""

from __future__ import annotations

import pytest

from tests.helpers import memory_writers as W
from tests.helpers.memory_samples import PS, page
from toolkit.engines.memory import volatility
from toolkit.engines.memory.images import SNAPSHOT_SETTING

PAGES = {0: page(0), 2: page(2), 9: page(9), 63: page(63)}


@pytest.fixture(scope="module")
def vol(tmp_path_factory):
    return volatility._framework(tmp_path_factory.mktemp("volcache"))


def _stack(vol, path, snapshot=None):
    """The layers Volatility's LayerStacker builds over ``path``, top first."""
    from volatility3.framework.automagic import stacker
    from volatility3.framework.layers import physical

    context = vol["contexts"].Context()
    context.config[SNAPSHOT_SETTING] = snapshot or ""
    context.config["base.location"] = path.as_uri()
    context.add_layer(physical.FileLayer(context, "base", "base"))
    names = stacker.LayerStacker.stack_layer(context, "base")
    return context, [context.layers[n] for n in names]


def test_kdump_is_stacked_and_read_in_place(vol, tmp_path):
    dump = tmp_path / "g.kdump"
    W.kdump(dump, PAGES, 64, comp="zlib", notes=W.qemu_cpu_note(0x42000))
    before = set(tmp_path.iterdir())
    context, layers = _stack(vol, dump)
    top = layers[0]
    assert type(top).__name__ == "SnapscopeLayer" and top.image.format == "kdump"
    for pfn, data in PAGES.items():
        assert top.read(pfn * PS, PS) == data
    assert top.is_valid(9 * PS, PS) and not top.is_valid(5 * PS, 1)
    from volatility3.framework import exceptions

    with pytest.raises(exceptions.InvalidAddressException):
        top.read(5 * PS, 16)
    assert top.read(5 * PS, 16, pad=True) == bytes(16)
    assert set(tmp_path.iterdir()) == before  # no converted copy anywhere


def test_scan_visits_only_the_ranges_the_artefact_holds(vol, tmp_path):
    marked = {pfn: data for pfn, data in PAGES.items()}
    marked[63] = b"NEEDLE-IN-PAGE-63" + page(63)[17:]
    dump = tmp_path / "g.kdump"
    W.kdump(dump, marked, 64)
    _context, layers = _stack(vol, dump)
    top = layers[0]
    from volatility3.framework.layers import scanners

    hits = list(top.scan(top.context, scanners.BytesScanner(b"NEEDLE-IN-PAGE-63")))
    assert hits == [63 * PS]
    sections = []
    scanner = scanners.BytesScanner(b"x")
    for chunks, _end in top._scan_iterator(scanner, [(0, 64 * PS)]):
        sections += [(offset, size) for _name, offset, size in chunks]
    assert sections == [(0, PS), (2 * PS, PS), (9 * PS, PS), (63 * PS, PS)]


def test_elf_is_left_to_volatility(vol, tmp_path):
    core = tmp_path / "g.elf"
    W.elf_core(core, [(0, page(1) * 4, None)])
    _context, layers = _stack(vol, core)
    assert "SnapscopeLayer" not in {type(layer).__name__ for layer in layers}  # Volatility's own ELF layer reads it
