"""What a command line runs: shells, script interpreters, and the script an interpreter is given.

Shared by the disk engine (which program a persistence entry runs) and correlation (which
process a persistence entry is): a shell or interpreter binary is shared by every script it
runs, so the script, not the interpreter, identifies the program.

Example::

    is_interpreter("/usr/bin/python3.11")                          # True
    interpreter_script(["/usr/bin/python3", "-u", "/opt/app/run.py", "--port", "80"])   # '/opt/app/run.py'
"""

from __future__ import annotations

import posixpath
import re

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ash", "ksh", "mksh", "tcsh", "csh", "fish", "busybox", "rbash"})
INTERPRETER = re.compile(
    r"^(python[\d.]*|perl[\d.]*|ruby[\d.]*|php[\d.]*(-cgi)?|node(js)?|lua[\d.]*|tclsh[\d.]*|wish[\d.]*|"
    r"pwsh|java|g?awk|mawk|nawk|Rscript|expect)$"
)
# Interpreter options that run inline code or a module (no script file), and options taking a value.
INLINE_CODE = frozenset({"-c", "-e", "-E", "-m", "-r", "--command", "--eval"})
OPTIONS_WITH_VALUE = frozenset({"-W", "-X", "-I", "-O", "--rcfile", "--init-file", "-o", "+o"})
SCRIPT_SUFFIXES = (".py", ".pl", ".sh", ".rb", ".php", ".js", ".lua", ".tcl")


def basename(path) -> str:
    """Last path component, '' for nothing: ``basename('/usr/bin/python3.11')`` -> ``'python3.11'``."""
    return posixpath.basename(str(path or "").rstrip("/"))


def is_shell(name_or_path) -> bool:
    """A command shell (by its program name, whatever directory it lives in).

    >>> is_shell("/usr/bin/bash"), is_shell("sshd")
    (True, False)
    """
    return basename(name_or_path) in SHELLS


def is_interpreter(name_or_path) -> bool:
    """A shell or a script interpreter: one binary that runs whatever it is given.

    >>> is_interpreter("/usr/bin/python3.11"), is_interpreter("/usr/sbin/nginx")
    (True, False)
    """
    name = basename(name_or_path)
    return name in SHELLS or bool(INTERPRETER.match(name))


def runs_inline_code(args) -> bool:
    """An interpreter command line given its code on the command line (``python3 -c``, ``perl -e``)
    rather than a script file.

    ``-m module`` is not inline code: services run that way (``python3 -m uvicorn app:app``).

    >>> runs_inline_code(["python3", "-u", "-c", "import socket"]), runs_inline_code(["python3", "-m", "http.server"])
    (True, False)
    """
    words = list(args or [])
    if not words or not is_interpreter(words[0]):
        return False
    for w in words[1:]:
        if w in INLINE_CODE - {"-m"}:
            return True
        if not (w.startswith("-") or w.startswith("+")):
            return False
    return False


def interpreter_script(args) -> str | None:
    """The script an interpreter command line runs: its first argument that is a path (not an
    option, not ``-c CODE``); None for an interactive shell or inline code.

    >>> interpreter_script(["/usr/bin/python3", "-u", "/opt/app/run.py", "--port", "80"])
    '/opt/app/run.py'
    >>> interpreter_script(["bash", "-c", "id"]) is None
    True
    """
    words = list(args or [])
    if not words or not is_interpreter(words[0]):
        return None
    i = 1
    while i < len(words):
        w = words[i]
        if w in INLINE_CODE:
            return None
        if w.startswith("-") or w.startswith("+"):
            i += 2 if w in OPTIONS_WITH_VALUE else 1
            continue
        return w if "/" in w or w.endswith(SCRIPT_SUFFIXES) else None
    return None
