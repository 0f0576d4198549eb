"""The one adapter between snapscope and Volatility 3's configuration machinery.

Volatility configures everything through string-keyed paths in a hierarchical
dict ("automagic.LayerStacker.single_location", "plugins.PsList.kernel", ...).
This module is the only place that spells them. Everything else sees plain
dicts: a *session* (one context over one memory image, kernel found once) and
plugin *results* (column names plus rows of raw Python values).

Why one context per image: building the kernel layer (banner scan, DTB, KASLR,
symbol table load) is most of a ``vol`` run's cost. Here it is paid once and
every later plugin reuses the same layers and symbol tables.

Example::

    session = open_session("memory.elf", os_name="linux",
                           symbol_dirs=["case/derived/isf/ab12"], cache_dir="case/cache")
    result = run_plugin(session, "linux.pslist.PsList")
    result["columns"]  # ['OFFSET (V)', 'PID', 'TID', 'PPID', 'COMM', ...]
    result["rows"][0]  # {'PID': 1, 'COMM': 'init', ..., 'row_id': 0, 'parent_row_id': None}
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import threading
import time
from pathlib import Path

from toolkit.engines.memory import speedups, speedups_objects
from toolkit.engines.memory.images import DERIVED_SETTING, SNAPSHOT_SETTING
from toolkit.errors import VolatilityError

# The framework is imported lazily (see _framework): importing volatility3
# creates its cache directory and reads its hash cache as a side effect.
_VOL: dict = {}
_LOCK = threading.Lock()

# Which plugin proves that the kernel is found, per OS: its requirements are
# exactly the kernel module every other plugin of that OS needs.
PROBE_PLUGIN = {"linux": "linux.pslist.PsList", "windows": "windows.pslist.PsList"}


def _framework(cache_dir: Path | None = None) -> dict:
    """Import Volatility once, with every cache and network switch pointed at us.

    ``constants`` computes CACHE_PATH from XDG_CACHE_HOME and *creates* it at
    import time, and ``schemas`` binds its hash-cache path at import time too;
    so the import runs with XDG_CACHE_HOME on a throwaway directory (restored
    after), and the module-level paths are re-pointed to ``cache_dir`` on
    every call (the cache dir may differ between cases in one process).
    Without ``cache_dir`` it only imports (an audit worker warming up).
    """
    import tempfile

    with _LOCK:
        if not _VOL:
            saved = os.environ.get("XDG_CACHE_HOME")
            scratch = tempfile.TemporaryDirectory(prefix="snapscope-vol-import-")
            os.environ["XDG_CACHE_HOME"] = scratch.name
            try:
                import volatility3.plugins
                import volatility3.symbols
                from volatility3 import framework, schemas
                from volatility3.framework import automagic, constants, contexts, exceptions, renderers
                from volatility3.framework.automagic import stacker
                from volatility3.framework.renderers import format_hints
            finally:
                if saved is None:
                    os.environ.pop("XDG_CACHE_HOME", None)
                else:
                    os.environ["XDG_CACHE_HOME"] = saved
                scratch.cleanup()
            framework.require_interface_version(2, 0, 0)
            # Plugins whose optional dependencies are missing are simply not
            # listed; a profile naming one then fails with "unknown plugin".
            framework.import_files(volatility3.plugins, True)
            package = Path(volatility3.plugins.__file__).resolve().parents[1]
            builtin = [p for p in constants.SYMBOL_BASEPATHS if Path(p).resolve().is_relative_to(package)]
            # psscan & co. scan all of physical memory for a few literal needles.
            from volatility3.framework.layers import scanners
            from volatility3.framework.symbols import intermed

            speedups.install(scanners)
            speedups.install_isf_memo(intermed, schemas)
            from volatility3.framework.layers import physical
            from volatility3.framework.symbols import linux as linux_symbols

            speedups.install_vmcoreinfo_hint(linux_symbols, physical)
            # object access, VMA names, hidden_modules, the read cache: the costs that grow with the guest
            speedups_objects.install_all()
            # snapscope's own formats as a Volatility layer (its stacker registers on import)
            from toolkit.engines.memory import layer  # noqa: F401

            _VOL.update(
                automagic=automagic,
                constants=constants,
                contexts=contexts,
                exceptions=exceptions,
                renderers=renderers,
                stacker=stacker,
                format_hints=format_hints,
                schemas=schemas,
                vol_symbols=volatility3.symbols,
                builtin_symbols=builtin,
                plugin_list=framework.list_plugins(),
            )
        constants = _VOL["constants"]
        # Evidence machines are offline: never fetch ISFs or PDBs, never ask a remote index.
        constants.OFFLINE = True
        constants.REMOTE_ISF_URL = None
        if cache_dir is not None:
            vol_cache = Path(cache_dir) / "volatility3"
            vol_cache.mkdir(parents=True, exist_ok=True)
            constants.CACHE_PATH = str(vol_cache)
            schemas = _VOL["schemas"]
            schemas.cached_validation_filepath = str(vol_cache / "valid_isf.hashcache")
            # Add this cache's verdicts to the in-memory set (the import-time one was empty).
            try:
                schemas.cached_validations.update(schemas.load_cached_validations())
            except (ValueError, OSError):
                pass  # another process is rewriting it: a verdict not read is only re-checked
    return _VOL


def preload() -> None:
    """Import Volatility and its plugin tree now (~5 s): an audit worker warming up."""
    _framework()


def prevalidate_isf(isf_path: str | Path, sha256: str, cache_dir: Path, host_cache: Path | None = None) -> str | None:
    """Schema-check an ISF once with a compiled validator and tell Volatility.

    Volatility validates every new ISF with interpreted jsonschema: minutes for
    a 13 MB kernel ISF on a small machine. fastjsonschema, compiled from
    Volatility's own schema file with the same settings (no format checks),
    gives the same verdict in seconds; the result goes into Volatility's
    validation cache in our cache dir, so Volatility then skips its own pass.

    Even compiled, the check and Volatility's hash of the ISF cost ~15 s of
    CPU; ``host_cache`` (snapscope's cache, shared by every case on the host)
    keeps a record "ISF sha256, Volatility version -> Volatility's hash" of
    ISFs that passed, so a new case (each VM of an audit, a second analysis)
    only copies the verdict into its own Volatility cache.
    Returns an error message for an invalid ISF, else None.

    Example::

        prevalidate_isf(found["isf_path"], found["sha256"], cache_dir, host_cache=symbols_cache)   # None
    """
    import json

    vol = _framework(cache_dir)
    schemas = vol["schemas"]
    marker = Path(vol["constants"].CACHE_PATH) / "snapscope-validated.txt"
    if marker.is_file() and sha256 in marker.read_text().split():
        return None
    record_key = f"{sha256} volatility-{volatility_version()}"
    host_record = Path(host_cache) / "validated-isf.txt" if host_cache else None
    digest = _recorded_validation(host_record, record_key)
    if digest is None:
        try:
            import fastjsonschema
        except ImportError:
            return None  # Volatility validates it itself, slowly
        from toolkit.engines.memory.symbols import read_isf_bytes

        data = json.loads(read_isf_bytes(Path(isf_path)))
        fmt = data.get("metadata", {}).get("format")
        schema_file = Path(schemas.__file__).parent / f"schema-{fmt}.json"
        if not schema_file.is_file():
            return f"ISF format {fmt!r} is not one this Volatility knows"
        schema = json.loads(schema_file.read_text())
        digest = schemas.create_json_hash(data, schema)
        if digest not in schemas.cached_validations:
            try:
                fastjsonschema.compile(json.loads(schema_file.read_text()), use_formats=False)(data)
            except fastjsonschema.JsonSchemaException as excp:
                return f"ISF fails Volatility's schema {schema_file.name}: {excp.message}"
        if host_record is not None:
            host_record.parent.mkdir(parents=True, exist_ok=True)
            with open(host_record, "a") as fh:  # one short line: appends from two processes do not interleave
                fh.write(f"{record_key} {digest}\n")
    if digest not in schemas.cached_validations:
        schemas.cached_validations.add(digest)
        schemas.record_cached_validations(schemas.cached_validations)
    with open(marker, "a") as fh:
        fh.write(sha256 + "\n")
    return None


def _recorded_validation(record: Path | None, key: str) -> str | None:
    """Volatility's hash of an ISF that already passed on this host, if recorded."""
    if record is None or not record.is_file():
        return None
    for line in record.read_text().splitlines():
        parts = line.split()
        # a line still being appended by another process is ignored, not half-used
        if len(parts) == 3 and f"{parts[0]} {parts[1]}" == key and len(parts[2]) == 40:
            return parts[2]
    return None


def volatility_version() -> str:
    from importlib.metadata import version

    return version("volatility3")


class _LogCapture(logging.Handler):
    """Collects Volatility's warnings so they become diagnostics, not stderr noise."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _captured_logs():
    """Volatility's warnings, collected for the duration (then the logger is as it was)."""
    handler = _LogCapture()
    logger = logging.getLogger("volatility3")
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    # Volatility logs heavily at debug level; formatting those records costs
    # real time in tight loops, so keep the logger at WARNING while we run.
    if logger.level == logging.NOTSET or logger.level < logging.WARNING:
        logger.setLevel(logging.WARNING)
    logger.propagate = False
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _progress_adapter(progress, label):
    if progress is None:
        return None
    return lambda percent, description=None: progress(description or label, percent, 100)


def open_session(
    image: str | Path,
    *,
    os_name: str,
    symbol_dirs=(),
    cache_dir: str | Path,
    progress=None,
    snapshot=None,
    derived_dir=None,
    vmcoreinfo: dict | None = None,
) -> dict:
    """Find the kernel in ``image`` once and return a session for ``run_plugin``.

    ``symbol_dirs`` are searched before Volatility's bundled symbols (Linux
    ISFs; Windows symbol packs laid out as ``windows/<pdb>/<GUID-AGE>.json.xz``).
    Formats Volatility does not read are read in place through snapscope's
    layer (``layer.SnapscopeStacker``); ``snapshot`` names the qcow2 internal
    snapshot, ``derived_dir`` where a compressed stream's page index may go.
    ``vmcoreinfo`` (the dump's own copy of the kernel's VMCOREINFO, as parsed in
    ``MemoryImage.info``) spares Volatility its scan of memory for that note.
    Raises VolatilityError, with Volatility's own reasons in ``details``, if
    no kernel of ``os_name`` is found.

    Example::

        s = open_session("memory.elf", os_name="linux", symbol_dirs=[isf_dir], cache_dir=tmp)
        s["kernel"], s["layer"]   # ('kernel', 'layer_name')
    """
    if os_name not in PROBE_PLUGIN:
        raise VolatilityError(f"unsupported guest OS {os_name!r}: expected one of {sorted(PROBE_PLUGIN)}")
    image = Path(image).resolve()
    if not image.is_file():
        raise VolatilityError(f"memory image not found: {image}")
    vol = _framework(Path(cache_dir))
    # Symbol search path: the caller's dirs first, so an exact ISF wins over
    # anything bundled; the user's ~/.cache symbols are deliberately left out.
    vol["vol_symbols"].__path__ = [str(Path(d).resolve()) for d in symbol_dirs] + vol["builtin_symbols"]
    context = vol["contexts"].Context()
    context.config["automagic.LayerStacker.single_location"] = image.as_uri()
    context.config[SNAPSHOT_SETTING] = snapshot or ""
    context.config[DERIVED_SETTING] = str(derived_dir or "")
    context.config[speedups.VMCOREINFO_SETTING] = speedups.vmcoreinfo_text(vmcoreinfo)
    probe = vol["plugin_list"][PROBE_PLUGIN[os_name]]
    # available() imports the automagic modules that define the OS stackers,
    # so it must come before choose_os_stackers lists them.
    automagics = vol["automagic"].choose_automagic(vol["automagic"].available(context), probe)
    context.config["automagic.LayerStacker.stackers"] = vol["stacker"].choose_os_stackers(probe)
    base = "snapscope.kernel"
    started = time.monotonic()
    with _captured_logs() as warnings:
        errors = vol["automagic"].run(
            automagics, context, probe, base, progress_callback=_progress_adapter(progress, "finding the kernel")
        )
    path = f"{base}.{probe.__name__}"
    kernel = context.config.get(f"{path}.kernel")
    if probe.unsatisfied(context, path) or not isinstance(kernel, str):
        details = [list(e.format_exception_only())[-1].strip() for e in errors] + warnings
        raise VolatilityError(f"no {os_name} kernel found in {image.name} with the symbols available", details)
    module = context.modules[kernel]
    layer = context.layers[module.layer_name]
    speedups.index_symbol_locations(context.symbol_space[module.symbol_table_name])
    return {
        "context": context,
        "automagics": automagics,
        "vol": vol,
        "os": os_name,
        "image": str(image),
        "kernel": kernel,
        "layer": module.layer_name,
        "symbol_table": module.symbol_table_name,
        "dtb": layer.config.get("page_map_offset"),
        "kernel_virtual_offset": layer.config.get("kernel_virtual_offset"),
        "banner": layer.config.get("kernel_banner"),
        "open_seconds": time.monotonic() - started,
        "runs": 0,
        "warnings": warnings,
    }


def run_plugin(session: dict, name: str, options: dict | None = None, progress=None) -> dict:
    """Run one plugin in the session's context; never raises for a plugin failure.

    Returns {"plugin", "columns", "rows", "error", "seconds", "warnings"};
    ``error`` is None on success. A plugin that fails part-way keeps the rows
    it produced before the failure (a damaged task list still yields the
    tasks before the damage).

    Example::

        r = run_plugin(session, "linux.proc.Maps", {"pid": [1]})
        [row["File Path"] for row in r["rows"]]
    """
    vol = session["vol"]
    started = time.monotonic()
    result = {"plugin": name, "columns": [], "rows": [], "error": None, "warnings": [], "seconds": 0.0}
    plugin = vol["plugin_list"].get(name)
    if plugin is None:
        result["error"] = f"unknown plugin {name!r}"
        return result
    context = session["context"]
    session["runs"] += 1
    # A fresh config node per run: two plugins may share a class name
    # (linux.pslist.PsList / windows.pslist.PsList) and options must not leak.
    base = f"snapscope.run{session['runs']}"
    path = f"{base}.{plugin.__name__}"
    context.config[f"{path}.kernel"] = session["kernel"]
    for key, value in (options or {}).items():
        context.config[f"{path}.{key}"] = value
    with _captured_logs() as warnings:
        try:
            _construct_and_run(session, plugin, base, path, progress, result)
        except Exception as excp:  # a plugin bug must not stop the other plugins
            result["error"] = f"{type(excp).__name__}: {excp}"
    result["warnings"] = warnings
    result["seconds"] = time.monotonic() - started
    return result


def _construct_and_run(session, plugin, base, path, progress, result):
    vol, context = session["vol"], session["context"]
    report = _progress_adapter(progress, result["plugin"])
    # Only when something beyond the kernel is missing do we pay for the
    # automagic pass; normally the plugin is satisfied already.
    if plugin.unsatisfied(context, path):
        vol["automagic"].run(session["automagics"], context, plugin, base, progress_callback=report)
    missing = plugin.unsatisfied(context, path)
    if missing:
        result["error"] = f"requirements not met: {sorted(missing)}"
        return
    constructed = plugin(context, path, progress_callback=report)
    result["columns"], result["rows"], failure = grid_rows(constructed.run())
    if failure is not None:
        result["error"] = f"{type(failure).__name__}: {failure}"


def grid_rows(grid) -> tuple[list[str], list[dict], Exception | None]:
    """Flatten a TreeGrid: (column names, rows, exception that stopped it or None).

    Each row maps column name -> raw value, plus ``row_id`` and
    ``parent_row_id`` (None at the top level) so tree output (pstree) keeps
    its shape in a flat table.
    """
    columns = [c.name for c in grid.columns]
    ids: dict[str, int] = {}

    def visit(node, rows):
        row = {col: raw_value(value) for col, value in zip(columns, node.values)}
        parent = node.parent
        row["row_id"] = len(rows)
        row["parent_row_id"] = ids.get(parent.path) if parent is not None else None
        ids[node.path] = row["row_id"]
        rows.append(row)
        return rows

    rows: list[dict] = []
    failure = grid.populate(visit, rows, fail_on_errors=False)
    return columns, rows, failure


def raw_value(value):
    """A TreeGrid cell as a plain value: absent -> None, Hex -> int, time -> UTC.

    Example::

        raw_value(format_hints.Hex(16))   # 16
    """
    if value is None or type(value).__name__ in (
        "UnreadableValue",
        "UnparsableValue",
        "NotApplicableValue",
        "NotAvailableValue",
    ):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    if isinstance(value, (str, float)):
        return value
    name = type(value).__name__
    if name == "Disassembly":
        return _disassemble(value)
    if name == "LayerData":
        return _layer_bytes(value)
    return str(value)


def _disassemble(value) -> str:
    # Volatility renders Disassembly lazily with capstone if present; keep the
    # text form, and fall back to nothing rather than a repr of the object.
    try:
        text = str(value)
    except Exception:
        return ""
    return "" if text.startswith("<volatility3") else text


def _layer_bytes(value) -> bytes | None:
    try:
        return bytes(value.context.layers[value.layer_name].read(value.offset, value.length, pad=True))
    except Exception:
        return None


def early_idt_stubs(session: dict) -> int | None:
    """Address of the kernel's ``early_idt_handler_array`` (the exception stubs installed before the
    real handlers; a vector the kernel has no handler for keeps pointing there), or None."""
    try:
        module = session["context"].modules[session["kernel"]]
        return int(module.get_absolute_symbol_address("early_idt_handler_array"))
    except Exception:  # a kernel (or symbol file) without it: nothing to say
        return None


def task_objects(session: dict):
    """Linux task_struct objects from the task list (thread-group leaders).

    For collectors that need more than a plugin prints (exe path, mm).
    """
    from volatility3.plugins.linux import pslist

    return pslist.PsList.list_tasks(session["context"], session["kernel"], include_threads=False)
