"""Correlation rules: plain functions over one snapshot's tables and graph.

Each rule yields *hits*: ``{"entity": node id, "explanation": text built from
row values, "links": [row links], "confidence": 0..1, "severity": optional
override}`` (``sigma.match``, which stands for many Sigma rules, also sets
``rule_id`` and ``title``). A rule states what the rows show and nothing more. The registry
:data:`RULES` maps rule id -> metadata + function; a test walks it.
"""

from __future__ import annotations

import re

from toolkit.correlate.graph import history_paths, owner_process
from toolkit.correlate.links import frame, hit, link, pid_of, truthy, value
from toolkit.correlate.sigma.findings import sigma_match
from toolkit.schemas import SEVERITY_RANK, split_deleted

KERNEL_THREAD_NAME = re.compile(
    r"^\[?(kworker/|ksoftirqd/|kthreadd|migration/|rcu_|kswapd|watchdog/|cpuhp/|khugepaged|kcompactd|"
    r"jbd2/|kauditd|oom_reaper|writeback|kblockd|irq/|idle_inject/|scsi_eh_|ext4-rsv)"
)
SUSPICIOUS_DIRS = ("/tmp/", "/var/tmp/", "/dev/shm/", "/run/shm/", "/var/run/", "/run/user/")
DOWNLOADERS = re.compile(r"\b(wget|curl|tftp|scp|ftp|fetch|nc|ncat|busybox\s+wget)\b")
SHELLS = {"sh", "bash", "dash", "zsh", "ash", "ksh", "nc", "ncat", "socat", "python", "python3", "perl"}


HOME_DIRS = ("/root/", "/home/")


def is_hidden_or_temp(path: str | None) -> bool:
    """memfd, a temporary directory, a hidden directory anywhere, or a hidden
    file outside home directories (where dotfiles such as .bashrc are normal)."""
    if not path:
        return False
    if path.startswith("memfd:") or path.startswith("/memfd:"):
        return True
    if any(path.startswith(d) for d in SUSPICIOUS_DIRS):
        return True
    parts = [p for p in path.split("/") if p]
    if any(p.startswith(".") and p not in (".", "..") for p in parts[:-1]):
        return True
    return bool(parts) and parts[-1].startswith(".") and not path.startswith(HOME_DIRS)


def _proc_rows(tables):
    procs = frame(tables, "memory/processes")
    return procs.iterrows()


def _process_hit(sid: str, i: int, row, confidence: float, explanation: str) -> dict:
    """A hit about the process of ``memory/processes`` row ``i``, proven by that row."""
    return hit(f"process:{pid_of(row)}", [link("memory/processes", sid, i)], confidence, explanation)


def kernel_thread_masquerade(tables, graph, sid):
    """A process named like a kernel thread ([kworker/...]) that has user-space memory."""
    for i, r in _proc_rows(tables):
        name = value(r, "process") or ""
        if KERNEL_THREAD_NAME.match(name) and value(r, "is_kernel_thread") is False:
            exe = value(r, "exe_path")
            why = (
                f"pid {pid_of(r)} is named {name!r} like a kernel worker thread, but it is a "
                f"user-space process" + (f" running {exe!r}" if exe else "") + "."
            )
            yield _process_hit(sid, i, r, 0.9, why)


def deleted_executable(tables, graph, sid):
    """A process whose executable was unlinked after it started (the kernel says "(deleted)")."""
    for i, r in _proc_rows(tables):
        exe, suffix_deleted = split_deleted(value(r, "exe_path") or None)
        if truthy(value(r, "exe_deleted")) or suffix_deleted:
            why = (
                f"pid {pid_of(r)} ({value(r, 'process')!r}) runs from {exe!r}, a file that was "
                f"deleted after the process started."
            )
            yield _process_hit(sid, i, r, 0.9, why)


def suspicious_exec_path(tables, graph, sid):
    """A process executing from memfd, a temporary directory or a hidden (dot) directory."""
    for i, r in _proc_rows(tables):
        exe, _ = split_deleted(value(r, "exe_path") or None)
        if exe and is_hidden_or_temp(exe):
            why = f"pid {pid_of(r)} ({value(r, 'process')!r}) executes {exe!r}, a memfd, hidden or temporary location."
            yield _process_hit(sid, i, r, 0.7, why)


