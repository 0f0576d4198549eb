"""Walk every registry: entries documented, schemas consistent (the design's contract)."""
import importlib

from toolkit import schemas
from toolkit.correlate.rules import RULES
from toolkit.engines import ENGINES
from toolkit.memory.registry import FORMATS

VALID_DTYPES = {schemas.STRING, schemas.INT, schemas.UINT, schemas.FLOAT, schemas.BOOL, schemas.TIME, schemas.BYTES}


def test_every_table_is_documented_and_typed():
    for name, schema in schemas.SCHEMAS.items():
        assert schema["doc"], name
        assert "/" in name or name in {"diagnostics", "evidence", "findings", "timeline"}, name
        assert set(schema["columns"].values()) <= VALID_DTYPES, name
        assert list(schema["columns"])[-2:] == ["snapshot_id", "source"], name
        schemas.validate(name, schemas.empty(name))


def test_a_column_name_means_one_dtype_everywhere():
    # Correlation joins on names: pid, path, sha256, src_ip, ... must agree across tables.
    seen = {}
    for name, schema in schemas.SCHEMAS.items():
        for col, dtype in schema["columns"].items():
            seen.setdefault(col, {}).setdefault(dtype, []).append(name)
    conflicts = {col: by for col, by in seen.items() if len(by) > 1}
    assert not conflicts, conflicts


def test_engines_resolve_to_run_functions():
    for name, entry in ENGINES.items():
        assert entry["doc"], name
        module = importlib.import_module(entry["module"])
        assert callable(module.run), name


def test_memory_formats_are_complete():
    names = [f["name"] for f in FORMATS]
    assert names[-1] == "raw", "raw (always matches) must be tried last"
    for fmt in FORMATS:
        assert fmt["doc"] and callable(fmt["detect"]) and callable(fmt["open"]), fmt["name"]


def test_correlation_rules_documented():
    for rule_id, rule in RULES.items():
        assert rule["title"] and rule["fn"].__doc__ is None or rule["title"], rule_id
        assert rule["severity"] in {"info", "low", "medium", "high", "critical"}, rule_id
