"""Persistence rules over ``disk/persistence``: what makes a program run again (systemd units and
timers, cron and at jobs, init scripts, the preload list, shell profiles, udev rules), judged by
what it runs and when it appeared, never by its name.

A shared interpreter is no identity: an entry whose command is ``python3 /opt/app.py`` runs
``/opt/app.py`` (the disk engine resolves the script), and only a process running that same
script is the entry's process.

Example::

    hits = list(systemd_unusual(tables, build_graph(tables, "s1"), "s1"))
"""

from __future__ import annotations

import posixpath
import re

from toolkit.correlate.graph import history_paths
from toolkit.correlate.links import frame, hit, link, value
from toolkit.correlate.vocabulary import (
    DOWNLOADERS,
    HOME_DIRS,
    KERNEL_THREAD_NAME,
    NET_REDIRECT,
    PIPE_TO_SHELL,
    after,
    boot_time,
    files_by_path,
    is_hidden_or_temp,
    package_owner,
    real_path,
    user_writable,
)
from toolkit.programs import is_shell


def _suspicious_process(graph, node_id) -> str | None:
    """Why a running process is suspicious in itself, or None."""
    node = graph["nodes"].get(node_id) or {}
    if node.get("deleted"):
        return "runs from a deleted file"
    if KERNEL_THREAD_NAME.match(node.get("process") or ""):
        return "poses as a kernel thread"
    if is_hidden_or_temp(node.get("exe")) or is_hidden_or_temp(node.get("script")):
        return "runs from a hidden or temporary path"
    return None


def _runners(graph, target: str) -> list[str]:
    """Processes whose own program (not a shared interpreter) is ``target``."""
    file_id = f"file:{target}"
    out = []
    for a, b, rel, _ in graph["edges"]:
        if b != file_id or not a.startswith("process:") or a in out:
            continue
        node = graph["nodes"].get(a) or {}
        if rel.startswith(("runs script", "image matches")) or (rel == "runs" and not node.get("script")):
            if not (rel == "runs" and is_shell(target)):
                out.append(a)
    return out


def _changed_since_boot(files: dict, path, boot) -> str | None:
    row = files.get(path) or {}
    for column, what in (("btime", "created"), ("ctime", "changed"), ("mtime", "modified")):
        ts = value(row, column)
        if ts is not None:
            return f"{what} {ts:%Y-%m-%d %H:%M:%S}Z, after this boot ({boot:%H:%M:%S}Z)" if after(ts, boot) else None
    return None


def judge_entry(tables, graph, r, *, context=None) -> tuple[str | None, list[str], list[str]]:
    """(severity or None, reasons, suspicious running processes) for one ``disk/persistence`` row.

    Reasons are behaviours: what the entry runs (hidden, temporary or user-replaceable program,
    a download piped to a shell, a program that is the image of a suspicious process) and when
    its file appeared (created or changed since this boot, and no package installed it).
    """
    files, owned, boot = context or (files_by_path(tables), package_owner(tables), boot_time(tables))
    reasons, severity = [], None
    target = value(r, "program_path") or value(r, "program")
    command = str(value(r, "command") or "")
    as_root = str(value(r, "user") or "root") in ("root", "0")

    def raise_to(level):
        nonlocal severity
        order = (None, "low", "medium", "high")
        severity = level if order.index(level) > order.index(severity) else severity

    if target and target != value(r, "path"):
        if is_hidden_or_temp(target):
            reasons.append(f"runs {target!r}, a hidden or temporary file")
            raise_to("high")
        elif as_root and (writer := user_writable(files, target)):
            reasons.append(f"runs {target!r} as root, and {writer}")
            raise_to("high")
        elif (
            str(target).startswith("/")
            and value(r, "program_path") is None
            and files
            and real_path(files, target) not in files
            and value(r, "path") not in owned  # a packaged unit for a tool not installed is the distribution's
        ):
            reasons.append(f"runs {target!r}, which is not on the disk")
            raise_to("medium")
    # what a packaged script says is the package's business (its binaries are checked by md5)
    command_reason = None
    if target == value(r, "path") and value(r, "path") in owned:
        command = ""
    if DOWNLOADERS.search(command) and (PIPE_TO_SHELL.search(command) or NET_REDIRECT.search(command)):
        command_reason = "its command downloads code and runs it"
    elif NET_REDIRECT.search(command):
        command_reason = "its command wires a shell to the network"
    elif target == value(r, "path") and any(is_hidden_or_temp(p) for p in history_paths(command)):
        command_reason = "its commands use a hidden or temporary path"
    if command_reason:
        reasons.append(command_reason)
        raise_to("high")
    suspects = []
    if target and target != value(r, "path"):
        for proc in _runners(graph, target):
            why = _suspicious_process(graph, proc)
            if why:
                suspects.append(proc)
                reasons.append(f"its program is the image of running {graph['nodes'][proc]['label']}, which {why}")
                raise_to("high")
    path = value(r, "path")
    if path and path not in owned and (changed := _changed_since_boot(files, path, boot)):
        reasons.append(f"{path!r} is in no package and was {changed}")
        raise_to("medium")
    return severity, reasons, suspects


