"""LZO1X decompression for kdump-lzo pages and lzop streams.

python-lzo is not a dependency; dissect.util ships a native (Rust, lzokay)
LZO1X decompressor. On malformed input that decompressor can *panic*, which
pyo3 surfaces as ``PanicException`` — a BaseException, so an ordinary
``except Exception`` would let it escape (found by the fuzz tests). This
wrapper turns every decoding failure into ValueError.

>>> decompress(b"\\x01abcd\\x11\\x00\\x00", 4)
b'abcd'
"""

from __future__ import annotations

from dissect.util.compression import lzo as _lzo


def decompress(data, out_len):
    """Decompress one LZO1X block that must produce exactly ``out_len`` bytes."""
    try:
        out = _lzo.decompress(bytes(data), False, out_len)
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - includes pyo3's PanicException
        raise ValueError(f"LZO1X data corrupt ({type(exc).__name__})") from None
    if len(out) != out_len:
        raise ValueError(f"LZO1X data decodes to {len(out)} bytes, not {out_len}")
    return bytes(out)
