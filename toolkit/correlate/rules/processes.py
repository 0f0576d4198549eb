"""Process rules: what a running process is, where it runs from, what it is wired to, who started it.

Each function takes (tables, graph, snapshot_id) and yields hits (toolkit.correlate.links.hit);
``RULES`` below describes each for the registry and docs/detections.md.

Example::

    hits = list(kernel_thread_masquerade(tables, build_graph(tables, "s1"), "s1"))
"""

from __future__ import annotations

from toolkit.correlate.links import exited, frame, hit, link, pid_of, truthy, value
from toolkit.correlate.vocabulary import (
    KERNEL_THREAD_NAME,
    RELAYS,
    cmdline_index,
    files_by_path,
    is_hidden_or_temp,
    is_inet,
    package_owner,
    process_index,
    user_writable,
)
from toolkit.programs import basename, interpreter_script, is_interpreter, is_shell, runs_inline_code
from toolkit.schemas import split_deleted


def _process_hit(sid: str, i: int, row, confidence: float, explanation: str, **more) -> dict:
    """A hit about the process of ``memory/processes`` row ``i``, proven by that row."""
    return hit(f"process:{pid_of(row)}", [link("memory/processes", sid, i)], confidence, explanation, **more)


def _exe(row) -> str | None:
    return split_deleted(value(row, "exe_path") or None)[0]


def kernel_thread_masquerade(tables, graph, sid):
    """A process named like a kernel thread ([kworker/...]) that has user-space memory or an executable."""
    argv = cmdline_index(tables)
    for i, r in frame(tables, "memory/processes").iterrows():
        name = value(r, "process") or ""
        j, words = argv.get(pid_of(r), (None, []))
        argv0 = words[0] if words else ""
        named_like = KERNEL_THREAD_NAME.match(name) or (argv0.startswith("[") and KERNEL_THREAD_NAME.match(argv0))
        user_space = value(r, "is_kernel_thread") is False or bool(value(r, "exe_path"))
        if named_like and user_space:
            exe = _exe(r)
            why = (
                f"pid {pid_of(r)} is named {name!r}"
                + (f" (argv[0] {argv0!r})" if argv0 and argv0 != name else "")
                + " like a kernel worker thread, but it is a user-space process"
                + (f" running {exe!r}" if exe else "")
                + "."
            )
            links = [link("memory/processes", sid, i)] + ([link("memory/cmdlines", sid, j)] if j is not None else [])
            yield hit(f"process:{pid_of(r)}", links, 0.9, why)


def deleted_executable(tables, graph, sid):
    """A process whose executable was unlinked after it started (the kernel says "(deleted)");
    low when a package now owns a file at that path (an upgrade replaced a running daemon)."""
    owned = package_owner(tables)
    for i, r in frame(tables, "memory/processes").iterrows():
        exe, suffix_deleted = split_deleted(value(r, "exe_path") or None)
        if not (truthy(value(r, "exe_deleted")) or suffix_deleted) or not exe or exe.startswith(("/memfd:", "memfd:")):
            continue
        if exe in owned and not is_hidden_or_temp(exe):
            why = (
                f"pid {pid_of(r)} ({value(r, 'process')!r}) runs a deleted {exe!r}; package "
                f"{owned[exe].get('package')!r} installs a file at that path now: an upgrade replaced it."
            )
            yield _process_hit(sid, i, r, 0.5, why, severity="low")
            continue
        why = (
            f"pid {pid_of(r)} ({value(r, 'process')!r}) runs from {exe!r}, a file that was "
            f"deleted after the process started."
        )
        yield _process_hit(sid, i, r, 0.9, why)


def memfd_executable(tables, graph, sid):
    """A process whose executable is an anonymous memory file (memfd_create + fexecve): no file on any disk."""
    for i, r in frame(tables, "memory/processes").iterrows():
        exe = _exe(r)
        if exe and exe.startswith(("/memfd:", "memfd:")):
            why = (
                f"pid {pid_of(r)} ({value(r, 'process')!r}) runs {exe!r}: its program exists only in "
                f"memory (memfd), never on disk."
            )
            yield _process_hit(sid, i, r, 0.95, why)


