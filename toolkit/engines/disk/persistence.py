"""``disk/persistence``: what makes a program run again, and which file that program is.

Rows come from dissect functions (cronjobs, services, ssh.authorized_keys,
initd, runkeys, tasks) and from a few files read directly (ld.so.preload, rc
files, cron script directories) that dissect has no function for. Every row
names the program it would run; the program is resolved to a file on the
same disk (symlinks followed inside the guest, PATH searched) and hashed.

Guest strings are hostile: commands are kept raw in ``command``; parsing only
derives ``program`` and never executes or normalises anything.

Example::

    rows, diags = persistence_rows(target, records_by_function, max_size=1 << 26)
"""

from __future__ import annotations

from toolkit.engines.disk.commands import program_of, split_cron_user
from toolkit.engines.disk.persistence_files import ABSENT, SCRIPT_KINDS, files_rows, problem
from toolkit.engines.disk.units import unit_states
from toolkit.engines.disk.walk import ts_ns
from toolkit.hashing import sha256_stream

GUEST_PATH = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]


def resolve_program(target, program: str | None, problems: list) -> str | None:
    """A path on the guest disk for program (symlinks followed inside the guest), or None.

    A candidate that cannot be looked at (a symlink loop, a name the filesystem
    refuses) becomes a warning in ``problems`` rather than an exception.
    """
    if not program:
        return None
    candidates = [program] if program.startswith("/") else [f"{d}/{program}" for d in GUEST_PATH]
    if "\\" in program or (len(program) > 1 and program[1] == ":"):
        try:  # Windows: dissect expands %SystemRoot% & co. and maps drive letters
            candidates = [str(target.resolve(program))]
        except Exception as exc:  # dissect raises many types for an unmappable name
            problem(problems, "persistence program not resolved", program, exc)
            return None
    for cand in candidates:
        try:
            p = target.fs.path(cand)
            if p.is_file():
                return str(p.resolve())
        except ABSENT:
            continue
        except Exception as exc:  # a hostile path (loops, bad names): said, not fatal
            problem(problems, "persistence program not resolved", cand, exc)
    return None


def file_sha256(target, path: str | None, max_size: int | None, problems: list) -> str | None:
    """sha256 of a file on the guest disk (None when larger than ``max_size`` or unreadable, said in ``problems``)."""
    if not path:
        return None
    try:
        with target.fs.path(path).open("rb") as fh:
            return sha256_stream(fh, max_size)
    except Exception as exc:  # dissect raises many types for damaged files
        problem(problems, "persistence program not hashed", path, exc)
        return None


def _mtime(target, path: str | None, problems: list):
    try:
        return ts_ns(target.fs.path(path).lstat().st_mtime_ns)
    except ABSENT:
        return None
    except Exception as exc:
        problem(problems, "persistence entry not stat'ed", path, exc)
        return None


def _first(rec: dict, *keys):
    low = {k.lower(): v for k, v in rec.items()}
    for k in keys:
        v = low.get(k.lower())
        if v not in (None, "", []):
            return str(v)
    return None


def unit_records(records: dict) -> dict[str, dict]:
    """Unit name -> the record of the file systemd uses: dissect lists /etc/systemd/system, then
    /lib, then /usr/lib (the same directory twice on a merged-/usr system); the first one wins."""
    units: dict[str, dict] = {}
    for rec in records.get("services", []):
        units.setdefault(rec.get("name") or "", rec)
    return units


