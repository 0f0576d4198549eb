"""Linux symbols (ISF) for a memory image, found or built without debug packages.

Resolution order, first match on the exact kernel banner wins:

1. ISF files or directories the user names (``--symbols DIR``),
2. ``profiles/symbols/`` shipped with snapscope,
3. the snapscope symbol cache (``<cache>/symbols/linux/<banner-key>-<image-key>.json``),
4. a build from the dump itself with pakunoda (its BTF + kallsyms), offline,
   stored in the cache for the next analysis of the same image.

Volatility needs the banner to match byte for byte, so a user's ISF for another
kernel is reported (its banner and the image's) and skipped, never used.

A built ISF is cached under its banner *and* the sha256 of the image it was
built from, and only that image's later analyses reuse it. The cache is
host-wide and the image is hostile: keyed by banner alone, one crafted dump
(a real banner, forged kallsyms or BTF, a planted System.map in its page
cache) would plant symbols for every later case of that kernel. pakunoda reads
far more of the dump than its BTF and kallsyms (vmcoreinfo, init_task, page
cache), so no narrower key covers everything the ISF depends on; the image's
sha256 is already known (evidence is hashed at intake, a converted image when
it is written). The price: each new dump of a kernel builds its own ISF
(7-9 s on the lab guest). Each built ISF has a ``.origin`` file beside it
saying what it was built from.

Example::

    found = resolve_isf("memory.elf", user_paths=["~/isf"], cache_dir="~/.cache/snapscope")
    found["origin"], found["isf_path"], found["sha256"]   # ('built', '.../1f3a9c.json', '9b1e...')
"""

from __future__ import annotations

import base64
import bz2
import gzip
import hashlib
import json
import lzma
import mmap
import os
import re
import struct
import tempfile
import time
from pathlib import Path

from toolkit.engines.memory.images import NATIVE
from toolkit.errors import SymbolsError
from toolkit.hashing import sha256_file
from toolkit.memory.elf_core import vmcoreinfo_table
from toolkit.schemas import diagnostic
from toolkit.shipped import SYMBOLS

PROFILE_SYMBOLS = SYMBOLS
ISF_SUFFIXES = (".json", ".json.xz", ".json.gz", ".json.bz2")
SCRATCH_PREFIX = ".isf-build-"  # the temporary ELF copy a build needs lives in a directory named so

# A kernel banner as the kernel stores it in linux_banner: NUL-terminated,
# newline before the NUL. Copies in the printk buffer lack the "\n\0" ending
# and are not what Volatility matches against.
_BANNER = re.compile(rb"Linux version [0-9][\x20-\x7e]{10,400}\n\x00")
_ISF_BANNER = re.compile(rb'"linux_banner"\s*:\s*\{')


def find_banners(image) -> list[str]:
    """Linux kernel banners in a memory image, most frequent first.

    ``image`` is a dump file Volatility reads natively (ELF core, raw, LiME:
    its bytes are scanned as they are) or a ``MemoryImage`` of any format,
    whose guest-physical ranges are scanned window by window. An empty list
    means no Linux kernel.

    Example::

        find_banners("memory.elf")[0]   # 'Linux version 6.1.0-28-cloud-amd64 (...) ...\\n'
    """
    return find_kernel(image)[0]


def find_kernel(image) -> tuple[list[str], dict | None]:
    """(:func:`find_banners`' answer, the kernel's VMCOREINFO or None).

    The VMCOREINFO is the dump's own copy (``image.info``: an ELF note, a kdump
    header) or, for a format that carries none (a migration stream), the
    kernel's note found in memory by the same pass as the banners, the first in
    address order: the one Volatility's stacker would find by scanning again.
    """
    vmcoreinfo = (getattr(image, "info", None) or {}).get("vmcoreinfo") or None
    window = kernel_image_range(image)
    if window is not None:
        # the kernel's own linux_banner lies in its image: reading that (128 MiB) instead of
        # all memory saves a whole pass (26 s on an 8 GiB ELF; a decompression of every page
        # of a kdump); nothing found there falls back to the full search
        found, _ = _search([(window[0], image.read(*window))])
        if found:
            return found, vmcoreinfo
    # a dump path is scanned as its file's bytes: offsets there are not guest-physical addresses
    look_for_note = not vmcoreinfo and not isinstance(image, (str, Path))
    found, in_memory = _search(_banner_haystacks(image), image if look_for_note else None)
    return found, vmcoreinfo or in_memory


