"""Four of Volatility's hot spots, made fast without changing a result.

Each is paid once per memory image, so in an audit once per clone; together
they were ~10 s of a clone's ~25 s of CPU on the lab fleet.

1. MultiStringScanner's search (psscan, bash, sockscan, banner scans).
Volatility turns the needles into one regular expression (a trie of literal
bytes) and runs Python's ``re`` over every chunk of physical memory. ``re``
has no fast path for an alternation of literals, so a 256 MiB dump costs
~10 s of CPU in psscan alone; ``bytes.find`` (a C memory search) does the
same work per needle at memory speed. With a handful of needles (psscan's
sched_class pointers, a few banners) one find pass per needle is cheaper
than the regex; with many needles (Windows pool tags) the regex stays.

Needles that end in the same bytes share one pass: psscan's needles are the
addresses of the kernel's sched_class structures, side by side in .data, so
they all end in the same 6 high bytes; one search for those and a check of
each hit's head replaces a pass per needle (on the 336 MiB lab dump 1.24 s ->
0.20 s for its 6 needles).

The result is exactly what ``re.finditer`` over Volatility's trie regex
yields: matches in order, leftmost first, the longest needle when several
start at one offset, never overlapping a match already reported
(tests/unit/engines/memory/test_speedups.py checks that against the regex).

2. The address index behind get_symbols_by_location (sockstat and lsof ask
which kernel function a socket's d_dname points to). Volatility builds it by
constructing every one of the kernel's ~80,000 symbols with its type (~3 s);
the same sorted (address, name) list comes straight from the ISF's raw
addresses (:func:`index_symbol_locations`).

3. Loading the kernel ISF. Finding the kernel builds two symbol tables from
the same 13 MB ISF, each parsing the JSON (~1 s) and hashing it for the
validation cache (~0.8 s); an audit worker does that again for every clone.
:func:`install_isf_memo` parses each ISF once per process (keyed by the
SHA-256 of its text) and remembers the validation hash of that very object;
Volatility's own validate() still runs (its warnings, its cache check).
Volatility only reads a parsed ISF, so tables share it safely.

4. Finding the VMCOREINFO note. Volatility's Linux stacker scans all of
physical memory for the kernel's VMCOREINFO ELF note until it finds one
(4.5 s of an 8 GiB ELF, 20 s of its kdump, read through snapscope's layer).
An ELF core or a kdump written by QEMU or makedumpfile carries a copy of that
very note; :func:`install_vmcoreinfo_hint` offers it first, parsed by
Volatility's own parser, when the caller put its text in the context's config
under ``VMCOREINFO_SETTING``. The stacker then does what it does with a note
it scanned (its ASLR, DTB and banner checks); if that fails it asks for the
next note and the scan runs as before. The note only serves a translation
layer (the guest's physical memory), never the file layer under an ELF core,
whose offsets are not physical addresses.

Example::

    >>> list(literal_matches([b"ab", b"abc", b"x"], b"xxabcab"))
    [(0, b'x'), (1, b'x'), (2, b'abc'), (5, b'ab')]
"""

from __future__ import annotations

import hashlib
import json
import types

# Measured: psscan's 5 needles over a lab dump 8.5 s -> 1.2 s; on 16 MiB of random bytes
# the find passes beat the regex 2.2x with 4 needles, 1.7x with 16, 1.4x with 64. The
# advantage shrinks with every needle, so many needles (Windows pool tags) keep the regex.
MAX_NEEDLES = 16


# Needles that end in the same SHARED_TAIL bytes are searched for in one pass: psscan's needles
# are the little-endian addresses of the kernel's sched_class structures, which the linker puts
# side by side, so all of them end in the same 6 high bytes (a 64 KiB window of kernel
# addresses, rare in memory). Five passes over every byte of RAM become one.
SHARED_TAIL = 6


def _by_tail(needles) -> dict[bytes, list[bytes]]:
    """Needles grouped by their last SHARED_TAIL bytes (a shorter needle is its own group)."""
    groups: dict[bytes, list[bytes]] = {}
    for needle in set(needles):
        if needle:
            groups.setdefault(needle[-SHARED_TAIL:], []).append(needle)
    return groups


def literal_matches(needles, haystack: bytes):
    """(offset, needle) for every non-overlapping leftmost-longest match, in order."""
    hits = []
    for tail, group in _by_tail(needles).items():
        # every occurrence of a needle ends in an occurrence of its tail: find the tails, check the heads
        heads = [(len(needle) - len(tail), needle) for needle in group]
        pos = haystack.find(tail)
        while pos >= 0:
            for back, needle in heads:
                if pos >= back and (not back or haystack.startswith(needle, pos - back)):
                    hits.append((pos - back, -len(needle), needle))
            pos = haystack.find(tail, pos + 1)
    hits.sort()
    end = 0
    for pos, _negative_length, needle in hits:
        if pos >= end:
            yield pos, needle
            end = pos + len(needle)


def trie_needles(trie) -> list[bytes]:
    """The byte strings stored in MultiStringScanner's trie (key -1 marks an end)."""
    found = []

    def walk(node, prefix):
        for key, child in node.items():
            if key == -1:
                found.append(bytes(prefix))
            else:
                walk(child, prefix + [key])

    walk(trie or {}, [])
    return found


