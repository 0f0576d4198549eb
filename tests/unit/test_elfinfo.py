import hashlib
import subprocess

import pytest

from toolkit.elfinfo import elf_identity, parse_build_id


def test_build_id_matches_readelf(tmp_path):
    src = tmp_path / "x.c"
    src.write_text("int main(void){return 0;}\n")
    exe = tmp_path / "x"
    subprocess.run(["gcc", "-Wl,--build-id=sha1", "-o", str(exe), str(src)], check=True)
    data = exe.read_bytes()
    out = subprocess.run(["readelf", "-n", str(exe)], capture_output=True, text=True).stdout
    expected = next(line.split(":")[1].strip() for line in out.splitlines() if "Build ID" in line)
    info = elf_identity(data[:65536])
    assert info["build_id"] == expected
    assert info["first_page_sha256"] == hashlib.sha256(data[:4096]).hexdigest()


@pytest.mark.parametrize("data", [b"", b"\x7fELF", b"\x7fELF\x02\x01" + b"\xff" * 200, b"MZ" + b"\0" * 5000])
def test_garbage_never_raises(data):
    assert parse_build_id(data) is None
