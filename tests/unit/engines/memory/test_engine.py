"""The memory engine's contract on inputs that hold no kernel: clear
diagnostics, the memory/info row, schema-valid tables, never an exception.
(Real guests are covered by tests/lab/test_memory_lab.py.)"""

from __future__ import annotations

import os

from tests.helpers.contexts import engine_context
from toolkit import schemas
from toolkit.engines import memory


def ctx(tmp_path, profile="linux-triage"):
    return engine_context(tmp_path, profile, symbols_cache=tmp_path / "isf")


def _valid(tables):
    for name, df in tables.items():
        schemas.validate(name, df)


def test_snapshot_without_memory(tmp_path):
    tables = memory.run({"id": "disk-only", "memory": None}, ctx(tmp_path, "linux-triage"))
    _valid(tables)
    assert tables["diagnostics"].iloc[0]["why"] == "snapshot has no memory artefact"
    assert tables["memory/info"].iloc[0]["profile"] == "linux-triage"
    assert tables["memory/plugin_runs"].empty


def test_missing_memory_file(tmp_path):
    tables = memory.run(
        {"id": "gone", "memory": {"path": str(tmp_path / "gone.elf"), "format": "elf-core", "snapshot": None}},
        ctx(tmp_path, "linux-triage"),
    )
    _valid(tables)
    assert (tables["diagnostics"]["why"] == "file not found").any()


def test_no_linux_kernel(tmp_path):
    junk = tmp_path / "junk.raw"
    junk.write_bytes(os.urandom(1 << 20))
    tables = memory.run({"id": "junk", "memory": str(junk)}, ctx(tmp_path, "linux-triage"))
    _valid(tables)
    errors = tables["diagnostics"][tables["diagnostics"]["severity"] == "error"]
    assert errors["why"].str.contains("no Linux kernel banner").any()
    assert tables["memory/info"].iloc[0]["os"] == "linux"


def test_no_windows_kernel(tmp_path):
    """Windows profiles run offline: with no kernel (and no symbol pack) the
    answer is a diagnostic, not a download attempt or a traceback."""
    junk = tmp_path / "junk.raw"
    junk.write_bytes(b"\x7fELF" + bytes(1 << 20))  # ELF magic: opened as is, not converted
    tables = memory.run({"id": "win", "memory": str(junk)}, ctx(tmp_path, "windows-triage"))
    _valid(tables)
    errors = tables["diagnostics"][tables["diagnostics"]["severity"] == "error"]
    assert errors["why"].str.contains("no windows kernel found").any(), errors.to_dict("records")
    assert list(memory.process_regions({"id": "win", "memory": str(junk)}, ctx(tmp_path, "windows-triage"))) == []
