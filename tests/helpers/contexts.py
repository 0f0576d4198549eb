"""An EngineContext for engine tests: its own derived dir under ``work``."""

from __future__ import annotations

from pathlib import Path

from toolkit.engines import EngineContext
from toolkit.profiles import load_profile, merge_defaults


def engine_context(work: Path, profile="linux-triage", *, snapshot_id: str = "test", **fields) -> EngineContext:
    """``EngineContext`` with ``work/derived`` (and the given ``cache_dir``, else none);
    ``profile`` a name, a path or a parsed dict (a partial dict is filled with the defaults).

    Example: ``ctx = engine_context(tmp_path, "windows-triage", symbols=(isf_dir,))``
    """
    parsed = load_profile(profile) if isinstance(profile, (str, Path)) else merge_defaults(profile)
    fields.setdefault("derived_dir", Path(work) / "derived")
    for key in ("derived_dir", "cache_dir"):
        if fields.get(key) is not None:
            Path(fields[key]).mkdir(parents=True, exist_ok=True)
    return EngineContext(snapshot_id=snapshot_id, profile=parsed, **fields)
