"""identify() on memory artefacts: detection and facts come from
toolkit.memory's registry; identify names them in inspect's vocabulary and
adds what inspect needs (embedded domain, incomplete-save problem)."""

from __future__ import annotations

import gzip
import struct

import pytest

from tests.helpers import evidence_files as synth
from toolkit.errors import EvidenceError
from toolkit.evidence import identify


def test_libvirt_save_reports_embedded_domain(tmp_path):
    path = synth.write(tmp_path / "vm.save", synth.libvirt_save(synth.domain_xml(name="db&lt;1&gt;&amp;x")))
    info = identify(path)
    f = info["facts"]
    assert info["format"] == "libvirt-save"
    assert (f["compression"], f["complete"], f["was_running"]) == ("gzip", True, True)
    assert (f["domain"]["name"], f["domain"]["uuid"]) == ("db<1>&x", "c7a5fdbd-cdaf-9455-926a-d65c16db1809")
    assert f["domain"]["macs"] == ["52:54:00:12:34:56"]
    assert info["problems"] == []


def test_unfinished_libvirt_save_is_flagged(tmp_path):
    info = identify(synth.write(tmp_path / "vm.save", synth.libvirt_save(synth.domain_xml(), complete=False)))
    assert info["facts"]["complete"] is False
    assert any("LibvirtQemudPart" in p for p in info["problems"])


def test_libvirt_save_with_broken_xml_is_a_problem_not_an_error(tmp_path):
    info = identify(synth.write(tmp_path / "vm.save", synth.libvirt_save(b"<domain><name>x</dom")))
    assert info["facts"]["domain"] is None
    assert any("embedded domain XML unreadable" in p for p in info["problems"])


def test_compressed_migration_stream_is_qemu_migration_with_compression(tmp_path):
    stream = b"QEVM" + struct.pack(">I", 3) + bytes(64)
    info = identify(synth.write(tmp_path / "dump", gzip.compress(stream)))
    assert info["format"] == "qemu-migration"
    assert info["facts"]["compression"] == "gzip"


def test_lime(tmp_path):
    info = identify(synth.write(tmp_path / "m", synth.lime(((0, 0x2000), (0x100000, 0x1000)))))
    assert info["format"] == "lime"


def test_raw_memory_only_by_hint(tmp_path):
    path = synth.write(tmp_path / "guest.ram", bytes(1 << 20))
    with pytest.raises(EvidenceError, match="raw memory needs an explicit format hint"):
        identify(path)
    assert identify(path, hint="raw")["format"] == "raw"


@pytest.mark.parametrize(
    "name,data",
    [
        ("elf", b"\x7fELF\x02\x01\x01" + bytes(20)),
        ("kdump", b"makedumpfile" + bytes(10)),
        ("save", b"LibvirtQemudSave" + bytes(8)),
        ("qevm", b"QEVM" + struct.pack(">I", 3) + b"\x07"),
        ("qcow2", b"QFI\xfb" + struct.pack(">I", 3) + bytes(8)),
    ],
)
def test_truncated_memory_headers_are_one_line_errors(tmp_path, name, data):
    path = synth.write(tmp_path / name, data)
    with pytest.raises(EvidenceError) as exc:
        identify(path)
    text = str(exc.value)
    assert text.startswith(f"{path}: ") and "\n" not in text
    assert text.count(str(path)) == 1  # the reader's own path prefix is not repeated
