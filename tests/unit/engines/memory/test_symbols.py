"""Symbol resolution order and banner matching, on small real-format files."""

from __future__ import annotations

import base64
import json
import lzma
from pathlib import Path

import pytest

from toolkit.engines.memory import symbols
from toolkit.errors import SymbolsError
from toolkit.hashing import sha256_file

BANNER = "Linux version 6.1.0-99-test (builder@example) (gcc 12) #1 SMP Debian 6.1.1-1 (2024-01-01)\n"
OTHER = "Linux version 5.10.0-1-test (builder@example) (gcc 10) #1 SMP Debian 5.10.1-1 (2021-01-01)\n"


def _image(path, *banners, noise=b""):
    body = b"\x00" * 4096 + noise
    for banner in banners:
        body += banner.encode() + b"\x00" + b"\x00" * 100
    path.write_bytes(body + b"\x00" * 4096)
    return path


def _isf(path, banner, compress=False):
    doc = {
        "metadata": {"format": "6.2.0"},
        "base_types": {},
        "user_types": {},
        "enums": {},
        "symbols": {
            "init_task": {"address": 1},
            # shaped like pakunoda's: a nested type (and a brace in a string) before the data
            "linux_banner": {
                "address": 2,
                "note": 'a \\"}\\" b',
                "type": {"kind": "array", "subtype": {"kind": "base", "name": "char"}},
                "constant_data": base64.b64encode(banner.encode() + b"\x00").decode(),
            },
        },
    }
    data = json.dumps(doc).encode()
    path.write_bytes(lzma.compress(data) if compress else data)
    return path


def test_a_dump_path_is_searched_for_banners_only(tmp_path):
    # a path's bytes are the file's (an ELF's headers first), not guest-physical memory:
    # a VMCOREINFO note in them is not read as the kernel's (an ELF carries its own in a PT_NOTE)
    image = _image(tmp_path / "m.raw", BANNER, noise=_note(b"OSRELEASE=6.1.0-99-test\n"))
    assert symbols.find_kernel(image) == ([BANNER], None)
    assert symbols.find_kernel(str(image)) == ([BANNER], None)


def test_find_banners_ignores_printk_copies(tmp_path):
    # a dmesg copy has no "\n\0" ending; only the kernel's own linux_banner counts
    image = _image(tmp_path / "m.raw", BANNER, noise=b"Linux version 6.1.0-99-test (builder) trailing text")
    assert symbols.find_banners(image) == [BANNER]
    assert symbols.find_banners(_image(tmp_path / "none.raw")) == []


def _vmcoreinfo_image(stext: int, phys_base: int, placed: dict[int, str], size: int = 1 << 30):
    """A 1 GiB guest-physical space (nothing read but what is asked) with banners at addresses."""
    from toolkit.memory.image import MemoryImage

    def read(offset, n):
        out = bytearray(n)
        for at, banner in placed.items():
            raw = banner.encode() + b"\x00"
            lo, hi = max(at, offset), min(at + len(raw), offset + n)
            if lo < hi:
                out[lo - offset : hi - offset] = raw[lo - at : hi - at]
        return bytes(out)

    vmcoreinfo = {"SYMBOL(_stext)": f"{stext:x}", "NUMBER(phys_base)": str(phys_base)}
    return MemoryImage(
        format="elf-core",
        path="x",
        info={"vmcoreinfo": vmcoreinfo},
        segments=[{"gpa": 0, "length": size, "read": read, "runs": None}],
    )


def test_banner_search_reads_only_the_kernel_image_when_vmcoreinfo_places_it():
    # _stext at 0xffffffff81000000 with phys_base 0x20000000: the image starts at 0x21000000 physical
    stext, phys_base = 0xFFFFFFFF81000000, 0x20000000
    kernel = 0x21000000 + (40 << 20)
    # a planted banner repeated outside the kernel image outnumbers the real one: it is not read
    placed = {kernel: BANNER, 0x1000: OTHER, 0x9000: OTHER, 0x30000000 + (300 << 20): OTHER}
    image = _vmcoreinfo_image(stext, phys_base, placed)
    assert symbols.kernel_image_range(image) == (0x21000000, symbols.KERNEL_IMAGE_SPAN)
    assert symbols.find_banners(image) == [BANNER]
    # no banner in the kernel image: all memory is searched, as without VMCOREINFO
    image = _vmcoreinfo_image(stext, phys_base, {0x1000: OTHER, 0x9000: OTHER, kernel + (200 << 20): BANNER})
    assert symbols.find_banners(image) == [OTHER, BANNER]


