"""Account and privilege rules: who may log in (SSH keys, uid 0 accounts), who may become root
(sudoers), and which programs run with their owner's rights (setuid files).

Example::

    hits = list(uid0_account(tables, build_graph(tables, "s1"), "s1"))
"""

from __future__ import annotations

import re

from toolkit.correlate.links import frame, hit, link, pid_of, value
from toolkit.correlate.vocabulary import (
    HOME_DIRS,
    SETUID_BITS,
    after,
    boot_time,
    files_by_path,
    has_package_database,
    is_hidden_or_temp,
    package_owner,
)

NO_LOGIN = ("nologin", "false", "sync", "halt", "shutdown")


def _accounts(tables) -> dict[str, dict]:
    return {value(r, "user"): {**r, "_row": i} for i, r in frame(tables, "disk/users").iterrows() if value(r, "user")}


def _system_account(account: dict | None) -> bool:
    """uid 1-999 with a non-login shell: a service account nobody should log in as."""
    if not account:
        return False
    uid = pid_of(account, "uid")
    shell = str(value(account, "shell") or "")
    return uid is not None and 0 < uid < 1000 and shell.rsplit("/", 1)[-1] in NO_LOGIN


def _changed_after_boot(tables, files, path, row_ts) -> object | None:
    """The latest of the file's times when it is after this boot: a key appended to a file created
    long ago changes its ctime (which no tool sets back without moving the clock), not its birth."""
    boot = boot_time(tables)
    row = files.get(path) or {}
    times = [t for t in (value(row, "btime"), value(row, "ctime"), value(row, "mtime"), row_ts) if t is not None]
    latest = max(times) if times else None
    return latest if after(latest, boot) else None


def ssh_authorized_key(tables, graph, sid):
    """An authorised SSH key: medium when its file changed while the system was up or it lets
    someone log in as a service account, high with a forced command from a hidden or temporary
    path; otherwise noted (low) so every key that opens the host is listed."""
    accounts, files = _accounts(tables), files_by_path(tables)
    for i, r in frame(tables, "disk/persistence").iterrows():
        if value(r, "kind") != "authorized_keys":
            continue
        path, user = value(r, "path"), value(r, "user")
        reasons, severity = [], "low"
        changed = _changed_after_boot(tables, files, path, value(r, "ts"))
        if changed is not None:
            reasons.append(f"the key file changed at {changed:%Y-%m-%d %H:%M:%S}Z, while the system was up")
            severity = "medium"
        if _system_account(accounts.get(user)):
            reasons.append(f"{user!r} is a service account with no login shell")
            severity = "high"
        if is_hidden_or_temp(value(r, "program_path") or value(r, "program")):
            reasons.append(f"its forced command runs {value(r, 'program')!r} from a hidden or temporary path")
            severity = "high"
        why = (
            f"an SSH key ({value(r, 'detail') or 'no comment'}) is authorised in {path!r}"
            + (f" for {user!r}" if user else "")
            + (": " + "; ".join(reasons) if reasons else "")
            + "."
        )
        yield hit(f"file:{path}", [link("disk/persistence", sid, i)], 0.6 if reasons else 0.5, why, severity=severity)


def uid0_account(tables, graph, sid):
    """An account other than root whose uid is 0: a second root."""
    for i, r in frame(tables, "disk/users").iterrows():
        if pid_of(r, "uid") == 0 and value(r, "user") not in (None, "root"):
            why = (
                f"account {value(r, 'user')!r} has uid 0 (root's rights under another name; shell "
                f"{value(r, 'shell')!r}, home {value(r, 'home')!r})."
            )
            yield hit(f"account:{value(r, 'user')}", [link("disk/users", sid, i)], 0.95, why)


SUDO_GRANT = re.compile(r"^\s*(?P<who>[%+]?[^\s#]+)\s+(?P<hosts>[^=\s]+)\s*=\s*(?P<spec>.+)$")


