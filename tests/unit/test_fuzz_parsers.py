"""Fuzzing every parser of hostile evidence: no crash, hang or unbounded allocation.

Each target (tests/helpers/fuzzing.py: memory formats' probe/open/read,
identify() over every format, disk images opened and validated, the capture
reader and network engine, libvirt XML) runs in its own child interpreter, so
its peak RSS is its own. The normal suite runs a short derandomised batch per
target. The long run (issue 13: at least 10 minutes in all) is::

    SNAPSCOPE_FUZZ_SECONDS=150 SNAPSCOPE_FUZZ_REPORT=/tmp/fuzz.jsonl \\
        .venv/bin/python -m pytest tests/unit/test_fuzz_parsers.py -p no:cacheprovider -v

(``SNAPSCOPE_FUZZ_EXAMPLES=N`` instead runs N examples per target, and also
raises tests/unit/memory/test_fuzz.py.) Each target's figures (examples,
seconds, slowest example, peak RSS growth, most bytes one example wrote, errors by type) are appended to
SNAPSCOPE_FUZZ_REPORT as JSON lines and printed.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest

from tests.helpers.bounded import ADDRESS_SPACE, ROOT
from tests.helpers.fuzzing import EXAMPLE_SECONDS, GROWTH_MB, OUTPUT_MB, TARGETS


def _cap():
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


@pytest.mark.timeout(0)
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_target(target):
    budget = float(os.environ.get("SNAPSCOPE_FUZZ_SECONDS") or 0)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.helpers.fuzzing", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=max(600, 3 * budget + 300),
        preexec_fn=_cap,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    stats = json.loads(lines[-1])
    print(json.dumps({k: v for k, v in stats.items() if k != "failures"}))
    if os.environ.get("SNAPSCOPE_FUZZ_REPORT"):
        with open(os.environ["SNAPSCOPE_FUZZ_REPORT"], "a") as fh:
            fh.write(json.dumps(stats) + "\n")
    assert stats["failures"] == [], json.dumps(stats["failures"], indent=1)
    assert stats["examples"] >= 20 and stats["peak_growth_mb"] < GROWTH_MB
    assert stats["worst_example_s"] < EXAMPLE_SECONDS
    assert stats["worst_output_bytes"] <= OUTPUT_MB << 20


def test_qcow2_naming_no_external_data_file(tmp_path):
    """Found by the disk target: the external-data-file feature bit without the
    header extension naming the file crashed open_disk with a TypeError."""
    from tests.helpers import memory_writers as W
    from toolkit.engines.disk.images import open_disk
    from toolkit.errors import DiskError

    p = tmp_path / "d.qcow2"
    W.qcow2(p, active={0: b"\x55" * 4096})
    raw = bytearray(p.read_bytes())
    struct.pack_into(">Q", raw, 72, 1 << 2)  # incompatible_features: external data file
    p.write_bytes(raw)
    with pytest.raises(DiskError, match=r"d.qcow2: qcow2 needs an external data file but does not name one"):
        open_disk(p)


def test_capture_times_beyond_what_a_timestamp_holds(tmp_path):
    """Found by the capture target: a pcapng whose interface counts one tick a
    second (if_tsresol 0x80) puts 2^40 ticks beyond the year 2262; building the
    tables raised OverflowError instead of leaving that time empty."""
    from tests.helpers import evidence_files as E
    from tests.helpers import pcap_writer as P
    from toolkit.engines import network

    frame = P.udp("10.0.2.15", 5353, "10.0.2.3", 53, P.dns_query("beacon.example"))
    p = E.write(tmp_path / "far.pcapng", E.pcapng([(1 << 40, frame), (1_700_000_000, frame)], tsresol=0x80))
    tables = network.to_tables(network.analyze_captures([p], spool_dir=None), "s")
    (flow,) = tables["network/flows"].to_dict("records")
    assert (str(flow["first_ts"]), str(flow["last_ts"])) == ("NaT", "2023-11-14 22:13:20+00:00")
    assert tables["network/dns"]["ts"].astype(str).tolist() == ["NaT", "2023-11-14 22:13:20+00:00"]
    diags = tables["diagnostics"]
    out_of_range = diags[diags["what"] == "1 times out of range"]
    assert sorted(out_of_range["where"]) == ["network/dns", "network/flows"]


@pytest.mark.parametrize("btype", [1, 2, 3, 6], ids=["interface", "obsolete-packet", "simple-packet", "enhanced"])
def test_pcapng_block_shorter_than_its_fixed_fields(tmp_path, btype):
    """Found by the capture target: a pcapng block too short for its own fixed
    fields raised struct.error out of the capture reader."""
    from tests.helpers import evidence_files as E
    from toolkit.engines import network

    good = E.pcapng([(1_700_000_000_000_000, b"x" * 60)])
    p = E.write(tmp_path / "short.pcapng", good + E._block(btype, b"") + good[-(len(good) - 28 - 20) :])
    rows = network.analyze_captures([p], spool_dir=None)
    corrupt = [d for d in rows["diagnostics"] if d["what"] == "corrupt block"]
    assert len(corrupt) == 1 and corrupt[0]["where"] == f"{p}@{len(good)}"
    assert f"block type {btype:#x} of 12 bytes is shorter than its own fixed fields" in corrupt[0]["why"]
    assert not [d for d in rows["diagnostics"] if "truncated" in d["what"]]  # the packet after it is read
