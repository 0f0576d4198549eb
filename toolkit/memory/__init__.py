"""Memory artefacts of libvirt/QEMU guests as one guest-physical address space.

>>> import toolkit.memory as mem
>>> with mem.open_image("vm.save", derived_dir="case/derived") as img:  # doctest: +SKIP
...     img.format, img.runs[:1], img.read(0x1000, 8)
"""

from __future__ import annotations

import os

from toolkit.errors import MemoryFormatError
from toolkit.memory.image import MemoryImage

__all__ = ["MemoryFormatError", "MemoryImage", "detect", "open_image", "probe"]


def _head(path):
    try:
        with open(path, "rb") as fh:
            from toolkit.memory.registry import HEAD_SIZE

            return fh.read(HEAD_SIZE)
    except IsADirectoryError:
        raise MemoryFormatError(path, 0, "is a directory, not a memory file") from None
    except OSError as exc:
        raise MemoryFormatError(path, 0, f"cannot open: {exc.strerror}") from None


def detect(path):
    """The registry entry whose detector accepts the file's head (raw last).

    >>> detect("guest.elf")["name"]  # doctest: +SKIP
    'elf-core'
    """
    from toolkit.memory.registry import FORMATS

    head = _head(path)
    return next(f for f in FORMATS if f["detect"](head))


def probe(path):
    """Facts about a memory artefact without building its address space, or
    None when nothing but the raw fallback matches (then it is not evidence
    we can vouch for as memory).

    >>> probe("vm.save")["compression"]  # doctest: +SKIP
    'zstd'
    """
    entry = detect(path)
    if entry["name"] == "raw":
        return None
    return _guard(path, entry["probe"], path)


def open_image(path, *, snapshot=None, derived_dir=None, format=None, references=None):
    """Open any supported memory artefact as a MemoryImage, detected by content.

    ``snapshot`` names a qcow2 internal snapshot (name or id); ``derived_dir``
    receives decompressed stream indexes; ``format`` forces a registry entry;
    ``references`` (a :class:`toolkit.references.ReferencePolicy`) says where a
    qcow2's backing files may be read from (default: beside ``path`` only).

    >>> with open_image("guest.kdump") as img:  # doctest: +SKIP
    ...     img.read(0x100000, 16)
    """
    from toolkit.memory.registry import BY_NAME

    path = os.fspath(path)
    entry = BY_NAME[format] if format else detect(path)
    opts = {"derived_dir": derived_dir}
    if entry["name"] == "qcow2-snapshot":
        opts.update(snapshot=snapshot, references=references)
    return _guard(path, entry["open"], path, **opts)


def _guard(path, fn, *args, **kwargs):
    # Any failure a reader did not anticipate still names the file: callers
    # see MemoryFormatError, never a struct/numpy/codec traceback.
    try:
        return fn(*args, **kwargs)
    except MemoryFormatError:
        raise
    except OSError as exc:
        raise MemoryFormatError(path, "I/O", f"{exc.strerror or exc}") from exc
    except (
        ValueError,
        struct_error(),
        IndexError,
        KeyError,
        OverflowError,
        MemoryError,
        UnicodeError,
        EOFError,
    ) as exc:
        raise MemoryFormatError(path, "unknown offset", f"malformed input ({type(exc).__name__}: {exc})") from exc


def struct_error():
    import struct

    return struct.error
