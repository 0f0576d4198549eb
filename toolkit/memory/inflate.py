"""Bounded decompression of one block whose inflated size the format fixes.

A qcow2 compressed cluster inflates to one cluster, a kdump page to one block,
a migration COMPRESS page to one page. The compressed bytes are the
attacker's, so the decompressor is never asked for more than that size plus
one byte (to tell "too long" from "exact"): 32 KiB of zstd that would inflate
to 1 GiB costs one cluster here, not a gigabyte.

* zlib / raw deflate: ``decompressobj().decompress(data, max_length)``;
* zstd: a stream reader read up to the limit (``decompress`` would size its
  output from the frame header), with the window capped so a frame cannot
  ask for a large history buffer either;
* snappy: the raw format's length preamble is checked before decoding (the
  decoder allocates what the preamble says);
* LZO1X: the decoder takes the output size (``lzo1x.decompress``).

>>> import zlib
>>> inflate("zlib", zlib.compress(bytes(4096)), 4096) == bytes(4096)
True
>>> inflate("zlib", zlib.compress(bytes(8192)), 4096)
Traceback (most recent call last):
ValueError: zlib data inflates past 4096 bytes
"""

from __future__ import annotations

import io
import zlib

import cramjam
import zstandard

from toolkit.memory import lzo1x

# Largest zstd window a single block may use: a block is at most a 2 MiB qcow2
# cluster, and QEMU/makedumpfile compress each block on its own.
ZSTD_MAX_WINDOW = 1 << 23
CODECS = ("zlib", "deflate", "zstd", "lzo", "snappy")


def inflate(codec: str, data: bytes, size: int, *, allow_longer: bool = False) -> bytes:
    """Exactly ``size`` bytes from one compressed block, else ValueError.

    ``allow_longer``: a block that inflates past ``size`` is cut to ``size``
    (qcow2 clusters: QEMU stops at the cluster end) instead of refused.
    Never produces more than ``size + 1`` bytes whatever ``data`` holds.

    >>> inflate("snappy", bytes(cramjam.snappy.compress_raw(b"ab" * 8)), 16)
    b'abababababababab'
    """
    try:
        out = _decode(codec, data, size)
    except (zlib.error, zstandard.ZstdError, cramjam.DecompressionError) as exc:
        raise ValueError(f"{codec} data corrupt: {exc}") from None
    if len(out) > size:
        if not allow_longer:
            raise ValueError(f"{codec} data inflates past {size} bytes")
        out = out[:size]
    if len(out) < size:
        raise ValueError(f"{codec} data inflates to {len(out)} bytes, not {size}")
    return bytes(out)


def _decode(codec, data, size):
    if codec == "zlib":
        return zlib.decompressobj().decompress(data, size + 1)
    if codec == "deflate":
        return zlib.decompressobj(-15).decompress(data, size + 1)
    if codec == "zstd":
        return _zstd(data, size + 1)
    if codec == "lzo":
        return lzo1x.decompress(data, size)
    if codec == "snappy":
        declared = cramjam.snappy.decompress_raw_len(data)
        if declared != size:
            raise ValueError(f"snappy data declares {declared} bytes, not {size}")
        return bytes(cramjam.snappy.decompress_raw(data))
    raise ValueError(f"unknown block codec {codec!r}")


def _zstd(data, limit):
    # One frame: what follows it is the padding of the block's last sector,
    # which the reader reports as a bad frame once the first one has ended.
    reader = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_reader(io.BytesIO(data))
    parts, got = [], 0
    while got < limit:
        try:
            piece = reader.read(limit - got)
        except zstandard.ZstdError:
            if got == limit - 1:  # the frame ended exactly at the block size
                break
            raise
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)
