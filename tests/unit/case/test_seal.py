"""Sealing a case and checking a received copy: unaltered, or exactly what changed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.helpers.synthetic_case import write_case
from toolkit.case import custody
from toolkit.case.seal import check_seal, generate_keypair, seal_case
from toolkit.case.verify import verify_case
from toolkit.errors import SealError

SNAPSCOPE = [sys.executable, "-m", "toolkit.cli"]


def _run(*args):
    return subprocess.run([*SNAPSCOPE, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture
def sealed(tmp_path):
    """(received copy of a sealed case, public key, private key): keys made by `case keygen`, sealed by `case seal`."""
    case_dir = write_case(tmp_path / "case")
    custody.append_event(case_dir, action="analyze.start")
    key, pub = tmp_path / "keys" / "analyst.key", tmp_path / "keys" / "analyst.pub"
    key.parent.mkdir()
    made = _run("case", "keygen", "--private", key, "--public", pub)
    assert made.returncode == 0, made.stderr
    assert oct(key.stat().st_mode & 0o777) == "0o600" and pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    done = _run("case", "seal", case_dir, "--key", key)
    assert done.returncode == 0, done.stderr
    copy = tmp_path / "received"
    shutil.copytree(case_dir, copy)  # what someone else receives
    return copy, pub, key


def test_an_unaltered_copy_verifies(sealed):
    copy, pub, _ = sealed
    result = _run("case", "verify", copy, "--pubkey", pub)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "seal verifies" in result.stdout
    seal = json.loads((copy / "seal.json").read_text())
    assert {"case.json", "custody.jsonl", "findings.parquet"} <= set(seal["files"])
    assert seal["custody_head"] == custody.chain_head(copy)
    assert custody.read_events(copy)[-1]["action"] == "case.seal"  # the seal covers its own custody line


def test_changes_are_named(sealed):
    copy, pub, _ = sealed
    table = next((copy / "tables" / "memory" / "processes").glob("*.parquet"))
    table.write_bytes(table.read_bytes() + b"\0")
    (copy / "reports" / "planted.html").write_text("<p>not from the analyst</p>")
    (copy / "timeline.parquet").unlink()
    custody.append_event(copy, action="later.event")
    problems = check_seal(copy, pub)["problems"]
    assert problems == [
        "reports/planted.html: file added since the case was sealed",
        "timeline.parquet: file removed since the case was sealed",
        "case.json: file modified since the case was sealed",
        "custody.jsonl: file modified since the case was sealed",
        f"tables/memory/processes/{table.name}: file modified since the case was sealed",
        f"custody chain head differs: sealed at line {custody.chain_head(copy)['seq'] - 1}, "
        f"now line {custody.chain_head(copy)['seq']}",
    ]
    result = _run("case", "verify", copy, "--pubkey", pub, "--quick")
    assert result.returncode == 2 and "reports/planted.html: file added since the case was sealed" in result.stdout


def test_an_edited_seal_or_another_key_does_not_verify(sealed, tmp_path):
    copy, pub, _ = sealed
    other_key, other_pub = tmp_path / "other.key", tmp_path / "other.pub"
    generate_keypair(other_key, other_pub)
    [problem] = check_seal(copy, other_pub)["problems"]
    assert "the seal's signature does not verify with key" in problem
    # the tamperer edits a file and the seal's record of it alike: the signature no longer holds
    (copy / "reports" / "x.txt").write_text("planted")
    seal = json.loads((copy / "seal.json").read_text())
    seal["files"]["reports/x.txt"] = {"sha256": __import__("hashlib").sha256(b"planted").hexdigest(), "size": 7}
    (copy / "seal.json").write_text(json.dumps(seal))
    [problem] = check_seal(copy, pub)["problems"]
    assert "does not verify" in problem
    # re-signing needs the private key: sealing again with another key is caught by the receiver's key
    seal_case(copy, other_key)
    assert any("does not verify" in p for p in check_seal(copy, pub)["problems"])


def test_openssl_keys_work(tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    key, pub = tmp_path / "k.pem", tmp_path / "k.pub"
    subprocess.run([openssl, "genpkey", "-algorithm", "ed25519", "-out", key], check=True)
    subprocess.run([openssl, "pkey", "-in", key, "-pubout", "-out", pub], check=True)
    case_dir = write_case(tmp_path / "case")
    seal_case(case_dir, key)
    assert verify_case(case_dir, public_key=pub)["problems"] == []


def test_bad_keys_are_one_clear_line(tmp_path):
    case_dir = write_case(tmp_path / "case")
    rsa = tmp_path / "rsa.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "rsa", "-pkeyopt", "rsa_keygen_bits:1024", "-out", rsa])
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(SealError, match="not an Ed25519 private key"):
        seal_case(case_dir, rsa)
    with pytest.raises(SealError, match="not a PEM private key"):
        seal_case(case_dir, tmp_path / "junk.pem")
    result = _run("case", "seal", case_dir, "--key", tmp_path / "missing.key")
    assert result.returncode == 2 and result.stderr.startswith("error: ")
    assert "cannot read the private key" in result.stderr
    result = _run("case", "verify", case_dir, "--pubkey", tmp_path / "junk.pem")
    assert result.returncode == 2 and "not a PEM public key" in result.stderr
    generate_keypair(tmp_path / "a.key", tmp_path / "a.pub")
    with pytest.raises(SealError, match="already exists"):
        generate_keypair(tmp_path / "a.key", tmp_path / "b.pub")
    [problem] = check_seal(case_dir, tmp_path / "a.pub")["problems"]
    assert "the case is not sealed" in problem
