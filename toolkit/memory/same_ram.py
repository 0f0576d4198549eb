"""Do two memory artefacts hold the same RAM? One paused moment is often saved several
ways (an ELF dump, a kdump, a migration stream, a savevm): analysing it once is enough.

Two steps, both over guest-physical pages read through :func:`toolkit.memory.open_image`
(so any format compares with any other):

1. :func:`ram_signature`: a digest of a few hundred pages spread evenly over low
   RAM (from 1 MiB up the run that holds it). Artefacts of one moment have equal
   signatures; different VMs or moments almost always differ, so most pairs are
   set apart without reading more.
2. :func:`compare_ram`: the proof. Every page of guest RAM both artefacts hold
   (their known ranges intersected, the legacy VGA/ROM window left out) is
   compared; the first differing page ends it. Two moments of one VM a few
   seconds apart differ in only ~0.1 % of pages, which a sample can miss: only
   the whole comparison may say "same moment".

Example::

    with open_image("memory.elf") as a, open_image("memory.kdump") as b:
        ram_signature(a)["digest"] == ram_signature(b)["digest"]   # True: same moment, probably
        compare_ram(a, b)        # {'same': True, 'pages_compared': 81888, 'pages_differing': 0, ...}
"""

from __future__ import annotations

import hashlib

PAGE = 4096
ONE_MIB = 1 << 20
# VGA window and option ROMs: device memory that only some formats carry.
LEGACY_WINDOW = (0xA0000, 0x100000)
SAMPLE_PAGES = 256
# Below this share of the larger artefact's RAM in common, two artefacts are not compared.
MIN_COVERAGE = 0.9


def ram_ranges(image) -> list[tuple[int, int]]:
    """[(start, end)] of guest-physical ranges with known content, without the legacy window."""
    out = []
    for start, length in image.runs:
        end = start + length
        if start < LEGACY_WINDOW[0]:
            out.append((start, min(end, LEGACY_WINDOW[0])))
        if end > LEGACY_WINDOW[1]:
            out.append((max(start, LEGACY_WINDOW[1]), end))
    return [(lo, hi) for lo, hi in out if hi > lo]


def intersect_runs(a, b) -> list[tuple[int, int]]:
    """The address ranges in both sorted, non-overlapping lists of (start, end) ranges.

    >>> intersect_runs([(0, 10), (20, 30)], [(5, 25)])
    [(5, 10), (20, 25)]
    """
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def low_ram(image) -> tuple[int, int]:
    """(1 MiB, end of the run holding 1 MiB): RAM every x86 guest has, the same span in any format."""
    for lo, hi in ram_ranges(image):
        if lo <= LEGACY_WINDOW[1] < hi:
            return LEGACY_WINDOW[1], hi
    return LEGACY_WINDOW[1], LEGACY_WINDOW[1]


def ram_signature(image, samples: int = SAMPLE_PAGES) -> dict:
    """Digest of ``samples`` pages evenly spread over low RAM: equal for artefacts of one moment.

    Returns {"low_ram_end", "pages", "nonzero", "digest"}; ``nonzero`` says how much
    the sample saw (an all-zero sample tells little, the comparison decides anyway).

    Example::

        ram_signature(img)   # {'low_ram_end': 335544320, 'pages': 256, 'nonzero': 190, 'digest': '5f0c...'}
    """
    lo, hi = low_ram(image)
    pages = (hi - lo) // PAGE
    step = max(1, pages // max(1, samples))
    digest, nonzero, taken = hashlib.sha256(), 0, 0
    zero = bytes(PAGE)
    for k in range(0, pages, step):
        if taken == samples:
            break
        page = image.read(lo + k * PAGE, PAGE)
        digest.update(hashlib.sha256(page).digest())
        nonzero += page != zero
        taken += 1
    return {"low_ram_end": hi, "pages": taken, "nonzero": nonzero, "digest": digest.hexdigest()}


def compare_ram(a, b, chunk: int = ONE_MIB) -> dict:
    """Every page of guest RAM two images both hold, compared; stops at the first differing chunk.

    Returns the proof::

        {"same": bool, "pages_compared": int, "pages_differing": int (in the first differing MiB),
         "first_differing_gpa": "0x104f000" or None, "coverage": share of the larger RAM compared,
         "method": "..."}
    """
    common = intersect_runs(ram_ranges(a), ram_ranges(b))
    # against the larger: an artefact missing most of the RAM cannot vouch for the rest
    larger = max(sum(hi - lo for lo, hi in ram_ranges(x)) for x in (a, b)) or 1
    coverage = sum(hi - lo for lo, hi in common) / larger
    proof = {
        "same": False,
        "pages_compared": 0,
        "pages_differing": 0,
        "first_differing_gpa": None,
        "coverage": round(coverage, 4),
        "method": "every page of the guest RAM both artefacts hold (legacy VGA/ROM window excluded)",
    }
    if coverage < MIN_COVERAGE:
        proof["method"] += f"; not compared: only {coverage:.0%} of the larger artefact's RAM in common"
        return proof
    for lo, hi in common:
        for at in range(lo, hi, chunk):
            n = min(chunk, hi - at)
            left, right = a.read(at, n), b.read(at, n)
            if left == right:
                proof["pages_compared"] += -(-n // PAGE)
                continue
            for off in range(0, n, PAGE):
                proof["pages_compared"] += 1
                if left[off : off + PAGE] != right[off : off + PAGE]:
                    proof["pages_differing"] += 1
                    if proof["first_differing_gpa"] is None:
                        proof["first_differing_gpa"] = hex(at + off)
            return proof
    proof["same"] = proof["pages_compared"] > 0
    return proof
