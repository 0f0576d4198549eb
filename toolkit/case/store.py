"""The case store: manifest, tables and atomic writes, and the read-side API.

Every write is atomic (temporary file in the same directory, fsync, rename),
so a crash or Ctrl-C never leaves a half-written table or manifest.

Example::

    manifest = init_case(Path("case"))
    write_table(Path("case"), "diagnostics", "lab", df)
    Case.open("case").table("diagnostics")
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from pathlib import Path

import pandas as pd

from toolkit.case.lock import file_lock
from toolkit.errors import CaseError
from toolkit.schemas import SCHEMAS, validate

CASE_FORMAT = "snapscope-case/1"
SUBDIRS = ("tables", "derived", "reports")
# Also kept as one file across snapshots at the top of the case, for tools that
# want a single Parquet file; tables/ stays the source of truth.
COMBINED_TABLES = {"findings": "findings.parquet", "timeline": "timeline.parquet"}
# Guards case.json's read-modify-write of the custody chain head against a save of the whole manifest.
MANIFEST_LOCK = ".manifest.lock"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_parquet(path: Path, df: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def same_file(a, b) -> bool:
    """True when ``a`` and ``b`` name one file: the same real path (symbolic links resolved) or the same
    device and inode (a hard link). Example: ``same_file("vm.save", "link-to-vm.save")``."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def refuse_output_over_case(case_dir: Path, out: Path, *, allowed: str = "reports") -> None:
    """CaseError when writing ``out`` would replace the case's evidence or the case's own records.

    A report or export goes outside the case or under its ``allowed``
    subdirectory (``reports/``; ``derived/`` for a converted memory image):
    anywhere else inside the case it would overwrite case.json, the custody
    log or a table, and a path that is (a link to) an evidence file the case
    recorded would replace the evidence.

    Example: ``refuse_output_over_case(Path("case"), Path("case/case.json"))`` raises CaseError.
    """
    case_dir, out = Path(case_dir), Path(out)
    for evidence in load_manifest(case_dir).get("evidence") or {}:
        if same_file(out, evidence):
            raise CaseError(
                f"{out}: is the case's evidence ({evidence}), or a link to it; refusing to overwrite evidence"
            )
    real_case, real_out = Path(os.path.realpath(case_dir)), Path(os.path.realpath(out))
    if real_out.is_relative_to(real_case) and not real_out.is_relative_to(real_case / allowed):
        raise CaseError(
            f"{out}: is inside the case, where it would replace the case's own records; "
            f"write it outside the case or under {case_dir / allowed}"
        )


def table_path(case_dir: Path, name: str, snapshot_id: str) -> Path:
    return case_dir / "tables" / name / f"{snapshot_id}.parquet"


def is_case(path: Path) -> bool:
    return (Path(path) / "case.json").is_file()


def init_case(case_dir: Path) -> dict:
    """Create the case layout (or load an existing one) and return the manifest."""
    case_dir = Path(case_dir)
    if case_dir.exists() and not case_dir.is_dir():
        raise CaseError(f"{case_dir}: exists and is not a directory")
    if case_dir.is_dir() and any(case_dir.iterdir()) and not is_case(case_dir):
        raise CaseError(f"{case_dir}: directory is not empty and is not a snapscope case")
    for sub in SUBDIRS:
        (case_dir / sub).mkdir(parents=True, exist_ok=True)
    if is_case(case_dir):
        return load_manifest(case_dir)
    manifest = {"format": CASE_FORMAT, "created": now_iso(), "snapshots": {}, "evidence": {}, "tools": {}, "runs": []}
    save_manifest(case_dir, manifest)
    return manifest


def load_manifest(case_dir: Path) -> dict:
    try:
        manifest = json.loads((Path(case_dir) / "case.json").read_text())
    except FileNotFoundError:
        raise CaseError(f"{case_dir}: not a snapscope case (no case.json)") from None
    except json.JSONDecodeError as exc:
        raise CaseError(f"{case_dir}/case.json: corrupt manifest ({exc.msg} at line {exc.lineno})") from None
    if manifest.get("format") != CASE_FORMAT:
        raise CaseError(f"{case_dir}/case.json: unknown case format {manifest.get('format')!r}")
    return manifest


def manifest_path(case_dir: Path) -> Path:
    return Path(case_dir) / "case.json"


