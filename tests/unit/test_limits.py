"""The ceilings registry (toolkit/limits.py): every entry documented, read from its variable."""

from __future__ import annotations

import pytest

from toolkit import limits
from toolkit.errors import SnapscopeError


@pytest.mark.parametrize("name", sorted(limits.LIMITS))
def test_every_ceiling_is_documented_with_its_variable_and_default(name):
    entry = limits.LIMITS[name]
    assert entry["env"] == "SNAPSCOPE_" + name.upper()
    line = next(x for x in limits.__doc__.split("\n- ")[1:] if x.startswith(f"``{name}``"))
    written = line.split(",")[2].split(":")[0].strip()
    assert limits.parse_size(written) == entry["default"], (name, written)


def test_environment_overrides_and_refuses_garbage(monkeypatch):
    monkeypatch.setenv("SNAPSCOPE_MAX_RUNS", "2K")
    assert limits.limit("max_runs") == 2048
    monkeypatch.setenv("SNAPSCOPE_MAX_RUNS", "lots")
    with pytest.raises(SnapscopeError, match=r"SNAPSCOPE_MAX_RUNS='lots' is not a size"):
        limits.limit("max_runs")
    monkeypatch.setenv("SNAPSCOPE_MAX_RUNS", "")
    assert limits.limit("max_runs") == 1 << 20
