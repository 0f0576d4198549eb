"""The lab builder (fixtures/build_lab.py) itself: its ground truth is coherent
and every artefact it lists is there. Uses the session fixture `lab` from
tests/conftest.py (builds once, then reuses in well under a second)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
FORMATS = {
    "elf-core",
    "kdump-flattened",
    "qemu-migration",
    "libvirt-save",
    "qcow2",
    "pcap",
    "libvirt-domain-xml",
    "libvirt-snapshot-xml",
    "raw-disk",
}


def _builder():
    spec = importlib.util.spec_from_file_location("snapscope_build_lab_t", REPO / "fixtures" / "build_lab.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gt(lab) -> dict:
    return json.loads((lab / "ground_truth.json").read_text())


def test_top_level_keys(gt, lab):
    for k in (
        "lab_version",
        "key",
        "guest",
        "marker",
        "implant",
        "service",
        "cron",
        "shell_history",
        "hostile_name",
        "peer",
        "runs",
        "diff_expected",
        "artefacts",
    ):
        assert k in gt, k
    assert gt["key"] == lab.name
    assert set(gt["runs"]) == {"qemu", "libvirt"}
    assert gt["guest"]["hostname"] == "lab-web01"
    assert gt["guest"]["kernel_release"] in gt["guest"]["kernel_banner"]
    assert {"root", "alice"} <= {u["name"] for u in gt["guest"]["users"]}


@pytest.mark.parametrize("run", ["qemu", "libvirt"])
def test_implant_masquerades_and_beacons(gt, run):
    r = gt["runs"][run]
    imp = [p for p in r["processes"] if p["pid"] == gt["implant"]["pid"][run]]
    assert len(imp) == 1
    p = imp[0]
    assert p["comm"] == gt["implant"]["comm"] == "kworker/0:2H"
    assert p["cmdline"] == ["[kworker/0:2H]"]
    assert p["exe"] == gt["implant"]["download_path"] + " (deleted)"
    assert not p["kernel_thread"]
    est = [
        t
        for t in r["tcp"]
        if (t["remote_ip"], t["remote_port"]) == (gt["peer"]["ip"], gt["peer"]["port"]) and t["state"] == "ESTABLISHED"
    ]
    assert est and est[0]["remote_ip"] == "10.0.2.100" and est[0]["remote_port"] == 8443
    assert est[0]["pid"] == p["pid"]
    assert r["beacon"] == est[0]


@pytest.mark.parametrize("run", ["qemu", "libvirt"])
def test_service_hostile_and_disk_truth(gt, run):
    r = gt["runs"][run]
    svc = [p for p in r["processes"] if p["pid"] == gt["service"]["pid"][run]]
    assert svc and svc[0]["exe"] == gt["service"]["path"]
    assert any(t["state"] == "LISTEN" and t["local_port"] == 8080 and t["pid"] == svc[0]["pid"] for t in r["tcp"])
    hostile = [p for p in r["processes"] if p["comm"] == gt["hostile_name"]["process_comm"]]
    assert hostile and "\x1b" in hostile[0]["comm"]
    assert r["planted_hashes"][gt["implant"]["hidden_copy_path"]] == gt["implant"]["sha256"]
    assert r["planted_hashes"][gt["service"]["path"]] == gt["service"]["sha256"]
    for path in (
        gt["cron"]["path"],
        gt["shell_history"]["path"],
        gt["implant"]["hidden_copy_path"],
        gt["hostile_name"]["file_path"],
    ):
        assert path in r["files_written"], path
        assert path in r["diff_expected"], path
    # what the guest says it wrote == what the host reads as changed on the disk
    assert sorted(r["files_written"]) == sorted(r["diff_expected"])
    assert gt["implant"]["download_path"] not in r["diff_expected"]


def test_diff_expected_is_the_qemu_runs(gt):
    assert gt["diff_expected"] == gt["runs"]["qemu"]["diff_expected"]
    assert "/var/log/auth.log" in gt["runs"]["qemu"]["disk_diff"]["modified"]


def test_artefacts_exist_non_empty(gt, lab):
    paths = {a["path"] for a in gt["artefacts"]}
    assert len(paths) == len(gt["artefacts"])
    for a in gt["artefacts"]:
        p = lab / a["path"]
        assert p.is_file() and p.stat().st_size > 0, a["path"]
        assert p.stat().st_size == a["size"], a["path"]
        assert a["format"] in FORMATS, a
        assert a["run"] in (None, "qemu", "libvirt")
        if a["moment"]:
            assert a["moment"] in {m["id"] for m in gt["runs"][a["run"]]["moments"]}, a
    for need in (
        "qemu/memory.elf",
        "qemu/memory.kdump",
        "qemu/migration.qevm",
        "qemu/disk.qcow2",
        "qemu/base.qcow2",
        "qemu/net.pcap",
        "libvirt/memory.elf",
        "libvirt/disk.qcow2",
        "libvirt/disk-ext.qcow2",
        "libvirt/ext-mem.save",
        "libvirt/full.qevm",
        "libvirt/save.img",
        "libvirt/snap-internal.xml",
        "libvirt/snap-external.xml",
        "libvirt/domain.xml",
        "libvirt/net.pcap",
    ):
        assert need in paths, need
    assert (lab / "qemu" / "serial.log").stat().st_size > 0
    assert (lab / "libvirt" / "serial.log").stat().st_size > 0


def test_pcaps_carry_beacons(gt):
    """The builder paused each guest only once its capture held beacon_min_payloads beacons on the
    implant's flow, and refused a capture with fewer: the counts it saw are in the ground truth."""
    want = gt["implant"]["beacon_min_payloads"]
    assert want >= 4, "the periodic-beacon rule needs 3 intervals"
    pcaps = [a for a in gt["artefacts"] if a["format"] == "pcap"]
    assert {a["run"] for a in pcaps} == {"qemu", "libvirt"}
    for a in pcaps:
        f, run = a["facts"], gt["runs"][a["run"]]
        assert f["linktype"] == 1 and f["packets"] > 0
        assert f["beacon_src_port"] == run["beacon"]["local_port"], a["path"]
        assert f["beacon_payloads"] == run["beacon_payloads"] >= want, a["path"]
        assert f["beacon_intervals"] == f["beacon_payloads"] - 1
        # every payload is a beacon line (the peer echoes them back too)
        assert f["beacon_lines"] >= f["beacon_payloads"] and f["marker_occurrences"] == f["beacon_lines"]


