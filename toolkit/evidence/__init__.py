"""Evidence intake: identify files by content, discover snapshots, read-only.

Example::

    from toolkit.evidence import discover, identify
    identify("/evidence/web01/memory.elf")["format"]     # 'elf-core'
    [s["id"] for s in discover(["/evidence/web01"])]
"""

from toolkit.errors import EvidenceError
from toolkit.evidence.discover import discover
from toolkit.evidence.identify import identify

__all__ = ["discover", "identify", "EvidenceError"]
