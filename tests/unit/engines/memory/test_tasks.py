"""ELF identity of a process image, checked against readelf on a real binary.

The memory side reads pages through a process's page tables; these tests feed
the same helpers a real file's pages, so what is checked is the parsing and
the page-by-page assembly, not Volatility (the lab test covers that).
"""

from __future__ import annotations

import re
import subprocess
import sys

from toolkit import elfinfo
from toolkit.engines.memory.tasks import PAGE, _leading_bytes, elf_header_fields


def _reader(data: bytes, missing_from: int | None = None):
    def read(offset, size):
        if missing_from is not None and offset >= missing_from:
            return None
        return data[offset : offset + size] if offset < len(data) else None

    return read


def test_header_and_build_id_match_readelf():
    binary = open(sys.executable, "rb").read(1 << 20)
    head = _leading_bytes(_reader(binary))
    assert head == binary[: 16 * PAGE]
    header = elf_header_fields(head)
    out = subprocess.run(["readelf", "-h", "-n", sys.executable], capture_output=True, text=True).stdout
    machine = {"Advanced Micro Devices X86-64": 62, "AArch64": 183}[re.search(r"Machine:\s+(.+)", out).group(1).strip()]
    assert header["e_machine"] == machine and header["elf_class"] == 2
    assert header["e_type"] == {"EXEC": 2, "DYN": 3}[re.search(r"Type:\s+(\w+)", out).group(1)]
    assert elfinfo.elf_identity(head)["build_id"] == re.search(r"Build ID: ([0-9a-f]+)", out).group(1)


def test_leading_bytes_stop_at_first_missing_page():
    data = bytes(range(256)) * 64
    assert _leading_bytes(_reader(data, missing_from=2 * PAGE)) == data[: 2 * PAGE]
    assert _leading_bytes(_reader(data, missing_from=0)) == b""


def test_not_elf():
    assert elf_header_fields(b"MZ" + b"\x00" * 100) == {}
    assert elf_header_fields(b"\x7fELF") == {}
