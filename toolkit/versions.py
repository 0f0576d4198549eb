"""Versions of snapscope and of the engines it drives."""
from __future__ import annotations

from toolkit import __version__


def tool_versions() -> dict:
    """Versions of snapscope and the engines it drives (for case.json and --version)."""
    from importlib import metadata

    versions = {"snapscope": __version__}
    for dist in ("volatility3", "dissect.target", "yara-python", "yara-x", "pakunoda", "dpkt", "pandas"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions
