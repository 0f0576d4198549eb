"""Shared fixtures. `lab` builds (or reuses, in seconds) the real lab guest's
snapshots once per session; tests marked `lab` use it."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _load_builder():
    spec = importlib.util.spec_from_file_location("snapscope_build_lab", REPO / "fixtures" / "build_lab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def lab() -> Path:
    """The lab directory (see fixtures/README.md); built on first use."""
    builder = _load_builder()
    return Path(builder.build_lab(Path(os.environ["SNAPSCOPE_LAB_DIR"]) if os.environ.get("SNAPSCOPE_LAB_DIR") else None))


@pytest.fixture(scope="session")
def ground_truth(lab) -> dict:
    return json.loads((lab / "ground_truth.json").read_text())
