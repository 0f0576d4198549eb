"""The Volatility adapter on real Volatility objects: TreeGrid flattening, raw
values, offline/cache switches, and a clear error for an image with no kernel."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from toolkit.engines.memory import volatility
from toolkit.errors import VolatilityError


@pytest.fixture(scope="module")
def vol(tmp_path_factory):
    return volatility._framework(tmp_path_factory.mktemp("volcache"))


def test_raw_values(vol):
    hints, renderers = vol["format_hints"], vol["renderers"]
    assert volatility.raw_value(hints.Hex(0xFFFFFFFF81000000)) == 0xFFFFFFFF81000000
    assert type(volatility.raw_value(hints.Hex(5))) is int
    assert volatility.raw_value(renderers.UnreadableValue()) is None
    assert volatility.raw_value(renderers.NotAvailableValue()) is None
    assert volatility.raw_value(hints.HexBytes(b"\x90\x90")) == b"\x90\x90"
    naive = dt.datetime(2024, 5, 1, 12, 0, 0)
    assert volatility.raw_value(naive) == naive.replace(tzinfo=dt.UTC)
    assert volatility.raw_value(True) is True


def test_tree_grid_flattened_with_parents_and_partial_failure(vol):
    renderers, hints = vol["renderers"], vol["format_hints"]

    def generator():
        yield 0, (1, "init", hints.Hex(0x1000))
        yield 1, (2, "sh", hints.Hex(0x2000))
        yield 2, (3, "sleep", renderers.UnreadableValue())
        yield 0, (4, "kthreadd", hints.Hex(0x4000))
        raise RuntimeError("task list damaged")

    grid = renderers.TreeGrid([("PID", int), ("COMM", str), ("Offset", hints.Hex)], generator())
    columns, rows, failure = volatility.grid_rows(grid)
    assert columns == ["PID", "COMM", "Offset"]
    assert [(r["row_id"], r["parent_row_id"]) for r in rows] == [(0, None), (1, 0), (2, 1), (3, None)]
    assert rows[2]["Offset"] is None and rows[3]["Offset"] == 0x4000
    assert isinstance(failure, RuntimeError)


def test_offline_and_cache_redirected(vol, tmp_path):
    constants = vol["constants"]
    volatility._framework(tmp_path)
    assert constants.OFFLINE is True and constants.REMOTE_ISF_URL is None
    assert Path(constants.CACHE_PATH) == tmp_path / "volatility3"
    assert Path(vol["schemas"].cached_validation_filepath).parent == tmp_path / "volatility3"
    assert not any(str(Path.home() / ".cache") in p for p in vol["builtin_symbols"])


def test_image_without_kernel_is_a_clear_error(tmp_path):
    user_cache = Path.home() / ".cache" / "volatility3"
    existed = user_cache.exists()
    junk = tmp_path / "junk.raw"
    junk.write_bytes(b"\x00" * (1 << 20) + b"not a memory image" * 100)
    with pytest.raises(VolatilityError, match="no linux kernel found in junk.raw"):
        volatility.open_session(junk, os_name="linux", cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache" / "volatility3" / "identifier.cache").is_file()
    if not existed:
        assert not user_cache.exists(), "Volatility wrote to the user's cache"


def test_missing_image_and_unknown_os(tmp_path):
    with pytest.raises(VolatilityError, match="not found"):
        volatility.open_session(tmp_path / "nope.elf", os_name="linux", cache_dir=tmp_path)
    with pytest.raises(VolatilityError, match="unsupported guest OS 'mac'"):
        volatility.open_session(tmp_path / "nope.elf", os_name="mac", cache_dir=tmp_path)


def _write_isf(path: Path, base_types) -> Path:
    import json

    path.write_text(
        json.dumps(
            {
                "metadata": {"format": "6.2.0", "producer": {"name": "test", "version": "1"}},
                "base_types": base_types,
                "user_types": {},
                "enums": {},
                "symbols": {},
            }
        )
    )
    return path


def test_isf_validated_once_per_host_not_once_per_case(tmp_path, monkeypatch):
    """A second case (another VM of an audit) takes the host's recorded verdict:
    the ISF is not parsed again, and Volatility's own cache learns the verdict."""
    from toolkit.engines.memory import symbols

    isf = _write_isf(tmp_path / "k.json", {"int": {"kind": "int", "size": 4, "signed": True, "endian": "little"}})
    host = tmp_path / "host"
    assert volatility.prevalidate_isf(isf, "a" * 64, tmp_path / "case1", host_cache=host) is None
    record = (host / "validated-isf.txt").read_text().split()
    assert record[0] == "a" * 64 and record[1] == f"volatility-{volatility.volatility_version()}"

    def no_parsing(path):
        raise AssertionError("the ISF was parsed again")

    monkeypatch.setattr(symbols, "read_isf_bytes", no_parsing)
    vol = volatility._framework(tmp_path / "case2")
    vol["schemas"].cached_validations.discard(record[2])
    assert volatility.prevalidate_isf(isf, "a" * 64, tmp_path / "case2", host_cache=host) is None
    assert record[2] in vol["schemas"].load_cached_validations()  # case2's Volatility cache file


def test_invalid_isf_is_refused_and_not_recorded(tmp_path):
    isf = _write_isf(tmp_path / "bad.json", {"int": {"kind": "no-such-kind", "size": "four"}})
    problem = volatility.prevalidate_isf(isf, "b" * 64, tmp_path / "case", host_cache=tmp_path / "host")
    assert problem and "fails Volatility's schema" in problem
    assert not (tmp_path / "host" / "validated-isf.txt").exists()
