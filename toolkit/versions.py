"""Versions of snapscope and of the engines it drives."""

from __future__ import annotations

from importlib import metadata

__version__ = "0.1.0"  # the package's version (pyproject.toml reads it from here)
ENGINE_DISTRIBUTIONS = ("volatility3", "dissect.target", "yara-python", "yara-x", "pakunoda", "dpkt", "pandas")


def distribution_versions(names) -> dict:
    """{distribution: installed version or None}. Example: ``distribution_versions(["yara-x"])``"""
    versions = {}
    for dist in names:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def tool_versions() -> dict:
    """Versions of snapscope and the engines it drives (for case.json and --version).

    Example: ``tool_versions()["volatility3"]``  -> ``'2.26.2'``
    """
    return {"snapscope": __version__, **distribution_versions(ENGINE_DISTRIBUTIONS)}