def hidden_process(tables, graph, sid):
    """A live task a memory scan finds that the kernel's task list does not hold."""
    for i, r in _proc_rows(tables):
        exited = str(value(r, "exit_state") or "").startswith("EXIT_")  # a dead task's leftovers, not a hidden one
        if truthy(value(r, "in_scan")) and value(r, "in_list") is False and not exited:
            why = (
                f"pid {pid_of(r)} ({value(r, 'process')!r}) was found by a memory scan but "
                f"is missing from the kernel's task list."
            )
            yield _process_hit(sid, i, r, 0.6, why)


def _suspicious_owner(graph, pid) -> str | None:
    node = graph["nodes"].get(f"process:{pid}")
    if not node:
        return None
    name = node.get("process") or ""
    if node.get("deleted"):
        return "runs from a deleted file"
    if KERNEL_THREAD_NAME.match(name):
        return "poses as a kernel thread"
    if is_hidden_or_temp(node.get("exe")):
        return "runs from a hidden or temporary path"
    if name in SHELLS:
        return f"is a shell/interpreter ({name})"
    return None


def unexpected_outbound(tables, graph, sid):
    """An ESTABLISHED or SYN_SENT connection owned by a process that is suspicious for another reason."""
    socks = frame(tables, "memory/sockets")
    for i, r in socks.iterrows():
        state = str(value(r, "state", "")).upper()
        if value(r, "dst_port") in (None, 0) or state not in ("ESTABLISHED", "SYN_SENT"):
            continue
        reason = _suspicious_owner(graph, pid_of(r))
        if reason:
            why = (
                f"pid {pid_of(r)} {reason} and holds an {state} {value(r, 'proto')} connection "
                f"{value(r, 'src_ip')}:{value(r, 'src_port')} -> {value(r, 'dst_ip')}:{value(r, 'dst_port')}."
            )
            yield hit(f"process:{pid_of(r)}", [link("memory/sockets", sid, i)], 0.8, why)


def periodic_flows(tables, graph, sid):
    """A flow whose initiator sends at regular intervals (at least 3, variation under 20 %)."""
    flows = frame(tables, "network/flows")
    for i, r in flows.iterrows():
        n = value(r, "beacon_intervals")
        mean, cv = value(r, "beacon_interval_mean"), value(r, "beacon_interval_cv")
        if n is not None and mean is not None and cv is not None and n >= 3 and cv < 0.2:
            owner = _flow_owner(graph, value(r, "flow_id"))
            why = (
                f"flow {value(r, 'src_ip')}:{value(r, 'src_port')} -> {value(r, 'dst_ip')}:"
                f"{value(r, 'dst_port')} sent {n + 1} payloads about every {mean:.1f}s "
                f"(variation {cv:.0%}), like a beacon."
            )
            yield hit(owner or f"flow:{value(r, 'flow_id')}", [link("network/flows", sid, i)], 0.7, why)


def _flow_owner(graph, flow_id) -> str | None:
    return owner_process(graph, f"flow:{flow_id}")


def persistence_target(tables, graph, sid):
    """High when the entry runs a hidden/temporary file or the image of a suspicious
    running process; a benign service that is simply running now is only noted (low)."""
    pers = frame(tables, "disk/persistence")
    for i, r in pers.iterrows():
        target = value(r, "program_path")
        if not target or target == value(r, "path"):
            continue  # e.g. a shell rc file: the entry is its own content, not a program
        links = [link("disk/persistence", sid, i)]
        reasons, severity = [], "low"
        if is_hidden_or_temp(target):
            reasons.append(f"runs {target!r}, a hidden or temporary file")
            severity = "high"
        procs = [a for a, b, _rel, _links in graph["edges"] if b == f"file:{target}" and a.startswith("process:")]
        for proc in procs:
            owner_reason = _suspicious_owner(graph, graph["nodes"][proc].get("pid"))
            reasons.append(
                f"its program is the image of running {graph['nodes'][proc]['label']}"
                + (f", which {owner_reason}" if owner_reason else "")
            )
            if owner_reason:
                severity = "high"
            links += [lk for a, b, _rel, ls in graph["edges"] if a == proc and b == f"file:{target}" for lk in ls]
        if reasons:
            entity = procs[0] if procs else f"file:{target}"
            why = (
                f"{value(r, 'kind', 'persistence')} entry {value(r, 'path')!r} "
                + "; ".join(reasons)
                + (f" (sha256 {value(r, 'program_sha256')})" if value(r, "program_sha256") else "")
                + "."
            )
            yield hit(entity, links, 0.8 if procs else 0.6, why, severity=severity)