def _write_manifest(case_dir: Path, manifest: dict) -> None:
    atomic_write_bytes(manifest_path(case_dir), json.dumps(manifest, indent=2, sort_keys=True, default=str).encode())


def save_manifest(case_dir: Path, manifest: dict) -> None:
    """Write case.json atomically, keeping the custody chain head that is on disk.

    Only toolkit.case.custody moves the head (with every append); a run's
    manifest held in memory since its start must not put an older head back.
    """
    with file_lock(Path(case_dir) / MANIFEST_LOCK):
        head = read_custody_head(case_dir)
        if head is not None:
            manifest["custody"] = head
        _write_manifest(case_dir, manifest)


def read_custody_head(case_dir: Path) -> dict | None:
    """The custody chain head case.json records ({"seq", "hash"}), or None (no case.json or no head)."""
    try:
        manifest = json.loads(manifest_path(case_dir).read_text())
    except (FileNotFoundError, ValueError):
        return None
    head = manifest.get("custody") if isinstance(manifest, dict) else None
    return head if isinstance(head, dict) else None


def set_custody_head(case_dir: Path, head: dict) -> None:
    """Record the custody chain head in case.json (custody.append_event calls it under the log's lock)."""
    with file_lock(Path(case_dir) / MANIFEST_LOCK):
        manifest = load_manifest(case_dir)
        manifest["custody"] = head
        _write_manifest(case_dir, manifest)


def write_table(case_dir: Path, name: str, snapshot_id: str, df: pd.DataFrame) -> Path:
    """Validate against the declared schema, then write atomically."""
    if name in SCHEMAS:
        validate(name, df)
    path = table_path(Path(case_dir), name, snapshot_id)
    atomic_write_parquet(path, df)
    return path


def write_combined_tables(case_dir: Path) -> None:
    """Refresh findings.parquet / timeline.parquet from every snapshot's rows."""
    case = Case.open(case_dir)
    for name, file_name in COMBINED_TABLES.items():
        if name in case.tables():
            atomic_write_parquet(Path(case_dir) / file_name, case.table(name))


class Case:
    """Read-side API over a case directory, for notebooks and renderers."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.manifest = load_manifest(self.path)

    @classmethod
    def open(cls, path) -> Case:
        """Open an existing case: ``Case.open("case/")``."""
        return cls(Path(path))

    @property
    def snapshots(self) -> dict:
        return self.manifest.get("snapshots", {})

    def tables(self) -> list[str]:
        """Names of the tables present in the case, e.g. ``['memory/processes', ...]``."""
        root = self.path / "tables"
        return sorted({str(p.parent.relative_to(root)) for p in root.rglob("*.parquet")})

    def _files(self, name: str) -> list[Path]:
        return sorted((self.path / "tables" / name).glob("*.parquet"))

    def table(self, name: str, snapshot: str | None = None) -> pd.DataFrame:
        """One table across all snapshots (or one), as a DataFrame with its declared dtypes."""
        files = self._files(name)
        frames = [pd.read_parquet(f) for f in files]
        if snapshot is not None:
            frames = [f[f["snapshot_id"] == snapshot] for f in frames]
        frames = [f for f in frames if len(f)]
        if not frames:
            if name in SCHEMAS:
                from toolkit.schemas import empty

                return empty(name)
            if not files:
                raise KeyError(f"no table {name!r} in case {self.path} (have: {', '.join(self.tables())})")
            return pd.read_parquet(files[0]).iloc[0:0]
        return pd.concat(frames, ignore_index=True)

    @property
    def findings(self) -> pd.DataFrame:
        return self.table("findings")

    @property
    def timeline(self) -> pd.DataFrame:
        return self.table("timeline")

    @property
    def diagnostics(self) -> pd.DataFrame:
        return self.table("diagnostics")

    def sql(self, query: str, *, allow_files: bool = False) -> pd.DataFrame:
        """Run DuckDB SQL; each declared table is a view named with '_' for '/'.

        Read-only and confined to the case unless ``allow_files`` (see toolkit.case.query).
        Example: ``case.sql("SELECT count(*) FROM memory_processes")``.
        """
        from toolkit.case.query import run_sql

        return run_sql(self.path, query, allow_files=allow_files)
