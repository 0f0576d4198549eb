"""Analysis profiles: which memory plugins, disk functions and YARA targets to run.

A profile is a TOML file in ``profiles/`` (format: ``profiles/README.md``).
``load_profile`` parses it, fills defaults and validates it, so a typo in a
plugin name fails at once, naming the plugin, before any evidence is opened.

Example::

    profile = load_profile("linux-triage")
    [p["name"] for p in profile["memory"]["plugins"]][:2]
    # ['linux.pslist.PsList', 'linux.psscan.PsScan']
"""

from __future__ import annotations

import copy
import importlib.util
import re
import tomllib
from pathlib import Path

from toolkit.engines.disk.functions import DEFAULT_FUNCTIONS, expand_functions
from toolkit.errors import DiskError, ProfileError
from toolkit.shipped import PROFILES

PROFILES_DIR = PROFILES

# Collectors snapscope runs itself inside the Volatility context (no plugin
# prints what they need); a profile lists them like plugins.
SNAPSCOPE_COLLECTORS = {"snapscope.executables": "ELF header, build-id and first-page sha256 of each process image"}

DEFAULT_PROFILE = "linux-triage"
OSES = ("linux", "windows")
YARA_ENGINES = ("yara-x", "yara-python")

# [disk] is read by toolkit/engines/disk/, [yara] by toolkit/engines/yara/;
# the defaults here are theirs, so a profile without those sections changes nothing.
DEFAULTS = {
    "profile": {"name": "", "os": "linux", "description": ""},
    "memory": {"plugins": []},
    "disk": {
        "functions": list(DEFAULT_FUNCTIONS),
        "hash": {"max_size": 64 * 1024 * 1024, "paths": [], "executables": True},
    },
    "yara": {"rule_dirs": [], "engine": "yara-x", "max_file_size": 512 * 1024 * 1024},
}


