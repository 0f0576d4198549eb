"""Linux symbols (ISF) for a memory image, found or built without debug packages.

Resolution order, first match on the exact kernel banner wins:

1. ISF files or directories the user names (``--symbols DIR``),
2. ``profiles/symbols/`` shipped with snapscope,
3. the snapscope symbol cache (``<cache>/symbols/linux/<banner-key>.json``),
4. a build from the dump itself with pakunoda (its BTF + kallsyms), offline,
   stored in the cache for the next image of the same kernel.

Volatility needs the banner to match byte for byte, so a user's ISF for another
kernel is reported (its banner and the image's) and skipped, never used.

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
import tempfile
import time
from pathlib import Path

from toolkit.engines.memory.images import NATIVE
from toolkit.errors import SymbolsError
from toolkit.hashing import sha256_file
from toolkit.schemas import diagnostic
from toolkit.shipped import SYMBOLS

PROFILE_SYMBOLS = SYMBOLS
ISF_SUFFIXES = (".json", ".json.xz", ".json.gz", ".json.bz2")

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
    counts: dict[bytes, int] = {}
    for data in _banner_haystacks(image):
        for match in _BANNER.finditer(data):
            # a printk copy running straight into the real banner: keep the last start
            banner = match.group(0)
            banner = banner[banner.rfind(b"Linux version ") :]
            counts[banner] = counts.get(banner, 0) + 1
    ordered = sorted(counts, key=lambda b: -counts[b])
    return [b[:-1].decode("latin-1") for b in ordered]


BANNER_WINDOW = 64 << 20  # bytes of guest memory searched at once (a banner is under 512 bytes long)


def _banner_haystacks(image):
    if isinstance(image, (str, Path)):
        with open(image, "rb") as fh:
            if os.fstat(fh.fileno()).st_size:
                with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                    yield data
        return
    for start, length in getattr(image, "data_runs", image.runs):  # a banner is never in a zero page
        for offset in range(start, start + length, BANNER_WINDOW):
            # windows overlap by 512 bytes so a banner on a boundary is seen whole (a repeat is merely counted twice)
            yield image.read(offset, min(BANNER_WINDOW + 512, start + length - offset))


def banner_key(banner: str) -> str:
    """Cache file stem for a banner: stable, filesystem-safe."""
    return hashlib.sha256(banner.encode("latin-1")).hexdigest()[:24]


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
) -> dict:
    """Find (or build) the ISF matching the image's kernel banner.

    ``image`` is a dump path or a ``MemoryImage`` (see :func:`find_banners`);
    ``scratch_dir`` holds the temporary ELF copy a build from a format
    pakunoda does not read needs (deleted after the build).
    Returns {"banner", "isf_path", "sha256", "origin", "diagnostics"}; raises
    SymbolsError (with diagnostics) when the image holds no Linux banner or no
    ISF could be found or built.
    """
    diagnostics: list[dict] = []
    banners = find_banners(image)
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
                return _answer(found, isf, origin, diagnostics)
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
    for banner in banners:
        cached = cache / f"{banner_key(banner)}.json"
        if cached.is_file():
            return _answer(banner, cached, "cache", diagnostics)
    if not build:
        raise SymbolsError(
            "no ISF matches this kernel and building is disabled",
            diagnostics + [diagnostic("error", "linux symbols", image_path, f"no ISF for banner {banners[0]!r}")],
        )
    built = _build_from(image, cache, progress, scratch_dir)
    diagnostics.extend(built["diagnostics"])
    if not built["isf_path"]:
        raise SymbolsError(
            f"could not build symbols from {Path(image_path).name}: "
            f"{built['diagnostics'][-1]['why'] if built['diagnostics'] else 'unknown'}",
            diagnostics,
        )
    return _answer(built["banner"], Path(built["isf_path"]), "built", diagnostics)


def _answer(banner, isf: Path, origin, diagnostics):
    return {
        "banner": banner,
        "isf_path": str(isf.resolve()),
        "sha256": sha256_file(isf),
        "origin": origin,
        "diagnostics": diagnostics,
    }


def _build_from(image, out_dir: Path, progress, scratch_dir: Path | None) -> dict:
    """build_isf on a file pakunoda reads: the dump itself, or a temporary ELF copy of a format it does not.

    pakunoda maps the dump and searches it for the kernel's BTF and kallsyms,
    so it needs the guest's RAM as one file; the copy lives only for the
    build (once per kernel: the ISF is cached by banner).
    """
    if isinstance(image, (str, Path)) or image.format in NATIVE:
        return build_isf(image if isinstance(image, (str, Path)) else image.path, out_dir, progress=progress)
    from toolkit.memory.convert import to_elf

    scratch = Path(scratch_dir or tempfile.gettempdir())
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".isf-build-", dir=scratch) as tmp:
        copy = Path(tmp) / "memory.elf"
        to_elf(image.path, copy, image=image, hash=False)
        built = build_isf(copy, out_dir, progress=progress)
    for d in built["diagnostics"]:
        d["where"] = str(image.path)  # the temporary copy is gone; name the evidence
    return built


def build_isf(image: str | Path, out_dir: str | Path, *, progress=None, timeout_s: float = 900) -> dict:
    """Build an ISF from the dump's own BTF and kallsyms with pakunoda, offline.

    Writes ``<out_dir>/<banner-key>.json`` atomically and returns {"banner",
    "isf_path", "seconds", "diagnostics"} (isf_path None on failure). Donor
    profiles are disabled: they would be fetched from the network or read
    from ~/.cache/pakunoda, and an evidence machine uses neither.

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
    target = out_dir / f"{banner_key(banner)}.json"
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(result.isf_json, fh, separators=(",", ":"))
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
    """Every ISF snapscope would consider: {origin, path, banner, size}.

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
            rows.append({"origin": origin, "path": str(isf), "banner": banner, "size": isf.stat().st_size})
    return rows
