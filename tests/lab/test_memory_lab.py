"""Memory engine against the lab guest's ground truth (what the guest itself reported).

For every memory artefact format the lab writes: every process the guest
listed is found with the same pid, ppid and name, the implant is marked as
running from a deleted file, and every TCP/UDP socket from the guest's
/proc/net/* is found with its owning pid. Symbols are built from the dump,
offline, into a per-session cache (never ~/.cache).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.engines import EngineContext, memory
from toolkit.engines.memory import symbols
from toolkit.engines.memory.session import open_memory
from toolkit.hashing import sha256_file
from toolkit.profiles import load_profile

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
MEMORY_FORMATS = ("elf-core", "kdump-flattened", "qemu-migration", "libvirt-save", "qcow2-savevm")
# Enough to check processes, sockets (with inodes from lsof) and the implant's image, without
# the whole-memory scans that make triage slow; the ELF gets the full triage profile below.
SMALL_PLUGINS = ["linux.pslist.PsList", "linux.sockstat.Sockstat", "linux.lsof.Lsof", "snapscope.executables"]


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory-lab")
    return {"cache_dir": root / "cache", "derived_dir": root / "derived", "symbols_cache": root / "symbols"}


def _profile(tmp: Path, plugins: list[str]) -> dict:
    path = tmp / "lab-small.toml"
    path.write_text(
        '[profile]\nos = "linux"\n[memory]\nplugins = [\n'
        + "".join(f'  {{ name = "{p}" }},\n' for p in plugins)
        + "]\n"
    )
    return load_profile(path)


def memory_artefacts(ground_truth: dict, kind: str) -> list[dict]:
    """Artefacts of one kind, as {path, format, run, moment, snapshot}."""
    out = []
    for a in ground_truth["artefacts"]:
        if kind == "qcow2-savevm" and a["format"] == "qcow2":
            for snap in a.get("facts", {}).get("snapshots", []):
                if snap.get("has_vm_state"):
                    out.append({**a, "snapshot": snap["name"]})
        elif a["format"] == kind:
            out.append({**a, "snapshot": None})
    return out


def _ctx(work, profile, tag, **more) -> EngineContext:
    return EngineContext(
        snapshot_id=tag,
        derived_dir=work["derived_dir"] / tag,
        cache_dir=work["cache_dir"],
        symbols_cache=work["symbols_cache"],
        profile=profile,
        **more,
    )


def _analyse(lab, artefact, work, profile, tag):
    """(tables, the readers the engine left) for one memory artefact of the lab."""
    snapshot = {
        "id": tag,
        "memory": {"path": str(lab / artefact["path"]), "format": artefact["format"], "snapshot": artefact["snapshot"]},
    }
    ctx = _ctx(work, profile, tag)
    return memory.run(snapshot, ctx), ctx.readers


def same_name(guest: str, memory: str) -> bool:
    """Guest ps shows /proc/PID/comm: kernel threads keep their full name and
    workqueue workers add '-<queue>'; the task's own comm is 15 bytes."""
    return guest == memory or (len(memory) == 15 and guest.startswith(memory)) or guest.startswith(memory + "-")


def check_processes(tables, run: dict, all_processes: bool):
    procs = tables["memory/processes"]
    listed = {int(r.pid): r for r in procs[procs["in_list"].fillna(False).astype(bool)].itertuples()}
    expected = [p for p in run["processes"] if all_processes or not p["kernel_thread"]]
    problems = []
    for p in expected:
        row = listed.get(p["pid"])
        if row is None:
            problems.append(f"pid {p['pid']} {p['comm']!r} missing")
        elif row.ppid != p["ppid"] or not same_name(p["comm"], row.process):
            problems.append(
                f"pid {p['pid']}: guest ({p['ppid']}, {p['comm']!r}) != memory ({row.ppid}, {row.process!r})"
            )
    assert not problems, problems
    implant = listed[run["implant_pid"]]
    assert implant.exe_deleted == True and implant.exe_path == run["implant_exe"].removesuffix(" (deleted)")  # noqa: E712
    assert implant.is_kernel_thread == False  # noqa: E712  masquerades as a kworker, but has an mm


