from toolkit.report.escape import csv_safe, html_safe, rich_safe, terminal_safe

HOSTILE = "\x1b[31mred\x07bell\x9b2J\u202eevil\r\n"


def test_terminal_safe_has_no_controls():
    out = terminal_safe(HOSTILE)
    assert all(ord(c) >= 0x20 and not 0x7F <= ord(c) < 0xA0 for c in out)
    assert "\\x1b[31mred" in out and "\\u202e" in out


def test_bytes_are_decoded_visibly():
    assert terminal_safe(b"a\xffb\x1b") == "a\\xffb\\x1b"


def test_html_and_rich():
    assert html_safe("<script>alert(1)</script>") == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert "\\[bold]" in rich_safe("[bold]x")


def test_csv_formula_prefix_quoted():
    for cell in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx"):
        assert csv_safe(cell).startswith("'")
    assert csv_safe("plain") == "plain"
