"""Find, compile and cache YARA rule sets (yara-x first, yara-python as fallback).

Each rule file becomes its own namespace (its path below the rule directory,
without suffix). Every file is tried under yara-x on its own; the files yara-x
accepts are built into one yara-x rule set, the rest into one yara-python rule
set, so a single yara-x incompatibility costs speed for that file only. A file
that neither engine accepts raises :class:`RuleError` naming the file and line,
and nothing is scanned.

Compiled sets are cached under ``<cache_dir>/yara/<key>/`` where the key hashes
the engines' versions and every rule file's namespace and content sha256, and
the sha256 of every file its ``include`` statements pull in (transitively): a
second run with unchanged rules loads them instead of compiling, and an edited
included file means a new compile.

Example::

    rules = compile_rules([Path("rules/yara"), Path("~/my-rules").expanduser()],
                          cache_dir=Path("~/.cache/snapscope").expanduser())
    rules["files"][0]  # {"path": ..., "namespace": "lab", "sha256": ..., "engine": "yara-x"}
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import yara
import yara_x

from toolkit.errors import RuleError
from toolkit.schemas import diagnostic
from toolkit.shipped import YARA_RULES
from toolkit.versions import distribution_versions

DEFAULT_RULES_DIR = YARA_RULES
RULE_SUFFIXES = (".yar", ".yara")
ENGINES = ("yara-x", "yara-python")

# Both engines stop a regular expression (and yara-x a hex jump) after this
# many bytes (measured with /ba+b/ on yara-x 1.x and yara-python 4.5).
REGEX_MATCH_LIMIT = 4096

# Hex jumps with no upper bound ([-], [n-]) are the one string form whose
# match has no length bound under yara-python; found by a lint, not a parser.
_UNBOUNDED_JUMP = re.compile(rb"\[\s*\d*\s*-\s*\]")
_BOUNDED_JUMP = re.compile(rb"\[\s*(\d+)\s*(?:-\s*(\d+)\s*)?\]")
_PY_ERROR = re.compile(r"^(?P<path>.*)\((?P<line>\d+)\): (?P<msg>.*)$", re.S)
_INCLUDE = re.compile(rb'^[ \t]*include[ \t]+"([^"\r\n]+)"', re.M)


def included_files(path: Path, raw: bytes) -> list[tuple[str, str | None]]:
    """Files a rule file ``include``s, transitively: [(path, sha256 or None when unreadable)].

    Resolved as yara-python resolves them (a relative name against the
    including file's directory), which is the engine that compiles a file
    with includes (yara-x refuses them without include directories). An
    include inside a comment is listed too: hashing a file too many is harmless.

    Example: ``included_files(Path("rules/main.yar"), raw)`` -> ``[("rules/../common/c.yar", "ab12...")]``
    """
    found: list[tuple[str, str | None]] = []
    seen = {Path(path).resolve()}
    todo = [(Path(path), raw)]
    while todo:
        current, data = todo.pop()
        for match in _INCLUDE.finditer(data):
            target = current.parent / match.group(1).decode("utf-8", "replace")
            if target.resolve() in seen:
                continue
            seen.add(target.resolve())
            try:
                content = target.read_bytes()
            except OSError:
                found.append((str(target), None))
                continue
            found.append((str(target), hashlib.sha256(content).hexdigest()))
            todo.append((target, content))
    return found


def include_digest(paths) -> str:
    """sha256 over the files every rule file under ``paths`` includes (a missing path counts as nothing):
    the part of a rule set's content that lies outside its own files."""
    digest = hashlib.sha256()
    for root in paths:
        root = Path(root).expanduser()
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in RULE_SUFFIXES) if root.is_dir() else [root]
        for path in files:
            if path.is_file():
                for name, sha in included_files(path, path.read_bytes()):
                    digest.update(f"{path}\0{name}\0{sha}\n".encode())
    return digest.hexdigest()


def find_rule_files(paths) -> list[tuple[Path, str]]:
    """Rule files under ``paths`` (directories or single files) with their namespaces.

    Example: ``find_rule_files([DEFAULT_RULES_DIR])`` -> ``[(Path(".../lab.yar"), "lab"), ...]``
    """
    found: list[tuple[Path, str]] = []
    used: set[str] = set()
    for root in paths:
        root = Path(root).expanduser()
        if root.is_file():
            items = [(root, root.stem)]
        elif root.is_dir():
            items = [
                (p, p.relative_to(root).with_suffix("").as_posix())
                for p in sorted(root.rglob("*"))
                if p.is_file() and p.suffix.lower() in RULE_SUFFIXES
            ]
        else:
            raise RuleError(f"{root}: no such rule file or directory")
        for path, namespace in items:
            name, n = namespace, 2
            while name in used:  # two directories may both hold "linux.yar"
                name, n = f"{namespace}~{n}", n + 1
            used.add(name)
            found.append((path, name))
    return found


