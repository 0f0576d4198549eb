"""Network engine: a VM's packet captures -> flows, DNS, HTTP, TLS and payload streams.

Captures (pcap or pcapng, e.g. from QEMU ``filter-dump`` or tcpdump on the
VM's tap) are streamed frame by frame (``capture``), tracked into flows with
TCP reassembly (``flows``, ``streams``) and parsed (``protocols``). A capture
shared by several VMs is split by the NIC MACs from the domain XML
(``snapshot["domain"]["macs"]``): only frames to or from those MACs count.

Reassembled streams are spooled to ``<derived_dir>/network/<snapshot id>/streams/``
(paths in ``network/flows``), where the YARA engine scans them.

Example::

    tables = run({"id": "web1", "pcaps": [{"path": "net.pcap"}],
                  "domain": {"macs": ["52:54:00:12:34:56"]}},
                 EngineContext(snapshot_id="web1", derived_dir=Path("case/derived/web1"), profile=profile))
    tables["network/flows"][["src_ip", "src_port", "dst_ip", "dst_port", "state"]]
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from toolkit.engines import EngineContext
from toolkit.engines.network.capture import decode_frame, iter_records, link_name
from toolkit.engines.network.flows import add_record, finish, new_tracker
from toolkit.schemas import diagnostic, make_table

__all__ = ["run", "analyze_captures", "to_tables", "iter_records", "decode_frame", "link_name", "TABLES"]

TABLES = {"flows": "network/flows", "dns": "network/dns", "http": "network/http", "tls": "network/tls"}
PROGRESS_EVERY = 20_000


def _summaries(tr: dict, label: str) -> list[dict]:
    """Diagnostics from the tracker's counters: one row per kind of problem, not per packet."""
    rows, c = [], tr["counts"]
    for what, why, sev in (
        ("malformed", "frames dpkt could not decode (truncated or corrupt headers) were skipped", "warning"),
        ("fragments", "IPv4 fragments are not reassembled; their payload is not in any stream", "info"),
        ("other_l4", "IP packets of protocols other than TCP/UDP/ICMP were not tracked", "info"),
    ):
        if c[what]:
            rows.append(
                diagnostic(sev, f"{c[what]} frames: {what}", f"{label}@{tr['first_bad'].get(what, 0)} (first)", why)
            )
    for linktype, (where, offset, n) in tr["bad_links"].items():
        rows.append(
            diagnostic(
                "error",
                f"{n} frames with {link_name(linktype)}",
                f"{where}@{offset}",
                f"link type {linktype} ({link_name(linktype)}) cannot be decoded into IP packets; "
                "these frames are not in any flow",
            )
        )
    if tr["macs"] and c["foreign"]:
        rows.append(
            diagnostic(
                "info",
                f"{c['foreign']} frames of other hosts",
                label,
                "capture is shared: kept only frames to/from " + ", ".join(sorted(tr["macs"])),
            )
        )
    if tr["macs"] and c["frames"] and c["foreign"] == c["frames"]:
        rows.append(
            diagnostic(
                "warning",
                "no frame of this VM",
                label,
                "none of the VM's MACs (" + ", ".join(sorted(tr["macs"])) + ") appear in the capture",
            )
        )
    return rows


def analyze_captures(paths, *, spool_dir: Path | None, macs=None, progress=None) -> dict:
    """Row lists for flows, dns, http, tls and diagnostics from capture files.

    ``progress(description, done_bytes, total_bytes)`` is called now and then.
    Example: ``analyze_captures(["a.pcap"], spool_dir=None)["flows"][0]["state"]``
    """
    tr = new_tracker(spool_dir, macs)
    if spool_dir is None:
        tr["diagnostics"].append(
            diagnostic(
                "info",
                "payload streams not kept",
                "network",
                "no derived directory given: only the first bytes of each stream were parsed",
            )
        )
    sizes = {str(p): (os.path.getsize(p) if os.path.isfile(p) else 0) for p in paths}
    total, done = sum(sizes.values()), 0
    for path in paths:
        path = str(path)
        for rec in iter_records(path, tr["diagnostics"]):
            add_record(tr, rec, path)
            if progress and tr["counts"]["frames"] % PROGRESS_EVERY == 0:
                progress(f"network: {Path(path).name}", done + rec["offset"], total)
        tr["diagnostics"] += _summaries(tr, path)
        for key in ("malformed", "fragments", "other_l4", "foreign", "frames"):
            tr["counts"][key] = 0  # summaries are per capture file
        tr["first_bad"], tr["bad_links"] = {}, {}
        done += sizes[path]
        if progress:
            progress(f"network: {Path(path).name}", done, total)
    out = finish(tr)
    out["diagnostics"] = tr["diagnostics"]
    return out


_NS_RANGE = (-(1 << 63), 1 << 63)  # what datetime64[ns] holds: years 1677 to 2262


def _ns(value):
    """``value`` as integer nanoseconds if a timestamp can hold it, else None."""
    if isinstance(value, float):
        value = int(value) if value == value and abs(value) < 2.0**63 else None
    return value if isinstance(value, int) and _NS_RANGE[0] < value < _NS_RANGE[1] else None


def _frame(name: str, rows: list[dict], sid: str, diagnostics: list) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for col in ("ts", "first_ts", "last_ts"):
        if col in df:
            # capture times are integer nanoseconds since the epoch (UTC); a pcapng
            # resolution or offset can put one beyond what a timestamp holds
            raw = df[col].tolist()
            values = [_ns(v) for v in raw]
            bad = sum(v is None and r is not None and r == r for v, r in zip(values, raw))  # r == r: not NaN
            if bad:
                diagnostics.append(
                    diagnostic(
                        "warning", f"{bad} times out of range", name, f"{col} beyond the years 1677-2262: left empty"
                    )
                )
            df[col] = pd.to_datetime(pd.Series(pd.array(values, dtype="Int64"), index=df.index), unit="ns", utc=True)
    return make_table(name, df, snapshot_id=sid, source=name)


def to_tables(rows: dict, snapshot_id: str) -> dict[str, pd.DataFrame]:
    """The network tables and diagnostics of :func:`analyze_captures`' rows.

    Example: ``to_tables(analyze_captures(["net.pcap"], spool_dir=None), "web1")["network/flows"]``
    """
    diagnostics = list(rows["diagnostics"])
    tables = {TABLES[k]: _frame(TABLES[k], rows[k], snapshot_id, diagnostics) for k in TABLES}
    tables["diagnostics"] = make_table("diagnostics", diagnostics, snapshot_id=snapshot_id, source="network")
    return tables


def run(snapshot: dict, ctx: EngineContext) -> dict[str, pd.DataFrame]:
    """Engine adapter: every capture in ``snapshot["pcaps"]`` -> network tables.

    Streams spool under ``ctx.derived_dir`` (cleared first: a re-run
    rewrites them). Never raises on bad captures: they become diagnostics.
    Example: ``run({"id": "s", "pcaps": [{"path": "net.pcap"}]}, ctx)``
    """
    sid = ctx.snapshot_id
    paths = [p["path"] if isinstance(p, dict) else p for p in snapshot.get("pcaps") or []]
    macs = [m.lower() for m in ((snapshot.get("domain") or {}).get("macs") or [])]
    spool_dir = Path(ctx.derived_dir) / "network" / sid / "streams"
    if spool_dir.exists():
        shutil.rmtree(spool_dir)  # our own derived files from an earlier run; appending would double them
    rows = analyze_captures(paths, spool_dir=spool_dir, macs=macs, progress=ctx.progress)
    return to_tables(rows, sid)