def install(scanners_module) -> None:
    """Give MultiStringScanner the find-based search when its needles are few.

    Idempotent; keeps Volatility's own search for many needles and for any
    input that is not ``bytes`` (its own type check then raises as before).
    """
    cls = scanners_module.MultiStringScanner
    if getattr(cls, "_snapscope_fast", False):
        return
    regex_search = cls.search

    def search(self, haystack):
        needles = self.__dict__.get("_snapscope_needles")
        if needles is None:
            needles = self._snapscope_needles = trie_needles(self._pattern_trie)
        if not isinstance(haystack, bytes) or not needles or len(needles) > MAX_NEEDLES:
            return regex_search(self, haystack)
        return literal_matches(needles, haystack)

    cls.search = search
    cls._snapscope_fast = True


def index_symbol_locations(table) -> bool:
    """Pre-build Volatility's (address, name) index of an ISF symbol table from the raw ISF.

    Same list Volatility would build (``sorted((get_symbol(n).address, n))``,
    with the mask get_symbol applies), checked against Volatility's own symbol
    objects on a sample before it is used; returns False (and leaves the table
    alone) if the table is not an ISF table this understands.
    """
    try:
        raw = table._delegate._json_object["symbols"]
        if getattr(table, "_sort_symbols", None):
            return True  # Volatility already built it
        # the delegate's config is what its get_symbol reads the mask from
        mask = table._delegate.config.get("symbol_mask", 0) or 0
        index = sorted(
            ((entry["address"] & mask) if mask else entry["address"], name) for name, entry in raw.items() if entry
        )
    except (AttributeError, KeyError, TypeError):
        return False
    try:
        for address, name in index[:: max(1, len(index) // 32)]:
            if table.get_symbol(name).address != address:
                return False
    except Exception:  # a symbol Volatility cannot build: leave the index to Volatility (and its errors)
        return False
    table._sort_symbols = index
    return True


# Parsed ISFs kept per process: a kernel ISF is ~13 MB of text, ~150 MB parsed;
# the clones of an audit share one kernel, and a long-lived worker keeps one.
ISF_MEMO_ENTRIES = 1
ISF_MEMO_MIN_CHARS = 1 << 20  # small ISFs parse in milliseconds: not worth keeping


def install_isf_memo(intermed_module, schemas_module) -> None:
    """One JSON parse and one validation hash per ISF per process (see 3. above).

    ``intermed`` gets a stand-in for the ``json`` module whose ``load``
    returns the already parsed object for the same text;
    ``schemas.create_json_hash`` returns the hash it computed for that very
    object before (same schema). Idempotent.
    """
    if getattr(intermed_module.json, "_snapscope_memo", False):
        return
    parsed: dict[bytes, object] = {}
    hashes: dict[tuple[int, str], str] = {}  # (id of a parsed object, schema digest) -> hash

    def load(fp, **kwargs):
        text = fp.read()
        if len(text) < ISF_MEMO_MIN_CHARS or kwargs:
            return json.loads(text, **kwargs)
        key = hashlib.sha256(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text).digest()
        if key not in parsed:
            while len(parsed) >= ISF_MEMO_ENTRIES:
                dropped = parsed.pop(next(iter(parsed)))
                for k in [k for k in hashes if k[0] == id(dropped)]:
                    del hashes[k]
            parsed[key] = json.loads(text)
        return parsed[key]

    memo_json = types.SimpleNamespace(**{k: getattr(json, k) for k in dir(json) if not k.startswith("__")})
    memo_json.load = load
    memo_json._snapscope_memo = True
    intermed_module.json = memo_json

    real_hash = schemas_module.create_json_hash

    def create_json_hash(input, schema=None):
        # only objects held in `parsed` (alive, so their id is theirs) are remembered
        if schema is None or not any(obj is input for obj in parsed.values()):
            return real_hash(input, schema)
        key = (id(input), hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest())
        if key not in hashes:
            hashes[key] = real_hash(input, schema)
        return hashes[key]

    schemas_module.create_json_hash = create_json_hash


VMCOREINFO_SETTING = "snapscope.memory.vmcoreinfo"  # the dump's VMCOREINFO text, "KEY=value" lines


def vmcoreinfo_text(vmcoreinfo: dict | None) -> str:
    """The ``KEY=value`` lines of a parsed VMCOREINFO (``MemoryImage.info["vmcoreinfo"]``), or "".

    >>> vmcoreinfo_text({"OSRELEASE": "6.1.0", "PAGESIZE": "4096"})
    'OSRELEASE=6.1.0\\nPAGESIZE=4096\\n'
    """
    if not vmcoreinfo or "OSRELEASE" not in vmcoreinfo:
        return ""
    # OSRELEASE first: Volatility checks that a note's text starts with it
    keys = ["OSRELEASE"] + [k for k in vmcoreinfo if k != "OSRELEASE"]
    return "".join(f"{k}={vmcoreinfo[k]}\n" for k in keys)


def install_vmcoreinfo_hint(linux_symbols, physical_layers) -> None:
    """4. above; idempotent."""
    vmcoreinfo = linux_symbols.VMCoreInfo
    if getattr(vmcoreinfo, "_snapscope_hint", False):
        return
    search = vmcoreinfo.search_vmcoreinfo_elf_note.__func__

    def search_with_hint(cls, context, layer_name, progress_callback=None):
        text = context.config.get(VMCOREINFO_SETTING)
        layer = context.layers[layer_name]
        if text and not isinstance(layer, physical_layers.FileLayer):
            try:
                table = cls._vmcoreinfo_data_to_dict(text.encode("latin-1"))
            except (ValueError, UnicodeError):  # not KEY=value text Volatility can read
                table = None
            if table:
                yield None, table  # where the note lies in memory is not known (and not used)
        yield from search(cls, context, layer_name, progress_callback=progress_callback)

    vmcoreinfo.search_vmcoreinfo_elf_note = classmethod(search_with_hint)
    vmcoreinfo._snapscope_hint = True