def _note(text: bytes, namesz=11, ntype=0) -> bytes:
    import struct

    return struct.pack("<III", namesz, len(text), ntype) + b"VMCOREINFO\x00\x00" + text


def test_a_stream_without_vmcoreinfo_gets_the_kernels_note_from_the_banner_pass():
    # a migration stream carries no VMCOREINFO; the kernel's note in memory is found by the same
    # pass as the banners: the first real one in address order (a look-alike is passed over)
    from toolkit.memory.image import MemoryImage

    real = b"OSRELEASE=6.1.0-99-test\nPAGESIZE=4096\nSYMBOL(_stext)=ffffffff81000000\n"
    memory = bytearray(4 << 20)
    fake = _note(b"OSRELEASE=forged\n", ntype=7)  # not a VMCOREINFO note's header
    memory[0x1000 : 0x1000 + len(fake)] = fake
    at = 0x300000
    memory[at : at + len(_note(real))] = _note(real)
    banner = BANNER.encode() + b"\x00"
    memory[0x200000 : 0x200000 + len(banner)] = banner
    later = _note(b"OSRELEASE=later\n")
    memory[0x380000 : 0x380000 + len(later)] = later

    def read(offset, n):
        return bytes(memory[offset : offset + n])

    image = MemoryImage(
        format="qemu-migration",
        path="x",
        info={},
        segments=[{"gpa": 0, "length": len(memory), "read": read, "runs": None}],
    )
    banners, vmcoreinfo = symbols.find_kernel(image)
    assert banners == [BANNER]
    assert vmcoreinfo == {"OSRELEASE": "6.1.0-99-test", "PAGESIZE": "4096", "SYMBOL(_stext)": "ffffffff81000000"}
    # memory sown with look-alikes: a bounded number is checked, then the search gives up
    for k in range(symbols.VMCOREINFO_TRIES):
        memory[0x10000 + 64 * k : 0x10000 + 64 * k + len(fake)] = fake
    assert symbols.find_kernel(image) == ([BANNER], None)
    # a dump that carries its own (an ELF note, a kdump header) keeps it: memory is not searched for one
    image.info["vmcoreinfo"] = {"OSRELEASE": "carried"}
    assert symbols.find_kernel(image) == ([BANNER], {"OSRELEASE": "carried"})


@pytest.mark.parametrize(
    "stext, phys_base",
    [
        ("not hex", "0"),
        ("ffffffff81000000", str(-0x1000001)),  # parses, but places the image before memory
        ("ffffffff81000000", str(1 << 40)),  # past the end of the image
        ("ffff888000000000", "0"),  # not a kernel-image address
    ],
)
def test_a_lying_vmcoreinfo_falls_back_to_the_whole_search(stext, phys_base):
    image = _vmcoreinfo_image(0, 0, {0x5000: BANNER})
    image.info["vmcoreinfo"] = {"SYMBOL(_stext)": stext, "NUMBER(phys_base)": phys_base}
    assert symbols.kernel_image_range(image) is None
    assert symbols.find_banners(image) == [BANNER]


def test_isf_banner_plain_and_xz(tmp_path):
    assert symbols.isf_banner(_isf(tmp_path / "a.json", BANNER)) == BANNER
    assert symbols.isf_banner(_isf(tmp_path / "b.json.xz", BANNER, compress=True)) == BANNER
    (tmp_path / "c.json").write_text('{"symbols": {}}')
    assert symbols.isf_banner(tmp_path / "c.json") is None


def test_user_isf_wins_over_cache(tmp_path):
    image = _image(tmp_path / "m.raw", BANNER)
    user = tmp_path / "user"
    user.mkdir()
    _isf(user / "mine.json.xz", BANNER, compress=True)
    cache = tmp_path / "cache"
    symbols.cache_dir_for(cache).mkdir(parents=True)
    _isf(symbols.cache_dir_for(cache) / symbols.cache_name(BANNER, sha256_file(image)), BANNER)
    asked = []

    def key():  # the image's hash is dear (a pass over the dump): asked for only when the cache is consulted
        asked.append(1)
        return sha256_file(image)

    found = symbols.resolve_isf(
        image, user_paths=[user], cache_dir=cache, build=False, profile_symbols=tmp_path / "none", image_sha256=key
    )
    assert found["origin"] == "user" and found["isf_path"].endswith("mine.json.xz")
    assert found["banner"] == BANNER and len(found["sha256"]) == 64
    assert asked == []
    found = symbols.resolve_isf(
        image, cache_dir=cache, build=False, profile_symbols=tmp_path / "none", image_sha256=key
    )
    assert found["origin"] == "cache" and found["built_from"] == sha256_file(image) and asked == [1]


