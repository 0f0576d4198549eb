"""Per-process facts no plugin prints, read through each process's address space.

Works on a session of toolkit.engines.memory.volatility (Linux). Three uses:

- ``task_details``: exe path, deleted flag and kernel-thread flag per pid, to
  enrich memory/processes;
- ``executables``: ELF header fields, GNU build-id and the sha256 of the first
  mapped page of each process's main image (memory/executables), so a running
  program can be matched with a file on disk: for an unmodified ELF the first
  4096 bytes of the file hash the same;
- ``process_regions``: every VMA as a dict with a ``read`` callable, for YARA.

Example::

    for region in process_regions(session, pids=[1]):
        region["path"], region["protection"], region["read"](region["start"], 4)   # ..., 'r--', b'\\x7fELF'
"""

from __future__ import annotations

import hashlib
import struct

from toolkit import elfinfo
from toolkit.engines.memory.tables import split_deleted
from toolkit.engines.memory.volatility import task_objects
from toolkit.schemas import diagnostic

PAGE = 4096
HEAD = 16 * PAGE  # build-id notes sit in the first pages of every toolchain's output


def _comm(task) -> str:
    # Imported here: importing volatility3 before toolkit.engines.memory.volatility redirects its
    # cache would create ~/.cache/volatility3.
    from volatility3.framework.objects import utility

    return utility.array_to_string(task.comm)


def _invalid(session):
    return session["vol"]["exceptions"].InvalidAddressException


def _exe_file_path(session, task):
    from volatility3.framework.symbols import linux

    mm = task.mm
    if not mm or not mm.is_readable() or not mm.exe_file:
        return None
    return linux.LinuxUtilities.path_for_file(session["context"], task, mm.exe_file)


def task_details(session: dict, diagnostics: list) -> dict[int, dict]:
    """pid -> {is_kernel_thread, exe_path, exe_deleted} for every listed process."""
    details = {}
    invalid = _invalid(session)
    try:
        for task in task_objects(session):
            pid = int(task.tgid)
            entry = {"is_kernel_thread": bool(task.is_kernel_thread), "exe_path": None, "exe_deleted": None}
            if not entry["is_kernel_thread"]:
                try:
                    entry["exe_path"], entry["exe_deleted"] = split_deleted(_exe_file_path(session, task))
                except invalid as excp:
                    diagnostics.append(diagnostic("info", "exe path", f"pid {pid}", f"unreadable: {excp}"))
            details[pid] = entry
    except invalid as excp:  # a damaged list: keep what was walked
        diagnostics.append(diagnostic("warning", "task list walk", "snapscope task_details", f"stopped early: {excp}"))
    return details


def _user_tasks(session, pids=None):
    for task in task_objects(session):
        if task.is_kernel_thread or not task.mm:
            continue
        if pids is not None and int(task.tgid) not in pids:
            continue
        yield task


def process_regions(session: dict, pids=None):
    """Every VMA of every user process as a dict YARA can scan.

    Yields {target: "process", pid, process, start, end, protection, path,
    deleted, read}, the shape toolkit.engines.yara.scan.scan_regions takes:
    ``read(addr, length)`` reads at an absolute virtual address in
    [start, end) through the process's page tables, zero-filling pages that
    are not in the image (swapped out or never touched) so offsets stay true.
    """
    context = session["context"]
    invalid = _invalid(session)
    for task in _user_tasks(session, pids):
        try:
            layer_name = task.add_process_layer()
        except invalid:
            layer_name = None
        if layer_name is None:
            continue
        layer = context.layers[layer_name]
        comm = _comm(task)
        try:
            vmas = list(task.mm.get_vma_iter())
        except invalid:
            continue
        for vma in vmas:
            start, end = int(vma.vm_start), int(vma.vm_end)
            path, deleted = split_deleted(vma.get_name(context, task))
            yield {
                "target": "process",
                "pid": int(task.tgid),
                "process": comm,
                "start": start,
                "end": end,
                "protection": vma.get_protection(),
                "path": path,
                "deleted": deleted,
                "read": _reader(layer, start, end),
            }


