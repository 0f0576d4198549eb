"""Fuzzing of every parser of hostile evidence, one target per domain, in a child process.

A target is a set of seed files written from the format specs (the writers in
tests/helpers) and an ``exercise(path, work)`` that runs the parsers on one
file the way snapscope does. Hypothesis mutates the seeds (truncation, byte
damage, interesting integers written over header fields, slices repeated
thousands of times) and every example must end with nothing but a
``toolkit.errors`` exception, within EXAMPLE_SECONDS, without raising the
child's peak RSS more than GROWTH_MB above what it was after the seeds were
exercised once, and without writing more than OUTPUT_MB to its work directory
(spills and stream files). Run as ``python -m tests.helpers.fuzzing TARGET`` (what
tests/unit/test_fuzz_parsers.py does): prints one JSON line of figures.

Budget: ``SNAPSCOPE_FUZZ_SECONDS`` (run batches of examples until that many
seconds passed) or ``SNAPSCOPE_FUZZ_EXAMPLES`` (one batch of that many);
default a short, derandomised batch for the normal suite.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLE_SECONDS = 30
GROWTH_MB = 256
# What one example may leave in its work directory (spills, streams) beyond the
# bytes of the example itself: a spill holds one slot per page present, and a
# mutated 8 MiB input must not turn into gigabytes on the case disk.
OUTPUT_MB = 256
INTERESTING = [
    0,
    1,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0xFFF,
    0x1000,
    0x1001,
    0xFFFF,
    0x10000,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
    1 << 32,
    1 << 40,
    1 << 46,
    (1 << 62) | 0x1000,
    (1 << 63) - 1,
    (1 << 64) - 1,
]
MAX_BLOB = 8 << 20


# ---------------------------------------------------------------- mutations
@st.composite
def mutated(draw, seeds: dict):
    """(seed name, mutated bytes) from one of ``seeds``."""
    name = draw(st.sampled_from(sorted(seeds)))
    blob = bytearray(seeds[name])
    for _ in range(draw(st.integers(1, 4))):
        n = len(blob)
        if not n:
            break
        # half the damage in the first 4 KiB, where the headers are
        at = draw(st.one_of(st.integers(0, min(4095, n - 1)), st.integers(0, n - 1)))
        op = draw(st.sampled_from(["cut", "byte", "int", "repeat"]))
        if op == "cut":
            del blob[at:]
        elif op == "byte":
            blob[at] = draw(st.integers(0, 255))
        elif op == "int":
            width = draw(st.sampled_from([2, 4, 8]))
            value = draw(st.one_of(st.sampled_from(INTERESTING), st.integers(0, (1 << 64) - 1))) % (1 << (8 * width))
            order = draw(st.sampled_from("<>"))
            blob[at : at + width] = struct.pack(order + {2: "H", 4: "I", 8: "Q"}[width], value)
        else:
            length = draw(st.integers(1, min(4096, n - at)))
            times = draw(st.integers(2, max(2, min(4000, MAX_BLOB // length))))
            where = draw(st.integers(0, n))
            blob[where:where] = bytes(blob[at : at + length]) * times
        del blob[MAX_BLOB:]
    return name, bytes(blob)


# ---------------------------------------------------------------- seeds and exercises
def _memory_seeds(d: Path) -> dict:
    from tests.helpers import memory_writers as W
    from tests.helpers.memory_samples import PS, complete_stream, page

    stream = complete_stream(ram=8 * PS)[0]
    out = {}
    p = d / "seed"
    W.elf_core(p, [(0, page(1), None), (0x10000, page(2), 2 * PS)], notes=W.qemu_cpu_note(0x1000), xnum=True)
    out["elf"] = p.read_bytes()
    for comp, flat in (("zlib", True), ("lzo", False), ("snappy", False), (None, True)):
        W.kdump(p, {0: page(0), 1: bytes(PS), 3: page(3)}, 8, comp=comp, flattened=flat, notes=W.qemu_cpu_note(4096))
        out[f"kdump-{comp}-{flat}"] = p.read_bytes()
    out["qevm"] = stream
    q = W.Qevm(caps=("xbzrle",)).start_ram([("pc.ram", 4 * PS)]).eos().part().page("pc.ram", 0, page(1))
    q.xbzrle("pc.ram", 0, W.xbzrle_encode(page(1), page(2))).compressed("pc.ram", PS, page(3))
    out["qevm-xbzrle"] = q.zero("pc.ram", 2 * PS).eos().end().eos().devices().bytes()
    for comp in ("raw", "zstd", "gzip", "bzip2", "xz", "lzop"):
        out[f"save-{comp}"] = W.libvirt_save(stream, comp)
    out["qevm-gzip"] = W.COMPRESS["gzip"](stream)
    for comp, ext in (("zlib", False), ("zstd", True)):
        W.qcow2(p, snapshots=[{"id": "1", "name": "s", "vmstate": stream}], compress=comp, extended_l2=ext)
        out[f"qcow2-{comp}"] = p.read_bytes()
    out["lime"] = struct.pack("<4sIQQQ", b"EMiL", 1, 0, PS - 1, 0) + page(4)
    return out


def _memory_exercise(path: Path, work: Path) -> None:
    import toolkit.memory as M

    if M.detect(path)["name"] != "raw":
        M.probe(path)
    with M.open_image(path, derived_dir=work / "derived") as img:
        for start, n in img.runs[:8]:
            img.read(start, min(n, 16 << 10))
        if img.runs:  # the far end of the address space too
            start, n = img.runs[-1]
            img.read(start + n - min(n, 4096), min(n, 4096))


def _disk_seeds(d: Path) -> dict:
    import subprocess

    from tests.helpers import evidence_files as E
    from tests.helpers import memory_writers as W

    raw = d / "disk.raw"
    raw.write_bytes(E.mbr(size=2 << 20))
    out = {}
    for fmt in ("vmdk", "vhdx", "vdi", "qcow2"):
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, str(raw), str(d / f"disk.{fmt}")], check=True)
        out[fmt] = (d / f"disk.{fmt}").read_bytes()
    W.qcow2(d / "s.qcow2", cluster_bits=14, active={0: b"\x55" * 4096, 1 << 15: b"\xaa" * 4096}, extended_l2=True)
    out["qcow2-extended"] = (d / "s.qcow2").read_bytes()
    return out


def _disk_exercise(path: Path, work: Path) -> None:
    from toolkit.engines.disk.images import close_disk, open_disk

    close_disk(open_disk(path))


def _identify_seeds(d: Path) -> dict:
    from tests.helpers import evidence_files as E

    out = {k: v for k, v in _memory_seeds(d).items() if k in ("elf", "kdump-zlib-True", "save-gzip", "qcow2-zlib")}
    out.update(
        {
            "vmdk": E.vmdk_sparse(),
            "vhdx": E.vhdx(),
            "vdi": E.vdi(),
            "mbr": E.mbr(),
            "gpt": E.gpt(),
            "ext4": E.ext4_superblock(),
            "pcap": E.pcap([(1700000000, 5, b"x" * 60)] * 4),
            "pcapng": E.pcapng([(1 << 40, b"y" * 60)] * 4, tsresol=9),
            "domain": E.domain_xml(),
            "snapshot": E.snapshot_xml(),
            "vmdk-text": b'# Disk DescriptorFile\ncreateType="monolithicFlat"\nRW 2048 FLAT "d-flat.vmdk" 0\n',
        }
    )
    return out


def _identify_exercise(path: Path, work: Path) -> None:
    from toolkit.evidence.identify import identify

    identify(path)


def _capture_seeds(d: Path) -> dict:
    from tests.helpers import pcap_writer as P

    frames = P.session(
        "10.0.2.15",
        40000,
        "10.0.2.100",
        80,
        [(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")],
    )
    frames += P.session("10.0.2.15", 40001, "10.0.2.100", 443, [(P.client_hello()[0], P.server_hello())])
    frames += [(1_700_000_100.0, P.udp("10.0.2.15", 5353, "10.0.2.3", 53, P.dns_query("beacon.example")))]
    frames += [(1_700_000_101.0, P.icmp_echo("10.0.2.15", "10.0.2.3", 7))]
    out = {}
    for name, writer in (("pcap", P.write_pcap), ("pcapng", P.write_pcapng)):
        out[name] = writer(d / name, frames).read_bytes()
    return out


def _capture_exercise(path: Path, work: Path) -> None:
    from toolkit.engines import network
    from toolkit.errors import EvidenceError
    from toolkit.evidence import pcap_probe

    rows = network.analyze_captures([path], spool_dir=work / "streams")
    network.to_tables(rows, "fuzz")
    try:
        pcap_probe.probe(path)
    except EvidenceError:
        pass  # the probe refusing a damaged file is its job; the engine above must not raise


def _xml_seeds(d: Path) -> dict:
    from tests.helpers import evidence_files as E

    return {"domain": E.domain_xml(), "snapshot": E.snapshot_xml()}


def _xml_exercise(path: Path, work: Path) -> None:
    from toolkit.evidence import libvirt_xml

    data = path.read_bytes()
    parse = libvirt_xml.parse_snapshot if b"<domainsnapshot" in data[:200] else libvirt_xml.parse_domain
    parse(data, path)


TARGETS = {
    "memory": (_memory_seeds, _memory_exercise),
    "identify": (_identify_seeds, _identify_exercise),
    "disk": (_disk_seeds, _disk_exercise),
    "capture": (_capture_seeds, _capture_exercise),
    "libvirt-xml": (_xml_seeds, _xml_exercise),
}


# ---------------------------------------------------------------- the child
class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout(f"example ran past {EXAMPLE_SECONDS} s")


def _maxrss_mb() -> float:
    """This process's own peak RSS (VmHWM): ru_maxrss would include the parent's size across exec."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024


