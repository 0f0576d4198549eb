"""`snapscope symbols` commands (toolkit/cli/symbols.py) on small real-format files."""

from __future__ import annotations

import base64
import json

from typer.testing import CliRunner

from toolkit.cli.symbols import app

BANNER = "Linux version 6.1.0-99-test (builder@example) (gcc 12) #1 SMP Debian 6.1.1-1 (2024-01-01)\n"


def test_list_shows_user_isf_with_banner(tmp_path, monkeypatch):
    monkeypatch.setenv("SNAPSCOPE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "isf").mkdir()
    (tmp_path / "isf" / "k.json").write_text(
        json.dumps(
            {
                "symbols": {
                    "linux_banner": {"address": 1, "constant_data": base64.b64encode(BANNER.encode() + b"\0").decode()}
                }
            }
        )
    )
    result = CliRunner().invoke(app, ["list", "--symbols", str(tmp_path / "isf"), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["origin"], r["banner"]) for r in rows if r["origin"] == "user"] == [("user", BANNER)]


def test_build_refuses_non_linux_image(tmp_path):
    junk = tmp_path / "junk.raw"
    junk.write_bytes(bytes(1 << 16))
    result = CliRunner().invoke(app, ["build", str(junk), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "no Linux kernel banner" in result.output
    result = CliRunner().invoke(app, ["build", str(tmp_path / "nope.elf")])
    assert result.exit_code == 2 and "no such file" in result.output
