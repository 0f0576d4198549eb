"""Command lines of persistence entries: which program a line runs, and the user column of
system crontabs. Guest strings are parsed, never executed or normalised.

Example::

    program_of("FOO=1 nohup /bin/sh -c '/tmp/.x/run -d' >/dev/null")   # '/tmp/.x/run'
"""

from __future__ import annotations

import shlex

from toolkit.programs import interpreter_script, is_shell

SEPARATORS = ("&&", ";", "||")
SYSTEM_CRONTABS = ("/etc/crontab", "/etc/cron.d/", "/etc/anacrontab")
WRAPPERS = {
    "env",
    "nohup",
    "exec",
    "nice",
    "setsid",
    "ionice",
    "chrt",
    "stdbuf",
    "flock",
    "timeout",
    "sudo",
    "busybox",
    "start-stop-daemon",
}


def split_cron_user(source: str, command: str, user: str | None = None) -> tuple[str | None, str]:
    """System crontabs carry a user column that dissect sometimes leaves inside the command and
    sometimes has already taken out (``user``, its username field): the first word is the user
    only when dissect gave none, or when it is that same user.

    >>> split_cron_user("/etc/cron.d/evil", "root /usr/lib/x/implant --beacon")
    ('root', '/usr/lib/x/implant --beacon')
    >>> split_cron_user("/etc/crontab", "cd / && run-parts /etc/cron.hourly", user="root")
    ('root', 'cd / && run-parts /etc/cron.hourly')
    """
    if source and (source == "/etc/crontab" or source.startswith("/etc/cron.d/")):
        parts = command.strip().split(None, 1)
        if len(parts) == 2 and (not user or parts[0] == user):
            return parts[0], parts[1]
    return user or None, command


def program_of(command: str | None) -> str | None:
    """The program a command line runs: env assignments and wrappers skipped, `sh -c` unwrapped,
    and for an interpreter the script it is given (the interpreter is shared by every script).

    >>> program_of("FOO=1 nohup /bin/sh -c '/tmp/.x/run -d' >/dev/null")
    '/tmp/.x/run'
    >>> program_of("/usr/bin/python3 -u /opt/app/serve.py --port 80")
    '/opt/app/serve.py'
    >>> program_of("cd / && run-parts --report /etc/cron.hourly")
    'run-parts'
    """
    if not command:
        return None
    try:
        words = shlex.split(command, comments=False, posix=True)
    except ValueError:  # unbalanced quotes from a hostile or broken line
        words = [w.strip("\"'") for w in command.split()]
    i = 0
    while i < len(words):
        w = words[i].lstrip("@-:+!")  # systemd Exec prefixes
        base = w.rsplit("/", 1)[-1]
        if not w or ("=" in w and not w.startswith("/") and w.split("=", 1)[0].isidentifier()):
            i += 1
        elif base == "cd":  # `cd /dir && prog`: the directory change runs nothing; the program follows it
            i += 1
            while i < len(words) and words[i] not in SEPARATORS and not words[i].endswith(";"):
                i += 1
            i += 1
        elif base in WRAPPERS:
            i += 1
            while i < len(words) and (words[i].startswith("-") or words[i].isdigit()):
                i += 1
        elif is_shell(base) and i + 2 < len(words) and words[i + 1] == "-c":
            return program_of(words[i + 2]) or w
        else:
            return interpreter_script([w, *words[i + 1 :]]) or w
    return None
