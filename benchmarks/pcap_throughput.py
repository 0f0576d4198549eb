#!/usr/bin/env python3
"""Throughput of the network engine on a generated capture (MB/s of ``network.run``).

Writes a pcap of many interleaved TCP sessions with payload (handshake, data
both ways, FIN) into a temporary directory, then times ``network.run`` on it
with stream spooling on, as ``analyze`` would run it.

Usage::

    python benchmarks/pcap_throughput.py               # ~220 MB capture
    python benchmarks/pcap_throughput.py --mb 50 --concurrent 200 --keep /tmp/bench
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolkit.engines import network  # noqa: E402

VM, GW = bytes.fromhex("525400123456"), bytes.fromhex("52550a000202")
REC = struct.Struct("<IIII")


def _frame(src_ip, dst_ip, sport, dport, seq, ack, flags, payload, to_server):
    # headers packed by hand: building 150k frames through dpkt objects would dominate the setup time
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0x4000, 64, 6, 0, src_ip, dst_ip)
    eth = (GW + VM if to_server else VM + GW) + b"\x08\x00"
    return eth + ip + tcp + payload


def generate(path: Path, target_mb: int, concurrent: int, segment: int) -> dict:
    """Write the capture; returns {bytes, packets, flows}."""
    client, server = bytes([10, 0, 2, 15]), bytes([10, 0, 2, 100])
    payload = (b"snapscope benchmark payload " * (segment // 28 + 1))[:segment]
    target = target_mb * 1024 * 1024
    packets = flows = 0
    ts = 1_700_000_000
    with open(path, "wb", buffering=4 * 1024 * 1024) as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))

        def put(frame):
            nonlocal packets, ts
            ts += 1
            fh.write(REC.pack(ts // 1_000_000, ts % 1_000_000, len(frame), len(frame)) + frame)
            packets += 1

        active = []
        while fh.tell() < target:
            while len(active) < concurrent:
                flows += 1
                port = 10000 + flows % 50000
                st = {"port": port, "c": 1000 + flows, "s": 7000 + flows, "left": 40 + flows % 40}
                put(_frame(client, server, port, 443, st["c"], 0, 0x02, b"", False))
                put(_frame(server, client, 443, port, st["s"], st["c"] + 1, 0x12, b"", True))
                st["c"] += 1
                st["s"] += 1
                put(_frame(client, server, port, 443, st["c"], st["s"], 0x10, b"", False))
                active.append(st)
            for st in list(active):
                put(_frame(client, server, st["port"], 443, st["c"], st["s"], 0x18, payload[:200], False))
                st["c"] += 200
                put(_frame(server, client, 443, st["port"], st["s"], st["c"], 0x18, payload, True))
                st["s"] += len(payload)
                st["left"] -= 1
                if st["left"] == 0:
                    put(_frame(client, server, st["port"], 443, st["c"], st["s"], 0x11, b"", False))
                    put(_frame(server, client, 443, st["port"], st["s"], st["c"] + 1, 0x11, b"", True))
                    put(_frame(client, server, st["port"], 443, st["c"] + 1, st["s"] + 1, 0x10, b"", False))
                    active.remove(st)
        size = fh.tell()
    return {"bytes": size, "packets": packets, "flows": flows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=220, help="capture size to generate (default 220)")
    ap.add_argument("--concurrent", type=int, default=64, help="sessions open at once (default 64)")
    ap.add_argument("--segment", type=int, default=1400, help="server payload per segment (default 1400)")
    ap.add_argument("--keep", type=Path, help="directory to keep the capture and streams in")
    args = ap.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="snapscope-pcap-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        pcap = work / "bench.pcap"
        t0 = time.perf_counter()
        facts = generate(pcap, args.mb, args.concurrent, args.segment)
        gen_s = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        out = network.run({"id": "bench", "pcaps": [{"path": str(pcap)}]}, {"derived_dir": work / "derived"})
        run_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        flows = out["network/flows"]
        mb = facts["bytes"] / 1e6
        print(f"capture: {mb:.1f} MB, {facts['packets']} packets, {facts['flows']} flows (generated in {gen_s:.1f} s)")
        print(
            f"network.run: {run_s:.1f} s = {mb / run_s:.1f} MB/s, {facts['packets'] / run_s:,.0f} packets/s "
            f"(CPU {cpu_s:.1f} s = {mb / cpu_s:.1f} MB/s; the gap is I/O and other load, "
            f"load avg {os.getloadavg()[0]:.1f})"
        )
        print(
            f"flows found: {len(flows)} (closed: {(flows.state == 'CLOSED').sum()}), "
            f"stream bytes: {int(flows.src_stream_bytes.sum() + flows.dst_stream_bytes.sum()) / 1e6:.1f} MB, "
            f"diagnostics: {len(out['diagnostics'])}"
        )
        return 0 if len(flows) == facts["flows"] else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
