"""``acquire()``: plan every domain, then acquire them, ``io_slots`` at a time, Ctrl-C safe.

Nothing is touched until every named domain passed its checks
(:mod:`toolkit.acquire.plan`). Then the output directory and its custody log
are created and each domain is acquired (:mod:`toolkit.acquire.domain`) on a
worker thread, ``io_slots`` domains at once (one by default: one VM's memory
and disk I/O on the host at a time). SIGINT and SIGTERM only set a stop flag
while this runs: the domain being acquired is restored (resumed, captures
stopped, overlays merged back), domains not yet started are left alone, the
record is closed as ``incomplete`` and KeyboardInterrupt is raised at the end.

Example::

    summary = acquire(["web01"], Path("/evidence/web01-live"), AcquireOptions())
    summary["domains"]["web01"]["pause"]["seconds"]     # 1.4
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from toolkit.acquire import record as acq_record
from toolkit.acquire.domain import acquire_domain
from toolkit.acquire.plan import AcquireOptions, plan
from toolkit.errors import AcquireError

WAIT_SECONDS = 0.2


def _no_progress(description, completed=None, total=None):
    pass


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event):
    """While the block runs, SIGINT and SIGTERM set ``stop`` instead of raising (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop.set())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _staging() -> Path:
    """A private directory for the pipes QEMU and libvirt write into: others may pass through it
    (QEMU's user opens its capture pipe by name) but not list it."""
    staging = Path(tempfile.mkdtemp(prefix="snapscope-acquire-"))
    os.chmod(staging, 0o711)
    return staging


def _one(ctx: dict) -> dict | None:
    if ctx["stop"].is_set():
        acq_record.update_domain(ctx["record"], ctx["name"], status="not started", reason="interrupted")
        return None
    return acquire_domain(ctx)


def acquire(
    names: list[str], out_dir: Path, options: AcquireOptions, *, all_running: bool = False, progress=_no_progress
) -> dict:
    """Acquire ``names`` (and, with ``all_running``, every running domain) into ``out_dir``.

    Returns the acquisition manifest (``acquisition.json``). Raises AcquireError (one line) when a
    check fails, before any domain is touched, or when a domain's acquisition failed (the others
    still ran); KeyboardInterrupt after a signal, once everything is restored and recorded.
    """
    out_dir = Path(out_dir)
    domains, versions = plan(names, out_dir, options, all_running=all_running)
    stop = threading.Event()
    failures, bugs = {}, []
    with stop_on_signals(stop):
        record = acq_record.open_record(out_dir, options, versions, domains)
        staging = _staging()
        try:
            with cf.ThreadPoolExecutor(max_workers=options.io_slots, thread_name_prefix="acquire") as pool:
                futures = {}
                for domain in domains:
                    ctx = {
                        "uri": options.uri,
                        "name": domain["name"],
                        "plan": domain,
                        "options": options,
                        "record": record,
                        "out_dir": out_dir,
                        "staging": staging,
                        "stop": stop,
                    }
                    futures[pool.submit(_one, ctx)] = domain["name"]
                pending, finished = set(futures), 0
                progress("acquiring domains", 0, len(futures))
                while pending:
                    # short waits: the signal handler runs between them
                    done, pending = cf.wait(pending, timeout=WAIT_SECONDS)
                    for future in done:
                        finished += 1
                        progress("acquiring domains", finished, len(futures))
                        try:
                            future.result()
                        except KeyboardInterrupt:
                            stop.set()
                        except AcquireError as exc:
                            failures[futures[future]] = str(exc)
                        except Exception as exc:  # a bug in one domain's run: recorded, then raised below
                            bugs.append(exc)
                            failures[futures[future]] = f"internal error ({type(exc).__name__}): {exc}"
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if stop.is_set():
            acq_record.close_record(record, "incomplete", "interrupted by a signal")
            raise KeyboardInterrupt("acquisition interrupted")
        if failures:
            reason = "; ".join(f"{name}: {why}" for name, why in failures.items())
            acq_record.close_record(record, "incomplete", reason)
            if bugs:
                raise bugs[0]
            done = len(domains) - len(failures)
            raise AcquireError(f"{len(failures)} of {len(domains)} domain(s) not acquired ({done} done): {reason}")
        problems = [n for n, d in record["doc"]["domains"].items() if d.get("status") != "complete"]
        if problems:
            return acq_record.close_record(record, "incomplete", f"not complete: {', '.join(problems)}")
        return acq_record.close_record(record, "complete")
