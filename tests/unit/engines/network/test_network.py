"""Network engine on synthetic captures built with dpkt writers."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.contexts import engine_context
from tests.helpers.pcap_writer import (
    ACK,
    GW,
    OTHER_VM,
    PSH,
    SYN,
    VM,
    client_hello,
    dns_answer,
    dns_query,
    icmp_echo,
    server_hello,
    session,
    tcp,
    udp,
    write_pcap,
    write_pcapng,
)
from toolkit.engines import network
from toolkit.schemas import validate

C, S = "10.0.2.15", "10.0.2.100"


def _run(tmp_path, frames=None, *, path=None, macs=None, derived=True, writer=write_pcap, **kw):
    if path is None:
        path = writer(tmp_path / "net.pcap", frames, **kw)
    snap = {"id": "s1", "pcaps": [{"path": str(path)}]}
    if macs is not None:
        snap["domain"] = {"macs": macs}
    if derived:
        out = network.run(snap, engine_context(tmp_path, snapshot_id="s1"))
    else:  # the library call without a spool dir: streams are measured, not kept
        out = network.to_tables(network.analyze_captures([str(path)], spool_dir=None), "s1")
    for name, df in out.items():
        validate(name, df)
    return out


def _one(df, **where):
    for col, val in where.items():
        df = df[df[col] == val]
    assert len(df) == 1, df
    return df.iloc[0]


def _stream(row, side):
    return open(row[f"{side}_stream_file"], "rb").read()


def test_tcp_session_with_fin(tmp_path):
    frames = session(C, 40001, S, 8443, [(b"hello ", b"HELLO "), (b"world", b"WORLD")])
    out = _run(tmp_path, frames)
    f = _one(out["network/flows"])
    assert (f.proto, f.src_ip, f.src_port, f.dst_ip, f.dst_port) == ("tcp", C, 40001, S, 8443)
    assert (f.state, f.handshake, f.src_packets, f.dst_packets) == ("CLOSED", True, 6, 4)
    assert f.tcp_flags == "SYN,ACK,PSH,FIN" and f.retransmits == 0 and f.gaps == 0
    assert (f.src_mac, f.dst_mac, f.ip_version) == (VM, GW, 4)
    assert _stream(f, "src") == b"hello world" and _stream(f, "dst") == b"HELLO WORLD"
    assert f.first_ts.year == 2023 and f.last_ts > f.first_ts
    assert out["diagnostics"].empty


def test_retransmit_out_of_order_and_overlap(tmp_path):
    hs = session(C, 40002, S, 80, [], close=None)
    t = hs[-1][0]
    base = 1001
    segs = [
        (base + 10, b"KLMNOPQRST"),  # ahead: waits out of order
        (base, b"ABCDEFGHIJ"),  # fills the hole, drains the buffer
        (base, b"ABCDEFGHIJ"),  # pure retransmission
        (base + 15, b"PQRSTUVWXY"),  # overlaps delivered bytes: trimmed
        (base + 30, b"!!"),
        (base + 25, b"ZZZZZ"),
    ]
    frames = hs + [(t + i * 0.01, tcp(C, 40002, S, 80, seq, ACK | PSH, data)) for i, (seq, data) in enumerate(segs)]
    f = _one(_run(tmp_path, frames)["network/flows"])
    assert _stream(f, "src") == b"ABCDEFGHIJKLMNOPQRSTUVWXYZZZZ!!"[:25] + b"ZZZZZ!!"
    assert f.retransmits == 1 and f.gaps == 0 and f.state == "ESTABLISHED"


def test_gap_is_skipped_and_counted(tmp_path):
    hs = session(C, 40003, S, 80, [], close=None)
    frames = hs + [
        (hs[-1][0] + 1, tcp(C, 40003, S, 80, 1001, ACK, b"first")),
        (hs[-1][0] + 2, tcp(C, 40003, S, 80, 1001 + 100, ACK, b"after-loss")),
    ]
    f = _one(_run(tmp_path, frames)["network/flows"])
    assert (f.gaps, f.gap_bytes, f.src_stream_bytes) == (1, 95, 15)
    assert _stream(f, "src") == b"firstafter-loss"


def test_sequence_wraparound(tmp_path):
    isn = (1 << 32) - 4
    frames = session(C, 40004, S, 9000, [(b"0123456789", b"ok")], isn_c=isn)
    f = _one(_run(tmp_path, frames)["network/flows"])
    assert _stream(f, "src") == b"0123456789" and f.gaps == 0


@pytest.mark.parametrize("close,state", [("rst", "RST"), (None, "ESTABLISHED")])
def test_rst_and_open_states(tmp_path, close, state):
    f = _one(_run(tmp_path, session(C, 40005, S, 22, [(b"x", b"y")], close=close))["network/flows"])
    assert f.state == state


def test_half_open_states_and_midstream(tmp_path):
    frames = [
        (1.0, tcp(C, 40010, S, 443, 1, SYN)),
        (1.1, tcp(C, 40011, S, 443, 1, SYN)),
        (1.2, tcp(S, 443, C, 40011, 9, SYN | ACK, ack=2)),
        (2.0, tcp(S, 80, C, 40012, 77, ACK | PSH, b"late data")),
    ]  # capture began mid-session
    flows = _run(tmp_path, frames)["network/flows"]
    assert _one(flows, src_port=40010).state == "SYN_SENT"
    assert _one(flows, src_port=40011).state == "SYN_RECEIVED"
    mid = _one(flows, src_port=40012)  # privileged port marks the server even though it spoke first
    assert (mid.state, mid.dst_port, mid.handshake) == ("MIDSTREAM", 80, False)


def test_port_reuse_makes_two_flows(tmp_path):
    frames = session(C, 40020, S, 8443, [(b"one", b"1")]) + session(
        C, 40020, S, 8443, [(b"two", b"2")], t0=1_700_000_100.0, isn_c=90_000
    )
    flows = _run(tmp_path, frames)["network/flows"].sort_values("first_ts")
    assert [_stream(r, "src") for _, r in flows.iterrows()] == [b"one", b"two"]
    assert flows.flow_id.is_unique


def test_udp_dns_and_icmp_and_ipv6(tmp_path):
    frames = [
        (1.0, udp(C, 53001, "10.0.2.3", 53, dns_query("beacon.example"))),
        (
            1.1,
            udp("10.0.2.3", 53, C, 53001, dns_answer("beacon.example", ["10.0.2.100", "10.0.2.101"]), smac=GW, dmac=VM),
        ),
        (1.2, udp(C, 53002, "10.0.2.3", 53, dns_query("nx.example", ident=7))),
        (1.3, udp("10.0.2.3", 53, C, 53002, dns_answer("nx.example", [], ident=7, rcode=3), smac=GW, dmac=VM)),
        (2.0, icmp_echo(C, S, 9)),
        (2.1, icmp_echo(S, C, 9, reply=True, smac=GW, dmac=VM)),
        (3.0, icmp_echo("fd00::15", "fd00::1", 4)),
        (3.1, icmp_echo("fd00::1", "fd00::15", 4, reply=True)),
        (4.0, tcp("fd00::15", 40100, "fd00::1", 443, 10, SYN)),
        (4.1, tcp("fd00::1", 443, "fd00::15", 40100, 50, SYN | ACK, ack=11)),
    ]
    out = _run(tmp_path, frames)
    flows = out["network/flows"]
    dns = _one(flows, src_port=53001)
    assert (dns.proto, dns.state, dns.dst_port, dns.app_proto) == ("udp", "TWO_WAY", 53, "dns")
    icmp = _one(flows, proto="icmp")
    assert (icmp.src_ip, icmp.state, icmp.icmp_type) == (C, "TWO_WAY", 8) and pd_na(icmp.src_port)
    assert _one(flows, proto="icmp6").src_ip == "fd00::15"
    v6 = _one(flows, proto="tcp")
    assert (v6.ip_version, v6.src_ip, v6.dst_port, v6.state) == (6, "fd00::15", 443, "SYN_RECEIVED")
    d = out["network/dns"]
    q = _one(d, qr="query", dns_id=0x1234)
    assert (q.qname, q.qtype, q.src_ip, q.dst_port) == ("beacon.example", "A", C, 53)
    answers = d[(d.qr == "response") & (d.dns_id == 0x1234)]
    assert sorted(answers.answer) == ["10.0.2.100", "10.0.2.101"] and set(answers.ttl) == {300}
    assert _one(d, qr="response", dns_id=7).rcode == "NXDOMAIN"


def pd_na(value):
    import pandas as pd

    return value is pd.NA or pd.isna(value)


def test_http_requests_with_keepalive(tmp_path):
    req1 = b"GET /a?x=1 HTTP/1.1\r\nHost: files.example\r\nUser-Agent: curl/8.0\r\n\r\n"
    resp1 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    req2 = b"POST /upload HTTP/1.1\r\nHost: files.example\r\nContent-Length: 4\r\nUser-Agent: \x1b[31mevil\r\n\r\nDATA"
    resp2 = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nnop\r\n0\r\n\r\n"
    out = _run(tmp_path, session(C, 40030, S, 80, [(req1, resp1), (req2, resp2)]))
    http = out["network/http"].sort_values("stream_offset")
    assert list(http.method) == ["GET", "POST"] and list(http.status_code) == [200, 404]
    assert list(http.url_path) == ["/a?x=1", "/upload"] and set(http.host) == {"files.example"}
    assert http.iloc[0].user_agent == "curl/8.0"
    assert http.iloc[1].user_agent == "\x1b[31mevil"  # raw in the table; renderers escape
    assert http.iloc[1].ts > http.iloc[0].ts and http.iloc[1].stream_offset == len(req1)


def test_tls_client_hello_sni_and_ja3(tmp_path):
    import hashlib

    record, ja3 = client_hello()
    half = len(record) // 2  # the ClientHello arrives in two TCP segments
    frames = session(C, 40040, S, 443, [(record[:half], None), (record[half:], server_hello())])
    tls = _one(_run(tmp_path, frames)["network/tls"])
    assert (tls.sni, tls.alpn, tls.client_version, tls.supported_versions) == (
        "beacon.example",
        "h2,http/1.1",
        771,
        "772,771",
    )
    assert tls.ja3_string == ja3 and tls.ja3 == hashlib.md5(ja3.encode()).hexdigest()
    assert tls.server_cipher == 0x1301 and tls.ja3s_string == "771,4865,43"
    assert (tls.src_port, tls.dst_port) == (40040, 443)


def test_mac_split_keeps_only_this_vm(tmp_path):
    frames = session(C, 40050, S, 8443, [(b"mine", b"ok")]) + session(
        "10.0.2.16", 40051, S, 8443, [(b"theirs", b"ok")], cmac=OTHER_VM, t0=1_700_000_001.0
    )
    out = _run(tmp_path, frames, macs=[VM.upper()])
    f = _one(out["network/flows"])
    assert (f.src_port, f.vm_mac) == (40050, VM)
    assert any("other hosts" in w for w in out["diagnostics"].what)
    out = _run(tmp_path, frames, macs=["52:54:00:00:00:99"])
    assert out["network/flows"].empty and "no frame of this VM" in set(out["diagnostics"].what)
    both = _run(tmp_path, frames)["network/flows"]
    assert len(both) == 2 and both.vm_mac.isna().all()


def test_truncated_capture_keeps_flows_read_so_far(tmp_path):
    path = write_pcap(tmp_path / "t.pcap", session(C, 40060, S, 8443, [(b"abc", b"def")]))
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    out = _run(tmp_path, path=path)
    f = _one(out["network/flows"])
    assert f.src_packets == 4 and f.state == "CLOSED"  # only the final ACK was cut off
    diag = _one(out["diagnostics"], what="truncated record")
    assert diag["where"].startswith(str(path) + "@") and int(diag["where"].rsplit("@", 1)[1]) > 24


def test_corrupt_length_and_garbage(tmp_path):
    path = write_pcap(tmp_path / "c.pcap", session(C, 40061, S, 80, [(b"x", None)]))
    data = bytearray(path.read_bytes())
    data[24 + 8 : 24 + 12] = (0x7FFFFFFF).to_bytes(4, "little")  # first record claims 2 GiB
    path.write_bytes(bytes(data))
    out = _run(tmp_path, path=path)
    assert out["network/flows"].empty and "corrupt record length" in set(out["diagnostics"].what)
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture at all" * 10)
    out = _run(tmp_path, path=junk)
    assert out["network/flows"].empty and _one(out["diagnostics"]).what == "not a capture"
    out = _run(tmp_path, path=tmp_path / "missing.pcap")
    assert _one(out["diagnostics"]).severity == "error"


def test_pcapng_and_nanosecond_pcap(tmp_path):
    frames = session(C, 40070, S, 8443, [(b"ng", b"NG")], t0=1_700_000_000.5)
    for writer, kw in ((write_pcapng, {}), (write_pcap, {"nano": True})):
        f = _one(_run(tmp_path, frames, writer=writer, **kw)["network/flows"])
        assert (f.state, f.src_port) == ("CLOSED", 40070) and _stream(f, "dst") == b"NG"
        assert f.first_ts.timestamp() == pytest.approx(1_700_000_000.5, abs=1e-5)


def test_unknown_link_type_and_raw_ip(tmp_path):
    import dpkt

    frames = session(C, 40080, S, 8443, [(b"raw", None)])
    out = _run(tmp_path, [(t, f) for t, f in frames], linktype=147)
    assert out["network/flows"].empty
    diag = _one(out["diagnostics"])
    assert diag.severity == "error" and "147" in diag.why and "cannot be decoded" in diag.why
    raw = [(t, bytes(dpkt.ethernet.Ethernet(f).data)) for t, f in frames]
    f = _one(_run(tmp_path, raw, linktype=101)["network/flows"])
    assert (f.state, f.src_port) == ("CLOSED", 40080) and pd_na(f.src_mac)


def test_rerun_rewrites_streams_and_no_derived_dir(tmp_path):
    frames = session(C, 40090, S, 8443, [(b"once", b"")])
    _run(tmp_path, frames)
    f = _one(_run(tmp_path, frames)["network/flows"])
    assert _stream(f, "src") == b"once"
    out = _run(tmp_path, frames, derived=False)
    f = _one(out["network/flows"])
    assert pd_na(f.src_stream_file) and f.src_stream_bytes == 4
    assert "payload streams not kept" in set(out["diagnostics"].what)


def test_streams_feed_yara_with_flow_tuple(tmp_path):
    from toolkit.engines import yara
    from toolkit.engines.yara.files import scan_streams
    from toolkit.engines.yara.rules import compile_rules

    marker = b"BEACON SNAPSCOPE-LAB-BEACON-7f3a9c seq=0 host=lab\n"
    frames = session(C, 40100, S, 8443, [(marker[:20], None), (marker[20:], marker)], close=None)
    flows = _run(tmp_path, frames)["network/flows"]
    rows, diags = scan_streams(compile_rules(), yara.iter_streams(flows))
    got = sorted((r["direction"], r["offset"], r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"]) for r in rows)
    assert got == [("dst_to_src", 7, C, 40100, S, 8443), ("src_to_dst", 7, C, 40100, S, 8443)]
    assert all(r["rule"] == "SnapscopeLab_Beacon_Marker" and r["flow_id"] == flows.flow_id[0] for r in rows)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=600))
def test_parsers_never_raise_on_hostile_bytes(data):
    import io

    from toolkit.engines.network import protocols as P

    record, _ = client_hello()
    for blob in (data, record[: len(data) % len(record)] + data, b"\x16\x03\x01" + data):
        P.parse_dns(blob)
        list(P.dns_over_tcp(blob))
        P.tls_client_hello(blob)
        P.tls_server_hello(blob)
        list(P.http_messages(io.BytesIO(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + blob), "request"))


@settings(max_examples=25, deadline=None)
@given(cut=st.integers(0, 400), noise=st.binary(min_size=1, max_size=64))
def test_damaged_captures_never_raise(tmp_path_factory, cut, noise):
    d = tmp_path_factory.mktemp("fuzz")
    data = write_pcap(
        d / "f.pcap", session(C, 40200, S, 80, [(b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n")])
    ).read_bytes()
    damaged = bytearray(data)
    pos = 24 + cut % max(1, len(data) - 24)
    damaged[pos : pos + len(noise)] = noise
    path = d / "damaged.pcap"
    path.write_bytes(bytes(damaged))
    # the reader and tracker, without the pandas tables (validated elsewhere): keeps the fuzz fast
    rows = network.analyze_captures([path], spool_dir=None)
    assert len(rows["flows"]) <= 2 and all(d["where"].startswith(str(path)) for d in rows["diagnostics"][1:])


def test_beacon_rhythm_stats():
    from toolkit.engines.network.flows import burst_stats

    clockwork = [int(t * 1e9) for t in (0, 2.0, 4.01, 6.0, 8.02)]
    stats = burst_stats(clockwork)
    assert stats["beacon_intervals"] == 4
    assert abs(stats["beacon_interval_mean"] - 2.005) < 1e-9
    assert stats["beacon_interval_cv"] < 0.01
    jittery = burst_stats([int(t * 1e9) for t in (0, 0.5, 9.0, 9.2, 30.0)])
    assert jittery["beacon_interval_cv"] > 0.5
    assert burst_stats([5])["beacon_intervals"] == 0


def _paced(frames, turns: int, every: float, t0: float = 1_700_000_000.0):
    """A session() capture re-timed so that turn k (client frame, then server frame) starts at t0 + k * every."""
    out = []
    for i, (_, frame) in enumerate(frames):
        k, side = divmod(i - 3, 2)
        if i < 3:
            ts = t0 + i * 0.001
        elif k < turns:
            ts = t0 + 1 + k * every + side * 0.01
        else:
            ts = t0 + 1 + turns * every + (i - 3 - 2 * turns) * 0.001
        out.append((ts, frame))
    return out


def test_beacon_turn_sizes_constant_and_varying(tmp_path):
    steady = _paced(session(C, 40100, S, 7443, [(b"c" * 120, b"ok")] * 6), 6, 2.0)
    sizes = [40, 400, 4000, 90, 900, 9]
    varying = _paced(session(C, 40101, S, 7443, [(b"v" * n, b"ok") for n in sizes], isn_c=9000), 6, 2.0)
    out = _run(tmp_path, sorted(steady + varying, key=lambda f: f[0]))
    a = _one(out["network/flows"], src_port=40100)
    assert (a.beacon_intervals, round(a.beacon_interval_mean, 2), a.beacon_size_mean, a.beacon_size_cv) == (
        5,
        2.0,
        120.0,
        0.0,
    )
    b = _one(out["network/flows"], src_port=40101)
    assert b.beacon_intervals == 5 and b.beacon_size_mean == sum(sizes) / 6 and b.beacon_size_cv > 1.0


def test_stratum_recognised_on_any_port(tmp_path):
    subscribe = b'{"id": 1, "method": "mining.subscribe", "params": ["cpuminer/2.5"]}\n'
    authorize = b'{"id": 2, "method": "mining.authorize", "params": ["wallet.worker", "x"]}\n'
    notify = b'{"id": null, "method": "mining.notify", "params": ["j1"]}\n'
    frames = session(C, 40200, S, 443, [(subscribe, b'{"id":1,"result":[]}\n'), (authorize, notify)])
    other = session(C, 40201, S, 4444, [(b'{"jsonrpc": "2.0", "method": "eth_blockNumber", "id": 1}\n', b"{}")])
    out = _run(tmp_path, frames + [(t + 10, f) for t, f in other])
    assert _one(out["network/flows"], src_port=40200).app_proto == "stratum"
    assert pd.isna(_one(out["network/flows"], src_port=40201).app_proto)


def test_dns_label_length_and_entropy(tmp_path):
    tunnel = "mz4ad8q0xk3v7p2lw9ry6tfb1ncu5hj8ge0os3qi7dk2av" + ".c2.example.net"
    frames = [
        (1.0, udp(C, 53100, "198.51.100.53", 53, dns_query(tunnel, ident=7))),
        (2.0, udp(C, 53101, "10.0.2.3", 53, dns_query("www.example.org", ident=8))),
    ]
    dns = _run(tmp_path, frames)["network/dns"]
    t = _one(dns, qname=tunnel)
    assert t.qname_longest_label == 46 and t.qname_entropy > 4.0
    w = _one(dns, qname="www.example.org")
    assert w.qname_longest_label == 7 and w.qname_entropy == 0.0