def _entries(tables, graph, sid, kinds, *, attack_by_kind=None):
    context = (files_by_path(tables), package_owner(tables), boot_time(tables))
    pers = frame(tables, "disk/persistence")
    for i, r in pers.iterrows():
        if value(r, "kind") not in kinds:
            continue
        severity, reasons, suspects = judge_entry(tables, graph, r, context=context)
        if not severity:
            continue
        links = [link("disk/persistence", sid, i)]
        for proc in suspects:
            links += [lk for a, b, _rel, ls in graph["edges"] if a == proc for lk in ls if lk not in links][:4]
        entity = suspects[0] if suspects else f"persistence:{i}"
        sha = value(r, "program_sha256")
        why = (
            f"{value(r, 'kind')} entry {value(r, 'path')!r}"
            + (f" ({value(r, 'detail')})" if value(r, "detail") else "")
            + ": "
            + "; ".join(reasons)
            + (f" (sha256 {sha})" if sha else "")
            + "."
        )
        more = {"attack_id": (attack_by_kind or {}).get(value(r, "kind"))} if attack_by_kind else {}
        yield hit(
            entity, links, 0.8 if suspects else 0.7, why, severity=severity, **{k: v for k, v in more.items() if v}
        )


def systemd_unusual(tables, graph, sid):
    """A systemd service or timer that runs a hidden, temporary or user-replaceable program (or the
    image of a suspicious running process), or whose unit file no package installed and that
    appeared while the system was up."""
    yield from _entries(tables, graph, sid, ("systemd", "timer"), attack_by_kind={"timer": "T1053.006"})


def cron_unusual(tables, graph, sid):
    """A cron entry (crontab line or cron script) that runs a hidden, temporary or user-replaceable
    program, downloads and runs code, or appeared since boot outside the package database."""
    yield from _entries(tables, graph, sid, ("cron",))


def at_job(tables, graph, sid):
    """A queued at job: medium for any, high when it runs something hidden, temporary or downloaded."""
    context = (files_by_path(tables), package_owner(tables), boot_time(tables))
    for i, r in frame(tables, "disk/persistence").iterrows():
        if value(r, "kind") != "at":
            continue
        severity, reasons, _ = judge_entry(tables, graph, r, context=context)
        why = f"at job {value(r, 'path')!r} will run {value(r, 'command')!r}" + (
            ": " + "; ".join(reasons) + "." if reasons else "."
        )
        yield hit(f"persistence:{i}", [link("disk/persistence", sid, i)], 0.7, why, severity=severity or "medium")


def init_script(tables, graph, sid):
    """An init or rc script (rc.local, /etc/init.d) whose commands download and run code or use a
    hidden or temporary path, or that appeared since boot outside the package database."""
    yield from _entries(tables, graph, sid, ("rc", "initd"))


def ld_so_preload(tables, graph, sid):
    """A non-empty /etc/ld.so.preload: a library loaded into every dynamically linked program."""
    for i, r in frame(tables, "disk/persistence").iterrows():
        if value(r, "kind") == "ld_preload" and (value(r, "program") or value(r, "command")):
            lib = value(r, "program_path") or value(r, "program")
            why = (
                f"{value(r, 'path')!r} is not empty: it loads {lib!r} into every dynamically linked program"
                + ("" if value(r, "program_path") else " (the library is not on the disk)")
                + "."
            )
            yield hit(f"file:{lib}", [link("disk/persistence", sid, i)], 0.9, why)