@pytest.mark.parametrize("run", ["qemu", "libvirt"])
def test_each_moment_records_the_beacons_before_it(gt, run):
    """The first pause came after beacon_min_payloads payloads; each later libvirt moment after the
    guest, resumed, sent at least one more (the builder waited for it rather than for a fixed time)."""
    counts = [m["beacon_payloads"] for m in gt["runs"][run]["moments"]]
    assert counts[0] >= gt["implant"]["beacon_min_payloads"]
    assert counts == sorted(set(counts)), counts
    assert counts[-1] <= gt["runs"][run]["beacon_payloads"]


def test_qemu_captures_are_one_moment(gt):
    qemu = [a for a in gt["artefacts"] if a["run"] == "qemu" and a["format"] != "pcap"]
    assert {a["moment"] for a in qemu} == {"qemu-pause-1"}
    mig = next(a for a in gt["artefacts"] if a["path"] == "qemu/migration.qevm")
    assert mig["facts"]["ram_vs_elf"]["compared_pages"] > 80000
    assert mig["facts"]["ram_vs_elf"]["differing_pages"] == 0
    ext = next(a for a in gt["artefacts"] if a["path"] == "libvirt/ext-mem.save")
    assert ext["moment"] == next(a for a in gt["artefacts"] if a["path"] == "libvirt/memory.elf")["moment"]
    assert ext["facts"]["ram_vs_elf"]["differing_pages"] == 0
    disk = next(a for a in gt["artefacts"] if a["path"] == "qemu/disk.qcow2")
    assert disk["facts"]["backing_file"] == "base.qcow2"
    assert [s["name"] for s in disk["facts"]["snapshots"] if s["has_vm_state"]] == ["lab-savevm"]


