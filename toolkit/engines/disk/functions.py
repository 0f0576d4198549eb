"""Run the dissect functions a profile names and shape their records into disk tables.

A profile lists dissect function names (``cronjobs``, ``ssh.authorized_keys``,
``runkeys``, an OS export such as ``users``) or one of a few snapscope group
names (``history``, ``logs``, ``packages``, ``groups``) that expand to
several functions. Names are checked before any disk is opened; an unknown
one is a DiskError naming it. A function that exists but does not apply to
this guest (``runkeys`` on Linux) is an info diagnostic.

Records become plain dicts first (``record._asdict()``), so each table builder
is a small function over dicts. Guest strings stay raw.

Example::

    functions = expand_functions(["users", "cronjobs", "history"])
    records, diags = run_functions(target, functions)
"""

from __future__ import annotations

import json

from toolkit.errors import DiskError
from toolkit.schemas import diagnostic, pick

# snapscope group names -> dissect functions (those missing in this dissect install are skipped)
GROUPS = {
    "history": ["commandhistory"],
    "logs": ["authlog", "syslog", "messages", "securelog", "journal"],
    "packages": ["dpkg.status", "dpkg.log"],
    "groups": [],  # read from /etc/group directly (no dissect function)
    "persistence": ["cronjobs", "services", "ssh.authorized_keys", "initd", "runkeys", "tasks"],
}
TABLE_OF = {
    "users": "disk/users",
    "commandhistory": "disk/shell_history",
    "bashhistory": "disk/shell_history",
    "authlog": "disk/logs",
    "syslog": "disk/logs",
    "messages": "disk/logs",
    "securelog": "disk/logs",
    "journal": "disk/logs",
    "dpkg.status": "disk/packages",
    "dpkg.log": "disk/logs",
    **{f: "disk/persistence" for f in GROUPS["persistence"]},
    "ssh": "disk/persistence",
}
# What the disk engine runs when a profile names no functions (profiles.DEFAULTS reads it too).
DEFAULT_FUNCTIONS = ("users", "cronjobs", "services", "ssh.authorized_keys", "history", "logs", "packages")
SYSTEM_FUNCTIONS = ["hostname", "domain", "os", "version", "architecture", "timezone", "ips"]


def _os_exports() -> set[str]:
    from dissect.target import plugin

    names: set[str] = set()
    for desc in plugin.os_plugins():
        try:
            names |= set(getattr(plugin.load(desc), "__exports__", []) or [])
        except Exception:  # an OS plugin dissect cannot load offers no function names; evidence is not involved
            continue
    return names


def function_exists(name: str) -> bool:
    from dissect.target import plugin

    return bool(list(plugin.lookup(name))) or name in _os_exports()


def expand_functions(names) -> list[str]:
    """Profile names -> dissect function names; DiskError for a name nothing knows.

    >>> expand_functions(["users", "history"])
    ['users', 'commandhistory']
    """
    out: list[str] = []
    unknown = []
    for name in names:
        if name in GROUPS:
            out += [f for f in GROUPS[name] if function_exists(f)] + ([name] if name == "groups" else [])
        elif function_exists(name):
            out.append(name)
        else:
            unknown.append(name)
    if unknown:
        raise DiskError(
            f"unknown dissect function(s) in profile: {', '.join(map(repr, unknown))} "
            f"(see `target-query --list`, or use one of {', '.join(sorted(GROUPS))})"
        )
    return list(dict.fromkeys(out))


def missing_group_members() -> list[str]:
    """Group members this dissect install cannot provide (e.g. journal without backports.zstd)."""
    return [f for fs in GROUPS.values() for f in fs if not function_exists(f)]


def _plain(value):
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def record_dict(rec) -> dict:
    """A flow.record as a plain dict: paths and addresses become str, times stay datetimes."""
    import datetime as dt

    keep = (str, int, float, bool, bytes, list, dt.datetime, type(None))
    d = {k: (v if isinstance(v, keep) else str(v)) for k, v in rec._asdict().items() if not k.startswith("_")}
    d["_type"] = rec._desc.name
    return d


def run_functions(target, functions) -> tuple[dict[str, list[dict]], list[dict]]:
    """Call each function; records as dicts per function, plus diagnostics."""
    from dissect.target.exceptions import UnsupportedPluginError

    records: dict[str, list[dict]] = {}
    diags = []
    for fn in functions:
        if fn == "groups":
            records[fn] = _groups(target, diags)
            continue
        try:
            _, func = target.get_function(fn)
            result = func() if callable(func) else func
            if hasattr(result, "_asdict"):
                result = [result]
            if result is None or isinstance(result, (str, int, list, dict)) and not isinstance(result, list):
                records[fn] = [{"value": _plain(result), "_type": "value"}]
                continue
            rows = []
            for rec in result:
                try:
                    rows.append(record_dict(rec) if hasattr(rec, "_asdict") else {"value": _plain(rec)})
                except Exception as e:
                    diags.append(diagnostic("warning", f"record of {fn}", "dissect", f"{type(e).__name__}: {e}"))
            records[fn] = rows
        except UnsupportedPluginError:
            diags.append(
                diagnostic(
                    "info",
                    f"dissect function {fn}",
                    "dissect",
                    "does not apply to this guest (no artefacts or other OS)",
                )
            )
        except Exception as e:  # one broken plugin must not cost the other tables
            diags.append(diagnostic("warning", f"dissect function {fn}", "dissect", f"failed: {type(e).__name__}: {e}"))
    return records, diags


