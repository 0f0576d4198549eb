import json
import struct

import pytest
from typer.testing import CliRunner

import toolkit.memory as M
from tests.helpers import memory_writers as W
from tests.helpers.memory_samples import PS, page
from toolkit.cli.memory import app
from toolkit.memory.convert import _coalesce, to_elf
from toolkit.memory.registry import FORMATS


def test_registry_entries_are_documented_and_raw_is_last():
    assert FORMATS[-1]["name"] == "raw"
    for entry in FORMATS:
        assert set(entry) >= {"name", "detect", "probe", "open", "doc", "volatility_native"}
        assert len(entry["doc"]) > 20 and callable(entry["detect"])
        assert ">>>" in (entry["open"].__doc__ or ""), entry["name"]


@pytest.mark.parametrize("kind", ["kdump", "save-zstd", "elf"])
def test_to_elf_roundtrip(tmp_path, stream, kind):
    src = tmp_path / "src"
    if kind == "kdump":
        W.kdump(src, {0: page(0), 1: bytes(PS), 7: page(7)}, 16, comp="zlib", notes=W.qemu_cpu_note(0x9000))
    elif kind == "save-zstd":
        src.write_bytes(W.libvirt_save(stream[0], "zstd"))
    else:
        W.elf_core(src, [(0, page(1), None), (0x100000, page(2) + bytes(PS), None)], notes=W.qemu_cpu_note(0x7000))
    dst = tmp_path / "out.elf"
    r = to_elf(src, dst, derived_dir=tmp_path / "d")
    with M.open_image(src, derived_dir=tmp_path / "d") as a, M.open_image(dst) as b:
        assert b.format == "elf-core" and a.runs == b.runs
        for s, n in a.runs:
            assert a.read(s, n) == b.read(s, n)
        assert b.info.get("cr3", []) == a.info.get("cr3", [])
    assert r["runs"] == len(a.runs) and r["bytes"] == sum(n for _, n in a.runs)
    import hashlib

    assert r["dst_sha256"] == hashlib.sha256(dst.read_bytes()).hexdigest()
    assert r["src_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    raw = dst.read_bytes()
    assert raw[16:20] == struct.pack("<HH", 4, 62)  # ET_CORE, EM_X86_64


def test_output_opens_in_volatility_elf_layer(tmp_path, stream):
    from volatility3.framework import contexts
    from volatility3.framework.layers import elf, physical

    src = tmp_path / "s.qevm"
    src.write_bytes(stream[0])
    dst = tmp_path / "o.elf"
    to_elf(src, dst)
    ctx = contexts.Context()
    ctx.config["base.location"] = dst.as_uri()
    ctx.add_layer(physical.FileLayer(ctx, "base", "base"))
    ctx.config["elf.base_layer"] = "base"
    layer = elf.Elf64Layer(ctx, "elf", "elf")
    assert layer.read(PS, PS) == stream[1][PS : 2 * PS]


def test_coalesce_keeps_segment_count_below_pn_xnum():
    runs = [(i * 2 * PS, PS) for i in range(100)]
    assert len(_coalesce(runs, limit=10)) <= 10
    assert _coalesce(runs, limit=1000) == runs


def test_cli_info_and_convert_with_custody(tmp_path, stream):
    src = tmp_path / "vm.save"
    src.write_bytes(W.libvirt_save(stream[0], "xz"))
    runner = CliRunner()
    res = runner.invoke(app, ["info", str(src), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["compression"] == "xz"
    case = tmp_path / "case"
    case.mkdir()
    res = runner.invoke(app, ["convert", str(src), str(tmp_path / "vm.elf"), "--case", str(case)])
    assert res.exit_code == 0, res.output
    events = [json.loads(line) for line in (case / "custody.jsonl").read_text().splitlines()]
    assert events[-1]["action"] == "memory.convert" and events[-1]["detail"]["output_sha256"]
    assert list((case / "derived").glob("vm.save.*.pages"))
    res = runner.invoke(app, ["convert", str(tmp_path / "missing"), str(tmp_path / "x.elf")])
    assert res.exit_code == 2 and "cannot open" in res.output


def test_cli_help_has_examples():
    runner = CliRunner()
    for cmd in (["--help"], ["info", "--help"], ["convert", "--help"]):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 0 and "Example" in res.output
