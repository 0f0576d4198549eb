"""Acquisition from a live libvirt host: every VM's memory, disks and traffic, at one moment.

``snapscope acquire`` produces, from running domains, the artefacts the rest
of snapscope analyses, in the right order and with libvirt's quirks handled,
so that a responder does not drive ``virsh``/QMP by hand. The output
directory is ordinary evidence for every other command::

    OUT/
      acquisition.json        what was taken, how, by whom, on which host; complete or not
      custody.jsonl           the custody chain, started before the first byte (the case continues it)
      <domain>/
        domain.xml            libvirt's live definition at the moment
        memory.qevm           (or memory.elf / memory.kdump; memory.save with --live)
        <disk>.qcow2 ...      the disk images as they were at the moment, with their backing files
        net-<netdev>.pcap     (--pcap) QEMU's capture of each network backend

Modules: ``plan`` (checks, before anything is touched), ``virsh`` (the one
way libvirt is called), ``domain`` (one domain: the moment, the copies, the
domain restored), ``capture`` (packet capture through QEMU's filter-dump),
``streams`` (hashed writing through pipes and copies), ``record`` (the
manifest and custody log), ``run`` (many domains, io slots, Ctrl-C).

Example::

    from toolkit.acquire import AcquireOptions, acquire
    summary = acquire(["web01"], Path("/evidence/web01-live"), AcquireOptions(uri="qemu:///system"))
    summary["status"], summary["domains"]["web01"]["pause"]["seconds"]
"""

from toolkit.acquire.plan import DEFAULT_MEMORY, DISK_MODES, MEMORY_FORMATS, AcquireOptions
from toolkit.acquire.run import acquire

__all__ = ["DEFAULT_MEMORY", "DISK_MODES", "MEMORY_FORMATS", "AcquireOptions", "acquire"]
