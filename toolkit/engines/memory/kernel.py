"""Kernel tables from Volatility plugin output: loaded modules (with the hidden-module cross-views)
and kernel integrity checks (syscall table, IDT, tty hooks, ftrace callbacks).

Example::

    modules = modules_rows(outputs)
    checks = kernel_checks_rows(outputs, modules)
"""

from __future__ import annotations

from toolkit.engines.memory.plugin_output import plugin_output

MODULE_PLUGINS = (
    "linux.lsmod.Lsmod",
    "linux.malware.check_modules.Check_modules",
    "linux.malware.hidden_modules.Hidden_modules",
    "windows.modules.Modules",
    "windows.modscan.ModScan",
)


def modules_rows(outputs: dict) -> list[dict] | None:
    """lsmod (the list) plus the cross-views: check_modules lists modules
    missing from sysfs, hidden_modules lists modules carved from memory but
    absent from the list. Windows: modules (list) + modscan (scan)."""
    if not any(p in outputs for p in MODULE_PLUGINS):
        return None
    ran = lambda p: p in outputs and not outputs[p]["error"]  # noqa: E731
    merged: dict[str, dict] = {}

    def add(row, **flags):
        name = row.get("Module Name", row.get("Name"))
        entry = merged.setdefault(
            name,
            {
                "name": name,
                "offset": row.get("Offset"),
                "base": row.get("Base"),
                "size": row.get("Code Size", row.get("Size")),
                "path": row.get("Path"),
                "taints": row.get("Taints"),
                "args": row.get("Load Arguments"),
                "in_list": False if ran("linux.lsmod.Lsmod") or ran("windows.modules.Modules") else None,
                "in_sysfs": True if ran("linux.malware.check_modules.Check_modules") else None,
                "hidden": False
                if ran("linux.malware.hidden_modules.Hidden_modules") or ran("windows.modscan.ModScan")
                else None,
            },
        )
        entry.update(flags)

    for r in plugin_output(outputs, "linux.lsmod.Lsmod", "windows.modules.Modules") or []:
        add(r, in_list=True)
    for r in plugin_output(outputs, "linux.malware.check_modules.Check_modules") or []:
        add(r, in_sysfs=False)
    for r in plugin_output(outputs, "linux.malware.hidden_modules.Hidden_modules") or []:
        add(r, hidden=True)
    for r in plugin_output(outputs, "windows.modscan.ModScan") or []:
        name = r.get("Name")
        if name not in merged:
            add(r, hidden=True)
    return list(merged.values())


def _unknown(symbol) -> bool:
    return symbol in (None, "", "UNKNOWN")


FTRACE = "linux.tracing.ftrace.CheckFtrace"
# How Volatility's module lookup names the kernel image itself.
KERNEL_MODULE_NAMES = (None, "kernel", "__kernel__")