HOME_REFERENCE = re.compile(r"(?<![\w/])(~|\$HOME|\$\{HOME\})(?=/)")
COMMAND_BREAK = re.compile(r"&&|\|\||[;|()&`]|\$\(|\b(?:then|do|else)\b")
LAUNCHERS = {"exec", "nohup", "setsid", "sudo", "env", "command", "builtin", ".", "source", "eval"}


def _started(line: str, home: str = "/home/user") -> list[str]:
    """Hidden or temporary programs a start-up line runs or sources (the word in command position,
    past launchers such as nohup and variable assignments), with ``~/`` and ``$HOME/`` read as
    ``home``. A path in a test (``[ -d ~/.local/bin ]``) or a PATH setting starts nothing.

    >>> _started("[ -x ~/.cache/.u/agent ] && (~/.cache/.u/agent >/dev/null 2>&1 &)", "/home/bob")
    ['/home/bob/.cache/.u/agent']
    >>> _started('if [ -d "$HOME/.local/bin" ] ; then PATH="$HOME/.local/bin:$PATH"; fi', "/home/bob")
    []
    """
    found = []
    for segment in COMMAND_BREAK.split(HOME_REFERENCE.sub(home, line)):
        words = (segment or "").strip().split()
        while words and (words[0] in LAUNCHERS or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0])):
            words = words[1:]
        program = words[0].strip("\"'") if words else ""
        if program.startswith("/") and is_hidden_or_temp(program) and program not in found:
            found.append(program)
    return found


def _paths_in(text: str) -> list[str]:
    return [p for p in history_paths(text) if is_hidden_or_temp(p)]


def _home_of(rc_path: str) -> str:
    """The home directory a user's start-up file sits in (``~`` in its lines); any user's for a
    system-wide one (/etc/profile.d runs for everyone)."""
    if rc_path.startswith(HOME_DIRS):
        return posixpath.dirname(rc_path)
    return "/home/user"


