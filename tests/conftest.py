"""Shared fixtures. `lab` builds (or reuses, in seconds) the real lab guest's
snapshots once per session, `fleet` the fleet of its linked clones; tests
marked `lab` use them."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import pytest

from tests.helpers.server_lab import server_lab

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


# --- the real Debian server guest (fixtures/server/README.md): tests marked `lab` and `server`;
# built ones are reused, unbuilt ones skipped unless SNAPSCOPE_SERVER_LAB=1 (tests/helpers/server_lab.py)


@pytest.fixture(scope="session")
def server_baseline() -> Path:
    """The clean server lab (2 GiB Debian 12 guest, QEMU and libvirt runs): reused if built, else
    built when SNAPSCOPE_SERVER_LAB=1, else the test is skipped; honours $SNAPSCOPE_LAB_DIR."""
    return server_lab("baseline")


@pytest.fixture(scope="session")
def server_intrusion() -> Path:
    """The server lab with the intrusion hook's techniques planted (fixtures/server/scenario.py); as
    server_baseline."""
    return server_lab("intrusion")


@pytest.fixture(scope="session")
def server_truth(server_baseline) -> dict:
    return json.loads((server_baseline / "ground_truth.json").read_text())


@pytest.fixture(scope="session")
def server_case(server_baseline, tmp_path_factory):
    """The clean server's QEMU run (ELF dump + disk overlay + pcap) analysed once per session, the
    ELF's snapshot only: the overlay also holds the `savevm` state (a second snapshot of the same
    moment), whose RAM tests/lab/test_server_formats_lab.py proves page-identical to the ELF's, so
    analysing it too would double the time and prove nothing more. Profile: server_profile below.
    Yields (case_dir, evidence hashes taken before analysis).
    """
    from toolkit.evidence import discover
    from toolkit.hashing import sha256_file
    from toolkit.lab import demo_evidence
    from toolkit.pipeline import run_snapshots
    from toolkit.snapshot import RunOptions

    inputs = demo_evidence(server_baseline)
    evidence = [*inputs, server_baseline / "qemu" / "base.qcow2"]  # + the overlay's base
    before = {p: sha256_file(p) for p in evidence}
    elf = [s for s in discover(inputs) if str((s.get("memory") or {}).get("path", "")).endswith("memory.elf")]
    assert len(elf) == 1, elf
    case_dir = tmp_path_factory.mktemp("servercase") / "case"
    options = RunOptions.of(profile=server_profile(tmp_path_factory.mktemp("profile")))
    run_snapshots(elf, case_dir, options, kind="analyze", inputs=inputs)
    return case_dir, before


def server_profile(directory: Path) -> Path:
    """linux-triage as shipped, plus the disk functions a server needs checked: logs and packages."""
    from toolkit.profiles import PROFILES_DIR

    text = (PROFILES_DIR / "linux-triage.toml").read_text()
    text, n = re.subn(r"^functions = \[(.*)\]$", r'functions = [\1, "logs", "packages", "groups"]', text, flags=re.M)
    assert n == 1, "linux-triage's [disk] functions line changed: update server_profile"
    text = text.replace('name = "linux-triage"', 'name = "server-lab"')
    path = directory / "server-lab.toml"
    path.write_text(text)
    return path
