"""The real Debian server lab for tests (fixtures/server/README.md), opt-in by cost (~20 min and ~10 GB
a variant to build): with SNAPSCOPE_SERVER_LAB unset, a test that needs a variant runs on it if it is
already built for this checkout's fixtures/ (the default `./scripts/test` then runs the server tests
from the cache) and is skipped, with the reason in pytest's summary, if it is not.
SNAPSCOPE_SERVER_LAB=1 builds (or reuses) it; SNAPSCOPE_SERVER_LAB=0 skips the group even when built."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SERVER_LAB_ENV = "SNAPSCOPE_SERVER_LAB"


def server_lab(variant: str) -> Path:
    """The variant's lab directory (honours $SNAPSCOPE_LAB_DIR), or the test is skipped (see above)."""
    from toolkit.lab import build_server_lab, cached_server_lab

    setting = os.environ.get(SERVER_LAB_ENV, "").strip()
    if setting == "0":
        pytest.skip(f"server lab tests: {SERVER_LAB_ENV}=0")
    if setting:
        return build_server_lab(variant)
    lab = cached_server_lab(variant)
    if lab is None:
        pytest.skip(
            f"server lab ({variant}) not built for this checkout and {SERVER_LAB_ENV} unset: set "
            f"{SERVER_LAB_ENV}=1 to build it (~20 min, ~10 GB) or run `python fixtures/build_server_lab.py "
            f"--variant {variant}`"
        )
    return lab
