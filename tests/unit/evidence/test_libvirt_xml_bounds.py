"""libvirt XML cannot exhaust memory: elements are counted as they are parsed (issue 13)."""

from __future__ import annotations

import pytest

from tests.helpers import evidence_files as E
from tests.helpers.bounded import measure
from toolkit.errors import EvidenceError
from toolkit.evidence import libvirt_xml


def test_a_million_disk_elements(tmp_path):
    p = tmp_path / "disks.xml"
    p.write_bytes(b"<domain><name>x</name><devices>" + b"<disk/>" * 1_100_000 + b"</devices></domain>")
    r = measure(
        """
        try:
            libvirt_xml.parse_domain(open(P, "rb").read(), P)
        except EvidenceError as exc:
            out = str(exc)
        """,
        setup="from toolkit.evidence import libvirt_xml\nfrom toolkit.errors import EvidenceError",
        P=str(p),
    )
    # 7.7 MiB of XML was 1.1 million elements and as many disk rows (~1 GiB) before
    assert r["ok"] and r["grew_mb"] < 64 and r["seconds"] < 5, r
    assert r["out"] == f"{p}: more than 100000 XML elements (raise SNAPSCOPE_MAX_XML_ELEMENTS if this is real)"


def test_element_ceiling_is_configurable(monkeypatch):
    data = E.domain_xml()
    assert libvirt_xml.parse_domain(data, "d.xml")["name"]
    monkeypatch.setenv("SNAPSCOPE_MAX_XML_ELEMENTS", "3")
    with pytest.raises(EvidenceError, match=r"d.xml: more than 3 XML elements"):
        libvirt_xml.parse_domain(data, "d.xml")


@pytest.mark.parametrize("bad", [b"", b"<domain>", b"<a></b>", b"not xml"])
def test_malformed_xml_is_one_evidence_error(bad):
    with pytest.raises(EvidenceError, match=r"^x.xml: malformed XML"):
        libvirt_xml.load(bad, "x.xml")