def run(target: str) -> dict:
    """Fuzz one target; figures and failures as a dict (see module docstring)."""
    from toolkit.errors import SnapscopeError

    make_seeds, exercise = TARGETS[target]
    tmp = Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-"))
    seeds = make_seeds(tmp)
    for name, blob in seeds.items():  # every seed must work, and warms the imports up
        p = tmp / f"seed-{name}"
        p.write_bytes(blob)
        exercise(p, tmp / f"work-{name}")
    base = _maxrss_mb()
    stats = {
        "target": target,
        "seeds": len(seeds),
        "examples": 0,
        "worst_example_s": 0.0,
        "worst_output_bytes": 0,
        "errors": {},
    }
    failures: list[dict] = []

    def one(name, blob):
        i = stats["examples"]
        stats["examples"] += 1
        work = tmp / f"ex{i}"
        work.mkdir()
        p = work / f"{name}.bin"
        p.write_bytes(blob)
        t0 = time.monotonic()
        signal.alarm(EXAMPLE_SECONDS)
        try:
            exercise(p, work)
        except SnapscopeError as exc:
            # _guard turns MemoryError into a MemoryFormatError: an allocation that failed is not "bounded"
            if "MemoryError" in str(exc):
                failures.append({"seed": name, "kind": "allocation failed", "error": str(exc)[:300]})
            stats["errors"][type(exc).__name__] = stats["errors"].get(type(exc).__name__, 0) + 1
        except _Timeout as exc:
            failures.append({"seed": name, "kind": "hang", "error": str(exc)})
        except BaseException as exc:  # noqa: BLE001 - anything else is the finding
            failures.append(
                {
                    "seed": name,
                    "kind": "crash",
                    "error": f"{type(exc).__name__}: {exc}"[:300],
                    "trace": traceback.format_exc()[-1500:],
                }
            )
        finally:
            signal.alarm(0)
            elapsed = time.monotonic() - t0
            stats["worst_example_s"] = max(stats["worst_example_s"], elapsed)
            written = _disk_bytes(work, but=p)
            stats["worst_output_bytes"] = max(stats["worst_output_bytes"], written)
            _clean(work)
        if written > OUTPUT_MB << 20:
            failures.append({"seed": name, "kind": "output", "error": f"wrote {written} bytes"})
        if _maxrss_mb() - base > GROWTH_MB and not any(f["kind"] == "unbounded" for f in failures):
            failures.append({"seed": name, "kind": "unbounded", "error": f"peak RSS +{_maxrss_mb() - base:.0f} MiB"})
        if failures and "saved" not in failures[-1]:
            saved = tmp / f"failure-{len(failures)}-{name}.bin"
            saved.write_bytes(blob)
            failures[-1]["saved"] = str(saved)

    seconds = float(os.environ.get("SNAPSCOPE_FUZZ_SECONDS") or 0)
    examples = int(os.environ.get("SNAPSCOPE_FUZZ_EXAMPLES") or (0 if seconds else 20))
    long_run = bool(seconds or os.environ.get("SNAPSCOPE_FUZZ_EXAMPLES"))
    batch = settings(
        max_examples=examples or 200,
        deadline=None,
        database=None,
        derandomize=not long_run,
        suppress_health_check=list(HealthCheck),
    )
    test = batch(given(mutated(seeds))(lambda case: one(*case)))
    signal.signal(signal.SIGALRM, _alarm)
    started = time.monotonic()
    while True:
        test()
        if not seconds or time.monotonic() - started >= seconds or failures:
            break
    stats["seconds"] = round(time.monotonic() - started, 1)
    stats["base_rss_mb"] = round(base, 1)
    stats["peak_growth_mb"] = round(_maxrss_mb() - base, 1)
    stats["worst_example_s"] = round(stats["worst_example_s"], 2)
    stats["failures"] = failures[:5]
    if not failures:  # a failure's saved example stays for replay; nothing else is worth keeping
        _clean(tmp)
    return stats


def _disk_bytes(d: Path, but: Path) -> int:
    """Disk space the files under ``d`` other than ``but`` take (allocated blocks: what fills a disk)."""
    return sum(f.stat().st_blocks * 512 for f in d.rglob("*") if f != but and f.is_file() and not f.is_symlink())


def _clean(work: Path) -> None:
    import shutil

    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1])))
