import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from toolkit import case as case_store
from toolkit.errors import CaseError
from toolkit.schemas import make_table


def test_write_and_read_tables(tmp_path):
    case_store.init_case(tmp_path / "c")
    for sid in ("a", "b"):
        df = make_table(
            "diagnostics",
            [{"severity": "warning", "what": "x", "where": sid, "why": "y"}],
            snapshot_id=sid,
            source="test",
        )
        case_store.write_table(tmp_path / "c", "diagnostics", sid, df)
    case = case_store.Case.open(tmp_path / "c")
    assert case.tables() == ["diagnostics"]
    assert sorted(case.table("diagnostics")["snapshot_id"]) == ["a", "b"]
    assert list(case.table("diagnostics", snapshot="b")["where"]) == ["b"]
    out = case.sql("SELECT count(*) AS n FROM diagnostics WHERE severity = 'warning'")
    assert int(out["n"][0]) == 2


def test_schema_violation_is_refused(tmp_path):
    case_store.init_case(tmp_path / "c")
    with pytest.raises(ValueError):
        case_store.write_table(tmp_path / "c", "diagnostics", "a", pd.DataFrame({"what": ["x"]}))


def test_non_case_directory_refused(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "file.txt").write_text("x")
    with pytest.raises(CaseError, match="not a snapscope case"):
        case_store.init_case(tmp_path / "stuff")
    with pytest.raises(CaseError):
        case_store.Case.open(tmp_path / "stuff")


def test_killed_writer_leaves_no_partial_table(tmp_path):
    """SIGKILL while a big table is being written: the old file stays whole, the temp file is no table."""
    target = tmp_path / "c"
    case_store.init_case(target)
    small = make_table(
        "diagnostics", [{"severity": "info", "what": "old", "where": "", "why": ""}], snapshot_id="s", source="t"
    )
    case_store.write_table(target, "diagnostics", "s", small)
    folder = target / "tables" / "diagnostics"
    code = (
        "import pathlib; from toolkit.case import write_table; from toolkit.schemas import make_table\n"
        "rows=[{'severity':'info','what':'x'*200,'where':str(i),'why':''} for i in range(400000)]\n"
        "df=make_table('diagnostics', rows, snapshot_id='s', source='t')\n"
        f"write_table(pathlib.Path({str(target)!r}), 'diagnostics', 's', df)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    # kill the writer once its temporary file exists: the kill lands mid-write, not before it
    deadline = time.monotonic() + 120
    while not list(folder.glob(".*.tmp")):
        assert proc.poll() is None, "the writer finished before the kill: the test proved nothing"
        assert time.monotonic() < deadline
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(folder.glob(".*.tmp")), "the temporary file is left, as a kill leaves it"
    df = case_store.Case.open(target).table("diagnostics")
    assert list(df["what"]) == ["old"]  # the old table, whole; the torn temp file is never read as a table


def test_64bit_addresses_survive_missing_values():
    from toolkit.schemas import SCHEMAS, UINT, declare

    if "test/addresses" not in SCHEMAS:
        declare("test/addresses", {"address": UINT}, doc="test only")
    df = make_table("test/addresses", [{"address": 0xFFFFFFFF81000001}, {"address": None}], snapshot_id="s", source="t")
    assert df["address"][0] == 0xFFFFFFFF81000001 and df["address"].isna()[1]


def test_a_planted_lock_file_is_refused_not_followed(tmp_path):
    """A case copied from elsewhere whose .lock links out of it (the old open(path, "a") created the
    link's target on the host) or is a FIFO (opening it blocked the run forever): one clear CaseError."""
    from toolkit.case.lock import LOCK_NAME, case_lock

    case_dir = tmp_path / "case"
    case_store.init_case(case_dir)
    outside = tmp_path / "made-on-the-host"
    (case_dir / LOCK_NAME).symlink_to(outside)
    with pytest.raises(CaseError, match="cannot be used as a lock file"), case_lock(case_dir):
        pass
    assert not outside.exists()
    (case_dir / LOCK_NAME).unlink()
    os.mkfifo(case_dir / LOCK_NAME)
    with pytest.raises(CaseError, match="lock file"), case_lock(case_dir):
        pass