def _reader(layer, start, end):
    def read(addr: int, length: int) -> bytes:
        length = max(0, min(length, end - addr))
        return layer.read(addr, length, pad=True) if start <= addr < end else b""

    return read


def elf_header_fields(head: bytes) -> dict:
    """e_type, e_machine and ELF class from an image's first bytes ({} if not ELF).

    Example::

        elf_header_fields(open("/bin/ls", "rb").read(64))   # {'e_type': 3, 'e_machine': 62, 'elf_class': 2}
    """
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return {}
    e_type, e_machine = struct.unpack_from("<HH" if head[5] == 1 else ">HH", head, 16)
    return {"e_type": e_type, "e_machine": e_machine, "elf_class": head[4]}


def _leading_bytes(read, limit: int = HEAD) -> bytes:
    """The image's bytes from offset 0, page by page, up to the first page not readable."""
    out = b""
    for offset in range(0, limit, PAGE):
        page = read(offset, PAGE)
        if page is None:
            break
        out += page
    return out


def _image_reader(layer, image_vmas, exe):
    """read(file_offset, size) -> bytes | None for the executable, and where it came from.

    First through the process's own page tables (what actually ran); a page
    the process never touched is not in them (the kernel reads the ELF header
    with read(), not through the mapping), so then from the file's pages in
    the kernel page cache. Never zero-filled: a hash of padding would be a
    false answer.
    """
    cache: dict[int, bytes] | None = None
    used: set[str] = set()

    def from_page_cache(offset, size):
        nonlocal cache
        if cache is None:
            inode = exe.get_inode() if exe else None
            cache = dict(inode.get_contents()) if inode else {}
        first, last = offset // PAGE, (offset + size - 1) // PAGE
        if not all(i in cache for i in range(first, last + 1)):
            return None
        data = b"".join(cache[i] for i in range(first, last + 1))
        return data[offset - first * PAGE : offset - first * PAGE + size]

    def read(offset, size):
        for start, end, file_offset in image_vmas:
            if file_offset <= offset and offset + size <= file_offset + (end - start):
                vaddr = start + offset - file_offset
                if layer.is_valid(vaddr, size):
                    used.add("process")
                    return layer.read(vaddr, size)
                break
        data = from_page_cache(offset, size)
        if data is not None:
            used.add("page_cache")
        return data

    return read, used


def executables(session: dict, diagnostics: list) -> list[dict]:
    """One row per user process: its main image's ELF facts and first-page hash."""
    context = session["context"]
    invalid = _invalid(session)
    rows = []
    for task in _user_tasks(session):
        pid = int(task.tgid)
        comm = _comm(task)
        try:
            exe = task.mm.exe_file
            layer_name = task.add_process_layer()
            path, deleted = split_deleted(_exe_file_path(session, task))
            image_vmas = sorted(
                (int(v.vm_start), int(v.vm_end), int(v.vm_pgoff) * PAGE)
                for v in task.mm.get_vma_iter()
                if exe and v.vm_file == exe
            )
        except invalid as excp:
            diagnostics.append(diagnostic("info", "process image", f"pid {pid}", f"unreadable: {excp}"))
            continue
        row = {"pid": pid, "process": comm, "path": path, "deleted": deleted}
        rows.append(row)
        if layer_name is None or not image_vmas:
            continue
        row["start"] = next((start for start, _end, off in image_vmas if off == 0), image_vmas[0][0])
        read, used = _image_reader(context.layers[layer_name], image_vmas, exe)
        try:
            head = _leading_bytes(read)
        except invalid as excp:
            head = b""
            diagnostics.append(diagnostic("info", "process image", f"pid {pid} {path}", f"unreadable: {excp}"))
        if len(head) >= PAGE:
            # The same identity function the disk engine applies to files, so the two sides join.
            identity = elfinfo.elf_identity(head)
            row.update(
                elf_header_fields(head),
                build_id=identity["build_id"],
                first_page_sha256=hashlib.sha256(head[:PAGE]).hexdigest(),
                first_page_from="+".join(sorted(used)),
            )
        else:
            diagnostics.append(
                diagnostic(
                    "info",
                    "process image first page",
                    f"pid {pid} {path}",
                    "not in the process's page tables nor in the page cache",
                )
            )
    return rows