def shell_profile_exec(tables, graph, sid):
    """A shell start-up file (/etc/profile, /etc/profile.d/*, ~/.bashrc, ...) that downloads, opens a
    network shell or runs something from a hidden or temporary path each time a shell starts."""
    for i, r in frame(tables, "disk/persistence").iterrows():
        if value(r, "kind") != "shell_rc":
            continue
        content = str(value(r, "command") or "")
        home = _home_of(str(value(r, "path") or ""))
        lines = [ln.strip() for ln in content.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        bad = [
            ln
            for ln in lines
            if DOWNLOADERS.search(ln)
            or NET_REDIRECT.search(ln)
            or PIPE_TO_SHELL.search(ln)
            or _paths_in(ln)
            or _started(ln, home)
        ]
        if bad:
            why = (
                f"shell start-up file {value(r, 'path')!r} runs, in every new shell: "
                + "; ".join(repr(ln[:200]) for ln in bad[:3])
                + "."
            )
            yield hit(f"persistence:{i}", [link("disk/persistence", sid, i)], 0.8, why)


UDEV_RUN = re.compile(r"\bRUN(\{[a-z]+\})?\s*\+?=")


def udev_run(tables, graph, sid):
    """A udev rule with RUN that runs a hidden, temporary or user-replaceable program or a shell
    command, or that no package installed (runs as root on a device event)."""
    context = (files_by_path(tables), package_owner(tables), boot_time(tables))
    _files, owned, _boot = context
    for i, r in frame(tables, "disk/persistence").iterrows():
        if value(r, "kind") != "udev":
            continue
        severity, reasons, _ = judge_entry(tables, graph, r, context=context)
        path = value(r, "path")
        if not reasons and path in owned:
            continue
        if not reasons:
            reasons, severity = ["no package installed this rule file"], "medium"
        if is_shell(value(r, "program")):
            reasons.append("it runs a shell command")
            severity = "high"
        why = f"udev rule {path!r} runs {value(r, 'command')!r} as root on a device event: " + "; ".join(reasons) + "."
        yield hit(f"persistence:{i}", [link("disk/persistence", sid, i)], 0.75, why, severity=severity)


RULES: dict[str, dict] = {
    "persist.systemd_unusual": {
        "title": "systemd service or timer running an unusual program",
        "attack_id": "T1543.002",
        "severity": "high",
        "confidence": 0.7,
        "keys_on": "a unit (or timer's service) whose program — the script for an interpreter — is hidden, "
        "temporary, replaceable by a non-root user while it runs as root, missing, or the image of a "
        "suspicious running process; or a unit file in no package created/changed since this boot (medium)",
        "joins": ["disk/persistence", "disk/files", "disk/package_files", "memory/processes", "memory/cmdlines"],
        "grading": "high for what it runs, medium (0.7) for a new unit alone; 0.8 when a suspicious process "
        "runs its program. A unit whose ExecStart is an interpreter is judged by its script, never by the "
        "interpreter",
        "chain": "the running process (if any) or the entry -> the program file -> processes running it",
        "fn": systemd_unusual,
    },
    "persist.cron_unusual": {
        "title": "cron entry running an unusual program",
        "attack_id": "T1053.003",
        "severity": "high",
        "confidence": 0.7,
        "keys_on": "a crontab line or cron script whose program is hidden, temporary, user-replaceable or the "
        "image of a suspicious process, whose command downloads and runs code, or whose file appeared since "
        "boot outside the package database",
        "joins": ["disk/persistence", "disk/files", "disk/package_files", "memory/processes"],
        "grading": "high for what it runs, medium for a new file alone; 0.7-0.8",
        "chain": "the entry -> its program file -> the running process with the same image",
        "fn": cron_unusual,
    },
    "persist.at_job": {
        "title": "Queued at job",
        "attack_id": "T1053.002",
        "severity": "medium",
        "confidence": 0.7,
        "keys_on": "a job in the at spool (/var/spool/cron/atjobs); high when its command runs a hidden or "
        "temporary program or downloads code",
        "joins": ["disk/persistence", "disk/files"],
        "grading": "medium: at jobs are rare on servers and run once, later, as their owner; 0.7",
        "chain": "the job -> its program file",
        "fn": at_job,
    },
    "persist.init_script": {
        "title": "Init or rc script running an unusual program",
        "attack_id": "T1037.004",
        "severity": "high",
        "confidence": 0.7,
        "keys_on": "rc.local or an /etc/init.d script whose commands download and run code or use a hidden or "
        "temporary path, or that appeared since boot outside the package database",
        "joins": ["disk/persistence", "disk/files", "disk/package_files"],
        "grading": "high for what it runs, medium for a new file alone",
        "chain": "the script -> the programs it names",
        "fn": init_script,
    },
    "persist.ld_preload": {
        "title": "Non-empty /etc/ld.so.preload",
        "attack_id": "T1574.006",
        "severity": "high",
        "confidence": 0.9,
        "keys_on": "any library named in /etc/ld.so.preload (Debian ships the file absent or empty)",
        "joins": ["disk/persistence"],
        "grading": "high: every program on the system loads it; 0.9",
        "chain": "the library file -> processes mapping it (mem.preload_config_mapped)",
        "fn": ld_so_preload,
    },
    "persist.shell_profile_exec": {
        "title": "Shell start-up file that fetches or runs code",
        "attack_id": "T1546.004",
        "severity": "high",
        "confidence": 0.8,
        "keys_on": "a line of /etc/profile, /etc/profile.d/*, /etc/bash.bashrc or a user's ~/.bashrc, "
        "~/.profile, ... that runs a downloader, a /dev/tcp or nc -e shell, a pipe into a shell, names an absolute "
        "path in a hidden or temporary location, or starts (in command position) a program there, `~/` and "
        "`$HOME/` read as the file's home (a `[ -d ~/.local/bin ]` test or a PATH entry starts nothing)",
        "joins": ["disk/persistence"],
        "grading": "high: start-up files run in every login; a fetch there re-infects each session; 0.8",
        "chain": "the start-up file entry",
        "fn": shell_profile_exec,
    },
    "persist.udev_run": {
        "title": "udev rule that runs a program",
        "attack_id": "T1546.017",
        "severity": "high",
        "confidence": 0.75,
        "keys_on": "a RUN key in a udev rules file that no package installed (medium), or whose program is "
        "hidden, temporary, user-replaceable or a shell (high)",
        "joins": ["disk/persistence", "disk/package_files", "disk/files"],
        "grading": "high: udev runs RUN programs as root on every matching device event; 0.75",
        "chain": "the rule -> its program file",
        "fn": udev_run,
    },
}
