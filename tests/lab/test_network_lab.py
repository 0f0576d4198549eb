"""Network + YARA on the lab guest's real capture (QEMU filter-dump of the beacon session).

Ground truth (fixtures/build_lab.py, ``assemble``): ``guest.mac``, ``marker``,
``runs.<run>.beacon`` = the guest's own /proc/net/tcp row of the ESTABLISHED
beacon socket (local_ip, local_port, remote_ip, remote_port).
"""

from __future__ import annotations

import json

import pytest

from tests.helpers.contexts import engine_context
from toolkit.engines import network, yara
from toolkit.engines.yara.files import scan_streams
from toolkit.engines.yara.rules import compile_rules
from toolkit.schemas import validate

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab_network(lab, tmp_path_factory):
    gt = json.loads((lab / "ground_truth.json").read_text())
    out = {}
    for run in ("qemu", "libvirt"):
        pcap = lab / run / "net.pcap"
        if not pcap.exists():
            continue
        snap = {"id": f"lab-{run}", "pcaps": [{"path": str(pcap)}]}
        if run == "qemu":  # guest.mac is the plain-QEMU run's NIC; libvirt may assign its own
            snap["domain"] = {"macs": [gt["guest"]["mac"].lower()]}
        out[run] = network.run(snap, engine_context(tmp_path_factory.mktemp(f"net-{run}"), snapshot_id=snap["id"]))
    return gt, out


def _pcap_facts(gt, run) -> dict:
    """What the builder read from <run>/net.pcap (beacon_payloads: the implant's payloads to the peer)."""
    return next(a["facts"] for a in gt["artefacts"] if a["path"] == f"{run}/net.pcap")


def _beacon_flow(flows, beacon):
    hit = flows[
        (flows.proto == "tcp")
        & (flows.src_ip == beacon["local_ip"])
        & (flows.src_port == beacon["local_port"])
        & (flows.dst_ip == beacon["remote_ip"])
        & (flows.dst_port == beacon["remote_port"])
    ]
    assert len(hit) == 1, flows[["src_ip", "src_port", "dst_ip", "dst_port", "state"]]
    return hit


@pytest.mark.parametrize("run", ["qemu", "libvirt"])
def test_beacon_flow_matches_guest_socket(lab_network, run):
    gt, out = lab_network
    assert run in out, f"the lab writes {run}/net.pcap"
    tables = out[run]
    for name, df in tables.items():
        validate(name, df)
    assert not (tables["diagnostics"].severity == "error").any(), tables["diagnostics"]
    beacon = gt["runs"][run]["beacon"]
    assert (beacon["remote_ip"], beacon["remote_port"]) == ("10.0.2.100", 8443)
    flow = _beacon_flow(tables["network/flows"], beacon).iloc[0]
    assert flow.handshake and flow.state == "ESTABLISHED"  # the guest reported it ESTABLISHED at pause
    if run == "qemu":
        assert flow.vm_mac == gt["guest"]["mac"].lower() and flow.src_mac == gt["guest"]["mac"].lower()
    assert flow.gaps == 0 and flow.src_stream_bytes > 0
    # one initiator turn per beacon payload the builder counted in this capture
    assert flow.beacon_intervals == _pcap_facts(gt, run)["beacon_payloads"] - 1


@pytest.mark.parametrize("run", ["qemu", "libvirt"])
def test_marker_in_reassembled_stream_with_guest_5tuple(lab_network, run):
    gt, out = lab_network
    assert run in out, f"the lab writes {run}/net.pcap"
    beacon = gt["runs"][run]["beacon"]
    flow = _beacon_flow(out[run]["network/flows"], beacon)
    rows, diags = scan_streams(compile_rules(), yara.iter_streams(flow))
    marks = [r for r in rows if r["rule"] == "SnapscopeLab_Beacon_Marker"]
    assert marks and diags == []
    sent = [r for r in marks if r["direction"] == "src_to_dst"]
    assert sent, "the guest's own beacon bytes carry the marker"
    for r in marks:
        assert r["matched"].startswith(gt["marker"].encode())
        assert (r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"], r["proto"]) == (
            beacon["local_ip"],
            beacon["local_port"],
            beacon["remote_ip"],
            beacon["remote_port"],
            "tcp",
        )
    # every beacon line is one marker: the stream's first line starts at offset 0 with "BEACON "
    assert min(r["offset"] for r in sent) == len("BEACON ")
    # and every payload the builder counted is in the reassembled stream
    assert len({r["offset"] for r in sent}) == _pcap_facts(gt, run)["beacon_payloads"]
