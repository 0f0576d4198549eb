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
SERVER_BUILDER = REPO / "fixtures" / "build_server_lab.py"


def load_builder(path: Path = BUILDER, name: str = "snapscope_build_lab"):
    if not path.is_file():
        raise SnapscopeError(f"{path}: lab builder not found (the lab needs a snapscope source checkout)")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _root() -> Path | None:
    return Path(os.environ["SNAPSCOPE_LAB_DIR"]) if os.environ.get("SNAPSCOPE_LAB_DIR") else None


def build_lab(progress=None, force: bool = False) -> Path:
    """Build (or reuse) the lab; return its directory. Honours $SNAPSCOPE_LAB_DIR."""
    return Path(load_builder().build_lab(_root(), force=force, progress=progress))


def build_server_lab(variant: str = "baseline", progress=None, force: bool = False) -> Path:
    """Build (or reuse) the real Debian server lab of one variant (baseline | intrusion | scale; see
    fixtures/server/README.md); return its directory. Honours $SNAPSCOPE_LAB_DIR.

    Example: ``json.loads((build_server_lab("baseline") / "ground_truth.json").read_text())["variant"]``
    """
    builder = load_builder(SERVER_BUILDER, "snapscope_build_server_lab")
    return Path(builder.build_server_lab(_root(), variant=variant, force=force, progress=progress))


def cached_server_lab(variant: str = "baseline") -> Path | None:
    """The server lab of this checkout's fixtures/ if it is built (its ground_truth.json is there), else
    None; never builds. The directory is the one build_server_lab would return (same keys, same root).

    Example: ``cached_server_lab("baseline") or build_server_lab("baseline")``
    """
    builder = load_builder(SERVER_BUILDER, "snapscope_build_server_lab")
    rootfs, image, build, shared = (builder._load_package(m) for m in ("rootfs", "image", "build", "shared"))
    root = _root() or shared.cache.default_root()
    lab = root / f"server-{variant}-{build.lab_key(image.image_key(rootfs.rootfs_key()), variant)}"
    return lab if (lab / "ground_truth.json").is_file() else None


def build_fleet(progress=None, force: bool = False) -> Path:
    """Build (or reuse) the fleet lab (linked clones of one base image, for batch audits); return its
    directory. Honours $SNAPSCOPE_LAB_DIR."""
    return Path(load_builder().build_fleet(_root(), force=force, progress=progress))


def demo_evidence(lab_dir: Path) -> list[Path]:
    """The lab's main snapshot: the plain-QEMU run's ELF dump, its disk overlay
    (the base image is found through the backing chain) and its packet capture."""
    qemu = Path(lab_dir) / "qemu"
    return [qemu / "memory.elf", qemu / "disk.qcow2", qemu / "net.pcap"]
