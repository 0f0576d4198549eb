"""Shared fixtures. `lab` builds (or reuses, in seconds) the real lab guest's
snapshots once per session; tests marked `lab` use it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def lab() -> Path:
    """The lab directory (see fixtures/README.md); built on first use, honours $SNAPSCOPE_LAB_DIR."""
    from toolkit.lab import build_lab

    return build_lab()


@pytest.fixture(scope="session")
def ground_truth(lab) -> dict:
    return json.loads((lab / "ground_truth.json").read_text())
