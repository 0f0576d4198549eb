"""Two of Volatility's hot spots, made fast without changing a result.

Both are paid once per memory image, so in an audit once per clone; together
they were ~7 s of a clone's ~25 s of CPU on the lab fleet.

1. MultiStringScanner's search (psscan, bash, sockscan, banner scans).
Volatility turns the needles into one regular expression (a trie of literal
bytes) and runs Python's ``re`` over every chunk of physical memory. ``re``
has no fast path for an alternation of literals, so a 256 MiB dump costs
~10 s of CPU in psscan alone; ``bytes.find`` (a C memory search) does the
same work per needle at memory speed. With a handful of needles (psscan's
sched_class pointers, a few banners) one find pass per needle is far cheaper
than the regex; with many needles (Windows pool tags) the regex stays.

The result is exactly what ``re.finditer`` over Volatility's trie regex
yields: matches in order, leftmost first, the longest needle when several
start at one offset, never overlapping a match already reported
(tests/unit/engines/test_vol_fastscan.py checks that against the regex).

2. The address index behind get_symbols_by_location (sockstat and lsof ask
which kernel function a socket's d_dname points to). Volatility builds it by
constructing every one of the kernel's ~80,000 symbols with its type (~3 s);
the same sorted (address, name) list comes straight from the ISF's raw
addresses (:func:`index_symbol_locations`).

Example::

    >>> list(literal_matches([b"ab", b"abc", b"x"], b"xxabcab"))
    [(0, b'x'), (1, b'x'), (2, b'abc'), (5, b'ab')]
"""
from __future__ import annotations

# Up to this many needles one find pass each beats the regex (measured on the lab
# dumps: 5 needles, ~40x faster); beyond it the regex's single pass wins.
MAX_NEEDLES = 16


def literal_matches(needles, haystack: bytes):
    """(offset, needle) for every non-overlapping leftmost-longest match, in order."""
    hits = []
    for needle in set(needles):
        if not needle:
            continue
        pos = haystack.find(needle)
        while pos >= 0:
            hits.append((pos, -len(needle), needle))
            pos = haystack.find(needle, pos + 1)
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
        index = sorted(((entry["address"] & mask) if mask else entry["address"], name)
                       for name, entry in raw.items() if entry)
    except (AttributeError, KeyError, TypeError):
        return False
    for address, name in index[::max(1, len(index) // 32)]:
        if table.get_symbol(name).address != address:
            return False
    table._sort_symbols = index
    return True
