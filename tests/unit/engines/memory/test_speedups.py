"""The find-based MultiStringScanner search must yield exactly what
Volatility's own trie regex yields, on any needles and any haystack."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit.engines.memory import speedups

# A tiny alphabet makes overlaps, prefixes and repeats common.
_bytes = st.binary(min_size=0, max_size=6).map(lambda b: bytes(x % 3 for x in b))


def _volatility_scanner_class():
    from volatility3.framework.layers import scanners

    return scanners.MultiStringScanner


def _regex_matches(needles, haystack):
    scanner = _volatility_scanner_class()(needles)
    return [(m.start(0), m.group()) for m in re.finditer(scanner._regex, haystack)]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(_bytes.filter(bool), min_size=1, max_size=6),
    st.binary(max_size=200).map(lambda b: bytes(x % 3 for x in b)),
)
def test_same_matches_as_volatilitys_regex(needles, haystack):
    assert list(speedups.literal_matches(needles, haystack)) == _regex_matches(needles, haystack)


_tail = st.binary(min_size=speedups.SHARED_TAIL, max_size=speedups.SHARED_TAIL).map(lambda b: bytes(x % 2 for x in b))


@settings(max_examples=400, deadline=None)
@given(st.lists(_bytes, min_size=1, max_size=6), _tail, st.binary(max_size=300))
def test_needles_sharing_a_tail_are_found_in_one_pass(heads, tail, noise):
    """Needles ending in the same bytes (psscan's kernel pointers) are searched for by their shared
    tail: still exactly the regex's matches, overlaps and needles inside needles included."""
    needles = [head + tail for head in heads] + [tail[1:]]
    pieces = [bytes(x % 2 for x in noise[i : i + 7]) + needles[i % len(needles)] for i in range(0, len(noise), 7)]
    haystack = b"".join(pieces)
    assert list(speedups.literal_matches(needles, haystack)) == _regex_matches(needles, haystack)


def test_trie_gives_back_the_needles():
    needles = [b"ab", b"abc", b"b", b"\x00\xff"]
    scanner = _volatility_scanner_class()(needles)
    assert sorted(speedups.trie_needles(scanner._pattern_trie)) == sorted(needles)


def test_installed_search_matches_and_keeps_regex_for_many_needles():
    from volatility3.framework.layers import scanners

    speedups.install(scanners)
    cls = scanners.MultiStringScanner
    assert cls._snapscope_fast
    haystack = b"..\xff\xff\x81\x00..\xff\xff\x82\x00.." * 3
    pointers = [b"\xff\xff\x81\x00", b"\xff\xff\x82\x00"]
    few = cls(pointers)
    assert list(few.search(haystack)) == _regex_matches(pointers, haystack)
    many_needles = [bytes([i, i + 1]) for i in range(speedups.MAX_NEEDLES + 4)]
    many = cls(many_needles)
    data = bytes(range(60)) * 2
    assert list(many.search(data)) == _regex_matches(many_needles, data)
    # The scanner's chunk contract (report only offsets before chunk_size) is untouched.
    few.chunk_size = 10
    assert [off for off, _ in few(haystack, 1000)] == [1002, 1008]


def _isf_table(tmp_path, symbols, symbol_mask=0):
    import json

    from toolkit.engines.memory import volatility

    vol = volatility._framework(tmp_path / "cache")
    from volatility3.framework.symbols import intermed

    isf = tmp_path / "small.json"
    isf.write_text(
        json.dumps(
            {
                "metadata": {"format": "6.2.0", "producer": {"name": "test", "version": "1"}},
                "base_types": {
                    "int": {"kind": "int", "size": 4, "signed": True, "endian": "little"},
                    "pointer": {"kind": "int", "size": 8, "signed": False, "endian": "little"},
                },
                "user_types": {},
                "enums": {},
                "symbols": symbols,
            }
        )
    )
    context = vol["contexts"].Context()
    return intermed.IntermediateSymbolTable(context, "test.table", "small", isf.as_uri(), symbol_mask=symbol_mask)


@pytest.mark.parametrize("mask", [0, 0xFFFF])
def test_symbol_index_is_volatilitys_own(tmp_path, mask):
    symbols = {
        f"sym{i}": {"address": (i * 7919) % 1000 + (1 << 20), "type": {"kind": "base", "name": "int"}}
        for i in range(300)
    }
    symbols["same_place"] = {"address": symbols["sym5"]["address"]}
    ours = _isf_table(tmp_path, symbols, mask)
    assert speedups.index_symbol_locations(ours)
    theirs = _isf_table(tmp_path, symbols, mask)
    probe = theirs.get_symbol("sym5").address  # whatever masking Volatility applies (or not)
    assert sorted(ours.get_symbols_by_location(probe)) == ["same_place", "sym5"]
    assert list(theirs.get_symbols_by_location(probe)) == list(ours.get_symbols_by_location(probe))
    assert ours._sort_symbols == theirs._sort_symbols  # the whole index Volatility built itself


def test_symbol_index_leaves_unknown_tables_alone():
    assert speedups.index_symbol_locations(object()) is False


def test_isf_parsed_once_per_process_with_real_volatility(tmp_path, monkeypatch):
    """Two tables from one ISF share one parsed (read-only) object; a changed file is parsed anew."""
    monkeypatch.setattr(speedups, "ISF_MEMO_MIN_CHARS", 0)
    symbols = {"a": {"address": 16}, "b": {"address": 32}}
    first = _isf_table(tmp_path, symbols)
    second = _isf_table(tmp_path, symbols)
    assert first._delegate._json_object is second._delegate._json_object
    assert second.get_symbol("b").address == 32
    third = _isf_table(tmp_path, {"a": {"address": 48}})
    assert third._delegate._json_object is not first._delegate._json_object
    assert third.get_symbol("a").address == 48


def test_isf_memo_parses_and_hashes_once(monkeypatch):
    import io
    import json
    import types

    monkeypatch.setattr(speedups, "ISF_MEMO_MIN_CHARS", 0)
    hashed = []
    fake_schemas = types.SimpleNamespace(create_json_hash=lambda i, s=None: hashed.append(1) or f"h{len(hashed)}")
    fake_intermed = types.SimpleNamespace(json=json)
    speedups.install_isf_memo(fake_intermed, fake_schemas)
    text = json.dumps({"symbols": {"a": {"address": 1}}})
    one, two = fake_intermed.json.load(io.StringIO(text)), fake_intermed.json.load(io.StringIO(text))
    assert one is two and one == json.loads(text)
    schema = {"type": "object"}
    assert fake_schemas.create_json_hash(one, schema) == fake_schemas.create_json_hash(two, dict(schema)) == "h1"
    assert fake_schemas.create_json_hash(one, {"type": "array"}) == "h2"  # another schema: hashed again
    assert fake_schemas.create_json_hash({"not": "memoised"}, schema) == "h3"
    # the one kept ISF is replaced by the next: the old object is parsed afresh later
    other = fake_intermed.json.load(io.StringIO(json.dumps({"symbols": {}})))
    assert fake_intermed.json.load(io.StringIO(text)) is not one and other == {"symbols": {}}


def test_the_dumps_vmcoreinfo_is_offered_before_volatility_scans_memory_for_it():
    import types

    from volatility3.framework.layers import physical
    from volatility3.framework.symbols import linux

    scanned = []

    class VMCoreInfo:
        # Volatility's own parser, as the real class has it
        _vmcoreinfo_data_to_dict = linux.VMCoreInfo._vmcoreinfo_data_to_dict
        _parse_value = linux.VMCoreInfo._parse_value

        @classmethod
        def search_vmcoreinfo_elf_note(cls, context, layer_name, progress_callback=None):
            scanned.append(layer_name)
            yield 0x1234, {"OSRELEASE": "scanned"}

    speedups.install_vmcoreinfo_hint(types.SimpleNamespace(VMCoreInfo=VMCoreInfo), physical)
    speedups.install_vmcoreinfo_hint(types.SimpleNamespace(VMCoreInfo=VMCoreInfo), physical)  # idempotent
    memory = object()  # a translation layer: the guest's physical memory
    file_layer = physical.FileLayer.__new__(physical.FileLayer)  # the file under an ELF core

    def search(text, layer):
        context = types.SimpleNamespace(
            config={speedups.VMCOREINFO_SETTING: text}, layers={"memory": memory, "file": file_layer}
        )
        return list(VMCoreInfo.search_vmcoreinfo_elf_note(context, layer))

    text = speedups.vmcoreinfo_text({"PAGESIZE": "4096", "OSRELEASE": "6.1.0-57-amd64", "SYMBOL(_stext)": "ffff1000"})
    assert text.startswith("OSRELEASE=6.1.0-57-amd64\n")
    first, then = search(text, "memory")
    assert first == (None, {"OSRELEASE": "6.1.0-57-amd64", "PAGESIZE": 4096, "SYMBOL(_stext)": 0xFFFF1000})
    assert then == (0x1234, {"OSRELEASE": "scanned"})  # the scan still follows if the stacker asks on
    assert search(text, "file") == [(0x1234, {"OSRELEASE": "scanned"})]  # file offsets are not memory
    assert search("", "memory") == [(0x1234, {"OSRELEASE": "scanned"})]  # no note in the dump
    assert search("OSRELEASE=x\n\x01\x02=\xff\n", "memory") == [(0x1234, {"OSRELEASE": "scanned"})]  # unprintable
    assert speedups.vmcoreinfo_text({"PAGESIZE": "4096"}) == "" and speedups.vmcoreinfo_text(None) == ""
