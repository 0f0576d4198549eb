"""Sealing a case: an Ed25519 signature over every file's sha256 and the custody chain head.

A case handed to someone else (a colleague, a court, a customer) should prove
itself the way a signed tool does. :func:`seal_case` hashes every file of the
case, takes the custody chain head and signs the lot with the analyst's
private key into ``seal.json``; :func:`check_seal` re-hashes a copy and, given
the public key its receiver trusts, says whether it is unaltered and, if not,
which files were added, removed or modified and whether the chain head moved.

Keys are PEM: :func:`generate_keypair` writes a pair, and a key made with
``openssl genpkey -algorithm ed25519`` works the same.

Example::

    generate_keypair(Path("analyst.key"), Path("analyst.pub"))
    seal_case(Path("case"), Path("analyst.key"))
    check_seal(Path("copy-of-case"), Path("analyst.pub"))["problems"]   # [] when unaltered
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from toolkit.case import custody
from toolkit.case.lock import case_lock
from toolkit.case.store import atomic_write_bytes, load_manifest, now_iso
from toolkit.errors import SealError
from toolkit.hashing import sha256_file
from toolkit.versions import __version__

SEAL_NAME = "seal.json"
SEAL_FORMAT = "snapscope-seal/1"


def _canonical(payload: dict) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def key_fingerprint(key: Ed25519PublicKey) -> str:
    """sha256 of the raw 32-byte public key, hex: how a key is named in messages and custody."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def generate_keypair(private_path: Path, public_path: Path) -> str:
    """Write a new Ed25519 key pair as PEM (the private key readable by its owner only); its fingerprint.

    Refuses to overwrite an existing file. Example: ``generate_keypair(Path("me.key"), Path("me.pub"))``.
    """
    for path in (private_path, public_path):
        if Path(path).exists():
            raise SealError(f"{path}: already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    Path(public_path).write_text(_public_pem(key.public_key()))
    return key_fingerprint(key.public_key())


def _read_key(path: Path, kind: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SealError(f"{path}: cannot read the {kind} key ({exc.strerror or exc})") from None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file (unencrypted PKCS8, as keygen or openssl genpkey write it)."""
    try:
        key = serialization.load_pem_private_key(_read_key(path, "private"), password=None)
    except TypeError:
        raise SealError(f"{path}: the private key is encrypted; use an unencrypted PEM key") from None
    except ValueError as exc:
        raise SealError(f"{path}: not a PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SealError(f"{path}: not an Ed25519 private key (make one with `snapscope case keygen`)")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file."""
    try:
        key = serialization.load_pem_public_key(_read_key(path, "public"))
    except ValueError as exc:
        raise SealError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SealError(f"{path}: not an Ed25519 public key")
    return key


def case_file_hashes(case_dir: Path) -> dict[str, dict]:
    """{path relative to the case: {"sha256", "size"} or {"symlink": target}} for every file in it.

    The seal itself and lock files (empty, rewritten by any reader's lock) are
    left out; symbolic links are recorded as links, never followed.
    """
    case_dir = Path(case_dir)
    files = {}
    for root, dirs, names in os.walk(case_dir):
        dirs.sort()
        for name in [*names, *(d for d in dirs if (Path(root) / d).is_symlink())]:
            path = Path(root) / name
            rel = path.relative_to(case_dir).as_posix()
            if rel == SEAL_NAME or name.endswith(".lock"):
                continue
            if path.is_symlink():
                files[rel] = {"symlink": os.readlink(path)}
            elif path.is_file():
                files[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return files


def seal_case(case_dir: Path, key_path: Path) -> dict:
    """Sign a manifest of every file's sha256 and the custody chain head into ``seal.json``.

    A ``case.seal`` custody event (naming the key's fingerprint) is logged
    first, so the seal covers the line that records it. Holds the case's lock:
    no run may change the case while it is hashed. Returns the seal.
    """
    case_dir = Path(case_dir)
    key = load_private_key(key_path)
    load_manifest(case_dir)  # a case, or a clear CaseError
    fingerprint = key_fingerprint(key.public_key())
    with case_lock(case_dir):
        custody.append_event(case_dir, action="case.seal", detail={"key_sha256": fingerprint})
        seal = {
            "format": SEAL_FORMAT,
            "sealed_at": now_iso(),
            "snapscope": __version__,
            "custody_head": custody.chain_head(case_dir),
            "files": case_file_hashes(case_dir),
            "public_key": _public_pem(key.public_key()),
            "key_sha256": fingerprint,
        }
        seal["signature"] = base64.b64encode(key.sign(_canonical(seal))).decode()
        atomic_write_bytes(case_dir / SEAL_NAME, json.dumps(seal, indent=1, sort_keys=True).encode())
    return seal


def read_seal(case_dir: Path) -> dict | None:
    """The case's seal.json, or None when the case was never sealed."""
    path = Path(case_dir) / SEAL_NAME
    if not path.exists():
        return None
    try:
        seal = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SealError(f"{path}: not a readable seal ({exc})") from None
    if not isinstance(seal, dict) or seal.get("format") != SEAL_FORMAT:
        raise SealError(f"{path}: not a snapscope seal")
    return seal


def check_seal(case_dir: Path, public_key_path: Path) -> dict:
    """Is this copy of a case the one the holder of ``public_key_path``'s private key sealed?

    Returns {"problems": [...], "sealed_at", "files"}: one problem for a
    signature that does not verify with this key, then one per file added,
    removed or modified since sealing, and one if the custody chain head moved.
    """
    case_dir = Path(case_dir)
    public = load_public_key(public_key_path)
    seal = read_seal(case_dir)
    if seal is None:
        return {"problems": [f"{case_dir}: the case is not sealed (no {SEAL_NAME})"], "sealed_at": None, "files": 0}
    problems = []
    body = {k: v for k, v in seal.items() if k != "signature"}
    try:
        public.verify(base64.b64decode(seal.get("signature") or ""), _canonical(body))
    except (InvalidSignature, ValueError):
        fingerprint = key_fingerprint(public)
        problems.append(
            f"the seal's signature does not verify with key {fingerprint[:16]}: seal.json was altered, "
            "or made with another key (its file list below cannot be trusted either)"
        )
    sealed = seal.get("files") or {}
    now = case_file_hashes(case_dir)
    for rel in sorted(set(now) - set(sealed)):
        problems.append(f"{rel}: file added since the case was sealed")
    for rel in sorted(set(sealed) - set(now)):
        problems.append(f"{rel}: file removed since the case was sealed")
    for rel in sorted(set(sealed) & set(now)):
        if sealed[rel] != now[rel]:
            problems.append(f"{rel}: file modified since the case was sealed")
    head, sealed_head = custody.chain_head(case_dir), seal.get("custody_head")
    if head != sealed_head:
        problems.append(
            f"custody chain head differs: sealed at line {(sealed_head or {}).get('seq')}, "
            f"now line {(head or {}).get('seq')}"
        )
    return {"problems": problems, "sealed_at": seal.get("sealed_at"), "files": len(sealed)}
