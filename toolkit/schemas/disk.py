"""Tables of the disk engine (toolkit/engines/disk/)."""

from toolkit.schemas.core import INT, STRING, TIME, UINT, declare

# --- disk tables (toolkit/engines/disk/) ---
declare(
    "disk/chain",
    {
        "disk": STRING,  # the disk as given (snapshot["disks"][i]["path"] or the diff argument)
        "depth": INT,  # 0 = the layer read first (top), 1 = its backing file, ...
        "path": STRING,  # file actually opened on this machine (<NA> if missing)
        "recorded_path": STRING,  # backing path as the image records it (often an absolute host path)
        # given | relative | basename-beside | search-path:DIR | re-rooted:DIR | as-recorded | missing-zeros;
        # outside:HOW when read outside the evidence roots (--follow-recorded-paths)
        "resolved_by": STRING,
        "format": STRING,
        "snapshot": STRING,
        "size": INT,
        "virtual_size": INT,
    },
    doc="Every element of every disk chain opened: which file was used and how it was found.",
)

declare(
    "disk/system",
    {
        "hostname": STRING,
        "domain": STRING,
        "os": STRING,
        "os_version": STRING,
        "architecture": STRING,
        "timezone": STRING,
        "ips": STRING,
        "dns": STRING,
        "gateways": STRING,
        "interfaces": STRING,  # JSON list of the interface records dissect found (raw guest strings)
    },
    doc="One row: who the guest says it is (hostname, OS, version, network config, timezone).",
)

declare(
    "disk/users",
    {
        "user": STRING,
        "uid": INT,
        "gid": INT,
        "gecos": STRING,
        "home": STRING,
        "shell": STRING,
        "sid": STRING,
        "path": STRING,
    },
    doc="Accounts defined on the guest disk (passwd on Unix, SAM/profile list on Windows).",
)

declare(
    "disk/persistence",
    {
        # cron | systemd | timer | initd | rc | ld_preload | authorized_keys | shell_rc | runkey | service | task
        # | udev | at | sudoers | log_config (one setting line of rsyslog or journald)
        "kind": STRING,
        "path": STRING,  # the file (or registry key) that defines the entry
        "user": STRING,  # account it runs as, when the entry says
        "schedule": STRING,  # cron time fields, timer spec, WantedBy...
        "command": STRING,  # the full command line, raw as found
        "program": STRING,  # what it runs (first real word of command, wrappers unwrapped)
        "program_path": STRING,  # program resolved to a file on the same disk
        "program_sha256": STRING,
        "ts": TIME,  # last modification of the defining file
        "detail": STRING,
        # systemd units and timers: enabled | disabled | static | masked | alias, from the files at rest
        "unit_state": STRING,
    },
    doc="Everything that makes a program run again: cron, systemd units/timers, init and rc scripts, "
    "ld.so.preload, authorized_keys, shell rc files; Windows run keys, services and tasks.",
)

declare(
    "disk/shell_history",
    {"user": STRING, "shell": STRING, "order": INT, "command": STRING, "ts": TIME, "path": STRING},
    doc="Shell history lines, raw, in file order.",
)

declare(
    "disk/logs",
    {"ts": TIME, "log": STRING, "service": STRING, "pid": INT, "message": STRING, "path": STRING},
    doc="Log lines (auth, syslog, journal, ...) with their timestamps where present.",
)

declare(
    "disk/packages",
    {
        "name": STRING,
        "version": STRING,
        "architecture": STRING,
        "status": STRING,
        "manager": STRING,
        "ts": TIME,
        "path": STRING,
    },
    doc="Installed packages as the guest's package manager records them.",
)

declare(
    "disk/files",
    {
        "path": STRING,
        "type": STRING,
        "size": INT,
        "uid": INT,
        "gid": INT,
        "mode": INT,
        "inode": UINT,
        "mtime": TIME,
        "atime": TIME,
        "ctime": TIME,
        "btime": TIME,
        "sha256": STRING,
        "md5": STRING,  # beside sha256 (same read), to compare with the package database's md5sums
        "link_target": STRING,
        "build_id": STRING,
        "first_page_sha256": STRING,  # ELF files that were hashed: for the process <-> file join
    },
    version=2,
    doc="Every file on the guest disk with MACB times; sha256 (and md5) for executables and writable/hidden "
    "locations (profile disk.hash decides).",
)

declare(
    "disk/package_files",
    {
        "package": STRING,  # the owning package (comma-joined for directories several packages share)
        "path": STRING,  # as it lies on this disk (merged /usr resolved), joins disk/files.path
        "md5": STRING,  # what the package database recorded (dpkg md5sums); <NA> for dirs and conffiles
        "installed_ts": TIME,  # when the package's file list was written: its install or last upgrade
    },
    doc="Every path an installed package owns, with the md5 its package database recorded (dpkg).",
)

declare(
    "disk/records",
    {
        "function": STRING,
        "record_type": STRING,
        "ts": TIME,
        "fields": STRING,  # JSON object of the record's fields, values as raw strings
    },
    doc="Records of any other dissect function a profile names, kept whole.",
)

declare(
    "disk/diff",
    {
        "change": STRING,  # added | removed | modified
        "path": STRING,
        "type": STRING,
        "changed": STRING,  # for modified: comma list of content,size,mtime,mode,uid,gid,type,target
        "size_a": INT,
        "size_b": INT,
        "sha256_a": STRING,
        "sha256_b": STRING,
        "mtime_a": TIME,
        "mtime_b": TIME,
        "mode_a": INT,
        "mode_b": INT,
        "uid_a": INT,
        "uid_b": INT,
        "gid_a": INT,
        "gid_b": INT,
        "inode_a": UINT,
        "inode_b": UINT,
        "method": STRING,  # allocated-clusters | full-walk
    },
    doc="Files that differ between two states of one VM disk (a = older/base, b = newer).",
)
