"""Profiles: shipped files load, and every mistake fails before any work, naming itself."""

from __future__ import annotations

import pytest

from toolkit.errors import ProfileError
from toolkit.profiles import DEFAULTS, available_profiles, load_profile, validate_profile, volatility_plugin_exists


def test_shipped_profiles_load_and_validate():
    names = available_profiles()
    assert {"linux-triage", "linux-full", "windows-triage", "windows-full"} <= set(names)
    for name in names:
        profile = load_profile(name)
        assert profile["profile"]["name"] == name
        assert profile["profile"]["os"] in ("linux", "windows")
        assert all(isinstance(p["options"], dict) for p in profile["memory"]["plugins"])


def test_linux_triage_has_at_least_eight_volatility_plugins():
    plugins = [p["name"] for p in load_profile("linux-triage")["memory"]["plugins"]]
    assert len([p for p in plugins if p.startswith("linux.")]) >= 8
    assert plugins[:2] == ["linux.pslist.PsList", "linux.psscan.PsScan"]


def _profile(plugins, os_name="linux", **sections):
    base = {
        "profile": {"os": os_name},
        "memory": {"plugins": plugins},
        "disk": DEFAULTS["disk"],
        "yara": DEFAULTS["yara"],
    }
    base.update(sections)
    return base


def test_unknown_plugin_is_named():
    with pytest.raises(ProfileError, match=r"unknown memory plugin 'linux\.nosuch\.Plugin'"):
        validate_profile(_profile([{"name": "linux.pslist.PsList"}, {"name": "linux.nosuch.Plugin"}]))


def test_wrong_class_in_existing_module_is_unknown():
    with pytest.raises(ProfileError, match="linux.pslist.PsLits"):
        validate_profile(_profile([{"name": "linux.pslist.PsLits"}]))


def test_plugin_for_another_os_is_refused():
    with pytest.raises(ProfileError, match="is for windows"):
        validate_profile(_profile([{"name": "windows.pslist.PsList"}]))


def test_unknown_snapscope_collector_and_bad_options():
    with pytest.raises(ProfileError, match="snapscope.nothing"):
        validate_profile(_profile([{"name": "snapscope.nothing"}]))
    with pytest.raises(ProfileError, match="options must be a table"):
        validate_profile(_profile([{"name": "linux.pslist.PsList", "options": [1]}]))


def test_bad_sections_and_values():
    with pytest.raises(ProfileError, match="unknown profile section"):
        validate_profile({**_profile([]), "memroy": {}})
    with pytest.raises(ProfileError, match="max_size"):
        validate_profile(_profile([], disk={"functions": [], "hash": {"max_size": -1, "paths": []}}))
    with pytest.raises(ProfileError, match="engine = 'clamav'"):
        validate_profile(_profile([], yara={"rule_dirs": [], "engine": "clamav"}))
    with pytest.raises(ProfileError, match="chunk_size"):
        validate_profile(_profile([], yara={"chunk_size": 0}))
    with pytest.raises(ProfileError, match="nosuchfunction"):
        validate_profile(_profile([], disk={"functions": ["users", "nosuchfunction"], "hash": {"max_size": 1}}))
    with pytest.raises(ProfileError, match="os = 'macos'"):
        validate_profile(_profile([], os_name="macos"))


def test_load_by_path_fills_defaults(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[profile]\nos = "linux"\n[memory]\nplugins = [{name = "linux.lsmod.Lsmod", options = {}}]\n')
    profile = load_profile(path)
    assert profile["profile"]["name"] == "mine"
    assert profile["disk"]["hash"]["max_size"] == DEFAULTS["disk"]["hash"]["max_size"]
    assert profile["yara"]["engine"] == "yara-x" and profile["disk"]["functions"] == DEFAULTS["disk"]["functions"]


def test_unknown_plugin_in_file_fails_at_load(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text('[profile]\nos = "linux"\n[memory]\nplugins = [{name = "linux.pslst.PsList"}]\n')
    with pytest.raises(ProfileError, match="linux.pslst.PsList"):
        load_profile(path)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ProfileError, match="not found.*linux-triage"):
        load_profile("no-such-profile")
    bad = tmp_path / "bad.toml"
    bad.write_text("[memory\nplugins = ")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(bad)


def test_plugin_lookup_reads_sources():
    assert volatility_plugin_exists("windows.netscan.NetScan")
    assert volatility_plugin_exists("linux.malware.tty_check.Tty_Check")
    assert not volatility_plugin_exists("linux.pslist")
    assert not volatility_plugin_exists("../etc.passwd")
