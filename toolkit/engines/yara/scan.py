"""Chunked YARA scanning of memory regions, physical memory, files and streams.

Nothing is read whole: every target is scanned in windows of ``chunk_size``
bytes plus ``overlap`` bytes of look-ahead, and a match belongs to the window
in which it *starts*.

Why no match across a chunk boundary is missed (and none is reported twice):
window k reads ``[s_k, e_k + overlap)`` and owns ``[s_k, e_k)``; the owned
ranges partition the target. A string match at absolute offset p of length
L <= overlap has an owner window k with s_k <= p < e_k, so p + L <= e_k +
overlap: the whole match lies inside window k's buffer and the engine sees it.
Matches a window finds in its look-ahead tail (p >= e_k) are held back; if the
next window (which owns p) finds the same (engine, rule, string, p) it reports
it with its fuller view, otherwise the held one is reported. Every match is
reported once, keyed by absolute offset.

The bound: L <= overlap (default 64 KiB). Both engines cap a regular
expression match at 4096 bytes (rules.REGEX_MATCH_LIMIT), so literal
strings, regexes and hex strings with bounded jumps totalling under 64 KiB are
always found. Hex strings with unbounded jumps (``[-]``, ``[n-]``) can be
longer under yara-python; those spanning a boundary are found only when they
fit in the overlap (the rule compiler lists such files in diagnostics).
Conditions are evaluated per window: a rule needing two strings more than
``overlap`` bytes apart across a boundary, or ``filesize``/offset-0 checks,
see one window — which is why a file smaller than a chunk is scanned whole.

Example::

    rules = compile_rules()
    matches, diags = scan_file(rules, "/evidence/extracted/implant")
"""

from __future__ import annotations

import yara_x

from toolkit.memory.image import merge_runs
from toolkit.schemas import diagnostic

CHUNK_SIZE = 16 * 1024 * 1024
OVERLAP = 64 * 1024
MATCH_DATA_CAP = 64  # bytes of matched data kept per row
MAX_FILE_SIZE = 512 * 1024 * 1024  # scan_files skips larger files (listed in diagnostics)
TIMEOUT = 120  # seconds per window


def _meta(pairs) -> dict:
    return {str(k): v for k, v in (pairs.items() if isinstance(pairs, dict) else pairs)}


def _scanner(rules: dict):
    # one yara-x Scanner per rule set: building it per window costs more than the scan of small regions
    if rules.get("_xscanner") is None:
        rules["_xscanner"] = yara_x.Scanner(rules["yarax"])
        rules["_xscanner"].set_timeout(TIMEOUT)
    return rules["_xscanner"]


def scan_buffer(rules: dict, buf: bytes) -> list[dict]:
    """Every string match of every matching rule in ``buf`` (offsets relative to buf).

    Example: ``scan_buffer(rules, b"...X5O!P%@AP...")`` -> ``[{"rule": "EICAR_test_file", "offset": 3, ...}]``
    """
    hits = []
    if rules.get("yarax") is not None:
        for rule in _scanner(rules).scan(buf).matching_rules:
            head = _hit_head("yara-x", rule.namespace, rule.identifier, rule.tags, rule.metadata)
            for pattern in rule.patterns:
                hits += [
                    {**head, "string_id": pattern.identifier, "offset": m.offset, "length": m.length}
                    for m in pattern.matches
                ]
    if rules.get("yarapy") is not None:
        for rule in rules["yarapy"].match(data=buf, timeout=TIMEOUT):
            head = _hit_head("yara-python", rule.namespace, rule.rule, rule.tags, rule.meta)
            for s in rule.strings:
                hits += [
                    {**head, "string_id": s.identifier, "offset": i.offset, "length": i.matched_length}
                    for i in s.instances
                ]
    return hits


def _hit_head(engine: str, namespace: str, rule: str, tags, meta) -> dict:
    """The part of a hit both engines report alike: which engine, rule and rule metadata."""
    return {"engine": engine, "namespace": namespace, "rule": rule, "tags": list(tags), "meta": _meta(meta)}


def _row(hit: dict, buf: bytes, base: int, where: dict) -> dict:
    meta = hit["meta"]
    rel = hit["offset"]
    return {
        **where,
        "rule": hit["rule"],
        "namespace": hit["namespace"],
        "tags": ",".join(hit["tags"]) or None,
        "severity": meta.get("severity"),
        "attack_id": meta.get("attack_id"),
        "description": meta.get("description"),
        "engine": hit["engine"],
        "offset": base + rel,
        "string_id": hit["string_id"],
        "match_length": hit["length"],
        "matched": bytes(buf[rel : rel + min(hit["length"], MATCH_DATA_CAP)]),
    }


