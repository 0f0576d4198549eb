"""Kernel rules: modules hidden from the kernel's own lists, modules that did not come with the
kernel, and hooks in the kernel's dispatch tables.

Example::

    hits = list(hidden_module(tables, build_graph(tables, "s1"), "s1"))
"""

from __future__ import annotations

import re

from toolkit.correlate.links import frame, hit, link, truthy, value
from toolkit.correlate.vocabulary import is_hidden_or_temp
from toolkit.programs import basename

MODULE_FILE = re.compile(r"^(?P<name>[^/]+)\.ko(\.(xz|zst|gz))?$")
RELEASE = re.compile(r"Linux version (\S+)")


def _module_key(name) -> str:
    # the kernel names a module with underscores whatever its file used
    return str(name or "").replace("-", "_")


def hidden_module(tables, graph, sid):
    """A kernel module found in memory but missing from the kernel's module list (carved) or from
    sysfs: a loadable kernel module hiding itself."""
    mods = frame(tables, "memory/modules")
    for i, r in mods.iterrows():
        reasons = []
        if truthy(value(r, "hidden")):
            reasons.append("carved from memory but absent from the module list")
        if value(r, "in_sysfs") is False:
            reasons.append("on the module list but missing from sysfs")
        if reasons:
            why = f"kernel module {value(r, 'name')!r} is " + " and ".join(reasons) + ": it hides from lsmod."
            yield hit(f"module:{value(r, 'name')}", [link("memory/modules", sid, i)], 0.85, why)


def _release(tables) -> str | None:
    for _, r in frame(tables, "memory/info").iterrows():
        m = RELEASE.search(str(value(r, "banner") or ""))
        if m:
            return m.group(1)
    return None


def module_not_from_kernel(tables, graph, sid):
    """A loaded kernel module no module directory of the running kernel ships: its .ko lies
    elsewhere on disk (a temporary or unusual path), or nowhere at all."""
    mods = frame(tables, "memory/modules")
    files = frame(tables, "disk/files")
    if not len(mods) or not len(files) or "path" not in files:
        return
    release = _release(tables)
    shipped, elsewhere = set(), {}
    for j, path in zip(files.index, files["path"].astype(str)):
        m = MODULE_FILE.match(basename(path))
        if not m:
            continue
        key = _module_key(m.group("name"))
        in_tree = re.match(r"^/(usr/)?lib/modules/([^/]+)/", path)
        if in_tree and (release is None or in_tree.group(2) == release):
            shipped.add(key)
        elif not in_tree:
            elsewhere.setdefault(key, []).append((j, path))
    if not shipped:
        return  # the disk holds no module tree for this kernel: nothing to compare with
    for i, r in mods.iterrows():
        key = _module_key(value(r, "name"))
        if not key or key in shipped:
            continue
        copies = elsewhere.get(key, [])
        where = ", ".join(repr(p) for _, p in copies[:4])
        taints = value(r, "taints")
        why = (
            f"kernel module {value(r, 'name')!r} is loaded, but the modules of kernel {release or 'on this disk'} "
            f"do not include it"
            + (f"; a file of that name lies at {where}" if copies else "; no file of that name is on the disk")
            + (f" (taints: {taints})" if taints else "")
            + "."
        )
        links = [link("memory/modules", sid, i)] + [link("disk/files", sid, j) for j, _ in copies[:4]]
        unusual = any(is_hidden_or_temp(p) for _, p in copies)
        yield hit(
            f"module:{value(r, 'name')}", links, 0.85 if unusual else 0.7, why, severity="high" if copies else "medium"
        )


def kernel_hooks(tables, graph, sid):
    """A kernel integrity check Volatility flags: a syscall or IDT entry, a tty receive handler or
    an ftrace callback that points outside the kernel and its known modules."""
    checks = frame(tables, "memory/kernel_checks")
    for i, r in checks.iterrows():
        if truthy(value(r, "suspicious")) and value(r, "check") != "modules":
            why = (
                f"kernel check {value(r, 'check')!r} flagged {value(r, 'item')!r}"
                + (f" -> {value(r, 'symbol') or '?'} in {value(r, 'module') or 'unknown code'}")
                + (f": {value(r, 'detail')}" if value(r, "detail") else "")
                + "."
            )
            yield hit(f"kernel:{value(r, 'check')}", [link("memory/kernel_checks", sid, i)], 0.8, why)


RULES: dict[str, dict] = {
    "kernel.hidden_module": {
        "title": "Kernel module hidden from the module list",
        "attack_id": "T1014",
        "severity": "critical",
        "confidence": 0.85,
        "keys_on": "a module that hidden_modules carves from memory but lsmod's list lacks, or that "
        "check_modules finds missing from sysfs",
        "joins": ["memory/modules"],
        "grading": "critical: a module that unlinks itself is a rootkit; 0.85 (carving can find remnants)",
        "chain": "the module (memory/modules row); kernel hooks that point into it",
        "fn": hidden_module,
    },
    "kernel.module_not_from_kernel": {
        "title": "Kernel module the running kernel does not ship",
        "attack_id": "T1547.006",
        "severity": "high",
        "confidence": 0.7,
        "keys_on": "a loaded module whose name matches no .ko under /lib/modules/<running release>/ on the "
        "guest's disk; high when a .ko of that name lies elsewhere (insmod from /tmp, a home, a hidden dir), "
        "medium when none is on the disk at all",
        "joins": ["memory/modules", "memory/info", "disk/files"],
        "grading": "high: modules are installed under the kernel's tree; loading one from elsewhere is how "
        "rootkits arrive (0.7-0.85); medium when the file is gone (an out-of-tree driver deleted after load)",
        "chain": "the module -> the .ko file found outside the module tree",
        "fn": module_not_from_kernel,
    },
    "kernel.hooks": {
        "title": "Kernel hook (syscall, IDT, tty, ftrace)",
        "attack_id": "T1014",
        "severity": "critical",
        "confidence": 0.8,
        "keys_on": "check_syscall, check_idt, tty_check or ftrace results whose handler lies outside the kernel "
        "image and its listed modules (Volatility's verdict, kept in memory/kernel_checks)",
        "joins": ["memory/kernel_checks", "memory/modules"],
        "grading": "critical: redirecting kernel dispatch is rootkit behaviour; 0.8 (symbols can be incomplete)",
        "chain": "the check row naming the hooked entry and the code it points to",
        "fn": kernel_hooks,
    },
}
