"""Rules and profiles shipped inside the package (``toolkit/shipped/``).

The repository's top-level ``rules/`` and ``profiles/`` are links to these
directories: one source of truth, found the same way from a checkout, an
editable install or a wheel.

Example::

    >>> (PROFILES / "linux-triage.toml").is_file()
    True
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

_ROOT = Path(str(resources.files(__name__)))

PROFILES = _ROOT / "profiles"  # analysis profiles (*.toml)
SYMBOLS = PROFILES / "symbols"  # ISF symbol files shipped with snapscope
YARA_RULES = _ROOT / "rules" / "yara"  # the default YARA rule set
SIGMA_RULES = _ROOT / "rules" / "sigma"  # Sigma rules for `snapscope sigma` (not part of analysis)


def content_digest() -> str:
    """sha256 over every shipped rule and profile file analysis reads (a change means re-analysis).
    Sigma rules run on demand over stored tables (``snapscope sigma``), so they are left out."""
    digest = hashlib.sha256()
    files = (p for p in _ROOT.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc"))
    for path in sorted(p for p in files if SIGMA_RULES not in p.parents):
        digest.update(str(path.relative_to(_ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