VMCOREINFO_MAGIC = b"VMCOREINFO\x00\x00OSRELEASE="  # the note's padded name, then its text's first key
VMCOREINFO_MOST = 64 << 10  # bytes of note text read (the kernel's is one page)
VMCOREINFO_TRIES = 256  # note look-alikes checked before giving up


def vmcoreinfo_note(image, gpa: int) -> dict | None:
    """The VMCOREINFO ELF note whose padded name starts at ``gpa``: its KEY=value lines, or None
    when the header before it is not such a note's (name size 11, type 0, a bounded text size).

    >>> import struct
    >>> note = struct.pack("<III", 11, 28, 0) + b"VMCOREINFO\\0\\0OSRELEASE=6.1\\nPAGESIZE=4096\\n"
    >>> class Img:
    ...     def read(self, gpa, n): return note[gpa : gpa + n].ljust(n, b"\\0")
    >>> vmcoreinfo_note(Img(), 12)
    {'OSRELEASE': '6.1', 'PAGESIZE': '4096'}
    """
    if gpa < 12:
        return None
    namesz, descsz, ntype = struct.unpack("<III", image.read(gpa - 12, 12))
    if namesz != 11 or ntype != 0 or not 0 < descsz <= VMCOREINFO_MOST:
        return None
    table = vmcoreinfo_table(image.read(gpa + 12, descsz))
    return table if table.get("OSRELEASE") else None


def _search(haystacks, image=None) -> tuple[list[str], dict | None]:
    """Banners over (gpa, bytes) haystacks, most frequent first; with ``image``, the first
    VMCOREINFO note in them too."""
    counts: dict[bytes, int] = {}
    note, candidates = None, 0
    for gpa, data in haystacks:
        if image is not None and note is None:
            at = data.find(VMCOREINFO_MAGIC)
            # memory filled with look-alikes must not cost a read each: past VMCOREINFO_TRIES the
            # search stops (Volatility's stacker then scans on its own, as without this)
            while at >= 0 and note is None and candidates < VMCOREINFO_TRIES:
                candidates += 1
                note = vmcoreinfo_note(image, gpa + at)
                at = data.find(VMCOREINFO_MAGIC, at + 1)
        for match in banner_matches(data):
            # a printk copy running straight into the real banner: keep the last start
            banner = match.group(0)
            banner = banner[banner.rfind(b"Linux version ") :]
            counts[banner] = counts.get(banner, 0) + 1
    ordered = sorted(counts, key=lambda b: -counts[b])
    return [b[:-1].decode("latin-1") for b in ordered], note


def banner_matches(data):
    """What ``_BANNER.finditer(data)`` yields, found 3x faster: ``bytes.find`` of the literal
    start (a C memory search) and the pattern tried there only; after a match the search goes
    on from its end, as finditer's does."""
    at = data.find(b"Linux version ")
    while at >= 0:
        match = _BANNER.match(data, at)
        if match:
            yield match
        at = data.find(b"Linux version ", match.end() if match else at + 1)


START_KERNEL_MAP = 0xFFFFFFFF80000000  # x86-64: where the kernel image is mapped (__START_KERNEL_map)
KERNEL_IMAGE_SPAN = 128 << 20  # bytes from _stext holding .text and .rodata of any distribution kernel


def kernel_image_range(image) -> tuple[int, int] | None:
    """(guest-physical start, length) of the x86-64 kernel image per the dump's VMCOREINFO
    (``_stext`` and ``phys_base``: a physical address is ``vaddr - __START_KERNEL_map + phys_base``),
    or None when the image carries no such VMCOREINFO (a raw file, a migration stream, another
    architecture) or its values point outside the image. The values are the guest's: a lie only
    narrows the search to one bounded read, and an empty result falls back to all memory.

    >>> class Img: size = 1 << 30; info = {"vmcoreinfo": {"SYMBOL(_stext)": "ffffffff81000000",
    ...     "NUMBER(phys_base)": "0"}}
    >>> kernel_image_range(Img())
    (16777216, 134217728)
    """
    info = getattr(image, "info", None) or {}
    vmcoreinfo = info.get("vmcoreinfo") or {}
    try:
        stext = int(vmcoreinfo["SYMBOL(_stext)"], 16)
        phys_base = int(vmcoreinfo["NUMBER(phys_base)"])
    except (KeyError, TypeError, ValueError):
        return None
    start = stext - START_KERNEL_MAP + phys_base
    if stext < START_KERNEL_MAP or not 0 <= start < image.size:
        return None
    return start, min(KERNEL_IMAGE_SPAN, image.size - start)


BANNER_WINDOW = 64 << 20  # bytes of guest memory searched at once (a banner is under 512 bytes long)


