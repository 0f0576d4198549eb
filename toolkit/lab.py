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