def ld_preload(tables, graph, sid):
    """A non-empty /etc/ld.so.preload: a library loaded into every dynamic program."""
    pers = frame(tables, "disk/persistence")
    for i, r in pers.iterrows():
        if str(value(r, "path", "")).endswith("ld.so.preload") and (value(r, "program") or value(r, "line")):
            why = (
                f"/etc/ld.so.preload is not empty: it loads {value(r, 'program') or value(r, 'line')!r} "
                f"into every dynamically linked program."
            )
            yield hit(f"file:{value(r, 'path')}", [link("disk/persistence", sid, i)], 0.9, why)


def ssh_keys(tables, graph, sid):
    """An authorised SSH key (noted; a key alone is no intrusion)."""
    pers = frame(tables, "disk/persistence")
    for i, r in pers.iterrows():
        if "authorized_keys" in str(value(r, "path", "")):
            why = (
                f"an SSH key is authorised in {value(r, 'path')!r}"
                + (f" for user {value(r, 'user')!r}" if value(r, "user") else "")
                + "."
            )
            yield hit(f"file:{value(r, 'path')}", [link("disk/persistence", sid, i)], 0.5, why)


def kernel_hooks(tables, graph, sid):
    """A kernel check Volatility flags (hooks), or a loaded module hidden from the module list."""
    checks = frame(tables, "memory/kernel_checks")
    for i, r in checks.iterrows():
        if truthy(value(r, "suspicious")):
            why = f"kernel check {value(r, 'check')!r} flagged {value(r, 'name') or value(r, 'detail')!r}."
            yield hit(f"kernel:{value(r, 'check')}", [link("memory/kernel_checks", sid, i)], 0.8, why)
    mods = frame(tables, "memory/modules")
    for i, r in mods.iterrows():
        if truthy(value(r, "hidden")):
            why = f"kernel module {value(r, 'name')!r} is loaded but hidden from the module list."
            yield hit(f"module:{value(r, 'name')}", [link("memory/modules", sid, i)], 0.8, why)


def download_then_execute(tables, graph, sid):
    """Shell history (disk or memory) that downloads a file and later executes it."""
    for table in ("disk/shell_history", "memory/shell_history"):
        hist = frame(tables, table)
        downloaded: dict[str, int] = {}
        for i, r in hist.iterrows():
            command = value(r, "command") or ""
            if DOWNLOADERS.search(command):
                for path in history_paths(command):
                    downloaded[path] = i
            for path, j in list(downloaded.items()):
                runs = any(w == path for w in command.split()) and not DOWNLOADERS.search(command)
                if runs and not command.lstrip().startswith(("rm ", "chmod ", "ls ", "cat ")):
                    entity = next(
                        (n["id"] for n in graph["nodes"].values() if n["kind"] == "process" and n.get("exe") == path),
                        f"file:{path}",
                    )
                    why = (
                        f"shell history downloads {path!r} ({value(hist.loc[j], 'command')!r}) and "
                        f"then executes it ({command!r})."
                    )
                    yield hit(entity, [link(table, sid, j), link(table, sid, i)], 0.8, why)
                    del downloaded[path]


