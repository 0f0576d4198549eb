"""Find and run the lab builder that lives in the source tree's fixtures/.

The lab is a test and demo asset, not part of the installed library: it is
only available from a source checkout (snapscope is installed editable by
scripts/setup).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from toolkit.case import init_case, is_case, load_manifest, save_manifest
from toolkit.errors import CaseError, SnapscopeError

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


# What a demo case holds: anything else in the directory is the user's, and the directory is kept.
DEMO_CASE_ENTRIES = {
    "case.json",
    "custody.jsonl",
    "tables",
    "derived",
    "reports",
    "findings.parquet",
    "timeline.parquet",
    "seal.json",
    ".lock",
    ".manifest.lock",
}


def prepare_demo_case(case_dir: Path, *, check_only: bool = False) -> None:
    """Make ``case_dir`` an empty demo case, replacing only a demo case snapscope made.

    A case is replaced only when its case.json carries the ``demo`` marker this
    function writes and it holds nothing but a case's own files; any other
    case, or a directory with anything else in it, raises CaseError and is
    left as it is. ``check_only`` refuses without changing anything.

    Example: ``prepare_demo_case(Path("snapscope-demo-case"))``
    """
    case_dir = Path(case_dir)
    if case_dir.is_symlink():
        raise CaseError(f"{case_dir}: is a symbolic link; refusing to use it as the demo case")
    if is_case(case_dir):
        foreign = sorted(
            p.name for p in case_dir.iterdir() if p.name not in DEMO_CASE_ENTRIES and not p.name.startswith("custody.")
        )
        if load_manifest(case_dir).get("demo") is not True or foreign:
            why = f"it also holds {', '.join(foreign[:3])}" if foreign else "it is not a demo case snapscope made"
            raise CaseError(f"{case_dir}: {why}; refusing to replace it (choose another --case)")
        if check_only:
            return
        shutil.rmtree(case_dir)
    elif case_dir.exists() and (not case_dir.is_dir() or any(case_dir.iterdir())):
        raise CaseError(f"{case_dir}: exists and is not an empty directory or a demo case; choose another --case")
    if check_only:
        return
    manifest = init_case(case_dir)
    manifest["demo"] = True
    save_manifest(case_dir, manifest)
