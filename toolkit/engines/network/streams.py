"""Per-direction payload streams: TCP reassembly and spooling to files.

A stream is the bytes one side of a flow sent, in sequence order. Policy:

- sequence numbers are unwrapped to 64-bit positions relative to what was
  expected next, so wrap-around at 2**32 is harmless;
- a retransmission of bytes already delivered is dropped (first copy wins,
  like the receiving stack); a segment that overlaps delivered bytes is trimmed;
- a segment ahead of the expected position waits in an out-of-order buffer
  (at most OOO_LIMIT bytes per direction); when that overflows, or the flow
  ends with bytes still missing, the hole is skipped and counted as a gap
  (``gaps``, ``gap_bytes``) — so stream offsets equal sequence offsets only up
  to the first gap, and the flow row says so;
- delivered bytes are written to ``<spool_dir>/<flow_id>.<direction>.bin`` in
  1 MiB batches (no size cap: streams can be gigabytes and are never held in
  memory); the first HEAD_BYTES stay in memory for the protocol parsers.
  Without a spool directory only the head is kept and the flow row says so.

Example::

    s = new_stream(Path("derived/streams/f1.src_to_dst.bin"))
    tcp_segment(s, seq=1000, payload=b"GET / HTTP/1.1\\r\\n", ts=0, syn=False)
    close_stream(s)   # drains the out-of-order buffer, flushes to disk
"""

from __future__ import annotations

from pathlib import Path

HEAD_BYTES = 16 * 1024  # kept in memory per direction for DNS-over-TCP/TLS parsing (a ClientHello fits)
FLUSH_BYTES = 1024 * 1024  # write to the spool file in batches of this size
OOO_LIMIT = 8 * 1024 * 1024  # out-of-order bytes held per direction before a hole is declared lost
MAX_MARKS = 100_000  # timestamp checkpoints per direction (see mark())
_WRAP = 1 << 32


def new_stream(spool: Path | None) -> dict:
    """An empty stream that will spool to ``spool`` (None: keep only the head)."""
    return {
        "spool": spool,
        "next": None,
        "raw_next": None,
        "base": None,
        "size": 0,
        "pending": bytearray(),
        "head": bytearray(),
        "ooo": {},
        "ooo_bytes": 0,
        "gaps": 0,
        "gap_bytes": 0,
        "retrans": 0,
        "overlap_bytes": 0,
        "marks": [],
        "file_bytes": 0,
        "error": None,
    }


def mark(stream: dict, ts: int) -> None:
    """Remember that bytes from the current stream size on arrived at ``ts``.

    Called when a flow's talker changes (request/response turns) so that a
    parsed request can get the time of the segment it started in without a
    timestamp per byte.
    """
    if len(stream["marks"]) < MAX_MARKS and (not stream["marks"] or stream["marks"][-1][0] != stream["size"]):
        stream["marks"].append((stream["size"], ts))


def ts_at(stream: dict, offset: int):
    """Time of the checkpoint at or before ``offset`` (None if there is none)."""
    best = None
    for off, ts in stream["marks"]:
        if off > offset:
            break
        best = ts
    return best


def deliver(stream: dict, data: bytes) -> None:
    """Append in-order bytes to the stream (UDP uses this directly, datagram after datagram)."""
    if not data:
        return
    if len(stream["head"]) < HEAD_BYTES:
        stream["head"] += data[: HEAD_BYTES - len(stream["head"])]
    stream["size"] += len(data)
    if stream["spool"] is not None and stream["error"] is None:
        stream["pending"] += data
        if len(stream["pending"]) >= FLUSH_BYTES:
            flush(stream)


def flush(stream: dict) -> None:
    """Write buffered bytes to the spool file (opened per batch: thousands of flows, few descriptors)."""
    if not stream["pending"] or stream["spool"] is None or stream["error"] is not None:
        return
    try:
        with open(stream["spool"], "ab") as fh:
            fh.write(stream["pending"])
        stream["file_bytes"] += len(stream["pending"])
    except OSError as exc:
        stream["error"] = f"{type(exc).__name__}: {exc.strerror or exc}"
    stream["pending"] = bytearray()


def _unwrap(stream: dict, seq: int) -> int:
    delta = (seq - stream["raw_next"]) % _WRAP
    if delta >= _WRAP // 2:
        delta -= _WRAP
    return stream["next"] + delta


def _set_next(stream: dict, pos: int) -> None:
    stream["next"] = pos
    stream["raw_next"] = (stream["base"] + pos) % _WRAP


def _drain(stream: dict) -> None:
    ooo = stream["ooo"]
    while ooo:
        first = min(ooo)
        if first > stream["next"]:
            return
        data = ooo.pop(first)
        stream["ooo_bytes"] -= len(data)
        end = first + len(data)
        if end > stream["next"]:
            deliver(stream, data[stream["next"] - first :])
            _set_next(stream, end)


def skip_hole(stream: dict) -> bool:
    """Give up on the bytes missing before the earliest buffered segment; False if none wait."""
    if not stream["ooo"]:
        return False
    first = min(stream["ooo"])
    stream["gaps"] += 1
    stream["gap_bytes"] += first - stream["next"]
    _set_next(stream, first)
    _drain(stream)
    return True


def tcp_segment(stream: dict, seq: int, payload: bytes, syn: bool) -> None:
    """Feed one TCP segment of this direction (seq as on the wire, 32-bit)."""
    if stream["next"] is None:
        # the SYN consumes one sequence number; without a SYN we start at the first segment seen
        # position 0 is the byte after the SYN, or the first segment seen without one
        stream["base"] = (seq + 1) % _WRAP if syn else seq
        stream["next"], stream["raw_next"] = 0, stream["base"]
    if not payload:
        return
    start = _unwrap(stream, seq) + (1 if syn else 0)
    end = start + len(payload)
    if end <= stream["next"]:
        stream["retrans"] += 1
        return
    if start < stream["next"]:
        stream["overlap_bytes"] += stream["next"] - start
        payload = payload[stream["next"] - start :]
        start = stream["next"]
    if start == stream["next"]:
        deliver(stream, payload)
        _set_next(stream, end)
        _drain(stream)
        return
    old = stream["ooo"].get(start)
    if old is None or len(old) < len(payload):
        stream["ooo"][start] = bytes(payload)
        stream["ooo_bytes"] += len(payload) - (len(old) if old else 0)
    else:
        stream["retrans"] += 1
    while stream["ooo_bytes"] > OOO_LIMIT and skip_hole(stream):
        pass


def close_stream(stream: dict) -> None:
    """End of flow: skip remaining holes (counted as gaps), flush to disk, free buffers."""
    while skip_hole(stream):
        pass
    flush(stream)
    stream["ooo"] = {}