def _from_records(records: dict) -> list[dict]:
    rows = []
    for rec in records.get("cronjobs", []):
        user, cmd = split_cron_user(rec.get("source") or "", rec.get("command") or "", rec.get("username"))
        sched = " ".join(str(rec.get(k) or "") for k in ("minute", "hour", "day", "month", "weekday")).strip()
        rows.append(
            {
                "kind": "cron",
                "path": rec.get("source"),
                "user": user or rec.get("username"),
                "schedule": sched,
                "command": cmd,
                "program": program_of(cmd),
            }
        )
    units = unit_records(records)
    for name, rec in units.items():
        if rec.get("type") not in (None, "systemd") or "imagepath" in {k.lower() for k in rec}:
            cmd = _first(rec, "imagepath", "servicedll", "command")
            rows.append(
                {
                    "kind": "service",
                    "path": rec.get("key") or rec.get("source"),
                    "user": _first(rec, "objectname", "user"),
                    "schedule": _first(rec, "start"),
                    "command": cmd,
                    "program": program_of(cmd) if cmd and cmd.startswith("/") else cmd,
                    "detail": name,
                }
            )
            continue
        if name.endswith(".timer"):
            svc = _first(rec, "Timer_Unit") or name[:-6] + ".service"
            cmd = _first(units.get(svc, {}), "Service_ExecStart")
            sched = ", ".join(f"{k[6:]}={v}" for k, v in rec.items() if k.startswith("Timer_On") and v)
            rows.append(
                {
                    "kind": "timer",
                    "path": rec.get("source"),
                    "schedule": sched,
                    "command": cmd,
                    "program": program_of(cmd),
                    "detail": f"{name} -> {svc}",
                    "user": _first(units.get(svc, {}), "Service_User"),
                }
            )
        elif name.endswith(".service") or name.endswith(".socket") or name.endswith(".path"):
            cmd = _first(rec, "Service_ExecStart", "Service_ExecStartPre", "Socket_ExecStartPre")
            if cmd or name.endswith(".service"):
                rows.append(
                    {
                        "kind": "systemd",
                        "path": rec.get("source"),
                        "user": _first(rec, "Service_User"),
                        "schedule": _first(rec, "Install_WantedBy"),
                        "command": cmd,
                        "program": program_of(cmd),
                        "detail": name,
                    }
                )
    for rec in records.get("ssh.authorized_keys", []) + [
        r for r in records.get("ssh", []) if "authorized_keys" in str(r.get("_type", ""))
    ]:
        opts = rec.get("options") or ""
        forced = None
        if "command=" in str(opts):
            forced = str(opts).split("command=", 1)[1].strip('"').split('",')[0].strip('"')
        rows.append(
            {
                "kind": "authorized_keys",
                "path": str(rec.get("path") or rec.get("source") or ""),
                "user": rec.get("username"),
                "command": forced,
                "program": program_of(forced),
                "detail": f"{rec.get('key_type')} {rec.get('comment') or ''}".strip(),
            }
        )
    for fn, kind in (("runkeys", "runkey"), ("tasks", "task"), ("initd", "initd")):
        for rec in records.get(fn, []):
            cmd = _first(rec, "command", "exec_command", "action", "path", "source")
            args = _first(rec, "exec_arguments", "arguments")
            rows.append(
                {
                    "kind": kind,
                    "path": _first(rec, "key", "uri", "source", "path"),
                    "user": _first(rec, "username", "author", "user"),
                    "command": f"{cmd} {args}" if args else cmd,
                    "program": cmd if kind != "initd" else program_of(cmd),
                    "detail": _first(rec, "name"),
                }
            )
    return rows


def persistence_rows(target, records: dict, max_size: int | None) -> tuple[list[dict], list[dict]]:
    """(rows for ``disk/persistence``, diagnostics); records: function name -> list of record dicts."""
    problems: list[dict] = []
    rows = _from_records(records) + files_rows(target, problems)
    if records.get("services"):
        states = unit_states(target, unit_records(records), problems)
        for row in rows:
            if row["kind"] in ("systemd", "timer"):
                row["unit_state"] = states.get(row["detail"].split(" -> ")[0])
    seen = set()
    out = []
    for row in rows:
        # a script is one entry however it was found (initd via dissect and via the directory listing)
        command = None if row["kind"] in SCRIPT_KINDS else row.get("command")
        key = (row["kind"], row.get("path"), command, row.get("program"))
        if key in seen:
            continue
        seen.add(key)
        row["program_path"] = resolve_program(target, row.get("program"), problems)
        row["program_sha256"] = file_sha256(target, row["program_path"], max_size, problems)
        row["ts"] = _mtime(target, row["path"], problems) if (row.get("path") or "").startswith("/") else None
        out.append(row)
    return out, problems
