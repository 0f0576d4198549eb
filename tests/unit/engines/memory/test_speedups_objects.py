"""The object-model, VMA-name and hidden_modules speed-ups answer exactly what Volatility's own code does."""

from __future__ import annotations

import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit.engines.memory import speedups_objects, symbols

PAGE = 4096


class PagedLayer:
    """A virtual layer of 4 KiB pages: some absent (not mapped), some mapped but unreadable."""

    class Invalid(Exception):
        pass

    def __init__(self, pages: dict[int, bytes | None]):
        self.pages = pages  # page number -> bytes, or None for mapped-but-unreadable

    def mapping(self, offset, length, ignore_errors=False):
        end = offset + length
        while offset < end:
            page, within = divmod(offset, PAGE)
            take = min(PAGE - within, end - offset)
            if page in self.pages:
                yield offset, take, offset, take, "physical"
            offset += take

    def read(self, offset, length):
        out = b""
        while length > 0:
            page, within = divmod(offset, PAGE)
            data = self.pages.get(page)
            if data is None:
                raise self.Invalid(offset)
            take = min(PAGE - within, length)
            out += data[within : within + take]
            offset, length = offset + take, length - take
        return out


def volatility_loop(layer, first, stop, step, skip, member):
    """Volatility's own get_hidden_modules pre-filter, one read per candidate."""
    offset, size, byteorder, signed = member
    for address in range(first, stop, step):
        if address in skip:
            continue
        try:
            value = int.from_bytes(layer.read(address + offset, size), byteorder, signed=signed)
        except PagedLayer.Invalid:
            continue
        if value == address:
            yield address


