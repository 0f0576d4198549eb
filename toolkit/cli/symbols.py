"""`snapscope symbols`: build and list Linux ISF symbol files.

Thin shell over toolkit.engines.memory.symbols.

Examples::

    snapscope symbols build guest-memory.elf            # into ~/.cache/snapscope/symbols/linux
    snapscope symbols build guest-memory.elf --out ./isf
    snapscope symbols list --symbols ./isf
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from toolkit.cli.common import console, err_console, fail
from toolkit.engines.memory import symbols as isf
from toolkit.hashing import sha256_file
from toolkit.report.escape import rich_safe

app = typer.Typer(
    help="Linux kernel symbols (ISF) for memory analysis, built from the dump itself.\n\n"
    "Example: snapscope symbols build guest-memory.elf --out ./isf",
    no_args_is_help=True,
)


@app.command()
def build(
    dump: Path = typer.Argument(..., help="memory image (ELF core, raw or LiME) of a Linux guest"),
    out: Path = typer.Option(None, "--out", "-o", help="directory for the ISF (default: the snapscope cache)"),
    force: bool = typer.Option(False, "--force", help="rebuild even if the cache already has this kernel"),
    json_out: bool = typer.Option(False, "--json", help="print the result as JSON on stdout"),
):
    """Build an ISF from DUMP's own BTF and kallsyms (offline, no debug packages).

    Example: snapscope symbols build memory.elf --out ./isf
    """
    if not dump.is_file():
        fail(f"{dump}: no such file")
    banners = isf.find_banners(dump)
    if not banners:
        fail(f"no Linux kernel banner in {dump} (not a Linux guest, or a format to convert to ELF first)")
    out_dir = out or isf.cache_dir_for(isf.default_cache_dir())
    dump_sha256 = sha256_file(dump)  # a built ISF is reused for this very dump only
    existing = out_dir / isf.cache_name(banners[0], dump_sha256)
    if existing.is_file() and not force:
        result = {"banner": banners[0], "isf_path": str(existing), "seconds": 0.0, "cached": True, "diagnostics": []}
    else:
        err_console.print(f"building symbols for: {rich_safe(banners[0].strip())}")
        result = isf.build_isf(dump, out_dir, image_sha256=dump_sha256)
        result["cached"] = False
    result["built_from"] = dump_sha256
    if result["isf_path"]:
        result["sha256"] = sha256_file(result["isf_path"])
    if json_out:
        print(json.dumps(result, indent=2))
    for d in result["diagnostics"]:
        if d["severity"] != "info":
            err_console.print(f"[yellow]{rich_safe(d['severity'])}:[/] {rich_safe(d['what'])}: {rich_safe(d['why'])}")
    if not result["isf_path"]:
        fail("no ISF was produced", code=1)
    if not json_out:
        state = "already cached" if result["cached"] else f"built in {result['seconds']:.1f} s"
        err_console.print(f"{state}: {rich_safe(result['isf_path'])}\nsha256 {result['sha256']}")


@app.command("list")
def list_(
    symbols: list[Path] = typer.Option([], "--symbols", "-s", help="extra ISF files or dirs to include"),
    json_out: bool = typer.Option(False, "--json", help="print rows as JSON on stdout"),
):
    """List the ISFs snapscope would use: user dirs, profiles/symbols, the cache (each built ISF
    with the sha256 of the image it was built from, the only image it is used for).

    Example: snapscope symbols list --symbols ./isf
    """
    rows = isf.list_isfs(isf.default_cache_dir(), symbols)
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    table = Table("origin", "banner", "size", "built from image", "path")
    for r in rows:
        table.add_row(
            rich_safe(r["origin"]),
            rich_safe((r["banner"] or "<no linux_banner>").strip()[:90]),
            f"{r['size']:,}",
            rich_safe((r["built_from"] or "")[:16]),
            rich_safe(r["path"]),
        )
    console.print(table if rows else "no ISF files found")