def _ip(value):
    return ipaddress.ip_address(value)


def check_sockets(tables, run: dict):
    socks = tables["memory/sockets"]
    found = {
        (r.proto, _ip(r.src_ip), r.src_port, _ip(r.dst_ip), r.dst_port, r.pid, r.inode) for r in socks.itertuples()
    }
    expected = [s for key in ("tcp", "udp", "tcp6", "udp6") for s in run[key]]
    assert expected, "ground truth lists no sockets"
    missing = [
        s
        for s in expected
        if (
            s["proto"].rstrip("6"),
            _ip(s["local_ip"]),
            s["local_port"],
            _ip(s["remote_ip"]),
            s["remote_port"],
            s["pid"],
            s["inode"],
        )
        not in found
    ]
    assert not missing, (missing, socks.to_dict("records"))
    beacon = run["beacon"]
    row = socks[(socks["pid"] == beacon["pid"]) & (socks["dst_port"] == beacon["remote_port"])].iloc[0]
    assert row["state"] == "ESTABLISHED"


def check_executables(tables, ground_truth, lab, run):
    exes = tables["memory/executables"]
    implant = exes[exes["pid"] == run["implant_pid"]].iloc[0]
    assert implant["build_id"] == ground_truth["implant"]["build_id"]
    assert implant["deleted"] == True and implant["e_machine"] == 62  # noqa: E712
    disk_head = (lab / "guest" / "implant").read_bytes()[:4096]
    assert implant["first_page_sha256"] == hashlib.sha256(disk_head).hexdigest()


@pytest.fixture(scope="session")
def elf_triage(lab, work):
    """The qemu run's ELF dump through the whole linux-triage profile (built symbols)."""
    artefact = memory_artefacts(json.loads((lab / "ground_truth.json").read_text()), "elf-core")[0]
    tables, readers = _analyse(lab, artefact, work, load_profile("linux-triage"), "elf-triage")
    return artefact, tables, readers


def test_triage_on_elf_matches_ground_truth(lab, ground_truth, elf_triage):
    artefact, tables, _shared = elf_triage
    run = ground_truth["runs"][artefact["run"]]
    check_processes(tables, run, all_processes=True)
    check_sockets(tables, run)
    check_executables(tables, ground_truth, lab, run)
    runs = tables["memory/plugin_runs"]
    assert (runs["status"] == "ok").all(), runs[runs["status"] != "ok"].to_dict("records")
    # every plugin the profile lists ran, once
    assert sorted(runs["plugin"]) == sorted(p["name"] for p in load_profile("linux-triage")["memory"]["plugins"])
    diagnostics = tables["diagnostics"]
    assert set(diagnostics["severity"]) <= {"info"}, diagnostics.to_dict("records")
    # busybox sh keeps no history: empty table plus an info diagnostic, not an error
    assert len(tables["memory/shell_history"]) == 0
    assert (diagnostics["what"] == "shell history").any()


def test_symbols_recorded_in_info(elf_triage, ground_truth, work):
    _artefact, tables, _shared = elf_triage
    info = tables["memory/info"].iloc[0]
    assert info["banner"].startswith(ground_truth["guest"]["kernel_banner"])
    assert info["isf_origin"] == "built"
    assert info["isf_sha256"] == sha256_file(info["isf_path"])
    assert Path(info["isf_path"]).is_relative_to(work["symbols_cache"])
    # cached under the banner and the image it was built from: only this image reuses it
    image_sha256 = sha256_file(info["image_path"])
    assert Path(info["isf_path"]).name == symbols.cache_name(info["banner"], image_sha256)
    origin = symbols.read_origin(Path(info["isf_path"]))
    assert origin["image_sha256"] == image_sha256 and origin["isf_sha256"] == info["isf_sha256"]
    assert info["dtb"] > 0 and info["plugins_failed"] == 0


