"""The memory engine's contract on inputs that hold no kernel: clear
diagnostics, the memory/info row, schema-valid tables, never an exception.
(Real guests are covered by tests/lab/test_memory_lab.py.)"""
from __future__ import annotations

import os

import pytest

from toolkit import schemas
from toolkit.engines import volatility
from toolkit.profiles import load_profile


@pytest.fixture
def ctx(tmp_path):
    return {"cache_dir": tmp_path / "cache", "derived_dir": tmp_path / "derived", "symbols_cache": tmp_path / "isf"}


def _valid(tables):
    for name, df in tables.items():
        schemas.validate(name, df)


def test_snapshot_without_memory(ctx):
    tables = volatility.run({"id": "disk-only", "memory": None}, dict(ctx, profile=load_profile("linux-triage")))
    _valid(tables)
    assert tables["diagnostics"].iloc[0]["why"] == "snapshot has no memory artefact"
    assert tables["memory/info"].iloc[0]["profile"] == "linux-triage"
    assert tables["memory/plugin_runs"].empty


def test_missing_memory_file(ctx, tmp_path):
    tables = volatility.run({"id": "gone", "memory": {"path": str(tmp_path / "gone.elf"), "format": "elf-core",
                                                      "snapshot": None}},
                            dict(ctx, profile=load_profile("linux-triage")))
    _valid(tables)
    assert (tables["diagnostics"]["why"] == "file not found").any()


def test_no_linux_kernel(ctx, tmp_path):
    junk = tmp_path / "junk.raw"
    junk.write_bytes(os.urandom(1 << 20))
    tables = volatility.run({"id": "junk", "memory": str(junk)}, dict(ctx, profile=load_profile("linux-triage")))
    _valid(tables)
    errors = tables["diagnostics"][tables["diagnostics"]["severity"] == "error"]
    assert errors["why"].str.contains("no Linux kernel banner").any()
    assert tables["memory/info"].iloc[0]["os"] == "linux"


def test_no_windows_kernel(ctx, tmp_path):
    """Windows profiles run offline: with no kernel (and no symbol pack) the
    answer is a diagnostic, not a download attempt or a traceback."""
    junk = tmp_path / "junk.raw"
    junk.write_bytes(b"\x7fELF" + bytes(1 << 20))   # ELF magic: opened as is, not converted
    tables = volatility.run({"id": "win", "memory": str(junk)}, dict(ctx, profile=load_profile("windows-triage")))
    _valid(tables)
    errors = tables["diagnostics"][tables["diagnostics"]["severity"] == "error"]
    assert errors["why"].str.contains("no windows kernel found").any(), errors.to_dict("records")
    assert list(volatility.process_regions({"id": "win", "memory": str(junk)},
                                           dict(ctx, profile=load_profile("windows-triage")))) == []
