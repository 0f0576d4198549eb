"""The fleet lab (fixtures/lab/fleet.py): linked clones of one base image, each booted once, some
infected, some clean, one deliberately corrupt. Its truth must be coherent with the files on disk, so
batch-audit tests can trust it. Uses the session fixture `fleet` (tests/conftest.py)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def truth(fleet) -> dict:
    return json.loads((fleet / "fleet_truth.json").read_text())


def _vms(truth, scenario):
    return [v for v in truth["vms"] if v["scenario"] == scenario]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _qcow2_backing_as_written(path: Path) -> str:
    """Read from the header itself, so it works on the damaged overlay too."""
    head = path.read_bytes()[:65536]
    assert head[:4] == b"QFI\xfb"
    off, size = struct.unpack(">QI", head[8:20])
    return head[off : off + size].decode()


def test_plan_and_layout(truth, fleet):
    assert truth["fleet_version"] == 1 and fleet.name == f"fleet-{truth['key']}"
    names = [v["name"] for v in truth["vms"]]
    assert len(names) == len(set(names)) == truth["count"] >= 6
    assert len(_vms(truth, "infected")) >= 2 and len(_vms(truth, "clean")) >= 2
    assert [v["name"] for v in _vms(truth, "corrupt")] == truth["scenarios"]["corrupt"] == [names[-1]]
    for v in truth["vms"]:
        for f in ("memory.elf", "disk.qcow2", "net.pcap", "serial.log"):
            assert (fleet / v["dir"] / f).stat().st_size > 0, (v["name"], f)
        assert v["serial_log"] == f"{v['dir']}/serial.log"
        assert f"lab.scenario={v['booted_as']}" in v["kernel_cmdline"].split()
        assert [m["id"] for m in v["moments"]] == [f"{v['name']}-pause-1"]
    assert len({v["mac"] for v in truth["vms"]}) == len(names)


def test_all_vms_are_linked_clones_of_one_base(truth, fleet):
    base = fleet / truth["base"]["path"]
    assert sorted(fleet.rglob("*.qcow2")) == sorted([base] + [fleet / v["dir"] / "disk.qcow2" for v in truth["vms"]])
    assert _sha256(base) == truth["base"]["sha256"]
    assert truth["base"]["facts"]["backing_file"] is None
    assert truth["base"]["clones"] == [v["name"] for v in truth["vms"]]
    for v in truth["vms"]:
        disk = fleet / v["dir"] / "disk.qcow2"
        assert _qcow2_backing_as_written(disk) == "../base.qcow2", v["name"]
        assert (disk.parent / "../base.qcow2").resolve() == base.resolve()
        facts = next(a for a in v["artefacts"] if a["path"] == f"{v['dir']}/disk.qcow2")["facts"]
        assert facts["backing_file"] == "../base.qcow2" and not facts["backing_file_is_absolute"]
    healthy = next(v for v in truth["vms"] if v["scenario"] != "corrupt")
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", "--backing-chain", str(fleet / healthy["dir"] / "disk.qcow2")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert [Path(i["filename"]).resolve() for i in info] == [
        (fleet / healthy["dir"] / "disk.qcow2").resolve(),
        base.resolve(),
    ]


@pytest.mark.parametrize("scenario", ["infected", "corrupt"])
def test_infected_vms_show_the_implant(truth, scenario):
    """The corrupt VM was booted infected: its (now unreadable) evidence hides a real intrusion."""
    imp = truth["implant"]
    for v in _vms(truth, scenario):
        assert v["booted_as"] == "infected"
        p = [p for p in v["processes"] if p["pid"] == v["implant_pid"]]
        assert len(p) == 1 and p[0]["comm"] == imp["comm"] == "kworker/0:2H", v["name"]
        assert p[0]["cmdline"] == imp["cmdline"] and p[0]["exe"] == imp["exe_link"] == v["implant_exe"]
        assert v["beacon"]["pid"] == v["implant_pid"] and v["beacon"]["state"] == "ESTABLISHED"
        assert (v["beacon"]["remote_ip"], v["beacon"]["remote_port"]) == (truth["peer"]["ip"], truth["peer"]["port"])
        assert v["planted_hashes"][imp["hidden_copy_path"]] == imp["sha256"]
        for path in (truth["cron"]["path"], imp["hidden_copy_path"], truth["shell_history"]["path"]):
            assert path in v["files_written"] and path in v["diff_expected"], (v["name"], path)
        assert sorted(v["files_written"]) == sorted(v["diff_expected"])
        # the builder paused the clone once its capture held these beacons, and refused fewer
        pcap = next(a for a in v["artefacts"] if a["format"] == "pcap")["facts"]
        assert pcap["beacon_src_port"] == v["beacon"]["local_port"] == v["beacon_port"], v["name"]
        assert pcap["beacon_payloads"] == v["beacon_payloads"] >= imp["beacon_min_payloads"], v["name"]
        assert v["moments"][0]["beacon_payloads"] >= imp["beacon_min_payloads"], v["name"]
        assert pcap["beacon_lines"] >= pcap["beacon_payloads"] and pcap["marker_occurrences"] == pcap["beacon_lines"]


def test_clean_vms_show_no_intrusion(truth):
    imp = truth["implant"]
    history = "".join(line + "\n" for line in truth["shell_history"]["lines"]["clean"]).encode()
    for v in _vms(truth, "clean"):
        assert v["booted_as"] == "clean" and v["implant_pid"] is None and v["beacon"] is None
        assert not [p for p in v["processes"] if p["comm"] == imp["comm"] or (p["exe"] or "").endswith("(deleted)")]
        assert not [t for t in v["tcp"] if t["remote_ip"] == truth["peer"]["ip"]]
        svc = [p for p in v["processes"] if p["pid"] == v["service_pid"]]
        assert svc and svc[0]["exe"] == truth["service"]["path"]
        assert any(
            t["state"] == "LISTEN" and t["local_port"] == 8080 and t["pid"] == v["service_pid"] for t in v["tcp"]
        )
        assert v["files_written"] == v["diff_expected"] == [truth["shell_history"]["path"]]
        assert v["planted_hashes"][truth["shell_history"]["path"]] == hashlib.sha256(history).hexdigest()
        assert imp["hidden_copy_path"] not in v["planted_hashes"] and truth["cron"]["path"] not in v["planted_hashes"]
        pcap = next(a for a in v["artefacts"] if a["format"] == "pcap")["facts"]
        assert pcap["beacon_lines"] == 0 and pcap["marker_occurrences"] == 0
        assert pcap["beacon_payloads"] == v["beacon_payloads"] == 0 and v["beacon_port"] is None


def test_the_corrupt_vm_is_really_corrupt(truth, fleet):
    (v,) = _vms(truth, "corrupt")
    c = v["corruption"]
    elf, disk = fleet / v["dir"] / "memory.elf", fleet / v["dir"] / "disk.qcow2"
    # the memory dump: still an ELF core by its header, but its PT_LOAD data is gone
    assert elf.read_bytes()[:4] == b"\x7fELF"
    assert elf.stat().st_size == c["memory.elf"]["size_after"] < c["memory.elf"]["pt_load_file_end"]
    assert c["memory.elf"]["size_before"] >= c["memory.elf"]["pt_load_file_end"]
    # the overlay: qcow2 by its magic, same backing name, but QEMU refuses the damaged header
    assert struct.unpack(">Q", disk.read_bytes()[40:48])[0] == int(c["disk.qcow2"]["value_after"], 16)
    p = subprocess.run(["qemu-img", "info", "-U", str(disk)], capture_output=True, text=True)
    assert p.returncode != 0 and "L1 table" in p.stderr
    for a in v["artefacts"]:
        f = fleet / a["path"]
        assert a["size"] == f.stat().st_size, a["path"]
        assert a["intact"] == (f.name == "net.pcap")
        if not a["intact"]:
            assert a["sha256"] == _sha256(f) != c[f.name]["sha256_before"]
    # every other VM's evidence is whole
    for w in truth["vms"]:
        if w is not v:
            assert w["corruption"] is None and all(a["intact"] for a in w["artefacts"])
            assert (
                subprocess.run(
                    ["qemu-img", "check", "-U", str(fleet / w["dir"] / "disk.qcow2")], capture_output=True
                ).returncode
                == 0
            ), w["name"]


def test_artefacts_match_the_files(truth, fleet):
    for v in truth["vms"]:
        assert {a["format"] for a in v["artefacts"]} == {"elf-core", "qcow2", "pcap"}
        for a in v["artefacts"]:
            f = fleet / a["path"]
            assert a["size"] == f.stat().st_size, a["path"]
            if a["format"] != "elf-core" or not a["intact"]:  # whole 256 MiB dumps: size only, keeps this fast
                assert a["sha256"] == _sha256(f), a["path"]
            if a["format"] == "elf-core" and a["intact"]:
                assert a["facts"]["has_vmcoreinfo"] and a["facts"]["pt_load"]


def test_second_build_is_a_fast_reuse(fleet):
    spec = importlib.util.spec_from_file_location("snapscope_build_lab_fleet_t", REPO / "fixtures" / "build_lab.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    t0 = time.monotonic()
    assert Path(mod.build_fleet(fleet.parent)) == fleet
    assert time.monotonic() - t0 < 2