def test_wrong_user_isf_is_reported_and_cache_used(tmp_path):
    image = _image(tmp_path / "m.raw", BANNER)
    wrong = _isf(tmp_path / "wrong.json", OTHER)
    cache = tmp_path / "cache"
    symbols.cache_dir_for(cache).mkdir(parents=True)
    _isf(symbols.cache_dir_for(cache) / symbols.cache_name(BANNER, sha256_file(image)), BANNER)
    found = symbols.resolve_isf(
        image, user_paths=[wrong], cache_dir=cache, build=False, profile_symbols=tmp_path / "none"
    )
    assert found["origin"] == "cache" and found["built_from"] == sha256_file(image)
    warning = [d for d in found["diagnostics"] if d["what"] == "ISF does not match this kernel"]
    assert len(warning) == 1 and "5.10.0-1-test" in warning[0]["why"] and "6.1.0-99-test" in warning[0]["why"]


def test_no_banner_and_no_isf_raise_with_diagnostics(tmp_path):
    with pytest.raises(SymbolsError, match="no Linux kernel banner") as info:
        symbols.resolve_isf(_image(tmp_path / "win.raw"), cache_dir=tmp_path, build=False)
    assert info.value.diagnostics[0]["severity"] == "error"
    with pytest.raises(SymbolsError, match="building is disabled"):
        symbols.resolve_isf(
            _image(tmp_path / "m.raw", BANNER), cache_dir=tmp_path, build=False, profile_symbols=tmp_path / "none"
        )


def test_list_isfs_reports_origin(tmp_path):
    user = tmp_path / "u"
    user.mkdir()
    _isf(user / "x.json", OTHER)
    rows = symbols.list_isfs(tmp_path / "cache", [user])
    assert [(r["origin"], r["banner"]) for r in rows if r["origin"] == "user"] == [("user", OTHER)]


def test_windows_symbol_pack_is_not_searched_for_linux(tmp_path):
    pack = tmp_path / "symbols" / "windows" / "ntkrnlmp.pdb"
    pack.mkdir(parents=True)
    _isf(pack / "0123ABCD1.json.xz", OTHER, compress=True)
    _isf(tmp_path / "symbols" / "linux.json", BANNER)
    assert [f.name for f in symbols.isf_files([tmp_path / "symbols"])] == ["linux.json"]


def test_an_isf_another_image_left_in_the_host_cache_is_not_used(tmp_path):
    """A hostile guest with a real banner gets an ISF built (forged kallsyms, planted System.map...) into the
    host-wide cache; a later, unrelated image of the same kernel must not be analysed with it."""
    hostile = _image(tmp_path / "hostile.raw", BANNER, noise=b"forged kallsyms")
    victim = _image(tmp_path / "victim.raw", BANNER, noise=b"the real kernel")
    cache = tmp_path / "cache"
    linux = symbols.cache_dir_for(cache)
    linux.mkdir(parents=True)
    planted = _isf(linux / symbols.cache_name(BANNER, sha256_file(hostile)), BANNER)
    legacy = _isf(linux / f"{symbols.banner_key(BANNER)}.json", BANNER)  # keyed by banner alone, as before
    with pytest.raises(SymbolsError, match="building is disabled"):  # before: the banner-keyed file was used
        symbols.resolve_isf(victim, cache_dir=cache, build=False, profile_symbols=tmp_path / "none")
    again = symbols.resolve_isf(hostile, cache_dir=cache, build=False, profile_symbols=tmp_path / "none")
    assert again["isf_path"] == str(planted.resolve()) and again["origin"] == "cache"
    rows = {Path(r["path"]).name: r for r in symbols.list_isfs(cache)}
    assert rows[legacy.name]["origin"] == "cache (unused)" and rows[legacy.name]["built_from"] is None
