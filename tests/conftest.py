"""Shared fixtures. `lab` builds (or reuses, in seconds) the real lab guest's
snapshots once per session, `fleet` the fleet of its linked clones; tests
marked `lab` use them."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

# Keep every engine's caches (Volatility's among them) out of the user's home during
# tests; snapscope's own ISF and lab caches stay where they are, keyed by content.
os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="snapscope-test-xdg-"))

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def lab() -> Path:
    """The lab directory (see fixtures/README.md); built on first use, honours $SNAPSCOPE_LAB_DIR."""
    from toolkit.lab import build_lab

    return build_lab()


@pytest.fixture(scope="session")
def fleet() -> Path:
    """The fleet lab directory (linked clones: infected, clean, one corrupt; see fixtures/README.md);
    built on first use, honours $SNAPSCOPE_LAB_DIR."""
    from toolkit.lab import build_fleet

    return build_fleet()


@pytest.fixture(scope="session")
def ground_truth(lab) -> dict:
    return json.loads((lab / "ground_truth.json").read_text())


@pytest.fixture(scope="session")
def lab_case(lab, tmp_path_factory):
    """The lab's main snapshot (ELF dump + disk chain + pcap) analysed once per session, default profile.

    Yields (case_dir, evidence hashes taken by the test itself before analysis).
    """
    from toolkit.hashing import sha256_file
    from toolkit.lab import demo_evidence
    from toolkit.pipeline import analyze

    evidence = sorted(p for p in (lab / "qemu").rglob("*") if p.is_file())
    before = {p: sha256_file(p) for p in evidence}
    case_dir = tmp_path_factory.mktemp("labcase") / "case"
    analyze(demo_evidence(lab), case_dir)
    return case_dir, before