def yara_match(tables, graph, sid):
    """One finding per rule and entity. Process, file and stream hits are tied to the
    process behind them when the graph knows it; physical-memory hits become a finding
    of their own only for a rule that matched nowhere else (what no process maps)."""
    matches = frame(tables, "yara/matches")
    if not len(matches):
        return
    elsewhere = set(matches.loc[matches["target"] != "physical", "rule"]) if "target" in matches else set()
    physical = matches[matches["target"] == "physical"] if "target" in matches else matches.iloc[0:0]
    seen = set()
    for i, r in matches.iterrows():
        target = value(r, "target")
        if target == "physical" and value(r, "rule") in elsewhere:
            continue
        node = {
            "process": f"process:{pid_of(r)}",
            "file": f"file:{value(r, 'path')}",
            "stream": f"flow:{value(r, 'flow_id')}",
        }.get(target, f"{target}:memory")
        owner = owner_process(graph, node) or node
        key = (value(r, "rule"), owner)
        if key in seen:
            continue  # the other hits are in the entity's chain
        seen.add(key)
        where = {
            "process": f"the memory of pid {pid_of(r)} ({value(r, 'process')!r})",
            "file": f"file {value(r, 'path')!r}",
            "stream": f"the network stream of flow {value(r, 'flow_id')}",
        }.get(target, f"{target} memory")
        also = int((physical["rule"] == value(r, "rule")).sum()) if target != "physical" else 0
        severity = value(r, "severity") or "medium"
        confidence, caveat = 0.7, ""
        if target == "physical":
            # Bytes no process, file or stream holds: page cache, a tmpfs file or freed
            # memory. Worth a look, but the rows do not show anything running.
            severity = min(severity, "medium", key=lambda s: SEVERITY_RANK.get(s, 2))
            confidence, caveat = (
                0.4,
                " (no process, file or stream holds these bytes: page cache, tmpfs or freed memory)",
            )
        why = (
            f"YARA rule {value(r, 'rule')!r} ({value(r, 'description') or 'no description'}) matched "
            f"in {where} at offset {value(r, 'offset')}{caveat}"
            + (f"; {also} more hits in physical memory" if also else "")
            + "."
        )
        yield hit(
            owner, [link("yara/matches", sid, i)], confidence, why, severity=severity, attack_id=value(r, "attack_id")
        )


RULES: dict[str, dict] = {
    "proc.kernel_thread_masquerade": {
        "title": "User process posing as a kernel thread",
        "severity": "high",
        "attack_id": "T1036.004",
        "fn": kernel_thread_masquerade,
    },
    "proc.deleted_executable": {
        "title": "Process running from a deleted file",
        "severity": "high",
        "attack_id": "T1070.004",
        "fn": deleted_executable,
    },
    "proc.suspicious_exec_path": {
        "title": "Execution from memfd, hidden or temporary path",
        "severity": "medium",
        "attack_id": "T1564.001",
        "fn": suspicious_exec_path,
    },
    "proc.hidden": {
        "title": "Process only a memory scan finds",
        "severity": "high",
        "attack_id": "T1014",
        "fn": hidden_process,
    },
    "net.unexpected_outbound": {
        "title": "Outbound connection from a process that should not have one",
        "severity": "high",
        "attack_id": "T1071",
        "fn": unexpected_outbound,
    },
    "net.periodic_beacon": {
        "title": "Periodic beacon-like traffic",
        "severity": "medium",
        "attack_id": "T1071",
        "fn": periodic_flows,
    },
    "persist.suspicious_target": {
        "title": "Persistence runs a hidden file or a binary running now",
        "severity": "high",
        "attack_id": "T1053.003",
        "fn": persistence_target,
    },
    "persist.ld_preload": {
        "title": "Non-empty /etc/ld.so.preload",
        "severity": "high",
        "attack_id": "T1574.006",
        "fn": ld_preload,
    },
    "persist.ssh_key": {"title": "SSH key authorised", "severity": "low", "attack_id": "T1098.004", "fn": ssh_keys},
    "kernel.hooks": {
        "title": "Kernel hook or hidden module",
        "severity": "critical",
        "attack_id": "T1014",
        "fn": kernel_hooks,
    },
    "history.download_execute": {
        "title": "Download then execute in shell history",
        "severity": "high",
        "attack_id": "T1105",
        "fn": download_then_execute,
    },
    "yara.match": {"title": "YARA rule match", "severity": "medium", "attack_id": None, "fn": yara_match},
    # each finding carries the Sigma rule's own id (sigma:<id>), title, level and techniques
    "sigma.match": {"title": "Sigma rule match", "severity": "medium", "attack_id": None, "fn": sigma_match},
}
