"""Every command's output on hostile strings: no raw control or bidi characters reach a terminal or a
report, no rich markup is interpreted (or crashes a command), and each hostile value is shown, escaped.

Inputs are crafted: a case whose tables, snapshot id and manifest hold ANSI escapes, BEL, rich markup,
HTML, a spreadsheet formula and a bidi override; evidence files, directories, a domain name, an ISF
banner and a file inside a disk image named with them. `demo` needs the lab: tests/lab/test_hostile_lab.py.
A command added to the CLI without a recipe here fails test_every_command_is_swept.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import typer.main

from tests.helpers import disk_images
from tests.helpers import memory_writers as W
from tests.helpers.memory_samples import complete_stream
from tests.helpers.pcap_writer import session, write_pcap
from tests.helpers.synthetic_case import implant_tables, write_case
from toolkit.case import Case, load_manifest, save_manifest, write_table
from toolkit.report.escape import csv_safe, html_safe, terminal_safe

REPO = Path(__file__).resolve().parents[3]
ANSI = "\x1b[2Jwipe\x07"
MARKUP = "[bold red]styled[/][/nope]"  # unescaped, rich styles it or fails on the stray closing tag
NAME = "[bold red]styled[blink]"  # the same in a file name, which cannot hold a slash
HTML = "<script>alert(1)</script>"
FORMULA = "=cmd|' /C calc'!A0"
BIDI = "evil\u202etxt.exe"
SID = f"vm-{ANSI}{NAME}"  # a snapshot id is a file name too
# need a live libvirtd (acquire) or the lab build (demo): their output is checked by the lab tests
LAB_ONLY = {("demo",), ("acquire",)}


def json_safe(value: str) -> str:
    return json.dumps(value)[1:-1]


def snapscope(*args, cwd=None):
    # wide: no table cell folded, so each escaped value appears whole; this checkout's toolkit from any cwd
    env = {**os.environ, "COLUMNS": "2000", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "toolkit.cli", *map(str, args)], capture_output=True, timeout=600, env=env, cwd=cwd
    )


def assert_clean(data: bytes, where: str) -> None:
    """No byte or character that can move a cursor, ring, recolour or reorder what a responder reads."""
    bad = sorted({b for b in data if (b < 0x20 and b not in (0x09, 0x0A, 0x0D)) or b == 0x7F})
    assert not bad, f"{where}: raw control bytes {bad}"
    text = data.decode("utf-8", "replace")
    assert not [c for c in text if 0x80 <= ord(c) < 0xA0 or 0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069], (
        f"{where}: raw C1 or bidi characters"
    )
    assert "Traceback" not in text, f"{where}: {text[-2000:]}"


def assert_shown(data: bytes, values, escape, where: str) -> None:
    text = data.decode("utf-8", "replace")
    for value in values:
        assert escape(value) in text, f"{where}: {escape(value)!r} not shown"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Every crafted input, built once."""
    root = tmp_path_factory.mktemp("hostile")
    t = implant_tables()
    t["memory/processes"].loc[3, "process"] = FORMULA
    t["memory/processes"].loc[2, "exe_path"] = f"/tmp/.kw{ANSI}{MARKUP}{HTML}{BIDI} (deleted)"
    extra = [{"path": f"/home/u/{v}", "sha256": "3" * 64} for v in (ANSI, MARKUP, HTML, FORMULA, BIDI)]
    t["disk/files"] = pd.concat([t["disk/files"], pd.DataFrame(extra)], ignore_index=True)
    t["diagnostics"] = pd.DataFrame([{"severity": "warning", "what": MARKUP, "where": ANSI, "why": HTML}])
    case = write_case(root / "case", t, sid=SID)
    findings = Case.open(case).table("findings")
    findings.loc[0, "severity"] = MARKUP  # a crafted case: its severities are text too
    write_table(case, "findings", SID, findings)
    for vm_table in (case / "tables" / "vm" / "findings").glob("*.parquet"):  # what `findings` shows: once per VM
        vm_findings = pd.read_parquet(vm_table)
        vm_findings.loc[0, "severity"] = MARKUP
        write_table(case, "vm/findings", vm_table.stem, vm_findings)
    manifest = load_manifest(case)
    manifest["snapshots"][SID]["name"] = f"{BIDI}{MARKUP}"
    manifest["snapshots"][SID]["tables"] = {"memory/processes": 4}
    manifest["evidence"][f"/gone/{ANSI}{NAME}.elf"] = {"sha256": "0" * 64, "size": 1, "format": "elf-core"}
    save_manifest(case, manifest)

    evidence = root / f"ev-{ANSI}{NAME}"  # discovered as one snapshot: its name comes from here
    evidence.mkdir()
    frames = session("10.0.2.15", 40000, "10.0.2.100", 8443, [(b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK")])
    write_pcap(evidence / f"net-{ANSI}{NAME}.pcap", frames)
    fleet = root / "fleet"
    (fleet / f"vm-{ANSI}{NAME}").mkdir(parents=True)
    write_pcap(fleet / f"vm-{ANSI}{NAME}" / "net.pcap", frames)

    saves = root / "saves"
    saves.mkdir()
    domain = f"<domain type='qemu'><name>web{MARKUP}&lt;script&gt;{BIDI}</name></domain>"
    save = saves / f"web-{ANSI}{NAME}.save"
    save.write_bytes(W.libvirt_save(complete_stream()[0], "zstd", xml=domain))

    isf_dir = root / "isf"
    isf_dir.mkdir()
    banner = f"Linux version 6.1.0 {ANSI}{MARKUP}{HTML}\n".encode() + b"\0"
    isf = {"symbols": {"linux_banner": {"address": 1, "constant_data": base64.b64encode(banner).decode()}}}
    (isf_dir / f"k-{NAME}.json").write_text(json.dumps(isf))
    dump = root / f"dump-{NAME}.raw"
    dump.write_bytes(bytes(4096) + f"Linux version 6.1.0 {MARKUP}{HTML} (gcc)\n".encode() + bytes(8192))

    tree_a = disk_images.write_tree(root / "tree-a", {"etc/hostname": "victim\n"})
    tree_b = disk_images.write_tree(root / "tree-b", {"etc/hostname": "victim\n", f"tmp/{ANSI}{NAME}{HTML}": "x"})
    disk_a = disk_images.to_qcow2(disk_images.make_ext4(tree_a, root / "a.raw", 16), root / f"a-{NAME}.qcow2")
    disk_b = disk_images.to_qcow2(disk_images.make_ext4(tree_b, root / "b.raw", 16), root / "b.qcow2")

    keys = root / f"keys-{NAME}"
    keys.mkdir()
    sigma_rules = root / "sigma"
    sigma_rules.mkdir()
    (sigma_rules / "hostile.yml").write_text(  # a third-party rule: its title is text, its field unknown
        json.dumps(
            {
                "title": f"{ANSI}{MARKUP}{HTML}",
                "id": "0b1c6b5e-0000-4000-8000-000000000001",
                "logsource": {"category": "process_creation", "product": "linux"},
                "detection": {"selection": {"OriginalFileName": "x"}, "condition": "selection"},
                "level": "high",
            }
        )
    )
    return {
        "root": root,
        "case": case,
        "evidence": evidence,
        "fleet": fleet,
        "save": save,
        "isf_dir": isf_dir,
        "dump": dump,
        "disk_a": disk_a,
        "disk_b": disk_b,
        "keys": keys,
        "sigma": sigma_rules,
    }


PATHS = [f"/home/u/{v}" for v in (ANSI, MARKUP, HTML, FORMULA, BIDI)]


def _files_table(h, tmp):
    out = []
    for fmt, escape in (("table", terminal_safe), ("csv", csv_safe), ("json", json_safe)):
        done = snapscope("table", h["case"], "disk/files", "--format", fmt, "--limit", "100")
        out.append(("stdout", done, escape, PATHS + [SID]))
    return out


def _case_table_list(h, tmp):
    return [("stdout", snapscope("table", h["case"]), terminal_safe, [])]


def _processes(h, tmp):
    out = []
    for fmt, escape in (("table", terminal_safe), ("csv", csv_safe), ("json", json_safe)):
        done = snapscope("table", h["case"], "memory/processes", "--format", fmt)
        out.append(("stdout", done, escape, [FORMULA, f"/tmp/.kw{ANSI}{MARKUP}{HTML}{BIDI} (deleted)"]))
    return out


def _diagnostics(h, tmp):
    return [("stdout", snapscope("table", h["case"], "diagnostics"), terminal_safe, [MARKUP, ANSI, HTML])]


def _sql(h, tmp):
    out = []
    for fmt, escape in (("table", terminal_safe), ("csv", csv_safe), ("json", json_safe)):
        done = snapscope("sql", h["case"], "SELECT path, snapshot_id FROM disk_files", "--format", fmt)
        out.append(("stdout", done, escape, PATHS + [SID]))
    return out


def _findings(h, tmp):
    # explanations quote the deleted image's path; the terminal shows the snapshot id too
    path = repr(f"/tmp/.kw{ANSI}{MARKUP}{HTML}{BIDI}")[1:-1]
    return [
        ("stdout", snapscope("findings", h["case"]), terminal_safe, [path, SID, MARKUP.upper()]),
        ("stdout", snapscope("findings", h["case"], "--no-chain"), terminal_safe, [SID]),
        ("stdout", snapscope("findings", h["case"], "--json"), json_safe, [path, SID]),
    ]


def _timeline(h, tmp):
    out = []
    for fmt, escape in (("table", terminal_safe), ("csv", csv_safe), ("json", json_safe)):
        done = snapscope("timeline", h["case"], "--format", fmt, "--limit", "1000")
        out.append(("stdout", done, escape, [SID]))
    return out


def _report(h, tmp):
    out = []
    for fmt, escape, values in (
        ("html", html_safe, [SID]),
        ("json", json_safe, [SID]),
        ("csv", csv_safe, [SID]),
        ("timesketch", json_safe, [SID]),
        ("stix", json_safe, []),
        ("misp", json_safe, []),
        ("parquet", None, []),
    ):
        target = tmp / f"report-{NAME}.{fmt}"
        done = snapscope("report", h["case"], "--format", fmt, "--out", target)
        out.append(("stdout", done, terminal_safe, [str(target)]))
        if escape is not None:
            out.append(("file", target.read_bytes(), escape, values))
    return out


def _correlate(h, tmp):
    case = shutil.copytree(h["case"], tmp / "case")  # correlate rewrites the findings the other recipes read
    return [("stdout", snapscope("correlate", case), terminal_safe, [SID])]


def _sigma(h, tmp):
    case = shutil.copytree(h["case"], tmp / "case")  # sigma writes its matches and findings
    done = snapscope("sigma", case, h["sigma"])
    return [("stdout", done, terminal_safe, [SID, f"{ANSI}{MARKUP}{HTML}"])]


def _case_info(h, tmp):
    return [("stdout", snapscope("case", "info", h["case"]), terminal_safe, [SID, f"{BIDI}{MARKUP}"])]


def _case_verify(h, tmp):
    # the crafted case has no custody log and names an evidence file that is not there: problems, shown escaped
    done = snapscope("case", "verify", h["case"])
    assert done.returncode == 2
    return [("stdout", done, terminal_safe, [f"/gone/{ANSI}{NAME}.elf"]), ("stderr", done, terminal_safe, [])]


def _case_keygen_seal_verify(h, tmp):
    key, pub = h["keys"] / f"{NAME}.key", h["keys"] / f"{NAME}.pub"
    made = snapscope("case", "keygen", "--private", key, "--public", pub)
    case = tmp / f"sealed-{NAME}"
    shutil.copytree(h["case"], case)
    sealed = snapscope("case", "seal", case, "--key", key)
    (case / "reports" / f"{ANSI}<script>.html").write_text("planted")
    checked = snapscope("case", "verify", case, "--pubkey", pub, "--quick")
    assert checked.returncode == 2
    return [
        ("stdout", made, terminal_safe, [str(key), str(pub)]),
        ("stdout", sealed, terminal_safe, [str(case / "seal.json")]),
        ("stdout", checked, terminal_safe, [f"reports/{ANSI}<script>.html: file added since the case was sealed"]),
    ]


def _inspect(h, tmp):
    name = f"net-{ANSI}{NAME}.pcap"
    return [
        ("stdout", snapscope("inspect", h["evidence"]), terminal_safe, [name]),
        ("stdout", snapscope("inspect", h["evidence"], "--json"), json_safe, [name]),
        ("stdout", snapscope("inspect", h["save"]), terminal_safe, [h["save"].name, f"web{MARKUP}"]),
    ]


def _analyze(h, tmp):
    done = snapscope("analyze", h["evidence"], "--case", tmp / "analysed")
    return [("stdout", done, terminal_safe, [f"ev-{ANSI}{NAME}"])]


def _audit(h, tmp):
    done = snapscope("audit", h["fleet"], "--case", tmp / "audited", "--jobs", "1")
    return [("stdout", done, terminal_safe, [])]


def _memory_info(h, tmp):
    return [
        ("stdout", snapscope("memory", "info", h["save"]), terminal_safe, [h["save"].name]),
        ("stdout", snapscope("memory", "info", h["save"], "--json"), json_safe, [f"web{MARKUP}"]),
    ]


def _memory_convert(h, tmp):
    out = tmp / f"out-{ANSI}{NAME}.elf"
    done = snapscope("memory", "convert", h["save"], out, "--case", tmp / "converted")
    return [("stdout", done, terminal_safe, [str(h["save"]), str(out)])]


def _symbols_list(h, tmp):
    banner = f"Linux version 6.1.0 {ANSI}{MARKUP}{HTML}"
    return [
        ("stdout", snapscope("symbols", "list", "--symbols", h["isf_dir"]), terminal_safe, [banner, NAME]),
        ("stdout", snapscope("symbols", "list", "--symbols", h["isf_dir"], "--json"), json_safe, [banner]),
    ]


def _symbols_build(h, tmp):
    done = snapscope("symbols", "build", h["dump"], "--out", tmp / "isf")
    assert done.returncode != 0  # no BTF, no kallsyms: nothing to build from
    return [("stderr", done, terminal_safe, [f"Linux version 6.1.0 {MARKUP}{HTML} (gcc)"])]


def _diff(h, tmp):
    done = snapscope("diff", h["disk_a"], h["disk_b"], "--case", tmp / "diffed")
    return [("stdout", done, terminal_safe, [f"/tmp/{ANSI}{NAME}{HTML}"])]


RECIPES = {
    ("table",): [_case_table_list, _files_table, _processes, _diagnostics],
    ("sql",): [_sql],
    ("findings",): [_findings],
    ("timeline",): [_timeline],
    ("report",): [_report],
    ("correlate",): [_correlate],
    ("sigma",): [_sigma],
    ("case", "info"): [_case_info],
    ("case", "verify"): [_case_verify],
    ("case", "keygen"): [_case_keygen_seal_verify],
    ("case", "seal"): [_case_keygen_seal_verify],
    ("inspect",): [_inspect],
    ("analyze",): [_analyze],
    ("audit",): [_audit],
    ("memory", "info"): [_memory_info],
    ("memory", "convert"): [_memory_convert],
    ("symbols", "list"): [_symbols_list],
    ("symbols", "build"): [_symbols_build],
    ("diff",): [_diff],
}
SWEEP = sorted({fn for fns in RECIPES.values() for fn in fns}, key=lambda fn: fn.__name__)


def _leaves(command, path=()):
    children = getattr(command, "commands", None) or {}
    if not children:
        yield path
    for name, sub in children.items():
        yield from _leaves(sub, path + (name,))


def test_every_command_is_swept():
    from toolkit.cli.app import app

    commands = set(_leaves(typer.main.get_command(app)))
    assert commands == set(RECIPES) | LAB_ONLY


@pytest.mark.parametrize("recipe", SWEEP, ids=[fn.__name__.strip("_") for fn in SWEEP])
def test_output_is_escaped(hostile, tmp_path, recipe):
    for what, result, escape, values in recipe(hostile, tmp_path):
        if what == "file":
            assert_clean(result, f"{recipe.__name__} file")
            assert_shown(result, values, escape, f"{recipe.__name__} file")
            continue
        where = f"{recipe.__name__} {' '.join(map(str, result.args[3:]))[:200]}"
        assert result.returncode in (0, 1, 2), (where, result.stderr.decode(errors="replace")[-3000:])
        assert_clean(result.stdout, where)
        assert_clean(result.stderr, where)
        if result.returncode == 2:  # a refusal is one line naming the problem
            assert len(result.stderr.strip().splitlines()) == 1, (where, result.stderr)
        assert_shown(result.stdout if what == "stdout" else result.stderr, values, escape, where)
