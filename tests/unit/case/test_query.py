"""`snapscope sql` over a case: read-only, blind to the host's files, immune to crafted table names."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.synthetic_case import write_case
from toolkit.case import Case
from toolkit.errors import QueryError

SNAPSCOPE = [sys.executable, "-m", "toolkit.cli"]
REPO = Path(__file__).resolve().parents[3]


def _sql(case_dir, query, *extra, cwd=None):
    # from another working directory this checkout must still be the toolkit imported
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [*SNAPSCOPE, "sql", str(case_dir), query, *extra], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )


@pytest.fixture
def case_dir(tmp_path):
    return write_case(tmp_path / "case")


def test_queries_over_the_declared_tables_still_work(case_dir):
    out = Case.open(case_dir).sql("SELECT process FROM memory_processes WHERE exe_deleted")
    assert list(out["process"]) == ["kworker/0:2H"]
    joined = Case.open(case_dir).sql(
        "SELECT p.process, s.dst_port FROM memory_processes p JOIN memory_sockets s USING (pid) ORDER BY s.dst_port"
    )
    assert list(joined.itertuples(index=False, name=None)) == [("labsvc", 0), ("kworker/0:2H", 8443)]


def test_a_crafted_table_directory_name_is_not_sql(case_dir, tmp_path):
    """Before: the directory name went into CREATE VIEW "<name>" and a quote in it ran its own statements
    (here a COPY that wrote pwned.csv into the working directory)."""
    name = "x\" AS SELECT 1; COPY (SELECT 'pwned') TO 'pwned.csv'; CREATE VIEW \"y"
    crafted = case_dir / "tables" / name
    crafted.mkdir(parents=True)
    shutil.copy(next((case_dir / "tables" / "findings").glob("*.parquet")), crafted / "s1.parquet")
    result = _sql(case_dir, "SELECT count(*) AS n FROM memory_processes", "--format", "csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["n", "4"]
    assert not (tmp_path / "pwned.csv").exists()
    assert "is not a declared table; it is not a SQL view" in result.stderr


@pytest.mark.parametrize(
    "query",
    [
        "COPY (SELECT 1 AS a) TO '{target}'",
        "SELECT 1; COPY (SELECT 1 AS a) TO '{target}'",
        "COPY (SELECT 1 AS a) TO '{table}' (FORMAT parquet, USE_TMP_FILE false)",
        "EXPORT DATABASE '{tmp}/export'",
        "ATTACH '{tmp}/other.duckdb' AS other",
        "SET enable_external_access = true",
        "INSTALL httpfs",
    ],
)
def test_statements_that_write_are_refused(case_dir, tmp_path, query):
    table = next((case_dir / "tables" / "memory" / "processes").glob("*.parquet"))
    before = table.read_bytes()
    query = query.format(target=tmp_path / "out.csv", table=table, tmp=tmp_path)
    with pytest.raises(QueryError, match="only SELECT and EXPLAIN run over a case"):
        Case.open(case_dir).sql(query)
    result = _sql(case_dir, query)
    assert result.returncode == 2 and result.stderr.startswith("error: only SELECT and EXPLAIN"), result.stderr
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "export").exists()
    assert not (tmp_path / "other.duckdb").exists()
    assert table.read_bytes() == before


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM read_parquet('{table}')",  # even the case's own files: only through the views
    ],
)
def test_host_files_cannot_be_read(case_dir, query):
    table = next((case_dir / "tables" / "memory" / "processes").glob("*.parquet"))
    result = _sql(case_dir, query.format(table=table))
    assert result.returncode == 2 and "SQL error: Permission Error" in result.stderr, result.stderr
    assert "root:" not in result.stdout


def test_allow_files_lets_the_analyst_export(case_dir, tmp_path):
    target = tmp_path / "procs.csv"
    result = _sql(case_dir, f"COPY (SELECT pid, process FROM memory_processes) TO '{target}'", "--allow-files")
    assert result.returncode == 0, result.stderr
    assert target.read_text().splitlines()[0] == "pid,process"