def _banner_haystacks(image):
    if isinstance(image, (str, Path)):
        with open(image, "rb") as fh:
            if os.fstat(fh.fileno()).st_size:
                with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                    yield 0, data  # file offsets, not guest-physical addresses (no note is looked for)
        return
    for start, length in getattr(image, "data_runs", image.runs):  # a banner is never in a zero page
        for offset in range(start, start + length, BANNER_WINDOW):
            # windows overlap by 512 bytes so a banner on a boundary is seen whole (a repeat is merely counted twice)
            yield offset, image.read(offset, min(BANNER_WINDOW + 512, start + length - offset))


def banner_key(banner: str) -> str:
    """Cache file stem for a banner: stable, filesystem-safe."""
    return hashlib.sha256(banner.encode("latin-1")).hexdigest()[:24]


def cache_name(banner: str, image_sha256: str) -> str:
    """File name of the ISF built from one image for one banner: ``<banner-key>-<image sha256[:24]>.json``."""
    return f"{banner_key(banner)}-{image_sha256[:24]}.json"


def origin_path(isf: Path) -> Path:
    """The ``.origin`` record beside a built ISF (not ``.json``: never mistaken for an ISF)."""
    return Path(isf).with_suffix(".origin")


def read_origin(isf: Path) -> dict | None:
    """What a cached ISF was built from ({"image_sha256", "image", "banner", "built", "pakunoda"}), or None."""
    try:
        return json.loads(origin_path(isf).read_text())
    except (OSError, ValueError):
        return None


def read_isf_bytes(path: Path) -> bytes:
    opener = {".xz": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}.get(path.suffix, open)
    with opener(path, "rb") as fh:
        return fh.read()


_BANNER_MEMO: dict[tuple, str | None] = {}


def isf_banner(path: str | Path) -> str | None:
    """The banner an ISF was made for (its linux_banner constant), or None.

    A regex over the raw text instead of a JSON parse: ISFs are tens of MB and
    only this one field is needed. Memoised on (path, size, mtime).

    Example::

        isf_banner("profiles/symbols/debian-6.1.json")  # 'Linux version 6.1.0-28 ...\\n'
    """
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _BANNER_MEMO:
        data = read_isf_bytes(path)
        banner = None
        for match in _ISF_BANNER.finditer(data):
            entry = _json_object_at(data, match.end() - 1)
            constant = entry.get("constant_data") if isinstance(entry, dict) else None
            if constant:
                banner = base64.b64decode(constant).rstrip(b"\x00").decode("latin-1")
                break
        _BANNER_MEMO[key] = banner
    return _BANNER_MEMO[key]