def test_second_build_is_a_fast_reuse(lab):
    t0 = time.monotonic()
    again = _builder().build_lab(lab.parent)
    assert Path(again) == lab
    assert time.monotonic() - t0 < 15


@pytest.mark.parametrize(
    "how",
    [
        # by path (toolkit/lab.py, these tests), from another directory, fixtures/ not on sys.path
        "import importlib.util as u; s = u.spec_from_file_location('snapscope_build_lab', {entry!r}); "
        "m = u.module_from_spec(s); s.loader.exec_module(m)",
        # with fixtures/ on sys.path (benchmarks/vol_triage.py)
        "import sys; sys.path.insert(0, {fixtures!r}); import build_lab as m",
        # as a namespace package from the repository root (fixtures/README.md)
        "import sys; sys.path.insert(0, {repo!r}); from fixtures import build_lab as m",
    ],
    ids=["by-path", "fixtures-on-sys-path", "namespace-package"],
)
def test_entry_point_loads_however_it_is_imported(how, tmp_path):
    """build_lab.py finds its lab/ package next to itself, whatever the caller's cwd and sys.path."""
    code = how.format(entry=str(REPO / "fixtures" / "build_lab.py"), fixtures=str(REPO / "fixtures"), repo=str(REPO))
    code += "; print(callable(m.build_lab), callable(m.build_fleet), m.LabError.__name__)"
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["True", "True", "LabError"]


def test_cache_key_covers_every_input():
    _builder()
    cache = importlib.import_module("snapscope_fixtures_lab.cache")
    build = importlib.import_module("snapscope_fixtures_lab.build")
    fixtures = REPO / "fixtures"
    everything = {
        fixtures / "build_lab.py",
        *(fixtures / "lab").glob("*.py"),
        *(p for p in (fixtures / "guest").iterdir() if p.is_file()),
    }
    assert set(cache.key_inputs()) == everything
    # the main lab never imports the fleet builder, so editing it does not rebuild the lab
    assert set(cache.key_inputs(exclude=build.LAB_KEY_EXCLUDES)) == everything - {fixtures / "lab" / "fleet.py"}
    kpkg = ("linux-image-x", "1")
    assert cache.compute_key(kpkg, cache.key_inputs()) != cache.compute_key(kpkg, cache.key_inputs()[:-1])
    assert cache.compute_key(kpkg, cache.key_inputs()) != cache.compute_key(("linux-image-x", "2"), cache.key_inputs())


# ---- the builder's own checks, on small synthetic inputs (no guest needed)


def _lab_module(name):
    _builder()
    return importlib.import_module(f"snapscope_fixtures_lab.{name}")


