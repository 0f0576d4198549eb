"""Persistence that dissect has no function for, read as files: ld.so.preload, shell start-up
and rc files and cron script directories (with their content, so correlation can see what
they run), udev rules with RUN, queued at jobs, sudoers rules, crontab lines scheduled by a shortcut
(``@reboot``: dissect's cronjob parser drops them) and the logging daemons' settings.

Content is read up to ``MAX_SCRIPT_BYTES`` per file (a diagnostic says when a file is cut);
guest strings stay raw.

Example::

    problems = []
    rows = files_rows(target, problems)
    [r["kind"] for r in rows]   # ['shell_rc', 'cron', 'udev', 'sudoers', ...]
"""

from __future__ import annotations

import re

from toolkit.engines.disk.commands import program_of, split_cron_user
from toolkit.schemas import diagnostic

RC_FILES = ["/etc/profile", "/etc/bash.bashrc", "/etc/zsh/zshrc", "/etc/environment", "/etc/rc.local"]
USER_RC = [".bashrc", ".profile", ".bash_profile", ".bash_login", ".bash_logout", ".zshrc", ".zprofile"]
CRON_DIRS = ["/etc/cron.hourly", "/etc/cron.daily", "/etc/cron.weekly", "/etc/cron.monthly", "/etc/init.d"]
UDEV_DIRS = ["/etc/udev/rules.d", "/run/udev/rules.d", "/usr/lib/udev/rules.d", "/usr/local/lib/udev/rules.d"]
AT_SPOOLS = ["/var/spool/cron/atjobs", "/var/spool/at"]
SUDOERS = ["/etc/sudoers", "/etc/sudoers.d"]
# Crontabs whose ``@reboot``/``@hourly``... lines dissect's cronjob parser drops (it wants five time fields).
CRONTAB_FILES = ["/etc/crontab"]
CRONTAB_DIRS = ["/etc/cron.d", "/var/spool/cron/crontabs", "/var/spool/cron"]
CRON_SHORTCUTS = ("@reboot", "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
# Where the logging daemons read what to keep: a line here can throw records away.
LOG_CONFIGS = ["/etc/rsyslog.conf", "/etc/systemd/journald.conf"]
LOG_CONFIG_DIRS = [
    "/etc/rsyslog.d",
    "/etc/systemd/journald.conf.d",
    "/run/systemd/journald.conf.d",
    "/usr/lib/systemd/journald.conf.d",
]
# Kinds whose row is one whole file (its content in ``command``), however it was found.
SCRIPT_KINDS = ("shell_rc", "rc", "initd", "cron_script", "at")
MAX_SCRIPT_BYTES = 64 << 10
UDEV_RUN = re.compile(r"\bRUN(?:\{(?P<type>[a-z]+)\})?\s*\+?=\s*\"(?P<value>(?:[^\"\\]|\\.)*)\"")
# at(1) wraps the job in a shell preamble; the job itself follows the line that closes `cd ... || {`
# and may sit in a here-document whose delimiter at(1) chose.
AT_HEREDOC = re.compile(r"^\$\{SHELL:-/bin/sh\}\s*<<\s*'?(?P<marker>[^']+)'?\s*$")

# A path that is simply not on the disk: no diagnostic, it is an answer ("not found").
ABSENT = (FileNotFoundError, NotADirectoryError)


def problem(problems: list, what: str, where, exc: Exception) -> None:
    """One warning diagnostic for something on the disk that could not be looked at."""
    problems.append(diagnostic("warning", what, where, f"{type(exc).__name__}: {exc}"))


def read_text(fs, path: str, problems: list) -> str | None:
    """A file's first MAX_SCRIPT_BYTES as text (None when absent or unreadable, said in problems)."""
    try:
        with fs.path(path).open("rb") as fh:
            data = fh.read(MAX_SCRIPT_BYTES + 1)
    except ABSENT:
        return None
    except Exception as exc:  # dissect raises many types for damaged files
        problem(problems, "file not read", path, exc)
        return None
    if len(data) > MAX_SCRIPT_BYTES:
        problems.append(diagnostic("info", "file cut", path, f"only the first {MAX_SCRIPT_BYTES} bytes kept"))
        data = data[:MAX_SCRIPT_BYTES]
    return data.decode("utf-8", "surrogateescape")


def _listing(fs, directory: str, problems: list) -> list[str]:
    try:
        return [str(p) for p in sorted(fs.path(directory).iterdir()) if p.is_file()]
    except ABSENT:
        return []
    except Exception as exc:
        problem(problems, "directory not listed", directory, exc)
        return []


def _preload(fs, problems) -> list[dict]:
    text = read_text(fs, "/etc/ld.so.preload", problems)
    rows = []
    for line in (text or "").splitlines():
        for lib in line.split("#", 1)[0].split():
            rows.append({"kind": "ld_preload", "path": "/etc/ld.so.preload", "command": line, "program": lib})
    return rows


def _scripts(target, fs, problems) -> list[dict]:
    rc_paths = list(RC_FILES)
    homes = {"/root"}
    try:
        homes |= {str(u.home) for u in target.users() if getattr(u, "home", None)}
    except Exception as exc:  # users come from dissect's OS plugin, which may fail on a damaged passwd
        problem(problems, "home directories unknown (shell rc files of /root only)", "users", exc)
    for home in sorted(h for h in homes if h and h.startswith("/")):
        rc_paths += [f"{home.rstrip('/')}/{name}" for name in USER_RC]
    for d in ["/etc/profile.d", *CRON_DIRS]:
        rc_paths += _listing(fs, d, problems)
    rows = []
    for path in rc_paths:
        content = read_text(fs, path, problems)
        if content is None:
            continue
        kind = (
            "initd"
            if path.startswith("/etc/init.d/")
            else ("cron" if path.startswith("/etc/cron.") else ("rc" if path == "/etc/rc.local" else "shell_rc"))
        )
        rows.append(
            {
                "kind": kind,
                "path": path,
                "program": path,
                "command": content,
                "user": path.split("/")[2] if path.startswith("/home/") else None,
                "schedule": path.split("/")[2] if kind == "cron" else None,
            }
        )
    return rows


def _udev(fs, problems) -> list[dict]:
    rows = []
    for directory in UDEV_DIRS:
        for path in _listing(fs, directory, problems):
            if not path.endswith(".rules"):
                continue
            for number, line in enumerate((read_text(fs, path, problems) or "").splitlines(), 1):
                if line.lstrip().startswith("#"):
                    continue
                for m in UDEV_RUN.finditer(line):
                    if m.group("type") == "builtin":
                        continue  # udev's own built-in commands, not programs
                    rows.append(
                        {
                            "kind": "udev",
                            "path": path,
                            "command": m.group("value"),
                            "program": program_of(m.group("value")),
                            "schedule": line.split(",", 1)[0].strip()[:200],  # the match keys: when it runs
                            "detail": f"line {number}",
                            "user": "root",
                        }
                    )
    return rows


def at_job_command(text: str) -> str:
    """The commands of an at(1) job file, without the environment preamble at(1) writes.

    Example: ``at_job_command("umask 22\\ncd /root || {\\n exit 1\\n}\\n/tmp/x -q\\n")`` -> ``'/tmp/x -q'``
    """
    lines = text.splitlines()
    start = max((i + 1 for i, ln in enumerate(lines) if ln.strip() == "}"), default=0)
    body, marker = [], None
    for ln in lines[start:]:
        m = AT_HEREDOC.match(ln.strip())
        if m:
            marker = m.group("marker")
            continue
        if marker and ln.strip() == marker:
            continue
        if ln.strip() and not ln.startswith("#"):
            body.append(ln.strip())
    return "; ".join(body)


def _at_jobs(fs, problems) -> list[dict]:
    rows = []
    for spool in AT_SPOOLS:
        for path in _listing(fs, spool, problems):
            if path.rsplit("/", 1)[-1].startswith("."):
                continue  # .SEQ, the spool's counter
            text = read_text(fs, path, problems) or ""
            owner = re.search(r"^# atrun uid=(\d+)", text, re.M)
            command = at_job_command(text)
            rows.append(
                {
                    "kind": "at",
                    "path": path,
                    "command": command,
                    "program": program_of(command.split(";", 1)[0]),
                    "user": owner.group(1) if owner else None,
                    "detail": "queued at job",
                }
            )
    return rows


def _sudoers(fs, problems) -> list[dict]:
    rows = []
    paths = [SUDOERS[0], *_listing(fs, SUDOERS[1], problems)]
    for path in paths:
        text = read_text(fs, path, problems)
        for line in (text or "").splitlines():
            line = line.strip()
            if not line or line.startswith("#") and not line.startswith(("#include", "#includedir")):
                continue
            if line.startswith(("@include", "#include")):
                continue
            rows.append({"kind": "sudoers", "path": path, "command": line, "user": line.split()[0]})
    return rows


def _cron_shortcuts(fs, problems) -> list[dict]:
    """``cron`` rows for crontab lines scheduled by a shortcut (``@reboot root /x``): system crontabs
    name the user after it, a user's crontab is named after its user."""
    rows = []
    paths = CRONTAB_FILES + [p for d in CRONTAB_DIRS for p in _listing(fs, d, problems)]
    for path in dict.fromkeys(paths):
        for line in (read_text(fs, path, problems) or "").splitlines():
            words = line.strip().split(None, 1)
            if len(words) != 2 or words[0].lower() not in CRON_SHORTCUTS:
                continue
            user, command = split_cron_user(path, words[1])
            if not (path == "/etc/crontab" or path.startswith("/etc/cron.d/")):
                user = path.rsplit("/", 1)[-1]
            rows.append(
                {
                    "kind": "cron",
                    "path": path,
                    "user": user,
                    "schedule": words[0],
                    "command": command,
                    "program": program_of(command),
                }
            )
    return rows


def _log_configs(fs, problems) -> list[dict]:
    """One ``log_config`` row per setting line of rsyslog's and journald's configuration files
    (comments and section headers left out; correlation reads what a line discards)."""
    rows = []
    paths = LOG_CONFIGS + [p for d in LOG_CONFIG_DIRS for p in _listing(fs, d, problems) if p.endswith(".conf")]
    for path in paths:
        for line in (read_text(fs, path, problems) or "").splitlines():
            line = line.strip()
            if line and not line.startswith(("#", ";", "[")):
                rows.append({"kind": "log_config", "path": path, "command": line})
    return rows


def files_rows(target, problems: list) -> list[dict]:
    """Rows for ``disk/persistence`` from files read directly (see the module doc)."""
    fs = target.fs
    rows = _preload(fs, problems) + _scripts(target, fs, problems)
    rows += _udev(fs, problems) + _at_jobs(fs, problems) + _sudoers(fs, problems)
    return rows + _cron_shortcuts(fs, problems) + _log_configs(fs, problems)
