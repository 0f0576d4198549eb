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


def _convert(*args):
    """``snapscope memory convert`` as the console script runs it (errors: one line, exit 2)."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "toolkit.cli", "memory", "convert", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_convert_never_overwrites_its_source(tmp_path, stream):
    import os

    from toolkit.errors import EvidenceError
    from toolkit.hashing import sha256_file

    src = tmp_path / "vm.save"
    src.write_bytes(W.libvirt_save(stream[0], "zstd"))
    digest = sha256_file(src)
    (tmp_path / "soft.elf").symlink_to(src)
    os.link(src, tmp_path / "hard.elf")
    for dst in (src, tmp_path / "soft.elf", tmp_path / "hard.elf", tmp_path / "." / "vm.save"):
        with pytest.raises(EvidenceError, match="refusing to overwrite evidence"):
            to_elf(src, dst)
        result = _convert(src, dst)  # before the fix: the evidence truncated to an ELF header and a few pages
        assert result.returncode == 2 and result.stderr.startswith("error: ") and "refusing" in result.stderr
        assert sha256_file(src) == digest
    assert not list(tmp_path.glob(".*.part"))


def test_convert_never_overwrites_a_file_it_reads_or_the_cases_evidence(tmp_path, stream):
    from toolkit.case import init_case, save_manifest
    from toolkit.errors import EvidenceError
    from toolkit.hashing import sha256_file

    data, _expect = stream
    overlay = tmp_path / "overlay.qcow2"
    vm_off = W.qcow2(overlay, snapshots=[{"id": "1", "name": "s", "vmstate": data, "skip": {1}}], backing="base.qcow2")
    base = tmp_path / "base.qcow2"
    W.qcow2(base, active={vm_off + PS: data[PS : 2 * PS]})
    digest = sha256_file(base)
    with pytest.raises(EvidenceError, match="is a file this conversion reads"):
        to_elf(overlay, base)  # the backing file the overlay's clusters fall through to
    assert sha256_file(base) == digest
    case = tmp_path / "case"
    manifest = init_case(case)
    other = tmp_path / "other-evidence.elf"
    other.write_bytes(b"evidence of another snapshot")
    manifest["evidence"][str(other)] = {"sha256": sha256_file(other)}
    save_manifest(case, manifest)
    result = _convert(overlay, other, "--case", case)
    assert result.returncode == 2 and "refusing to overwrite evidence" in result.stderr
    assert other.read_bytes() == b"evidence of another snapshot"


def test_convert_with_hostile_diagnostics_logs_custody_then_prints_escaped(tmp_path, stream):
    """Rich markup and escapes in a guest-controlled name reach the terminal escaped, after the custody line."""
    from toolkit.case import custody

    data, _ = stream
    hostile = "[bold red]x[/]\x1b[2J\x07[/nope]"
    overlay = tmp_path / "overlay.qcow2"
    W.qcow2(overlay, snapshots=[{"id": "1", "name": "s", "vmstate": data, "skip": {1}}], backing=f"/gone/{hostile}")
    case = tmp_path / "case"
    result = _convert(overlay, tmp_path / "out.elf", "--case", case)
    assert result.returncode == 0, result.stderr
    assert "backing file not used" in result.stdout and "\\x1b[2J\\x07" in result.stdout
    assert "\x1b" not in result.stdout + result.stderr and "\x07" not in result.stdout + result.stderr
    assert "[bold red]x[/]" in result.stdout  # shown as text: interpreted, rich would style "x" or fail on [/nope]
    events = custody.read_events(case)
    assert events[-1]["action"] == "memory.convert" and events[-1]["detail"]["output_sha256"]
    assert custody.verify(case) == []


def test_convert_into_a_case_never_replaces_its_records_and_waits_for_no_run(tmp_path, stream):
    """--case with a destination inside the case but outside derived/ (case.json, the custody log, a
    table) is refused before a byte is written; under derived/ the core is logged with its sha256;
    while another run holds the case the conversion stops with one line."""
    from toolkit.case import custody, init_case
    from toolkit.case.lock import case_lock
    from toolkit.hashing import sha256_file

    src = tmp_path / "vm.save"
    src.write_bytes(W.libvirt_save(stream[0], "zstd"))
    case = tmp_path / "case"
    init_case(case)
    custody.append_event(case, action="analyze.start")
    before = {p: p.read_bytes() for p in (case / "case.json", case / "custody.jsonl")}
    for dst in (case / "case.json", case / "custody.jsonl", case / "tables" / "x.parquet"):
        result = _convert(src, dst, "--case", case)
        assert result.returncode == 2 and "is inside the case" in result.stderr, result.stderr
    assert {p: p.read_bytes() for p in before} == before
    with case_lock(case):
        result = _convert(src, case / "derived" / "vm.elf", "--case", case)
    assert result.returncode == 2 and "another snapscope run is using this case" in result.stderr
    assert not (case / "derived" / "vm.elf").exists()
    result = _convert(src, case / "derived" / "vm.elf", "--case", case)
    assert result.returncode == 0, result.stderr
    logged = {e["path"]: e["sha256"] for e in custody.read_events(case) if e["action"] == "derived.write"}
    assert logged["derived/vm.elf"] == sha256_file(case / "derived" / "vm.elf")
    assert custody.verify(case) == []
