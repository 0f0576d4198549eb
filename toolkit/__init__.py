"""snapscope: offline forensics for libvirt/QEMU VM snapshots.

Notebook entry point::

    import toolkit
    case = toolkit.Case.open("case/")
    case.table("memory/processes")
"""

from toolkit.versions import __version__

__all__ = ["Case", "__version__"]


def __getattr__(name):
    # Lazy so that `import toolkit` stays cheap for the CLI's --help.
    if name == "Case":
        from toolkit.case import Case

        return Case
    raise AttributeError(name)
