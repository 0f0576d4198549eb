"""Tables of the memory engine (toolkit/engines/memory/)."""

from toolkit.schemas.core import BOOL, BYTES, FLOAT, INT, STRING, TIME, UINT, declare

# --- memory tables (toolkit/engines/memory/) ---
declare(
    "memory/info",
    {
        "os": STRING,  # linux | windows
        "banner": STRING,  # kernel banner found in the image (Linux)
        "isf_path": STRING,  # symbol file used (Linux ISF), or the symbols dir (Windows)
        "isf_sha256": STRING,
        "isf_origin": STRING,  # user | profiles | cache | built
        "image_path": STRING,  # the file Volatility opened (an ELF core, maybe derived)
        "image_format": STRING,
        "dtb": UINT,  # kernel page-table root Volatility settled on
        "kernel_virtual_offset": UINT,
        "volatility_version": STRING,
        "pakunoda_version": STRING,
        "profile": STRING,
        "plugins_ok": INT,
        "plugins_failed": INT,
        "seconds": FLOAT,
    },
    doc="One row per analysed memory image: which kernel, which symbols (path + sha256), which tools.",
)

declare(
    "memory/plugin_runs",
    {
        "plugin": STRING,
        "status": STRING,  # ok | failed | partial
        "rows": INT,
        "seconds": FLOAT,
        "error": STRING,
    },
    doc="Every Volatility plugin a profile ran, how long it took and how it ended.",
)

declare(
    "memory/processes",
    {
        "pid": INT,
        "ppid": INT,
        "process": STRING,
        "uid": INT,
        "gid": INT,
        "start_ts": TIME,
        "in_list": BOOL,  # reached by walking the kernel's task list (pslist)
        "in_scan": BOOL,  # found by carving task structures (psscan)
        "is_kernel_thread": BOOL,
        "exe_path": STRING,
        "exe_deleted": BOOL,
        "exit_state": STRING,
        "threads": INT,  # tasks in the group, leader included (Linux: when pslist walked threads)
        "task_offset": UINT,  # virtual address of the task (list) or physical offset (scan only)
    },
    doc="Processes merged from the task list and a scan: a scan-only row is hidden or exited.",
)

declare(
    "memory/threads",
    {
        "pid": INT,  # thread group (the process)
        "tid": INT,  # the task; tid == pid for the group's leader
        "ppid": INT,
        "process": STRING,  # the thread's own comm (a thread may rename itself)
        "uid": INT,
        "gid": INT,
        "start_ts": TIME,
        "in_list": BOOL,  # reached by walking the task list and each group's threads (pslist threads=true)
        "in_scan": BOOL,  # found by carving task structures (psscan)
        "exit_state": STRING,
        "task_offset": UINT,
    },
    doc="Every task: each process's leader and its threads (Linux), from the task list and a scan.",
)

declare(
    "memory/cmdlines",
    {"pid": INT, "ppid": INT, "process": STRING, "args": STRING},
    doc="Command line of each process, as its own memory holds it.",
)

declare(
    "memory/maps",
    {
        "pid": INT,
        "process": STRING,
        "start": UINT,
        "end": UINT,
        "flags": STRING,  # rwx protection as Volatility prints it
        "pgoff": UINT,
        "major": INT,
        "minor": INT,
        "inode": UINT,
        "path": STRING,
        "deleted": BOOL,
    },
    doc="Virtual memory areas of every process; path without the ' (deleted)' suffix.",
)

declare(
    "memory/sockets",
    {
        "pid": INT,
        "tid": INT,
        "process": STRING,
        "fd": INT,
        "family": STRING,
        "type": STRING,
        "proto": STRING,
        "src_ip": STRING,
        "src_port": INT,
        "dst_ip": STRING,
        "dst_port": INT,
        "state": STRING,
        "inode": UINT,
        "peer_inode": UINT,  # unix sockets: the inode of the socket at the other end
        "path": STRING,  # unix sockets: the bound name (abstract names start with @); packet sockets: the device
        "netns": UINT,
        "sock_offset": UINT,
        "created_ts": TIME,
    },
    version=2,
    doc="Sockets owned by processes (Linux sockstat, Windows netscan); IPs and ports only for IPv4/IPv6.",
)

declare(
    "memory/modules",
    {
        "name": STRING,
        "offset": UINT,
        "base": UINT,
        "size": INT,
        "path": STRING,
        "taints": STRING,
        "args": STRING,
        "in_list": BOOL,  # on the kernel's module list (lsmod)
        "in_sysfs": BOOL,  # False when check_modules found it missing from sysfs
        "hidden": BOOL,  # carved from memory but absent from the list
    },
    doc="Kernel modules / drivers, with the hidden-module cross-checks folded in.",
)

declare(
    "memory/kernel_checks",
    {
        "check": STRING,  # check_syscall | check_idt | tty_check | ftrace | modules
        "item": STRING,  # table[index], tty name, module name
        "address": UINT,
        "module": STRING,
        "symbol": STRING,
        "suspicious": BOOL,
        "detail": STRING,
    },
    doc="One row per kernel integrity check result; suspicious rows explain why in detail.",
)

declare(
    "memory/malfind",
    {
        "pid": INT,
        "process": STRING,
        "start": UINT,
        "end": UINT,
        "path": STRING,
        "protection": STRING,
        "hexdump": BYTES,
        "disasm": STRING,
    },
    doc="Memory ranges that look injected (executable and written, or unbacked).",
)

declare(
    "memory/open_files",
    {
        "pid": INT,
        "tid": INT,
        "process": STRING,
        "fd": INT,
        "path": STRING,
        "deleted": BOOL,
        "device": STRING,
        "inode": UINT,
        "type": STRING,
        "mode_text": STRING,  # as lsof prints it (e.g. "-rwxr-xr-x"); disk/files keeps the numeric mode
        "ctime": TIME,
        "mtime": TIME,
        "atime": TIME,
        "size": INT,
    },
    doc="Open file descriptors of every process (lsof).",
)

declare(
    "memory/envars",
    {"pid": INT, "ppid": INT, "process": STRING, "key": STRING, "value": STRING},
    doc="Environment variables of every process, as its own memory holds them (linux.envars).",
)

declare(
    "memory/shell_history",
    {"pid": INT, "process": STRING, "ts": TIME, "command": STRING},
    doc="Shell history recovered from shell process memory (bash keeps it; busybox sh does not).",
)

declare(
    "memory/executables",
    {
        "pid": INT,
        "process": STRING,
        "path": STRING,
        "deleted": BOOL,
        "start": UINT,
        "e_type": INT,
        "e_machine": INT,
        "elf_class": INT,
        "build_id": STRING,
        # sha256 of the image's first 4096 bytes: equals the disk file's first 4 KiB if unmodified
        "first_page_sha256": STRING,
        "first_page_from": STRING,  # process (its page tables) | page_cache (the file's cached pages)
    },
    doc="The main executable image of each process, read through its own address space.",
)

declare(
    "memory/plugin_rows",
    {
        "plugin": STRING,
        "row_id": INT,
        "parent_row_id": INT,
        "column": STRING,
        "kind": STRING,  # int | str | time | bytes | bool | float | absent
        "value": STRING,
    },
    doc="Output of plugins without a dedicated table, one row per cell; tree output keeps parent links.",
)
