"""snapscope's memory readers as a Volatility layer: every format read in place.

Volatility opens ELF cores and raw images itself. For the other formats
libvirt and QEMU write (kdump, QEMU migration streams, libvirt saves, the VM
state inside a qcow2 internal snapshot, compressed dumps) snapscope has its
own readers (``toolkit.memory``). :class:`SnapscopeStacker` puts
:class:`SnapscopeLayer` on top of Volatility's FileLayer for those formats, so
Volatility's Intel and Linux stackers build on guest-physical memory read
straight from the evidence file: no converted copy of the RAM in the case.

The stacker reads two context settings the memory session sets before the
automagic runs (they travel into the layer's own configuration, so
Volatility can rebuild the layer from it): ``snapscope.memory.snapshot`` (the
qcow2 internal snapshot to read) and ``snapscope.memory.derived_dir`` (where a
compressed stream's page index may go).

Example::

    context.config["snapscope.memory.snapshot"] = "before-upgrade"
    context.config["automagic.LayerStacker.single_location"] = Path("disk.qcow2").as_uri()
    # ... the LayerStacker automagic now stacks SnapscopeLayer, then Intel32e, ...
"""

from __future__ import annotations

import bisect
from pathlib import Path
from urllib.parse import unquote, urlparse

from volatility3.framework import exceptions, interfaces
from volatility3.framework.configuration import requirements

from toolkit.engines.memory.images import DERIVED_SETTING, NATIVE, SNAPSHOT_SETTING, shared_image
from toolkit.errors import MemoryFormatError
from toolkit.memory import detect


def file_of(layer) -> Path | None:
    """The local file behind a Volatility FileLayer (its ``location`` URI), or None."""
    location = layer.config.get("location") if hasattr(layer, "config") else None
    if not location or not str(location).startswith("file:"):
        return None
    return Path(unquote(urlparse(str(location)).path))


class SnapscopeLayer(interfaces.layers.DataLayerInterface):
    """Guest-physical memory of one artefact, read through ``toolkit.memory.open_image``.

    Reads outside the artefact's known ranges raise InvalidAddressException
    (zero-filled with ``pad``), like Volatility's own segmented layers; a
    scan visits only the known ranges.
    """

    def __init__(self, context, config_path: str, name: str, metadata=None) -> None:
        super().__init__(context, config_path, name, metadata)
        path = file_of(context.layers[self.config["base_layer"]])
        if path is None:
            raise exceptions.LayerException(name, "base layer is not a local file")
        self._image = shared_image(path, self.config.get("snapshot"), self.config.get("derived_dir"))
        self._runs = list(self._image.runs)
        self._starts = [start for start, _length in self._runs]

    @property
    def image(self):
        """The MemoryImage behind this layer (its format, facts and diagnostics)."""
        return self._image

    @property
    def maximum_address(self) -> int:
        return max(self._image.size - 1, 0)

    @property
    def minimum_address(self) -> int:
        return 0

    def _covered(self, offset: int, length: int) -> bool:
        i = bisect.bisect_right(self._starts, offset) - 1
        if i < 0:
            return False
        start, size = self._runs[i]
        return offset + length <= start + size  # runs are merged: one run must hold the whole span

    def is_valid(self, offset: int, length: int = 1) -> bool:
        if length <= 0:
            raise ValueError("Length must be positive")
        return self._covered(offset, length)

    def read(self, offset: int, length: int, pad: bool = False) -> bytes:
        if not pad and not self._covered(offset, length):
            raise exceptions.InvalidAddressException(self.name, offset, "address not in the memory artefact")
        try:
            return self._image.read(offset, length)
        except MemoryFormatError as excp:  # a damaged page: Volatility treats it like an unreadable address
            if pad:
                return bytes(length)
            raise exceptions.InvalidAddressException(self.name, offset, str(excp)) from None

    def write(self, offset: int, data: bytes) -> None:
        raise exceptions.LayerException(self.name, "evidence is read-only")

    def destroy(self) -> None:
        pass  # the image is shared (shared_image) and closed when it ages out

    @property
    def dependencies(self) -> list[str]:
        return [self.config["base_layer"]]

    def _scan_iterator(self, scanner, sections):
        """Only the ranges the artefact holds data in: a kdump of 8 GiB with 2 GiB of data
        scans 2 GiB, and pages known to be zero (a stream may declare a terabyte of them)
        are not scanned at all."""
        for section_start, section_length in sections:
            section_end = section_start + section_length
            for run_start, run_length in self._image.data_runs:
                start, end = max(section_start, run_start), min(section_end, run_start + run_length)
                while start < end:
                    size = min(end - start, scanner.chunk_size + scanner.overlap)
                    yield [(self.name, start, size)], start + size
                    start += size if size <= scanner.chunk_size else scanner.chunk_size

    @classmethod
    def get_requirements(cls):
        return [
            requirements.TranslationLayerRequirement(name="base_layer", optional=False),
            requirements.StringRequirement(name="snapshot", optional=True, default=""),
            requirements.StringRequirement(name="derived_dir", optional=True, default=""),
        ]


class SnapscopeStacker(interfaces.automagic.StackerLayerInterface):
    """Stacks :class:`SnapscopeLayer` on a file in a format snapscope reads and Volatility does not."""

    stack_order = 5  # before Volatility's ELF (10) and QEVM stackers: QEMU streams are ours too

    @classmethod
    def stack(cls, context, layer_name: str, progress_callback=None):
        path = file_of(context.layers[layer_name])
        if path is None:
            return None
        try:
            fmt = detect(path)["name"]
        except MemoryFormatError:
            return None
        if fmt in NATIVE:
            return None
        new_name = context.layers.free_layer_name("SnapscopeLayer")
        settings = {
            "base_layer": layer_name,
            "snapshot": context.config.get(SNAPSHOT_SETTING, ""),
            "derived_dir": context.config.get(DERIVED_SETTING, ""),
        }
        for key, value in settings.items():
            context.config[interfaces.configuration.path_join(new_name, key)] = str(value or "")
        return SnapscopeLayer(context, new_name, new_name)
