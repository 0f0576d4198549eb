"""``memory/sockets`` from Volatility's sockstat (Linux) and netscan (Windows): one shape for both,
and only IPv4/IPv6 sockets carry addresses and ports.

Example::

    rows = sockets_rows({"linux.sockstat.Sockstat": sockstat_result, "linux.lsof.Lsof": lsof_result})
"""

from __future__ import annotations

import re

from toolkit.engines.memory.plugin_output import as_int, plugin_output, source_of

_SOCKET_INODE = re.compile(r"socket:\[(\d+)\]")


def _proto(value):
    """'TCP', 'TCPv4', 'UDPv6' -> 'tcp' / 'udp'; others lower-cased."""
    if not value:
        return None
    value = str(value).lower()
    return re.sub(r"v[46]$", "", value)


INET_FAMILIES = ("AF_INET", "AF_INET6")


def _socket_ends(r: dict) -> dict:
    """Addresses and ports of a sockstat row, by family: only IPv4/IPv6 sockets have IPs and
    ports. sockstat prints a unix socket's inode and its peer's in the port columns and its
    bound name in the address: those go to ``inode``, ``peer_inode`` and ``path``, never to
    ports, so a unix socket (a service's journald stdout) can never pass for a connection.

    >>> _socket_ends({"Family": "AF_UNIX", "Source Addr": "/run/x.sock", "Source Port": 7, "Destination Port": 9})
    {'path': '/run/x.sock', 'inode': 7, 'peer_inode': 9}
    """
    family = str(r.get("Family") or "")
    if family in INET_FAMILIES or not family:
        return {
            "src_ip": r.get("Source Addr"),
            "src_port": as_int(r.get("Source Port")),
            "dst_ip": r.get("Destination Addr"),
            "dst_port": as_int(r.get("Destination Port")),
        }
    if family == "AF_UNIX":
        ends = {"path": r.get("Source Addr") or None, "inode": as_int(r.get("Source Port"))}
        ends["peer_inode"] = as_int(r.get("Destination Port"))
        return {k: v for k, v in ends.items() if v is not None}
    name = r.get("Source Addr")
    return {"path": str(name)} if name not in (None, "") else {}


def sockets_rows(outputs: dict) -> list[dict] | None:
    linux = plugin_output(outputs, "linux.sockstat.Sockstat")
    windows = plugin_output(outputs, "windows.netscan.NetScan")
    if linux is None and windows is None:
        return None
    # sockstat prints no inode; lsof does ("socket:[1234]"), keyed by pid + fd.
    inodes = {}
    for r in plugin_output(outputs, "linux.lsof.Lsof") or []:
        match = _SOCKET_INODE.fullmatch(str(r.get("Path") or ""))
        if match:
            inodes[(r.get("PID"), r.get("FD"))] = int(match.group(1))
    out = []
    for r in linux or []:
        row = {
            "pid": r.get("PID"),
            "tid": r.get("TID"),
            "process": r.get("Process Name"),
            "fd": r.get("FD"),
            "family": r.get("Family"),
            "type": r.get("Type"),
            "proto": _proto(r.get("Proto")),
            "state": r.get("State"),
            "inode": inodes.get((r.get("PID"), r.get("FD"))),
            "netns": r.get("NetNS"),
            "sock_offset": r.get("Sock Offset"),
            "source": source_of("linux.sockstat.Sockstat"),
        }
        row.update(_socket_ends(r))
        out.append(row)
    for r in windows or []:
        proto = str(r.get("Proto") or "")
        out.append(
            {
                "pid": r.get("PID"),
                "process": r.get("Owner"),
                "proto": _proto(proto),
                "family": "AF_INET6" if proto.endswith("v6") else "AF_INET",
                "src_ip": r.get("LocalAddr"),
                "src_port": as_int(r.get("LocalPort")),
                "dst_ip": r.get("ForeignAddr"),
                "dst_port": as_int(r.get("ForeignPort")),
                "state": r.get("State"),
                "sock_offset": r.get("Offset"),
                "created_ts": r.get("Created"),
                "source": source_of("windows.netscan.NetScan"),
            }
        )
    return out