def test_process_regions_for_yara_read_the_implant(elf_triage, ground_truth):
    """The readers left for YARA: the implant's heap or stack holds the beacon marker
    (built at run time, not in the binary), read through its own page tables."""
    artefact, _tables, readers = elf_triage
    pid = ground_truth["runs"][artefact["run"]]["implant_pid"]
    regions = [r for r in readers.memory_regions if r["pid"] == pid]
    assert {r["path"] for r in regions if r["deleted"]} == {"/tmp/.kw"}
    marker = ground_truth["marker"].encode()
    hits = [r["path"] for r in regions if marker in r["read"](r["start"], r["end"] - r["start"])]
    assert set(hits) & {"[heap]", "[stack]"}, hits
    image = readers.memory_image
    assert image.runs and len(image.read(image.runs[0][0], 4096)) == 4096


def test_volatility_caches_stay_in_cache_dir(elf_triage, work):
    # one Volatility cache per symbol set (here: the one built ISF), filled once
    sets = [d for d in (work["cache_dir"] / "volatility").iterdir() if d.is_dir()]
    assert len(sets) == 1
    vol_cache = sets[0] / "volatility3"
    assert (vol_cache / "identifier.cache").is_file() and (vol_cache / "valid_isf.hashcache").is_file()
    assert (sets[0] / "snapscope-identifiers-filled").is_file()


@pytest.mark.parametrize("kind", MEMORY_FORMATS)
def test_every_memory_format(lab, ground_truth, work, tmp_path, kind):
    artefacts = memory_artefacts(ground_truth, kind)
    assert artefacts, f"the lab wrote no {kind} artefact"
    profile = _profile(tmp_path, SMALL_PLUGINS)
    for artefact in artefacts:
        tag = f"{kind}-{artefact['run']}-{Path(artefact['path']).stem}"
        tables, _readers = _analyse(lab, artefact, work, profile, tag)
        errors = tables["diagnostics"][tables["diagnostics"]["severity"] == "error"]
        assert errors.empty, (artefact["path"], errors.to_dict("records"))
        run = ground_truth["runs"][artefact["run"]]
        # The guest listed its processes right before its first pause; later moments
        # (a second pause for `virsh dump`/`save`) may have other kernel workers.
        first_moment = artefact["moment"] == run["moments"][0]["id"]
        check_processes(tables, run, all_processes=first_moment)
        check_sockets(tables, run)
        check_executables(tables, ground_truth, lab, run)
        # read in place: the case holds no copy of the guest's RAM (aim: under 5 % of it per snapshot)
        derived = sum(f.stat().st_blocks * 512 for f in (work["derived_dir"] / tag).rglob("*") if f.is_file())
        ram = ground_truth["guest"]["ram_mib"] << 20
        assert derived <= ram // 20, (artefact["path"], derived, ram)
        shutil.rmtree(work["derived_dir"] / tag, ignore_errors=True)


def _corrupt_task_list(src: Path, dst: Path, work) -> None:
    """Overwrite init_task.tasks (next and prev) in a copy of the dump."""
    session, _info, _d = open_memory(
        {"id": "corrupt", "memory": str(src)}, _ctx(work, load_profile("linux-triage"), "corrupt")
    )
    kernel = session["context"].modules[session["kernel"]]
    tasks = kernel.object_from_symbol("init_task").tasks.vol.offset
    phys, _ = session["context"].layers[session["layer"]].translate(tasks)
    head = src.read_bytes()[: 1 << 16]
    (phoff,) = struct.unpack_from("<Q", head, 32)
    (phnum,) = struct.unpack_from("<H", head, 56)
    for i in range(phnum):
        p_type, _f, offset, _v, paddr, size = struct.unpack_from("<IIQQQQ", head, phoff + 56 * i)
        if p_type == 1 and paddr <= phys < paddr + size:
            subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
            os.chmod(dst, 0o600)
            with open(dst, "r+b") as fh:
                fh.seek(offset + phys - paddr)
                fh.write(b"\x41" * 16)
            return
    raise AssertionError("init_task not in any PT_LOAD")


