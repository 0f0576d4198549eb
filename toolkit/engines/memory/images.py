"""Memory artefacts opened once per process, shared by Volatility's layer, the session and YARA.

Example::

    image = shared_image("memory.kdump")
    image.format, image.runs[:1]
"""

from __future__ import annotations

import threading
from pathlib import Path

from toolkit.memory import open_image

# Formats Volatility reads natively and well: left to it.
NATIVE = {"elf-core", "raw", "lime"}
SNAPSHOT_SETTING = "snapscope.memory.snapshot"
DERIVED_SETTING = "snapscope.memory.derived_dir"

# Images opened for layers, shared by the layer Volatility builds while stacking and the one it rebuilds
# from the configuration (and by the YARA reader): one index per artefact, a few artefacts per process.
# KEEP_OPEN exceeds the memory sessions kept (session.KEEP_SESSIONS): an image is closed only after
# every session reading it is gone.
_OPEN: dict[tuple, object] = {}
KEEP_OPEN = 3
_LOCK = threading.Lock()


def shared_image(path, snapshot: str | None = None, derived_dir: str | None = None, references=None):
    """The artefact's MemoryImage, opened once per process (the oldest beyond KEEP_OPEN closed).

    ``references`` (toolkit.references.ReferencePolicy) says where a qcow2's backing files may be
    read from; an image reopened without it (by Volatility's layer) may read beside the file only.

    Example: ``shared_image("memory.kdump").read(0x100000, 16)``
    """
    key = (str(Path(path).resolve()), snapshot or None)
    with _LOCK:
        if key not in _OPEN:
            while len(_OPEN) >= KEEP_OPEN:
                _OPEN.pop(next(iter(_OPEN))).close()
            _OPEN[key] = open_image(
                path, snapshot=snapshot or None, derived_dir=derived_dir or None, references=references
            )
        return _OPEN[key]