def _json_object_at(data: bytes, start: int):
    """Parse the JSON object whose '{' is at ``start`` (strings may hold braces)."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, min(len(data), start + 65536)):
        c = data[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == 0x5C:  # backslash
                escaped = True
            elif c == 0x22:
                in_string = False
            continue
        if c == 0x22:
            in_string = True
        elif c == 0x7B:
            depth += 1
        elif c == 0x7D:
            depth -= 1
            if depth == 0:
                try:
                    return json.loads(data[start : i + 1])
                except ValueError:
                    return None
    return None


def isf_files(paths) -> list[Path]:
    """ISF files named directly or found (recursively) under the given dirs.

    A ``windows/`` subtree (a Windows symbol pack: thousands of PDB ISFs) is
    skipped: none of them can match a Linux banner.
    """
    found = []
    for p in paths:
        p = Path(p).expanduser()
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found.extend(
                sorted(
                    f
                    for f in p.rglob("*")
                    if f.is_file() and f.name.endswith(ISF_SUFFIXES) and "windows" not in f.relative_to(p).parts[:-1]
                )
            )
    return found


def cache_dir_for(cache_dir: str | Path) -> Path:
    return Path(cache_dir).expanduser() / "symbols" / "linux"


def default_cache_dir() -> Path:
    """snapscope's own cache root ($SNAPSCOPE_CACHE or ~/.cache/snapscope)."""
    env = os.environ.get("SNAPSCOPE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "snapscope"


def resolve_isf(
    image,
    *,
    user_paths=(),
    cache_dir: str | Path,
    build: bool = True,
    profile_symbols: Path = PROFILE_SYMBOLS,
    progress=None,
    scratch_dir: Path | None = None,
    image_sha256=None,
) -> dict:
    """Find (or build) the ISF matching the image's kernel banner.

    ``image`` is a dump path or a ``MemoryImage`` (see :func:`find_banners`);
    ``scratch_dir`` holds the temporary ELF copy a build from a format
    pakunoda does not read needs (deleted after the build).
    ``image_sha256`` (the memory file's hash, or a function giving it: asked only
    when the cache is consulted, not when a user's or a shipped ISF matches) keys the
    cache; without it the file is hashed if the cache is consulted.
    Returns {"banner", "isf_path", "sha256", "origin", "built_from", "diagnostics", "vmcoreinfo"};
    raises SymbolsError (with diagnostics) when the image holds no Linux banner
    or no ISF could be found or built.
    """
    diagnostics: list[dict] = []
    banners, vmcoreinfo = find_kernel(image)
    image_path = image if isinstance(image, (str, Path)) else image.path
    if not banners:
        raise SymbolsError(
            f"no Linux kernel banner in {Path(image_path).name}: not a Linux guest's memory, "
            "or a format that must be converted to ELF first",
            [
                diagnostic(
                    "error", "linux kernel banner", image_path, "no 'Linux version ...\\n\\0' string in the image"
                )
            ],
        )
    if len(banners) > 1:
        diagnostics.append(
            diagnostic(
                "info", "kernel banners", image_path, f"{len(banners)} distinct banners; trying each: {banners[:3]}"
            )
        )
    for origin, paths in (("user", list(user_paths)), ("profiles", [profile_symbols])):
        mismatched = []
        for isf in isf_files(paths):
            try:
                found = isf_banner(isf)
            except (OSError, ValueError, EOFError, lzma.LZMAError) as excp:
                diagnostics.append(diagnostic("warning", "ISF unreadable", isf, str(excp)))
                continue
            if found in banners:
                return _answer(found, isf, origin, diagnostics, vmcoreinfo=vmcoreinfo)
            mismatched.append((isf, found))
        if origin == "user" and user_paths:
            for isf, found in mismatched:
                diagnostics.append(
                    diagnostic(
                        "warning",
                        "ISF does not match this kernel",
                        isf,
                        f"ISF banner {found!r} != image banner {banners[0]!r}; ignored",
                    )
                )
            if not mismatched and not isf_files(paths):
                diagnostics.append(
                    diagnostic(
                        "warning",
                        "no ISF files",
                        ", ".join(map(str, user_paths)),
                        f"nothing ending in {ISF_SUFFIXES} there",
                    )
                )
    cache = cache_dir_for(cache_dir)
    image_sha256 = (image_sha256() if callable(image_sha256) else image_sha256) or sha256_file(image_path)
    for banner in banners:
        cached = cache / cache_name(banner, image_sha256)
        if cached.is_file():
            return _answer(banner, cached, "cache", diagnostics, image_sha256, vmcoreinfo)
    if not build:
        raise SymbolsError(
            "no ISF matches this kernel and building is disabled",
            diagnostics + [diagnostic("error", "linux symbols", image_path, f"no ISF for banner {banners[0]!r}")],
        )
    built = _build_from(image, cache, progress, scratch_dir, image_sha256)
    diagnostics.extend(built["diagnostics"])
    if not built["isf_path"]:
        raise SymbolsError(
            f"could not build symbols from {Path(image_path).name}: "
            f"{built['diagnostics'][-1]['why'] if built['diagnostics'] else 'unknown'}",
            diagnostics,
        )
    return _answer(built["banner"], Path(built["isf_path"]), "built", diagnostics, image_sha256, vmcoreinfo)


def _answer(banner, isf: Path, origin, diagnostics, built_from=None, vmcoreinfo=None):
    return {
        "vmcoreinfo": vmcoreinfo,  # what find_kernel found: spares Volatility its own scan
        "banner": banner,
        "isf_path": str(isf.resolve()),
        "sha256": sha256_file(isf),
        "origin": origin,
        "built_from": built_from,  # the sha256 of the image a cached or built ISF came from
        "diagnostics": diagnostics,
    }


def _build_from(image, out_dir: Path, progress, scratch_dir: Path | None, image_sha256: str) -> dict:
    """build_isf on a file pakunoda reads: the dump itself, or a temporary ELF copy of a format it does not.

    pakunoda maps the dump and searches it for the kernel's BTF and kallsyms,
    so it needs the guest's RAM as one file; the copy lives only for the
    build (once per memory file: the ISF is cached by banner and that file).
    """
    if isinstance(image, (str, Path)) or image.format in NATIVE:
        path = image if isinstance(image, (str, Path)) else image.path
        return build_isf(path, out_dir, progress=progress, image_sha256=image_sha256)
    from toolkit.memory.convert import to_elf

    scratch = Path(scratch_dir or tempfile.gettempdir())
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=scratch) as tmp:
        copy = Path(tmp) / "memory.elf"
        to_elf(image.path, copy, image=image, hash=False)
        built = build_isf(copy, out_dir, progress=progress, image_sha256=image_sha256, image_name=image.path)
    for d in built["diagnostics"]:
        d["where"] = str(image.path)  # the temporary copy is gone; name the evidence
    return built


