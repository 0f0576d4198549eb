"""The allocator tuning the CLI applies: large windows reuse heap pages instead of fresh mappings."""

from __future__ import annotations

import subprocess
import sys

# A child process counts the minor page faults of allocating, touching and freeing 64 MiB
# buffers twenty times: with fresh mappings every buffer faults all its 16,384 pages in again.
CHILD = """
import resource, sys
from toolkit.allocator import reuse_large_buffers
if sys.argv[1] == "tuned":
    assert reuse_large_buffers()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    buf = bytearray(64 << 20)
    del buf
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return int(out.stdout)


def test_large_buffers_are_reused_not_faulted_in_again():
    pages = (64 << 20) // 4096
    assert _faults("default") >= 15 * pages  # each of the twenty buffers mapped afresh
    assert _faults("tuned") <= 3 * pages  # the first faults its pages in; the others reuse them
