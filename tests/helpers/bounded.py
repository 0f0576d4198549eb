"""Run a snippet in a fresh interpreter and measure what it cost: peak RSS above
the interpreter's own after imports, wall time, outcome.

The measurement happens in a child so that pytest's own memory does not count,
under an address-space cap (a regression must fail the test, not the machine)
and a timeout (a hang fails too).

Example::

    r = measure("img = M.open_image(P)", setup="import toolkit.memory as M", P=str(path))
    assert r["ok"] and r["grew_mb"] < 64
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ADDRESS_SPACE = 6 << 30  # the child's cap: far above any bound asserted, far below the machine

# Peak RSS is read from VmHWM, the high-water mark of this process's own memory: ru_maxrss keeps the
# parent's resident size across fork and exec, so a child of a large pytest process would inherit it.
_TEMPLATE = """
import json, resource, sys, time, traceback
sys.path.insert(0, {root!r})
def _hwm_kb():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
{setup}
base = _hwm_kb()
t0 = time.monotonic()
result = {{"ok": True}}
try:
{body}
except BaseException as exc:
    result = {{"ok": False, "error": type(exc).__name__, "message": str(exc)[:2000],
              "is_snapscope": exc.__class__.__module__ == "toolkit.errors"}}
result["seconds"] = time.monotonic() - t0
result["base_kb"] = base
result["peak_kb"] = _hwm_kb()
print("@@RESULT@@" + json.dumps(result, default=str))
"""


def _cap():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def measure(body: str, *, setup: str = "", timeout: float = 60, env: dict | None = None, **values) -> dict:
    """Run ``body`` (after ``setup``, with ``values`` bound as globals) in a child.

    Returns {ok, error, message, is_snapscope, seconds, grew_mb, peak_mb, out}
    where ``out`` is whatever the body stored in the global ``out`` (JSON-able).
    A timeout gives ok=False, error="timeout".
    """
    bind = "".join(f"{k} = {v!r}\n" for k, v in values.items())
    code = _TEMPLATE.format(
        root=str(ROOT),
        setup=textwrap.dedent(setup) + "\n" + bind + "out = None",
        body=textwrap.indent(textwrap.dedent(body) + "\nresult['out'] = out", "    "),
    )
    child_env = dict(os.environ, **(env or {}))
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env,
            preexec_fn=_cap,
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": "timeout", "seconds": time.monotonic() - started, "grew_mb": None}
    line = next((x for x in proc.stdout.splitlines() if x.startswith("@@RESULT@@")), None)
    if line is None:
        return {"ok": False, "error": f"child died (rc {proc.returncode})", "message": proc.stderr[-2000:]}
    r = json.loads(line[len("@@RESULT@@") :])
    r["grew_mb"] = (r["peak_kb"] - r["base_kb"]) / 1024
    r["peak_mb"] = r["peak_kb"] / 1024
    return r
