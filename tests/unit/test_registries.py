"""Walk every registry: entries documented, schemas consistent (the design's contract)."""

import dataclasses
import importlib

from toolkit import schemas
from toolkit.correlate.rules import RULES
from toolkit.engines import ENGINES, Readers
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
    names = [entry["name"] for entry in ENGINES]
    assert len(set(names)) == len(names)
    for entry in ENGINES:
        assert entry["doc"], entry["name"]
        module = importlib.import_module(entry["module"])
        assert callable(module.run) and module.run.__doc__, entry["name"]
        assert callable(entry["applies"]), entry["name"]


def test_engines_read_only_what_earlier_engines_leave():
    # YARA runs last because it reads what memory, disk and network leave, not because of dict order.
    left: set[str] = set()
    for entry in ENGINES:
        missing = set(entry["reads"]) - left
        assert not missing, f"{entry['name']} reads {sorted(missing)} before any engine leaves it"
        left |= set(entry["leaves"])
    readers = {f.name for f in dataclasses.fields(Readers)} - {"closers"}
    tables = set(schemas.SCHEMAS)
    for entry in ENGINES:
        for item in entry["leaves"]:
            assert item in readers or item in tables, (entry["name"], item)


def test_memory_formats_are_complete():
    names = [f["name"] for f in FORMATS]
    assert names[-1] == "raw", "raw (always matches) must be tried last"
    for fmt in FORMATS:
        assert fmt["doc"] and callable(fmt["detect"]) and callable(fmt["open"]), fmt["name"]


def test_correlation_rules_documented():
    for rule_id, rule in RULES.items():
        assert isinstance(rule["title"], str) and rule["title"].strip(), rule_id
        assert rule["fn"].__doc__ and rule["fn"].__doc__.strip(), f"{rule_id}: its function says what it keys on"
        assert rule["severity"] in schemas.SEVERITIES, rule_id
        assert rule["attack_id"] is None or rule["attack_id"].startswith("T"), rule_id


def test_sigma_views_documented_and_their_fields_exist():
    from toolkit.correlate.sigma.taxonomy import VIEWS
    from toolkit.correlate.sigma.views import build_views

    built = build_views({})
    served = [ls for view in VIEWS.values() for ls in view["logsources"]]
    assert len(served) == len(set(served)), "a log source is served by one view"
    for name, view in VIEWS.items():
        assert view["doc"] and view["logsources"], name
        missing = set(view["fields"].values()) - set(built[name].columns)
        assert not missing, (name, missing)