def available_profiles() -> list[str]:
    """Names of the shipped profiles, e.g. ['linux-full', 'linux-triage', ...]."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def load_profile(name_or_path: str | Path) -> dict:
    """Read, default-fill and validate a profile by name or path.

    Example::

        load_profile("profiles/linux-full.toml")["profile"]["os"]   # 'linux'
    """
    path = Path(name_or_path)
    if not (path.suffix == ".toml" or path.exists()):
        path = PROFILES_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise ProfileError(
            f"profile {str(name_or_path)!r} not found; shipped profiles: {', '.join(available_profiles())}"
        )
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as excp:
        raise ProfileError(f"{path}: not valid TOML: {excp}") from None
    profile = _merge(copy.deepcopy(DEFAULTS), raw)
    profile["profile"]["name"] = profile["profile"]["name"] or path.stem
    profile["profile"]["path"] = str(path.resolve())
    for plugin in profile["memory"]["plugins"]:
        if isinstance(plugin, dict):
            plugin.setdefault("options", {})
    validate_profile(profile)
    return profile


def merge_defaults(partial: dict) -> dict:
    """A partial profile dict (say, only a ``disk`` section) completed with DEFAULTS, for notebooks and tests.

    Example: ``merge_defaults({"disk": {"functions": ["users"]}})["yara"]["engine"]``  -> ``'yara-x'``
    """
    return _merge(copy.deepcopy(DEFAULTS), copy.deepcopy(partial))


def _merge(base: dict, override: dict) -> dict:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def validate_profile(profile: dict) -> None:
    """Raise ProfileError for the first problem found; return None if usable.

    Plugin names are checked against Volatility's installed plugin sources
    without importing Volatility (importing it is slow and touches caches).

    Example::

        validate_profile({"profile": {"os": "linux"},
                          "memory": {"plugins": [{"name": "linux.nosuch.Plugin"}]}})
        # ProfileError: unknown memory plugin 'linux.nosuch.Plugin' ...
    """
    unknown_sections = set(profile) - set(DEFAULTS)
    if unknown_sections:
        raise ProfileError(f"unknown profile section(s): {sorted(unknown_sections)}; expected {sorted(DEFAULTS)}")
    os_name = profile.get("profile", {}).get("os")
    if os_name not in OSES:
        raise ProfileError(f"[profile] os = {os_name!r}: expected one of {list(OSES)}")
    plugins = profile.get("memory", {}).get("plugins", [])
    if not isinstance(plugins, list):
        raise ProfileError("[memory] plugins must be a list of {name=..., options={...}}")
    for entry in plugins:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ProfileError(f'[memory] plugin entry {entry!r}: needs name = "os.module.Class"')
        name = entry["name"]
        if not isinstance(entry.get("options", {}), dict):
            raise ProfileError(f"[memory] plugin {name!r}: options must be a table")
        if name.startswith("snapscope."):
            if name not in SNAPSCOPE_COLLECTORS:
                raise ProfileError(f"unknown snapscope collector {name!r}; known: {sorted(SNAPSCOPE_COLLECTORS)}")
            continue
        first = name.split(".", 1)[0]
        if first in ("linux", "windows", "mac") and first != os_name:
            raise ProfileError(f"memory plugin {name!r} is for {first}, but the profile's os is {os_name}")
        if not volatility_plugin_exists(name):
            raise ProfileError(
                f"unknown memory plugin {name!r}: no such Volatility 3 plugin "
                "(spell it module.path.Class, e.g. linux.pslist.PsList)"
            )
    _validate_disk(profile.get("disk", {}))
    yara = profile.get("yara", {})
    if not all(isinstance(d, str) for d in yara.get("rule_dirs", [])):
        raise ProfileError("[yara] rule_dirs must be a list of paths")
    if yara.get("engine", "yara-x") not in YARA_ENGINES:
        raise ProfileError(f"[yara] engine = {yara.get('engine')!r}: expected one of {list(YARA_ENGINES)}")
    for key in ("max_file_size", "chunk_size", "overlap"):
        if key in yara and (not isinstance(yara[key], int) or yara[key] <= 0):
            raise ProfileError(f"[yara] {key} must be a positive integer (bytes), got {yara[key]!r}")


def _validate_disk(disk: dict) -> None:
    functions = disk.get("functions", [])
    if not isinstance(functions, list) or not all(isinstance(f, str) for f in functions):
        raise ProfileError("[disk] functions must be a list of strings")
    hash_cfg = disk.get("hash", {})
    if not isinstance(hash_cfg.get("max_size"), int) or hash_cfg["max_size"] <= 0:
        raise ProfileError(f"[disk.hash] max_size must be a positive integer (bytes), got {hash_cfg.get('max_size')!r}")
    if not all(isinstance(p, str) for p in hash_cfg.get("paths", [])):
        raise ProfileError("[disk.hash] paths must be a list of strings")
    if functions:
        # The disk engine's own check (it knows dissect's functions and its groups),
        # run here so a typo fails before the memory engine has spent minutes.
        try:
            expand_functions(functions)
        except DiskError as excp:
            raise ProfileError(f"[disk] {excp}") from None


def _plugin_roots() -> list[Path]:
    spec = importlib.util.find_spec("volatility3")
    if spec is None or not spec.submodule_search_locations:
        return []
    package = Path(list(spec.submodule_search_locations)[0])
    return [package / "plugins", package / "framework" / "plugins"]


def volatility_plugin_exists(name: str) -> bool:
    """True when ``name`` ('linux.pslist.PsList') names a class in Volatility's plugin sources."""
    parts = name.split(".")
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        return False
    *modules, cls = parts
    pattern = re.compile(rf"^class {re.escape(cls)}\b", re.M)
    for root in _plugin_roots():
        for candidate in (root.joinpath(*modules).with_suffix(".py"), root.joinpath(*modules, "__init__.py")):
            if candidate.is_file() and pattern.search(candidate.read_text(errors="replace")):
                return True
    return False
