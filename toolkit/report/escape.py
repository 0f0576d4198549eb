"""Neutralise hostile strings from inside a guest, per output medium.

A process name, file name or log line can carry ANSI escapes that repaint a
responder's terminal, HTML that runs in the report, or a CSV cell that a
spreadsheet evaluates as a formula. Tables keep raw values; renderers call
these functions on the way out.

Examples::

    terminal_safe("\\x1b[2Jevil")   -> '\\\\x1b[2Jevil'
    csv_safe("=cmd|' /C calc'!A0")  -> "'=cmd|' /C calc'!A0"
"""

from __future__ import annotations

import html

# C0 controls, DEL and C1 controls (0x80-0x9f: 0x9b is a one-byte CSI).
_CONTROL = {c for c in range(0x20)} | {0x7F} | set(range(0x80, 0xA0))
# Unicode bidi overrides/isolates can visually reorder a line (Trojan Source).
_BIDI = {0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069}


def _as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)


def terminal_safe(value) -> str:
    """Printable text: control and bidi characters become visible escapes."""
    out = []
    for ch in _as_text(value):
        code = ord(ch)
        if code in _CONTROL or code in _BIDI:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def rich_safe(value) -> str:
    """terminal_safe plus escaping of rich markup brackets."""
    from rich.markup import escape

    return escape(terminal_safe(value))


def html_safe(value) -> str:
    """HTML-escaped, with control characters made visible."""
    return html.escape(terminal_safe(value), quote=True)


def csv_safe(value) -> str:
    """A CSV cell a spreadsheet will not evaluate (formula prefixes are quoted)."""
    text = terminal_safe(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r") or text.startswith("\\x09") or text.startswith("\\x0d"):
        return "'" + text
    return text