def build_isf(
    image: str | Path,
    out_dir: str | Path,
    *,
    progress=None,
    timeout_s: float = 900,
    image_sha256: str | None = None,
    image_name: str | None = None,
) -> dict:
    """Build an ISF from the dump's own BTF and kallsyms with pakunoda, offline.

    Writes ``<out_dir>/<banner-key>-<image-key>.json`` (see :func:`cache_name`)
    atomically, with a ``.origin`` record of the image it came from, and
    returns {"banner", "isf_path", "seconds", "diagnostics"} (isf_path None on
    failure). Donor profiles are disabled: they would be fetched from the
    network or read from ~/.cache/pakunoda, and an evidence machine uses neither.

    Example::

        build_isf("memory.elf", "~/.cache/snapscope/symbols/linux")["isf_path"]
    """
    import pakunoda

    started = time.monotonic()
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = (lambda name, elapsed: progress(f"pakunoda: {name}", 0, 0)) if progress else None
    result = pakunoda.extract_isf(Path(image), offline=True, skip_donor=True, progress=stage, timeout_s=timeout_s)
    diagnostics = [diagnostic("info", "pakunoda warning", image, w) for w in result.warnings[:20]]
    if result.isf_json is None:
        why = "; ".join(result.errors) or "pakunoda produced no ISF"
        diagnostics.append(diagnostic("error", "symbol build", image, why))
        return {"banner": None, "isf_path": None, "seconds": time.monotonic() - started, "diagnostics": diagnostics}
    constant = result.isf_json.get("symbols", {}).get("linux_banner", {}).get("constant_data")
    if constant:
        banner = base64.b64decode(constant).rstrip(b"\x00").decode("latin-1")
    else:
        banner = (result.banner_bytes or b"").rstrip(b"\x00").decode("latin-1")
        diagnostics.append(
            diagnostic(
                "warning",
                "ISF banner",
                image,
                "pakunoda's ISF has no linux_banner constant; Volatility may not match it",
            )
        )
    image_sha256 = image_sha256 or sha256_file(image)
    target = out_dir / cache_name(banner, image_sha256)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(result.isf_json, fh, separators=(",", ":"))
    origin = {
        "image_sha256": image_sha256,
        "image": str(image_name or Path(image).resolve()),  # the evidence, not a temporary copy of it
        "banner": banner,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "pakunoda": getattr(pakunoda, "__version__", None),
        "isf_sha256": sha256_file(tmp),
    }
    origin_tmp = target.with_name(f"{target.stem}.origin.tmp{os.getpid()}")
    origin_tmp.write_text(json.dumps(origin, indent=1))
    os.replace(origin_tmp, origin_path(target))
    os.replace(tmp, target)
    loadability = getattr(result, "loadability", None)
    if loadability is not None and not getattr(loadability, "loadable", True):
        diagnostics.append(diagnostic("warning", "ISF loadability", target, str(loadability)))
    return {
        "banner": banner,
        "isf_path": str(target),
        "seconds": time.monotonic() - started,
        "diagnostics": diagnostics,
    }


def list_isfs(cache_dir: str | Path, extra_paths=()) -> list[dict]:
    """Every ISF snapscope would consider: {origin, path, banner, size, built_from}.

    ``built_from`` is the sha256 of the image a cached ISF was built from; a
    cache file without one (keyed by banner alone, from an older snapscope)
    is listed with origin "cache (unused)": it is never chosen.

    Example::

        [r["banner"] for r in list_isfs(default_cache_dir())]
    """
    rows = []
    for origin, paths in (
        ("user", list(extra_paths)),
        ("profiles", [PROFILE_SYMBOLS]),
        ("cache", [cache_dir_for(cache_dir)]),
    ):
        for isf in isf_files(paths):
            try:
                banner = isf_banner(isf)
            except (OSError, ValueError, EOFError, lzma.LZMAError) as excp:
                banner = f"<unreadable: {excp}>"
            built_from = (read_origin(isf) or {}).get("image_sha256") if origin == "cache" else None
            shown = "cache (unused)" if origin == "cache" and not built_from else origin
            row = {"origin": shown, "path": str(isf), "banner": banner, "size": isf.stat().st_size}
            rows.append({**row, "built_from": built_from})
    return rows