def sudoers_grant(tables, graph, sid):
    """A sudoers rule that gives root to someone in a file no package installed: high when the
    file changed since boot, or the grantee is a service account or no account at all; a standing
    password-less grant is noted (low)."""
    accounts, files, owned = _accounts(tables), files_by_path(tables), package_owner(tables)
    for i, r in frame(tables, "disk/persistence").iterrows():
        if value(r, "kind") != "sudoers":
            continue
        line = str(value(r, "command") or "")
        m = SUDO_GRANT.match(line)
        if not m or m.group("who").startswith(("Defaults", "User_Alias", "Cmnd_Alias", "Host_Alias", "Runas_Alias")):
            continue
        who, spec = m.group("who"), m.group("spec")
        nopasswd, everything = "NOPASSWD" in spec, bool(re.search(r"(^|[:\s,)])ALL\s*$", spec))
        if not (nopasswd or everything):
            continue
        path = value(r, "path")
        reasons, severity = [], None
        if not who.startswith(("%", "+")) and who != "root":
            account = accounts.get(who)
            if accounts and account is None:
                reasons.append(f"{who!r} is no account on this disk")
                severity = "high"
            elif _system_account(account):
                reasons.append(f"{who!r} is a service account with no login shell")
                severity = "high"
        changed = _changed_after_boot(tables, files, path, value(r, "ts"))
        if path not in owned and changed is not None:
            reasons.append(f"{path!r} is in no package and changed at {changed:%Y-%m-%d %H:%M:%S}Z, after boot")
            severity = "high"
        if severity is None:
            if path in owned or who in ("root", "%sudo", "%admin", "%wheel") or not nopasswd:
                continue  # the distribution's own grants, and grants that still ask for a password
            severity = "low"
            reasons.append("a standing password-less grant")
        why = f"{path!r} lets {who!r} run {spec.strip()!r} as root: " + "; ".join(reasons) + "."
        yield hit(f"persistence:{i}", [link("disk/persistence", sid, i)], 0.8, why, severity=severity)


def setuid_unpackaged(tables, graph, sid):
    """A setuid or setgid file that no installed package provides (high in a temporary, hidden or
    home location)."""
    if not has_package_database(tables):
        return
    owned = package_owner(tables)
    files = frame(tables, "disk/files")
    if "mode" not in files:
        return
    for i, r in files.iterrows():
        mode = value(r, "mode")
        if value(r, "type") != "file" or mode is None or not int(mode) & SETUID_BITS:
            continue
        path = value(r, "path")
        if path in owned:
            continue
        bits = "setuid" if int(mode) & 0o4000 else "setgid"
        odd = is_hidden_or_temp(path) or str(path).startswith(HOME_DIRS)
        why = (
            f"{path!r} is {bits} (mode {int(mode):04o}, owner uid {value(r, 'uid')}) and no installed package "
            f"provides it" + (", in a temporary, hidden or home location" if odd else "") + "."
        )
        yield hit(f"file:{path}", [link("disk/files", sid, i)], 0.8, why, severity="high" if odd else "medium")


RULES: dict[str, dict] = {
    "persist.ssh_key": {
        "title": "SSH key authorised",
        "attack_id": "T1098.004",
        "severity": "low",
        "confidence": 0.5,
        "keys_on": "every authorized_keys entry; medium when its file was created or changed after this boot, "
        "high for a service account (uid < 1000, no login shell) or a forced command in a hidden/temporary path",
        "joins": ["disk/persistence", "disk/files", "disk/users", "memory/processes"],
        "grading": "low for a standing key (an inventory of who can log in), medium for a new one (0.6), "
        "high for keys that make service accounts into logins",
        "chain": "the authorized_keys file",
        "fn": ssh_authorized_key,
    },
    "persist.uid0_account": {
        "title": "Second account with uid 0",
        "attack_id": "T1136.001",
        "severity": "high",
        "confidence": 0.95,
        "keys_on": "a passwd entry other than root with uid 0",
        "joins": ["disk/users"],
        "grading": "high: a hidden root account is a backdoor; 0.95 since the passwd row says it",
        "chain": "the account (disk/users row)",
        "fn": uid0_account,
    },
    "persist.sudoers_grant": {
        "title": "sudo grant to an unexpected account or added since boot",
        "attack_id": "T1548.003",
        "severity": "high",
        "confidence": 0.8,
        "keys_on": "a sudoers or sudoers.d rule granting ALL or NOPASSWD to an account that does not exist or "
        "is a service account, or in a file no package installed that changed after boot; a standing "
        "password-less grant to a login user is noted (low)",
        "joins": ["disk/persistence", "disk/users", "disk/files", "disk/package_files", "memory/processes"],
        "grading": "high: a new path to root; low for long-standing admin conveniences",
        "chain": "the sudoers entry",
        "fn": sudoers_grant,
    },
    "persist.setuid_unpackaged": {
        "title": "setuid/setgid file outside the package database",
        "attack_id": "T1548.001",
        "severity": "medium",
        "confidence": 0.8,
        "keys_on": "a regular file with the setuid or setgid bit whose path no installed package lists (needs "
        "the package database on disk); high in a temporary, hidden or home location",
        "joins": ["disk/files", "disk/package_files"],
        "grading": "medium: local admins rarely make setuid files; high where droppers land",
        "chain": "the file",
        "fn": setuid_unpackaged,
    },
}
