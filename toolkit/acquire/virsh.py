"""Talking to libvirt through ``virsh``: one subprocess per call, never a shell.

Every call runs in its own session, so a Ctrl-C at the terminal reaches
snapscope alone: snapscope then finishes or aborts the libvirt job itself and
resumes the guest, instead of a killed ``virsh resume`` leaving it paused.
Domain names go after ``--domain`` (a name may start with a dash) and
virsh's own error lines become one :class:`AcquireError` line.

The parsers below read what virsh and QEMU print on this host (libvirt's
and QEMU's own output, not the guest's).

Example::

    versions = parse_version(run("qemu:///system", "version", "--daemon").stdout)
    versions["hypervisor"]      # 'QEMU 7.2.22'
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import time

from toolkit.errors import AcquireError, one_line

VIRSH = "virsh"
# C locale: the output parsed here is libvirt's English text
_ENV = {**os.environ, "LC_ALL": "C", "LANG": "C"}
POLL_SECONDS = 0.2
# once a job is told to stop, how long libvirt may take to end it before virsh is killed
STOP_GRACE_SECONDS = 120
NO_VIRSH = "virsh not found: snapscope acquire drives libvirt through it (install libvirt-clients)"


def command(uri: str, *args) -> list[str]:
    """The argv of one virsh call on ``uri`` (quiet: no banners to parse around)."""
    return [VIRSH, "-q", "-c", uri, *map(str, args)]


def error_text(proc) -> str:
    """virsh's error lines as one line (``error: a`` / ``error: b`` -> ``a: b``)."""
    lines = [line.strip() for line in (proc.stderr or "").splitlines() if line.strip()]
    lines = [line.removeprefix("error: ") for line in lines] or [f"virsh exited with status {proc.returncode}"]
    return one_line(": ".join(dict.fromkeys(lines)))


def start(uri: str, *args) -> subprocess.Popen:
    """Start one virsh command in its own session, output captured as text."""
    try:
        return subprocess.Popen(
            command(uri, *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_ENV,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise AcquireError(NO_VIRSH) from None


def run(uri: str, *args, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run one virsh command and wait for it; AcquireError (one line) when it fails and ``check``.

    Example: ``run("qemu:///system", "domstate", "--domain", "web01").stdout.strip()`` -> ``'running'``
    """
    proc = start(uri, *args)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AcquireError(f"{uri}: 'virsh {args[0]}' did not answer within {timeout:.0f}s") from None
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check and done.returncode:
        raise AcquireError(f"virsh {args[0]}: {error_text(done)}")
    return done


def run_until(uri: str, *args, stop, on_stop=None, timeout: float = 3600) -> subprocess.CompletedProcess:
    """Run a long virsh job (a dump, a live snapshot) while watching ``stop`` (a threading.Event).

    When ``stop`` is set, ``on_stop()`` is called once (it aborts the job: closes the pipe
    QEMU writes to, or asks libvirt to abort), and the job is then awaited, because a
    guest must not be resumed while libvirt still holds its job. Returns the finished
    process; the caller reads ``returncode``.

    Example: ``run_until(uri, "dump", "--domain", "web01", "--file", fifo, stop=stop, on_stop=abort)``
    """
    proc = start(uri, *args)
    deadline = time.monotonic() + timeout
    stopped = False
    while True:
        try:
            out, err = proc.communicate(timeout=POLL_SECONDS)
            return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        except subprocess.TimeoutExpired:
            pass
        if stop.is_set() and not stopped:
            stopped = True
            deadline = min(deadline, time.monotonic() + STOP_GRACE_SECONDS)
            if on_stop is not None:
                on_stop()
        if time.monotonic() > deadline:
            if on_stop is not None and not stopped:
                on_stop()
            proc.kill()
            proc.communicate()
            raise AcquireError(f"{uri}: 'virsh {args[0]}' did not finish within {timeout:.0f}s; aborted")


def start_event_watch(uri: str, domain: str) -> subprocess.Popen:
    """Start recording the domain's QEMU STOP/RESUME events (QEMU's own timestamps).

    End it with :func:`stop_event_watch`. virsh flushes what it printed on SIGINT.
    """
    watch = ["qemu-monitor-event", "--domain", domain, "--loop", "--timestamp", "--regex", "--event"]
    return start(uri, *watch, "^(STOP|RESUME)$")


def stop_event_watch(proc: subprocess.Popen) -> str:
    """End an event watch and return what it printed ('' if it could not run)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        out, _err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _err = proc.communicate()
    return out or ""


# ------------------------------------------------------------------ parsers

_VERSION_KEYS = {
    "Compiled against library": "compiled",
    "Using library": "library",
    "Using API": "api",
    "Running hypervisor": "hypervisor",
    "Running against daemon": "daemon",
}


def parse_version(text: str) -> dict:
    """``virsh version --daemon`` as a dict.

    >>> parse_version("Using library: libvirt 9.0.0\\nRunning hypervisor: QEMU 7.2.22\\n")
    {'library': 'libvirt 9.0.0', 'hypervisor': 'QEMU 7.2.22'}
    """
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in _VERSION_KEYS:
            out[_VERSION_KEYS[key.strip()]] = value.strip()
    return out


def parse_names(text: str) -> list[str]:
    """Names printed one per line (``virsh list --name``), blank lines dropped.

    >>> parse_names("web01\\n\\ndb01\\n")
    ['web01', 'db01']
    """
    return [line.strip() for line in text.splitlines() if line.strip()]


_NETDEV_LINE = re.compile(r"^ \\ ([A-Za-z0-9_.-]+): index=\d+,type=(\w+)")


def parse_netdevs(info_network: str) -> list[str]:
    """The host-side network backends (netdevs) in HMP ``info network`` output.

    >>> parse_netdevs("net0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56\\n"
    ...               " \\\\ hostnet0: index=0,type=tap,ifname=vnet0\\n")
    ['hostnet0']
    """
    return [m.group(1) for line in info_network.splitlines() if (m := _NETDEV_LINE.match(line))]


_EVENT_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+[+-]\d{4}): event (STOP|RESUME) ")


def parse_pause_events(text: str) -> list[tuple[dt.datetime, str]]:
    """(timestamp, "STOP"|"RESUME") from ``virsh qemu-monitor-event --timestamp`` output.

    >>> parse_pause_events("2026-12-02 01:37:40.186+0000: event STOP for domain 'x': <null>")[0][1]
    'STOP'
    """
    events = []
    for line in text.splitlines():
        m = _EVENT_LINE.match(line)
        if m:
            events.append((dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f%z"), m.group(2)))
    return events


def pause_intervals(events: list[tuple[dt.datetime, str]]) -> list[tuple[dt.datetime, dt.datetime]] | None:
    """STOP..RESUME pairs in order; None when the record is not a clean alternation
    (the watch started after a STOP, or ended before the RESUME): then it cannot be trusted.

    >>> t = lambda s: dt.datetime.fromisoformat(f"2026-01-01T00:00:{s}+00:00")
    >>> [(b - a).total_seconds() for a, b in pause_intervals([(t("01"), "STOP"), (t("03"), "RESUME")])]
    [2.0]
    """
    pairs, stopped_at = [], None
    for ts, kind in events:
        if kind == "STOP":
            if stopped_at is not None:
                return None
            stopped_at = ts
        else:
            if stopped_at is None:
                return None
            pairs.append((stopped_at, ts))
            stopped_at = None
    return pairs if stopped_at is None else None