def _groups(target, diags: list) -> list[dict]:
    """/etc/group read as a file (dissect has no function for it)."""
    try:
        text = target.fs.path("/etc/group").read_bytes().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return []
    except Exception as e:  # dissect raises many types for a damaged file
        diags.append(diagnostic("warning", "groups", "/etc/group", f"unreadable: {type(e).__name__}: {e}"))
        return []
    out = []
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 4:
            out.append(
                {
                    "_type": "snapscope/group",
                    "name": parts[0],
                    "gid": parts[2],
                    "members": parts[3],
                    "source": "/etc/group",
                }
            )
    return out


def system_row(target) -> dict:
    """The one ``disk/system`` row; each fact that fails stays <NA>."""
    facts = {}
    for fn in SYSTEM_FUNCTIONS + ["network.interfaces", "network.dns", "network.gateways"]:
        try:
            if "." in fn:
                _, func = target.get_function(fn)
                value = func()
            else:  # OS exports are properties on the target
                value = getattr(target, fn)
            if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)):
                value = [record_dict(v) if hasattr(v, "_asdict") else v for v in value]
            facts[fn] = value
        except Exception:
            facts[fn] = None

    def joined(v):
        return ",".join(str(x) for x in v) if isinstance(v, list) else (None if v is None else str(v))

    return {
        "hostname": joined(facts["hostname"]),
        "domain": joined(facts["domain"]),
        "os": joined(facts["os"]),
        "os_version": joined(facts["version"]),
        "architecture": joined(facts["architecture"]),
        "timezone": joined(facts["timezone"]),
        "ips": joined(facts["ips"]),
        "dns": joined(facts["network.dns"]),
        "gateways": joined(facts["network.gateways"]),
        "interfaces": json.dumps(_plain(facts["network.interfaces"] or [])) if facts["network.interfaces"] else None,
    }


# dissect's record field for each of our columns (the record's source file goes to ``path``)
USER_COLUMNS = {"user": "name", "uid": "uid", "gid": "gid", "gecos": "gecos", "shell": "shell", "sid": "sid"}
HISTORY_COLUMNS = {"user": "username", "shell": "shell", "order": "order", "command": "command", "ts": "ts"}


def user_rows(records) -> list[dict]:
    return [
        {**pick(r, USER_COLUMNS), "home": _plain(r.get("home")), "path": _plain(r.get("source"))}
        for r in records.get("users", [])
    ]


def history_rows(records) -> list[dict]:
    return [
        {**pick(r, HISTORY_COLUMNS), "path": _plain(r.get("source"))}
        for fn in ("commandhistory", "bashhistory")
        for r in records.get(fn, [])
    ]


def log_rows(records) -> list[dict]:
    rows = []
    seen = set()
    for fn in ("authlog", "syslog", "messages", "securelog", "journal"):
        for r in records.get(fn, []):
            key = (str(r.get("ts")), r.get("message"), str(r.get("source")))
            if key in seen:  # securelog and authlog both read auth.log on Debian
                continue
            seen.add(key)
            service = r.get("service") or r.get("syslog_identifier")
            rows.append(
                {
                    "ts": r.get("ts"),
                    "log": fn,
                    "service": service,
                    "pid": r.get("pid"),
                    "message": r.get("message"),
                    "path": _plain(r.get("source")),
                }
            )
    return rows + dpkg_log_rows(records)


def dpkg_log_rows(records) -> list[dict]:
    """dpkg.log lines (installs, upgrades, removals, status changes) as ``disk/logs`` rows; the message
    is the line after its timestamp, as dpkg wrote it ("upgrade inventory-tools:all 1.0 1.1")."""
    rows = []
    for r in records.get("dpkg.log", []):
        package = f"{r.get('name')}:{r.get('arch')}" if r.get("arch") else r.get("name")
        if r.get("operation") == "status":
            message = f"status {r.get('status')} {package} {r.get('version')}"
        else:
            message = (
                f"{r.get('operation')} {package} {r.get('version_old') or '<none>'} {r.get('version') or '<none>'}"
            )
        rows.append(
            {"ts": r.get("ts"), "log": "dpkg", "service": "dpkg", "message": message, "path": _plain(r.get("source"))}
        )
    return rows


def package_rows(records) -> list[dict]:
    return [
        {
            "name": r.get("name"),
            "version": r.get("version"),
            "architecture": r.get("arch"),
            "status": r.get("status"),
            "manager": "dpkg",
            "ts": r.get("ts"),
            "path": "/var/lib/dpkg/status",
        }
        for r in records.get("dpkg.status", [])
    ]


def other_rows(records) -> list[dict]:
    """Records of functions without a table of their own -> ``disk/records``."""
    rows = []
    for fn, recs in records.items():
        if fn in TABLE_OF and fn != "ssh":
            continue
        for r in recs:
            if fn == "ssh" and "authorized_keys" in str(r.get("_type")):
                continue
            fields = {k: _plain(v) for k, v in r.items() if k != "_type"}
            rows.append(
                {
                    "function": fn,
                    "record_type": r.get("_type"),
                    "ts": r.get("ts"),
                    "fields": json.dumps(fields, default=str, ensure_ascii=False),
                }
            )
    return rows
