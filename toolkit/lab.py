"""Find and run the lab builder that lives in the source tree's fixtures/.

The lab is a test and demo asset, not part of the installed library: it is
only available from a source checkout (snapscope is installed editable by
scripts/setup).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from toolkit.errors import SnapscopeError

REPO = Path(__file__).resolve().parent.parent
BUILDER = REPO / "fixtures" / "build_lab.py"


def load_builder():
    if not BUILDER.is_file():
        raise SnapscopeError(f"{BUILDER}: lab builder not found (the demo needs a snapscope source checkout)")
    spec = importlib.util.spec_from_file_location("snapscope_build_lab", BUILDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_lab(progress=None, force: bool = False) -> Path:
    """Build (or reuse) the lab; return its directory. Honours $SNAPSCOPE_LAB_DIR."""
    root = Path(os.environ["SNAPSCOPE_LAB_DIR"]) if os.environ.get("SNAPSCOPE_LAB_DIR") else None
    return Path(load_builder().build_lab(root, force=force, progress=progress))


def build_fleet(progress=None, force: bool = False) -> Path:
    """Build (or reuse) the fleet lab (linked clones of one base image, for batch audits); return its
    directory. Honours $SNAPSCOPE_LAB_DIR."""
    root = Path(os.environ["SNAPSCOPE_LAB_DIR"]) if os.environ.get("SNAPSCOPE_LAB_DIR") else None
    return Path(load_builder().build_fleet(root, force=force, progress=progress))


def demo_evidence(lab_dir: Path) -> list[Path]:
    """The lab's main snapshot: the plain-QEMU run's ELF dump, its disk overlay
    (the base image is found through the backing chain) and its packet capture."""
    qemu = Path(lab_dir) / "qemu"
    return [qemu / "memory.elf", qemu / "disk.qcow2", qemu / "net.pcap"]