def scan_range(
    rules: dict,
    read,
    start: int,
    end: int,
    where: dict,
    diagnostics: list,
    *,
    chunk_size: int = CHUNK_SIZE,
    overlap: int = OVERLAP,
    on_owned=None,
):
    """Yield match rows for ``[start, end)`` read through ``read(addr, length)``.

    ``where`` holds the columns common to every row (target, pid, path...).
    ``on_owned(bytes)`` sees each window's owned part in order (used to hash
    files in the same pass). Example::

        rows = list(scan_range(rules, image.read, 0, 1 << 20, {"target": "physical"}, diags))
    """
    if not 0 < overlap < chunk_size:
        raise ValueError(f"overlap ({overlap}) must be positive and smaller than chunk_size ({chunk_size})")
    label = where.get("path") or where.get("flow_id") or where.get("process") or where.get("target")
    pending: dict = {}
    pos = start
    while pos < end:
        owned_end = min(pos + chunk_size, end)
        want = min(owned_end + overlap, end) - pos
        try:
            buf = read(pos, want) or b""
        except Exception as exc:  # one unreadable window must not end the scan
            diagnostics.append(
                diagnostic("warning", f"read of {want} bytes", f"{label}@{pos:#x}", f"{type(exc).__name__}: {exc}")
            )
            buf = b""
        if len(buf) < want:
            diagnostics.append(
                diagnostic(
                    "warning",
                    f"short read ({len(buf)} of {want} bytes)",
                    f"{label}@{pos:#x}",
                    "source ended or is unreadable here; the rest of this window was not scanned",
                )
            )
        if on_owned is not None:
            on_owned(buf[: owned_end - pos])
        try:
            hits = scan_buffer(rules, buf) if buf else []
        except Exception as exc:  # timeouts and engine errors become data
            diagnostics.append(
                diagnostic("warning", "YARA scan of a window", f"{label}@{pos:#x}", f"{type(exc).__name__}: {exc}")
            )
            hits = []
        held = {}
        for hit in hits:
            key = (hit["engine"], hit["namespace"], hit["rule"], hit["string_id"], pos + hit["offset"])
            if pos + hit["offset"] < owned_end:
                pending.pop(key, None)
                yield _row(hit, buf, pos, where)
            else:
                held[key] = _row(hit, buf, pos, where)
        yield from pending.values()  # tail matches of the previous window this one did not confirm
        pending = held
        pos = owned_end
    yield from pending.values()


def scan_regions(rules: dict, regions, *, chunk_size: int = CHUNK_SIZE, overlap: int = OVERLAP):
    """Scan memory regions; returns ``(match_rows, diagnostic_rows)``.

    Each region is a dict ``{target: "process"|"kernel"|"physical", pid, process,
    start, end, protection, path, read}`` where ``read(addr, length)`` takes an
    absolute address in ``[start, end)`` and may return fewer bytes (unmapped).
    Offsets in the rows are absolute (virtual addresses for processes).

    Example::

        rows, diags = scan_regions(rules, [{"target": "process", "pid": 42, "process": "sshd",
            "start": 0x400000, "end": 0x401000, "protection": "r-x", "path": "/usr/sbin/sshd",
            "read": lambda addr, n: layer.read(addr, n, pad=True)}])
    """
    rows, diagnostics = [], []
    for region in regions:
        where = {
            "target": region.get("target", "process"),
            "pid": region.get("pid"),
            "process": region.get("process"),
            "path": region.get("path"),
            "region_start": region["start"],
            "region_end": region["end"],
            "protection": region.get("protection"),
        }
        rows += scan_range(
            rules,
            region["read"],
            region["start"],
            region["end"],
            where,
            diagnostics,
            chunk_size=chunk_size,
            overlap=overlap,
        )
    return rows, diagnostics


def scan_physical(rules: dict, image, *, chunk_size: int = CHUNK_SIZE, overlap: int = OVERLAP):
    """Scan guest-physical memory of an image with ``.runs`` and ``.read(gpa, n)``.

    Offsets are GPAs. Only what may hold data is read (``data_runs`` where the
    image has them): pages known to be zero match nothing, and a stream can
    declare a terabyte of them. Example: ``rows, diags = scan_physical(rules, memory_image)``
    """
    regions = [
        {"target": "physical", "start": gpa, "end": gpa + length, "read": image.read}
        for gpa, length in merge_runs(getattr(image, "data_runs", image.runs))
    ]
    return scan_regions(rules, regions, chunk_size=chunk_size, overlap=overlap)