def kernel_checks_rows(outputs: dict, modules: list[dict] | None) -> list[dict] | None:
    """One row per check result; ``suspicious`` is the verdict, ``detail`` the reason."""
    out = []
    seen = False
    if "linux.malware.check_syscall.Check_syscall" in outputs:
        seen = True
        for r in plugin_output(outputs, "linux.malware.check_syscall.Check_syscall") or []:
            symbol = r.get("Handler Symbol")
            out.append(
                {
                    "check": "check_syscall",
                    "item": f"{r.get('Table Name')}[{r.get('Index')}]",
                    "address": r.get("Handler Address"),
                    "symbol": symbol,
                    "suspicious": _unknown(symbol),
                    "detail": "handler outside any known kernel symbol" if _unknown(symbol) else None,
                }
            )
    if "linux.malware.check_idt.Check_idt" in outputs:
        seen = True
        for r in plugin_output(outputs, "linux.malware.check_idt.Check_idt") or []:
            address, symbol, module = r.get("Address"), r.get("Symbol"), r.get("Module")
            bad = bool(address) and _unknown(symbol)
            out.append(
                {
                    "check": "check_idt",
                    "item": f"idt[{r.get('Index'):#x}]" if r.get("Index") is not None else "idt",
                    "address": address,
                    "module": module,
                    "symbol": symbol,
                    "suspicious": bad,
                    "detail": "IDT entry points outside known kernel/module symbols" if bad else None,
                }
            )
    if "linux.malware.tty_check.Tty_Check" in outputs:
        seen = True
        for r in plugin_output(outputs, "linux.malware.tty_check.Tty_Check") or []:
            symbol, module = r.get("Symbol"), r.get("Module")
            bad = _unknown(symbol) or module not in KERNEL_MODULE_NAMES
            out.append(
                {
                    "check": "tty_check",
                    "item": r.get("Name"),
                    "address": r.get("Address"),
                    "module": module,
                    "symbol": symbol,
                    "suspicious": bad,
                    "detail": f"receive_buf handler in {module or 'unknown code'}" if bad else None,
                }
            )
    if FTRACE in outputs:
        seen = True
        for r in plugin_output(outputs, FTRACE) or []:
            module, symbol = r.get("Module"), r.get("Callback")
            bad = module not in KERNEL_MODULE_NAMES or _unknown(symbol)
            out.append(
                {
                    "check": "ftrace",
                    "item": r.get("Hooked symbols") or "ftrace_ops",
                    "address": r.get("Callback address"),
                    "module": module,
                    "symbol": symbol,
                    "suspicious": bad,
                    "detail": f"ftrace callback in {module or 'unknown code'} hooks {r.get('Hooked symbols') or '?'}"
                    if bad
                    else None,
                }
            )
    for m in modules or []:
        if m.get("in_sysfs") is None and m.get("hidden") is None:
            continue
        seen = True
        reasons = [
            why
            for flag, why in (
                (m.get("hidden"), "carved from memory but not on the module list"),
                (m.get("in_sysfs") is False, "on the list but missing from sysfs"),
            )
            if flag
        ]
        out.append(
            {
                "check": "modules",
                "item": m["name"],
                "address": m.get("offset"),
                "module": m["name"],
                "suspicious": bool(reasons),
                "detail": "; ".join(reasons) or None,
            }
        )
    return out if seen else None


# --- everything else -------------------------------------------------------------


CANONICAL_BITS = (1 << 48) - 1  # Volatility may give kernel addresses sign-stripped to 48 bits
EARLY_IDT_HANDLER_SIZE = 9  # arch/x86/include/asm/segment.h: one early exception stub per vector
EXCEPTION_VECTORS = 32  # the early stubs cover the exception vectors only


def settle_idt(rows: list[dict] | None, early_stubs: int | None) -> None:
    """Clear check_idt verdicts for vectors still pointing at the kernel's own early exception stub
    (``early_idt_handler_array + 9 * vector``): no handler replaced it, as #MC on a kernel built
    without machine-check support. Volatility names no symbol there (the stubs live in init text)."""
    if early_stubs is None:
        return
    for row in rows or []:
        vector = idt_vector(row)
        if row.get("check") != "check_idt" or not row.get("suspicious") or row.get("address") is None:
            continue
        if vector is None or not 0 <= vector < EXCEPTION_VECTORS:
            continue
        try:
            address = int(row["address"]) & CANONICAL_BITS
        except (TypeError, ValueError):  # a value Volatility could not render as a number
            continue
        if address == (early_stubs + EARLY_IDT_HANDLER_SIZE * vector) & CANONICAL_BITS:
            row["suspicious"] = False
            row["symbol"] = f"early_idt_handler_array[{vector}]"
            row["detail"] = "the kernel's own early exception stub: no handler was installed for this vector"


def idt_vector(row: dict) -> int | None:
    """The vector of a check_idt row (``idt[0x12]`` -> 18)."""
    item = str(row.get("item") or "")
    try:
        return int(item[item.index("[") + 1 : item.index("]")], 16)
    except ValueError:
        return None
