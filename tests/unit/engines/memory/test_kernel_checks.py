"""check_idt verdicts against the kernel's early exception stubs: a vector no handler replaced (#MC on
a kernel built without machine-check support) still points at early_idt_handler_array[vector],
which Volatility cannot name (init text); anything else outside known symbols stays suspicious."""

from __future__ import annotations

from toolkit.engines.memory.kernel import idt_vector, settle_idt

STUBS = 0xFFFFFFFF89C4E000


def _idt(vector, address, suspicious=True):
    return {"check": "check_idt", "item": f"idt[{vector:#x}]", "address": address, "suspicious": suspicious}


def test_a_vector_left_on_its_early_stub_is_no_hook():
    rows = [_idt(0x12, (STUBS + 9 * 0x12) & ((1 << 48) - 1)), _idt(0x0, STUBS + 0x1234), _idt(0x80, STUBS + 9 * 0x80)]
    settle_idt(rows, STUBS)
    assert [r["suspicious"] for r in rows] == [False, True, True]  # 0x80 has no early stub
    assert rows[0]["symbol"] == "early_idt_handler_array[18]" and "no handler" in rows[0]["detail"]


def test_one_byte_off_the_stub_or_no_symbol_to_compare_keeps_the_verdict():
    rows = [_idt(0x12, STUBS + 9 * 0x12 + 1)]
    settle_idt(rows, STUBS)
    assert rows[0]["suspicious"] is True
    rows = [_idt(0x12, STUBS + 9 * 0x12)]
    settle_idt(rows, None)
    assert rows[0]["suspicious"] is True
    rows = [_idt(0x12, "UNREADABLE")]
    settle_idt(rows, STUBS)
    assert rows[0]["suspicious"] is True


def test_vector_of_an_item():
    assert idt_vector({"item": "idt[0x12]"}) == 18 and idt_vector({"item": "idt"}) is None