def unusual_exec_location(tables, graph, sid):
    """A process (or the script an interpreter runs) in a hidden or temporary directory, or a root
    process whose program another user could replace (owned by or writable for a non-root user)."""
    files = files_by_path(tables)
    argv = cmdline_index(tables)
    for i, r in frame(tables, "memory/processes").iterrows():
        exe = _exe(r)
        if not exe or exe.startswith(("/memfd:", "memfd:")):
            continue
        j, words = argv.get(pid_of(r), (None, []))
        script = interpreter_script([exe, *words[1:]]) if words and is_interpreter(exe) else None
        for what, path in (("executes", exe), ("runs the script", script)):
            if not path:
                continue
            reason = None
            if is_hidden_or_temp(path):
                reason = "a hidden or temporary location"
            elif pid_of(r, "uid") == 0 and (writer := user_writable(files, path)):
                reason = f"a location others can change ({writer}) while it runs as root"
            if reason:
                links = [link("memory/processes", sid, i)] + (
                    [link("memory/cmdlines", sid, j)] if j is not None and path == script else []
                )
                why = f"pid {pid_of(r)} ({value(r, 'process')!r}) {what} {path!r}, {reason}."
                yield hit(f"process:{pid_of(r)}", links, 0.7, why)
                break


def _shell_like(node_or_row_exe, name) -> str | None:
    exe_name, comm = basename(node_or_row_exe), basename(name)
    for n in (exe_name, comm):
        if n and is_shell(n):
            return f"the shell {n}"
        if n in RELAYS:
            return f"the relay {n}"
        if n and is_interpreter(n):
            return f"the interpreter {n}"
    return None


def shell_on_socket(tables, graph, sid):
    """A shell, interpreter or relay whose standard input/output (fd 0-2) is a TCP/UDP socket:
    a reverse shell (connected out) or a bind shell (accepted in)."""
    procs = process_index(tables)
    listening = {
        (value(r, "proto"), value(r, "src_port"))
        for _, r in frame(tables, "memory/sockets").iterrows()
        if str(value(r, "state") or "").upper() == "LISTEN"
    }
    seen = set()
    for j, r in frame(tables, "memory/sockets").iterrows():
        fd, pid = pid_of(r, "fd"), pid_of(r)
        if fd is None or fd > 2 or not is_inet(r) or pid in seen:
            continue
        proc = procs.get(pid) or {}
        what = _shell_like(_exe(proc) if proc else None, value(r, "process") or value(proc, "process"))
        if not what:
            continue
        seen.add(pid)
        fds = sorted(
            {
                pid_of(s, "fd")
                for _, s in frame(tables, "memory/sockets").iterrows()
                if pid_of(s) == pid and value(s, "inode") == value(r, "inode") and pid_of(s, "fd") is not None
            }
        )
        accepted = (value(r, "proto"), value(r, "src_port")) in listening
        kind = "bind shell: it answers a connection accepted on" if accepted else "reverse shell: connected to"
        why = (
            f"pid {pid} is {what} with fd {','.join(map(str, fds)) or fd} on a {value(r, 'proto')} socket "
            f"({kind} {value(r, 'dst_ip')}:{value(r, 'dst_port')} from {value(r, 'src_ip')}:{value(r, 'src_port')}, "
            f"{value(r, 'state')}): whoever holds the other end types its commands."
        )
        links = [link("memory/sockets", sid, j)] + ([link("memory/processes", sid, proc["_row"])] if proc else [])
        yield hit(f"process:{pid}", links, 0.9, why)


def _listening_pids(tables) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for j, r in frame(tables, "memory/sockets").iterrows():
        if is_inet(r) and str(value(r, "state") or "").upper() == "LISTEN" and pid_of(r) is not None:
            out.setdefault(pid_of(r), []).append(j)
    return out


def _on_terminal(tables, pid) -> bool | None:
    """Whether the process's stdin is a terminal (None when open files were not collected)."""
    files = frame(tables, "memory/open_files")
    if not len(files):
        return None
    rows = files[(files["pid"] == pid) & (files["fd"] == 0)] if "fd" in files else files.iloc[0:0]
    if not len(rows):
        return False
    path = str(value(rows.iloc[0], "path") or "")
    return path.startswith(("/dev/pts/", "/dev/tty", "/dev/console"))


