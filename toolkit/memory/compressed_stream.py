"""A bare QEVM stream compressed as a whole (``virsh dump`` full with
``dump_image_format`` = gzip, bzip2, xz, lzop or zstd in qemu.conf).

Detected by the compressor's magic and, where the head is enough to tell, by
the decompressed stream starting with ``QEVM``.

>>> import gzip; detect(gzip.compress(b"QEVM\\0\\0\\0\\3"))
True
"""

from __future__ import annotations

from toolkit.errors import MemoryFormatError
from toolkit.memory import migration_image, streams
from toolkit.memory.image import FileSource


def detect(head):
    codec = streams.codec_of(head)
    if codec is None:
        return False
    first = streams.peek_decompressed(codec, head)
    return first is None or first[:4] == b"QEVM"


def probe(path):
    src = FileSource(path)
    try:
        codec = streams.codec_of(src.pread(0, 16))
        return {"format": "compressed-qemu-migration", "compression": codec, "compressed_bytes": src.size}
    finally:
        src.close()


def open(path, *, derived_dir=None, **_opts):
    """Open a compressed bare QEVM stream (one decompression pass, then indexed).

    >>> with open("dump.qevm.zst", derived_dir="case/derived") as img:  # doctest: +SKIP
    ...     img.info["compression"]
    'zstd'
    """
    src = FileSource(path)
    try:
        codec = streams.codec_of(src.pread(0, 16))
    finally:
        src.close()
    if codec is None:
        raise MemoryFormatError(path, 0, "no known compression magic")
    st = streams.index_compressed(path, 0, codec, derived_dir)
    return migration_image.build_image(
        path, st, fmt="compressed-qemu-migration", info={"compression": codec, "derived": st.get("derived")}
    )