def test_damaged_task_list_still_yields_scan(lab, ground_truth, work, tmp_path, elf_triage):
    artefact, _tables, _shared = elf_triage
    damaged = tmp_path / "damaged.elf"
    _corrupt_task_list(lab / artefact["path"], damaged, work)
    profile = _profile(tmp_path, ["linux.pslist.PsList", "linux.psscan.PsScan", "linux.lsmod.Lsmod"])
    tables = memory.run({"id": "damaged", "memory": str(damaged)}, _ctx(work, profile, "damaged"))
    procs = tables["memory/processes"]
    run = ground_truth["runs"][artefact["run"]]
    implant = procs[procs["pid"] == run["implant_pid"]].iloc[0]
    assert implant["in_scan"] == True and implant["in_list"] == False  # noqa: E712
    assert len(tables["memory/modules"]) == len(run["modules"])  # other structures still read
    diag = tables["diagnostics"]
    assert ((diag["severity"] == "error") & (diag["what"] == "kernel task list")).any(), diag.to_dict("records")


def test_wrong_user_isf_is_reported_and_not_used(lab, work, tmp_path, elf_triage):
    artefact, tables, _shared = elf_triage
    built = json.loads(Path(tables["memory/info"].iloc[0]["isf_path"]).read_text())
    other = b"Linux version 5.10.0-99-other (nobody@example) #1 SMP\n\x00"
    built["symbols"]["linux_banner"]["constant_data"] = base64.b64encode(other).decode()
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "wrong.json").write_text(json.dumps(built))
    profile = _profile(tmp_path, ["linux.pslist.PsList"])
    result = memory.run(
        {"id": "wrong-isf", "memory": str(lab / artefact["path"])},
        _ctx(work, profile, "wrong-isf", symbols=(tmp_path / "user",)),
    )
    diag = result["diagnostics"]
    warning = diag[diag["what"] == "ISF does not match this kernel"]
    assert len(warning) == 1 and "5.10.0-99-other" in warning.iloc[0]["why"]
    assert result["memory/info"].iloc[0]["isf_origin"] == "cache"
    assert len(result["memory/processes"]) > 40


def test_image_without_a_kernel(tmp_path, work):
    junk = tmp_path / "not-memory.raw"
    junk.write_bytes(os.urandom(1 << 20))
    tables = memory.run({"id": "junk", "memory": str(junk)}, _ctx(work, load_profile("linux-triage"), "junk"))
    diag = tables["diagnostics"]
    assert (diag["severity"] == "error").any()
    assert diag["why"].str.contains("no Linux kernel banner").any()
    assert len(tables["memory/info"]) == 1 and "memory/processes" not in tables


def test_symbol_build_offline(lab, ground_truth, tmp_path):
    """`symbols build` with the network unavailable: a fresh network namespace
    when unshare works, and in any case sockets that refuse to connect."""
    artefact = memory_artefacts(ground_truth, "elf-core")[0]
    home = tmp_path / "home"
    home.mkdir()
    script = (
        "import socket, sys\n"
        "def refuse(*a, **k): raise OSError('network disabled by test')\n"
        "socket.socket.connect = refuse\nsocket.create_connection = refuse\nsocket.getaddrinfo = refuse\n"
        "from toolkit.cli.symbols import app\n"
        "sys.argv = ['snapscope-symbols', 'build', sys.argv[1], '--out', sys.argv[2], '--json']\napp()\n"
    )
    cmd = [sys.executable, "-c", script, str(lab / artefact["path"]), str(tmp_path / "isf")]
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        cmd = ["unshare", "-n"] + cmd
    env = dict(os.environ, HOME=str(home), PYTHONPATH=str(REPO))
    env.pop("XDG_CACHE_HOME", None)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["banner"].startswith(ground_truth["guest"]["kernel_banner"])
    assert Path(result["isf_path"]).is_file() and len(result["sha256"]) == 64
    assert result["built_from"] == sha256_file(lab / artefact["path"])
    assert symbols.read_origin(Path(result["isf_path"]))["image_sha256"] == result["built_from"]
    assert list(home.iterdir()) == [], "the build wrote into the user's home"