def service_spawned_shell(tables, graph, sid):
    """A shell (or an interpreter running inline code, or a relay) whose parent is a network
    service (a process listening on a TCP/UDP port other than the init system) and whose input
    is no terminal: what a web shell or an exploited server starts."""
    procs = process_index(tables)
    argv = cmdline_index(tables)
    listeners = _listening_pids(tables)
    for pid, r in procs.items():
        ppid = pid_of(r, "ppid")
        if ppid is None or ppid <= 1 or ppid not in listeners:
            continue
        parent = procs.get(ppid) or {}
        if is_shell(_exe(parent)) or value(parent, "is_kernel_thread"):
            continue  # a shell that listens is its own finding (proc.unexpected_listener)
        j, words = argv.get(pid, (None, []))
        exe = _exe(r)
        script = interpreter_script([exe or "", *words[1:]]) if words else None
        what = _shell_like(exe, value(r, "process"))
        if not what or (script and not is_shell(exe)) or _on_terminal(tables, pid):
            continue
        ports = sorted({pid_of(frame(tables, "memory/sockets").loc[k], "src_port") for k in listeners[ppid]})
        why = (
            f"pid {pid} is {what} ({' '.join(words) or value(r, 'process')!r}) started by pid {ppid} "
            f"({value(parent, 'process')!r}), a network service listening on port(s) "
            f"{', '.join(map(str, ports))}: a server does not start shells."
        )
        links = [link("memory/processes", sid, r["_row"])]
        links += [link("memory/processes", sid, parent["_row"])] if parent else []
        links += [link("memory/sockets", sid, k) for k in listeners[ppid][:1]]
        links += [link("memory/cmdlines", sid, j)] if j is not None else []
        yield hit(f"process:{pid}", links, 0.8, why)


def hidden_process(tables, graph, sid):
    """A live task a memory scan finds that the kernel's task list does not hold (unlinked)."""
    for i, r in frame(tables, "memory/processes").iterrows():
        # a dead task's leftovers are not a hidden one
        if truthy(value(r, "in_scan")) and value(r, "in_list") is False and not exited(r):
            why = (
                f"pid {pid_of(r)} ({value(r, 'process')!r}) was found by a memory scan but "
                f"is missing from the kernel's task list."
            )
            yield _process_hit(sid, i, r, 0.6, why)


def unexpected_listener(tables, graph, sid):
    """A listening TCP/UDP socket owned by a shell or relay, or by a program that runs from a
    deleted, memory-only, hidden or temporary file (a bind shell or a backdoor's port)."""
    procs = process_index(tables)
    argv = cmdline_index(tables)
    for pid, rows in _listening_pids(tables).items():
        proc = procs.get(pid) or {}
        exe = _exe(proc) if proc else None
        _, words = argv.get(pid, (None, []))
        script = interpreter_script([exe or "", *words[1:]]) if words and is_interpreter(exe) else None
        reason, severity = None, "high"
        name = basename(exe) or value(proc, "process")
        if is_shell(name) or name in RELAYS:
            reason = f"is the {'shell' if is_shell(name) else 'relay'} {name}"
        elif truthy(value(proc, "exe_deleted")) or (exe or "").startswith(("/memfd:", "memfd:")):
            reason = f"runs from {exe!r}, which is deleted or exists only in memory"
        elif words and is_interpreter(exe) and runs_inline_code([exe or "", *words[1:]]):
            # a service is a program or a script file; code typed on a command line that listens is a
            # one-liner backdoor (python -c 'socket ... bind ... pty.spawn')
            reason = f"is {name} running code given on its command line ({' '.join(words)[:160]!r})"
        elif is_hidden_or_temp(exe) or is_hidden_or_temp(script):
            reason, severity = f"runs {script or exe!r} from a hidden or temporary location", "medium"
        if not reason:
            continue
        socks = frame(tables, "memory/sockets")
        ports = ", ".join(f"{value(socks.loc[k], 'proto')}/{value(socks.loc[k], 'src_port')}" for k in rows)
        why = f"pid {pid} ({value(proc, 'process') or name!r}) listens on {ports} and {reason}."
        links = [link("memory/sockets", sid, k) for k in rows] + (
            [link("memory/processes", sid, proc["_row"])] if proc else []
        )
        yield hit(f"process:{pid}", links, 0.8, why, severity=severity)