def _cache_key(files: list[dict], prefer: str) -> str:
    blob = json.dumps(
        {
            "versions": distribution_versions(ENGINES),
            "prefer": prefer,
            "files": [(f["namespace"], f["sha256"], f["includes"]) for f in files],
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _yarax_accepts(source: str, path: Path) -> str | None:
    """None if yara-x compiles this file alone, else its first error text."""
    compiler = yara_x.Compiler()
    try:
        compiler.add_source(source, origin=str(path))
        compiler.build()
    except yara_x.CompileError as exc:
        return str(exc)
    return None


def _python_error(exc: Exception) -> RuleError:
    text = str(exc)
    m = _PY_ERROR.match(text)
    if m:
        return RuleError(f"{m['path']}, line {m['line']}: {m['msg']} (nothing was scanned)")
    return RuleError(f"YARA rules do not compile: {text} (nothing was scanned)")


def _lint(path: Path, raw: bytes, overlap: int) -> list[dict]:
    """Diagnostics for strings whose matches may outgrow the chunk overlap."""
    rows = []
    if _UNBOUNDED_JUMP.search(raw):
        rows.append(
            diagnostic(
                "info",
                "unbounded hex jump",
                str(path),
                f"a match spanning a chunk boundary is guaranteed only up to {overlap} bytes long",
            )
        )
    widest = max((int(b or a) for a, b in _BOUNDED_JUMP.findall(raw)), default=0)
    if widest > overlap:
        rows.append(
            diagnostic(
                "info",
                f"hex jump of {widest} bytes",
                str(path),
                f"longer than the {overlap}-byte chunk overlap: boundary-spanning matches may be missed",
            )
        )
    return rows


def _load_cached(folder: Path, manifest: dict) -> dict | None:
    try:
        out = {"yarax": None, "yarapy": None}
        if manifest["has_yarax"]:
            with open(folder / "yarax.bin", "rb") as fh:
                out["yarax"] = yara_x.Rules.deserialize_from(fh)
        if manifest["has_yarapy"]:
            out["yarapy"] = yara.load(str(folder / "yarapy.bin"))
        return out
    except Exception:  # a damaged cache entry is rebuilt, never trusted
        return None


def _save_cached(folder: Path, compiled: dict, manifest: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if compiled["yarax"] is not None:
        tmp = folder / "yarax.bin.tmp"
        with open(tmp, "wb") as fh:
            compiled["yarax"].serialize_into(fh)
        os.replace(tmp, folder / "yarax.bin")
    if compiled["yarapy"] is not None:
        compiled["yarapy"].save(str(folder / "yarapy.tmp"))
        os.replace(folder / "yarapy.tmp", folder / "yarapy.bin")
    tmp = folder / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, folder / "manifest.json")  # written last: marks the entry complete


def compile_rules(paths=None, *, cache_dir=None, prefer: str = "yara-x", overlap: int = 64 * 1024) -> dict:
    """Compile rule files (default: the shipped ``rules/yara``) into a rule-set dict.

    ``prefer="yara-python"`` skips yara-x entirely (for comparisons). Returns
    ``{"yarax", "yarapy", "files", "key", "cached", "diagnostics"}``; pass it to
    the ``scan_*`` functions. Raises :class:`RuleError` on a file no engine accepts.

    Example: ``rules = compile_rules(cache_dir=ctx["cache_dir"])``
    """
    if prefer not in ENGINES:
        raise RuleError(f"unknown YARA engine {prefer!r}; choose one of {', '.join(ENGINES)}")
    entries = find_rule_files([DEFAULT_RULES_DIR] if paths is None else paths)
    if not entries:
        raise RuleError("no YARA rule files (*.yar, *.yara) found in " + ", ".join(map(str, paths or [])))
    files, diagnostics = [], []
    for path, namespace in entries:
        raw = path.read_bytes()
        files.append(
            {
                "path": str(path),
                "namespace": namespace,
                "sha256": hashlib.sha256(raw).hexdigest(),
                "includes": included_files(path, raw),
                "engine": None,
                "raw": raw,
            }
        )
        diagnostics += _lint(path, raw, overlap)
    key = _cache_key(files, prefer)
    folder = Path(cache_dir).expanduser() / "yara" / key if cache_dir else None
    if folder and (folder / "manifest.json").exists():
        manifest = json.loads((folder / "manifest.json").read_text())
        loaded = _load_cached(folder, manifest)
        if loaded is not None:
            for f in files:
                f["engine"] = manifest["engines"].get(f["namespace"])
                del f["raw"]
            return {**loaded, "files": files, "key": key, "cached": True, "diagnostics": diagnostics}

    xfiles, pyfiles = [], []
    for f in files:
        source = f["raw"].decode("utf-8", errors="replace")
        why = _yarax_accepts(source, Path(f["path"])) if prefer == "yara-x" else "yara-python requested"
        (pyfiles if why else xfiles).append((f, source, why))
    compiled = {"yarax": None, "yarapy": None}
    if xfiles:
        compiler = yara_x.Compiler()
        for f, source, _ in xfiles:
            compiler.new_namespace(f["namespace"])
            compiler.add_source(source, origin=f["path"])
            f["engine"] = "yara-x"
        compiled["yarax"] = compiler.build()
    if pyfiles:
        try:
            compiled["yarapy"] = yara.compile(filepaths={f["namespace"]: f["path"] for f, _, _ in pyfiles})
        except yara.Error as exc:
            raise _python_error(exc) from None
        for f, _, why in pyfiles:
            f["engine"] = "yara-python"
            if prefer == "yara-x":
                first = why.strip().splitlines()
                diagnostics.append(
                    diagnostic(
                        "info",
                        "rules scanned with yara-python",
                        f["path"],
                        "yara-x rejects the file: " + " ".join(x.strip() for x in first[:2]),
                    )
                )
    for f in files:
        del f["raw"]
    if folder:
        manifest = {
            "key": key,
            "has_yarax": compiled["yarax"] is not None,
            "has_yarapy": compiled["yarapy"] is not None,
            "engines": {f["namespace"]: f["engine"] for f in files},
            "files": files,
        }
        try:
            _save_cached(folder, compiled, manifest)
        except OSError as exc:
            diagnostics.append(
                diagnostic("warning", "YARA rule cache", str(folder), f"could not write the compiled rules: {exc}")
            )
    return {**compiled, "files": files, "key": key, "cached": False, "diagnostics": diagnostics}