@st.composite
def module_areas(draw):
    base = 0x100 * PAGE
    npages = draw(st.integers(1, 12))
    pages = {}
    for n in range(npages):
        kind = draw(st.sampled_from(["data", "data", "absent", "unreadable"]))
        if kind == "absent":
            continue
        pages[base // PAGE + n] = None if kind == "unreadable" else bytearray(PAGE)
    step = draw(st.sampled_from([1, 8, 64]))
    offset = draw(st.sampled_from([0, 8, 24, PAGE - 8, PAGE - 4]))
    first = base + draw(st.integers(0, 64))
    stop = base + npages * PAGE - draw(st.integers(0, 200))
    # plant self-pointers at candidates (some straddle page ends), and noise
    for address in draw(st.lists(st.integers(first, max(first, stop)), max_size=20)):
        address -= (address - first) % step
        at = address + offset
        for i, byte in enumerate(address.to_bytes(8, "little")):
            page = pages.get((at + i) // PAGE)
            if page is not None:
                page[(at + i) % PAGE] = byte
    pages = {k: (bytes(v) if v is not None else None) for k, v in pages.items()}
    skip = set(draw(st.lists(st.integers(first, max(first, stop)), max_size=3)))
    return PagedLayer(pages), first, stop, step, skip, (offset, 8, "little", False)


@settings(max_examples=300, deadline=None)
@given(module_areas())
def test_hidden_module_candidates_are_volatilitys(area):
    layer, first, stop, step, skip, member = area
    fast = list(
        speedups_objects.hidden_module_candidates(layer, first, stop, step, skip, member, (PagedLayer.Invalid,))
    )
    assert fast == list(volatility_loop(layer, first, stop, step, skip, member))


def test_bulk_reads_are_few(monkeypatch):
    pages = {0x100 + n: bytes(PAGE) for n in range(256)}  # 1 MiB mapped module area
    layer = PagedLayer(pages)
    calls = []
    read = layer.read
    monkeypatch.setattr(layer, "read", lambda o, n: calls.append(n) or read(o, n))
    base = 0x100 * PAGE
    list(
        speedups_objects.hidden_module_candidates(layer, base, base + (1 << 20), 64, set(), (8, 8, "little", False), ())
    )
    assert len(calls) == 1  # one read instead of 16384


def test_object_information_and_mappings_answer_as_before():
    from volatility3.framework.interfaces import objects as objects_interface
    from volatility3.framework.symbols.linux import extensions

    speedups_objects.install_object_speedups(objects_interface, extensions)
    info = objects_interface.ObjectInformation(layer_name="kernel", offset=16, native_layer_name="kernel")
    assert "offset" in info and "size" in info and "nosuch" not in info
    assert info["offset"] == 16
    ro = objects_interface.ReadOnlyMapping({"a": 1, "b": None})
    assert (ro.a, ro.b, dict(ro)) == (1, None, {"a": 1, "b": None})
    with pytest.raises(AttributeError, match=r"ReadOnlyMapping\.c"):
        _ = ro.c
    assert not hasattr(ro, "missing") and hasattr(ro, "a")


def test_vma_names_are_memoised_per_context_and_task():
    calls = []

    class Vma:
        def __init__(self, offset):
            self.vol = types.SimpleNamespace(layer_name="kernel", offset=offset)

        def get_name(self, context, task):
            calls.append((self.vol.offset, task.vol.offset))
            return f"/lib/{self.vol.offset}"

    class Context:
        pass

    fake = types.SimpleNamespace(vm_area_struct=Vma)
    speedups_objects.install_object_speedups(
        types.SimpleNamespace(
            ObjectInformation=type("I", (), {"_snapscope_fast": True}),
            ReadOnlyMapping=type("R", (), {"_snapscope_fast": True}),
        ),
        fake,
    )
    task = types.SimpleNamespace(vol=types.SimpleNamespace(layer_name="kernel", offset=7))
    other = types.SimpleNamespace(vol=types.SimpleNamespace(layer_name="kernel", offset=8))
    one, two = Context(), Context()
    assert Vma(1).get_name(one, task) == "/lib/1" and Vma(1).get_name(one, task) == "/lib/1"
    assert Vma(1).get_name(one, other) == "/lib/1" and Vma(1).get_name(two, task) == "/lib/1"
    assert calls == [(1, 7), (1, 8), (1, 7)]  # once per (context, vma, task)


def test_paths_are_memoised_per_context_on_the_four_kernel_objects():
    calls = []

    class Utilities:
        @classmethod
        def do_get_path(cls, rdentry, rmnt, dentry, vfsmnt):
            calls.append((rdentry.vol.offset, dentry.vol.offset))
            if dentry.vol.offset == 666:
                raise ValueError("smeared")
            return f"/{rdentry.vol.offset}/{dentry.vol.offset}"

    class Context:
        pass

    def obj(context, offset, type_name="dentry"):
        return types.SimpleNamespace(
            _context=context, vol=types.SimpleNamespace(layer_name="kernel", offset=offset, type_name=type_name)
        )

    speedups_objects.install_path_memo(types.SimpleNamespace(LinuxUtilities=Utilities))
    speedups_objects.install_path_memo(types.SimpleNamespace(LinuxUtilities=Utilities))  # idempotent
    one, two = Context(), Context()

    def path(context, root, dentry):
        return Utilities.do_get_path(
            obj(context, root), obj(context, 5, "vfsmount"), obj(context, dentry), obj(context, 6)
        )

    assert path(one, 1, 10) == "/1/10" and path(one, 1, 10) == "/1/10"
    assert path(one, 2, 10) == "/2/10"  # another root (a chrooted task): its own answer
    assert path(two, 1, 10) == "/1/10"  # another dump
    assert calls == [(1, 10), (2, 10), (1, 10)]
    for _ in range(2):  # a failure is not remembered: asked again, it fails again
        with pytest.raises(ValueError):
            path(one, 1, 666)
    assert calls[-2:] == [(1, 666), (1, 666)]
    # an argument that is not a Volatility object: Volatility's own answer, nothing kept
    assert Utilities.do_get_path(obj(one, 1), None, obj(one, 11), None) == "/1/11"
    assert Utilities.do_get_path(obj(one, 1), None, obj(one, 11), None) == "/1/11"
    assert calls[-2:] == [(1, 11), (1, 11)]


_noise = st.binary(max_size=300)
_banner = st.sampled_from(
    [
        b"Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1 SMP\n\x00",
        b"Linux version 6.1.0-57-amd64 (x) #1 SMP Linux version 6.1.0-57-amd64 (x) #1 SMP\n\x00",
        b"Linux version 6.1 short\n\x00",
        b"Linux version 5.10.0-99 printk copy without terminator\n",
        b"Linux version Linux version 6.1.0 (y) #2 SMP PREEMPT\n\x00",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_noise, _banner), max_size=6), _noise)
def test_banner_matches_are_finditers(pieces, tail):
    data = b"".join(noise + banner for noise, banner in pieces) + tail
    expected = [(m.start(), m.group()) for m in symbols._BANNER.finditer(data)]
    assert [(m.start(), m.group()) for m in symbols.banner_matches(data)] == expected


def test_fast_chainmap_answers_as_chainmap():
    import collections

    from volatility3.framework.interfaces import objects as objects_interface
    from volatility3.framework.symbols.linux import extensions

    speedups_objects.install_object_speedups(objects_interface, extensions)
    info = objects_interface.ObjectInformation(layer_name="kernel", offset=16, native_layer_name="kernel", size=8)
    maps = ({}, {"type_name": "task_struct", "offset": 32}, info, {"members": {"pid": 1}, "size": 99})
    slow, fast = collections.ChainMap(*maps), speedups_objects.FastChainMap(*maps)
    for key in ("type_name", "offset", "layer_name", "size", "members", "member_name", "parent", "nosuch"):
        try:
            expected = slow[key]
        except KeyError:
            with pytest.raises(KeyError):
                fast[key]
            assert fast.get(key, "dflt") == "dflt"
            continue
        assert fast[key] == expected and fast.get(key) == expected and key in fast
    fast["subtype"] = "x"  # writes go to the first map, as ChainMap's do
    assert maps[0] == {"subtype": "x"} and fast.maps[-1] is maps[-1]


def test_objects_build_the_same_with_fast_chainmaps():
    """A real Volatility struct read twice, before and after the lookups are installed: same values."""
    from volatility3.framework import contexts, objects
    from volatility3.framework.interfaces import objects as objects_interface
    from volatility3.framework.layers import physical
    from volatility3.framework.objects import templates
    from volatility3.framework.symbols import native
    from volatility3.framework.symbols.linux import extensions

    def read_back():
        ctx = contexts.Context()
        data = (1234).to_bytes(4, "little") + (5678).to_bytes(8, "little") + b"\x00" * 52
        ctx.layers.add_layer(physical.BufferDataLayer(ctx, "cfg", "mem", data))
        table = native.NativeTable("native", native.std_ctypes)
        u32, u64 = table.get_type("unsigned int"), table.get_type("unsigned long long")
        struct = templates.ObjectTemplate(
            objects.StructType, type_name="pair", size=12, members={"a": (0, u32), "b": (4, u64)}
        )
        obj = struct(ctx, objects_interface.ObjectInformation(layer_name="mem", offset=0, native_layer_name="mem"))
        return int(obj.a), int(obj.b), obj.vol.type_name, obj.vol.offset, obj.vol.size, obj.b.vol.member_name

    before = read_back()
    speedups_objects.install_object_speedups(objects_interface, extensions)
    speedups_objects.install_chainmap_lookups(objects_interface, templates)
    assert isinstance(
        objects_interface.ObjectInterface.__init__.__globals__["collections"].ChainMap(), speedups_objects.FastChainMap
    )
    # vol.size is the ObjectInformation's (None here), which shadows the template's: Volatility's own answer
    assert read_back() == before == (1234, 5678, "pair", 0, None, "b")


def test_large_reads_bypass_volatilitys_read_cache():
    """Small reads stay in Volatility's LRU cache; a read above CACHED_READ_MAX returns the same bytes
    and is not kept (512 kept 16 MiB YARA windows were gigabytes on an 8 GiB guest)."""
    from volatility3.framework import contexts
    from volatility3.framework.layers import linear, physical, segmented

    speedups_objects.install_bounded_read_cache(linear)
    cells = linear.LinearlyMappedLayer.read.__closure__  # our wrapper holds Volatility's lru_cache
    lru = next(c.cell_contents for c in cells if hasattr(c.cell_contents, "cache_info"))

    data = bytes(range(256)) * ((1 << 20) // 256)

    class Identity(segmented.SegmentedLayer):  # one segment mapping the buffer onto itself
        def _load_segments(self):
            self._segments = [(0, 0, len(data), len(data))]

    ctx = contexts.Context()
    ctx.layers.add_layer(physical.BufferDataLayer(ctx, "cfg.base", "base", data))
    ctx.config["cfg.seg.base_layer"] = "base"
    ctx.layers.add_layer(Identity(ctx, "cfg.seg", "seg"))
    seg = ctx.layers["seg"]
    small, big = speedups_objects.CACHED_READ_MAX, speedups_objects.CACHED_READ_MAX + 1
    assert seg.read(100, small) == data[100 : 100 + small]
    assert seg.read(7, big) == data[7 : 7 + big]
    assert seg.read(len(data) - 10, big, pad=True) == data[-10:] + b"\x00" * (big - 10)
    # the cache is shared by every layer of the process (other tests may have filled it): count
    # lookups, not entries. A big read never reaches the cache; a small one repeated is a hit.
    before = lru.cache_info()
    seg.read(9, big)
    seg.read(9, big)
    after = lru.cache_info()
    assert (after.hits, after.misses) == (before.hits, before.misses)
    seg.read(200, 16)
    seg.read(200, 16)
    assert lru.cache_info().hits == after.hits + 1