RULES: dict[str, dict] = {
    "proc.kernel_thread_masquerade": {
        "title": "User process posing as a kernel thread",
        "attack_id": "T1036.004",
        "severity": "high",
        "confidence": 0.9,
        "keys_on": "a name (comm or argv[0]) shaped like a kernel thread's (kworker/, ksoftirqd/, migration/, ...) "
        "on a task that has user-space memory or an executable file; real kernel threads have neither",
        "joins": ["memory/processes", "memory/cmdlines"],
        "grading": "high: no legitimate program needs to look like a kernel thread; 0.9 because the kernel's own "
        "flag (no mm) decides, not the name alone",
        "chain": "the process -> its executable (file on disk, by path or by build-id/first page when deleted) "
        "-> persistence entries that run that file -> its sockets and their capture flows",
        "fn": kernel_thread_masquerade,
    },
    "proc.deleted_executable": {
        "title": "Process running from a deleted file",
        "attack_id": "T1070.004",
        "severity": "high",
        "confidence": 0.9,
        "keys_on": "the kernel's '(deleted)' mark on a process's executable; low when the package database "
        "installs a file at that path now (an upgrade replaced a running daemon)",
        "joins": ["memory/processes", "disk/package_files"],
        "grading": "high: a program that removed itself hides from disk scans; low (0.5) for an upgraded package",
        "chain": "the process -> the on-disk copy with the same build-id/first page -> persistence -> network",
        "fn": deleted_executable,
    },
    "proc.memfd_executable": {
        "title": "Process running from memory only (memfd)",
        "attack_id": "T1620",
        "severity": "high",
        "confidence": 0.95,
        "keys_on": "an executable path the kernel names /memfd:...: a program loaded with memfd_create and "
        "fexecve, never written to a filesystem",
        "joins": ["memory/processes"],
        "grading": "high: fileless execution is what loaders do to avoid disk; 0.95 since the kernel path says it",
        "chain": "the process -> its sockets and flows; YARA hits in its memory",
        "fn": memfd_executable,
    },
    "proc.suspicious_exec_path": {
        "title": "Execution from a hidden, temporary or user-writable location",
        "attack_id": "T1564.001",
        "severity": "medium",
        "confidence": 0.7,
        "keys_on": "the executable, or the script an interpreter runs, in a temporary directory (/tmp, /var/tmp, "
        "/dev/shm, ...) or a dot-directory; or a root process whose file or directory a non-root user owns or "
        "everyone may write",
        "joins": ["memory/processes", "memory/cmdlines", "disk/files"],
        "grading": "medium: droppers land there, but so do some installers and build jobs; 0.7",
        "chain": "the process -> its executable or script file -> persistence that runs it",
        "fn": unusual_exec_location,
    },
    "proc.shell_on_socket": {
        "title": "Shell wired to a network socket (reverse or bind shell)",
        "attack_id": "T1059.004",
        "severity": "high",
        "confidence": 0.9,
        "keys_on": "a shell, interpreter or relay (nc, socat) whose file descriptors 0-2 are a TCP/UDP socket; "
        "unix sockets (a service's journald stdout) are not networks and never match",
        "joins": ["memory/sockets", "memory/processes"],
        "grading": "high: an interactive interpreter driven from the network is remote control; 0.9",
        "chain": "the shell process -> its socket -> the capture flow of that 5-tuple -> its parent's tree",
        "fn": shell_on_socket,
    },
    "proc.service_spawned_shell": {
        "title": "Network service started a shell",
        "attack_id": "T1505.003",
        "severity": "high",
        "confidence": 0.8,
        "keys_on": "a shell, relay or inline-code interpreter whose parent listens on a TCP/UDP port (a web "
        "server, an application server, a database; not the init system) and whose stdin is no terminal",
        "joins": ["memory/processes", "memory/sockets", "memory/cmdlines", "memory/open_files"],
        "grading": "high: servers answer requests, they do not start shells; 0.8 since some daemons run "
        "helper scripts (those run a script file and do not match)",
        "chain": "the shell -> its own sockets and children; the parent service's listening socket",
        "fn": service_spawned_shell,
    },
    "proc.hidden": {
        "title": "Process only a memory scan finds",
        "attack_id": "T1014",
        "severity": "high",
        "confidence": 0.6,
        "keys_on": "a live (not exited) task that psscan carves from memory but the kernel's task list lacks",
        "joins": ["memory/processes"],
        "grading": "high: unlinking a task is rootkit work; 0.6 because a task that is just exiting or "
        "damaged memory can look the same",
        "chain": "the process -> whatever of its sockets and files the scan could reach",
        "fn": hidden_process,
    },
    "proc.unexpected_listener": {
        "title": "Listening socket owned by an unexpected process",
        "attack_id": "T1571",
        "severity": "high",
        "confidence": 0.8,
        "keys_on": "a LISTEN (or bound) TCP/UDP socket owned by a shell or relay, an interpreter running inline "
        "code (`python3 -c`, `perl -e`), or a program running from a deleted or memfd file (high) or from a hidden "
        "or temporary location (medium)",
        "joins": ["memory/sockets", "memory/processes", "memory/cmdlines"],
        "grading": "high for shells, one-liners and deleted/memfd programs, which no service is; medium for odd "
        "locations",
        "chain": "the listener process -> its sockets -> flows to that port",
        "fn": unexpected_listener,
    },
}
