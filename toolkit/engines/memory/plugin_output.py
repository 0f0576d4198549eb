"""Small readers of Volatility plugin results shared by the table builders."""

from __future__ import annotations


def plugin_output(outputs: dict, *names: str) -> list[dict] | None:
    """Rows of the first of ``names`` that ran (even partially), else None.

    Example: ``plugin_output(outputs, "linux.lsmod.Lsmod")``
    """
    for name in names:
        if name in outputs and (outputs[name]["rows"] or not outputs[name]["error"]):
            return outputs[name]["rows"]
    return None


def as_int(value):
    """Ints stay ints; numeric strings ('8443') become ints; anything else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def source_of(*plugins) -> str:
    """The provenance of a table built from ``plugins``: ``volatility/linux.pslist.PsList+...``."""
    return "volatility/" + "+".join(plugins)