def _frame(src, dst, sport, dport, seq, payload=b"") -> bytes:
    """Ethernet/IPv4/TCP frame (checksums zero: the builder's reader does not look at them)."""
    import socket
    import struct

    tcp = struct.pack(">HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x18, 65535, 0, 0) + payload
    ip = (
        struct.pack(
            ">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, socket.inet_aton(src), socket.inet_aton(dst)
        )
        + tcp
    )
    return b"\x52\x55\x0a\x00\x02\x02" + b"\x52\x54\x00\x12\x34\x56" + b"\x08\x00" + ip + b"\0" * max(0, 46 - len(ip))


def _pcap(path, frames, cut_last=0):
    import struct

    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for t, f in frames:
        out += struct.pack("<IIII", int(t), int((t % 1) * 1e6), len(f), len(f)) + f
    path.write_bytes(out[: len(out) - cut_last])


def test_beacon_reader_counts_payloads_once(tmp_path):
    """One count per distinct payload from the guest to the peer: not the handshake, the echo, another flow or
    a retransmission; a record QEMU is still writing is left for the next poll."""
    beacons = _lab_module("beacons")
    guest, peer = "10.0.2.15", "10.0.2.100"
    line = b"BEACON SNAPSCOPE-LAB-BEACON-7f3a9c seq=0 host=lab-web01\n"
    frames = [
        (100.0, _frame(guest, peer, 40000, 8443, 1)),  # SYN-like, no payload
        (100.1, _frame(guest, peer, 40000, 8443, 2, line)),
        (100.2, _frame(guest, peer, 40000, 8443, 2, line)),  # retransmission
        (100.2, _frame(peer, guest, 8443, 40000, 9, line)),  # the echo
        (102.1, _frame(guest, peer, 40000, 8443, 2 + len(line), line)),
        (102.1, _frame(guest, "10.0.2.2", 40001, 8443, 7, line)),  # not the peer
        (104.1, _frame(guest, peer, 40000, 8443, 2 + 2 * len(line), line)),
    ]
    _pcap(tmp_path / "a.pcap", frames)
    assert {p: len(t) for p, t in beacons.payloads_to_peer(tmp_path / "a.pcap").items()} == {40000: 3}
    assert beacons.count_payloads(tmp_path / "a.pcap", 40000) == 3
    assert beacons.count_payloads(tmp_path / "a.pcap", 40001) == 0
    r = beacons.rhythm(beacons.payloads_to_peer(tmp_path / "a.pcap")[40000])
    assert r["beacon_intervals"] == 2 and abs(r["beacon_interval_mean_s"] - 2.0) < 0.01
    _pcap(tmp_path / "b.pcap", frames, cut_last=10)
    assert beacons.count_payloads(tmp_path / "b.pcap", 40000) == 2
    assert beacons.count_payloads(tmp_path / "missing.pcap") == 0


def test_missing_evidence_names_what_is_missing(tmp_path):
    verify = _lab_module("verify")
    scenario = _lab_module("scenario")
    line = b"BEACON SNAPSCOPE-LAB-BEACON-7f3a9c seq=0 host=lab-web01\n"
    _pcap(
        tmp_path / "net.pcap",
        [(100.0 + 2 * i, _frame("10.0.2.15", "10.0.2.100", 40000, 8443, 1 + 56 * i, line)) for i in range(2)],
    )
    (tmp_path / "memory.elf").write_bytes(b"\0" * 4096 + scenario.MARKER.encode() + b"\0" * 4096)
    gt = {"tcp": [{"remote_ip": "10.0.2.100", "remote_port": 8443, "state": "ESTABLISHED", "local_port": 40000}]}
    diff = {"files": [scenario.CRON_PATH, scenario.HIDDEN_PATH], "sha256": {scenario.HIDDEN_PATH: "ab" * 32}}
    missing = verify.missing_evidence("infected", gt, diff, tmp_path / "net.pcap", tmp_path / "memory.elf", "cd" * 32)
    text = "\n".join(missing)
    assert f"2 beacon payloads on the implant's flow (port 40000), need {scenario.BEACON_MIN_PAYLOADS}" in text
    assert scenario.HISTORY_PATH in text and "/var/log/auth.log" in text and "is not the implant" in text
    assert "no beacon line" in text and "no marker" not in text
    assert scenario.CRON_PATH not in text


def test_a_run_with_missing_evidence_is_built_once_more():
    verify = _lab_module("verify")
    host = _lab_module("host")
    calls = []

    def flaky(n):
        calls.append(n)
        return f"attempt {n}", (["net.pcap: 3 beacon payloads"] if n == 1 else [])

    assert verify.verified_twice("qemu run", flaky) == "attempt 2" and calls == [1, 2]
    with pytest.raises(host.LabError, match="qemu run: built twice.*net.pcap: 3 beacon payloads"):
        verify.verified_twice("qemu run", lambda n: (None, ["net.pcap: 3 beacon payloads"]))
