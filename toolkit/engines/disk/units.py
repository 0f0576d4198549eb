"""systemd unit states from the files at rest: what ``systemctl is-enabled`` would say of an offline root.

A unit is *masked* when the unit file that wins (``/etc`` over ``/lib``) links to ``/dev/null``,
an *alias* when it is a link to a unit of another name, *enabled* when a link to it (or, for a
template, to one of its instances) sits in a ``.wants``/``.requires``/``.upholds`` directory of
``/etc/systemd/system`` or is one of its ``Alias=`` names there, *disabled* when its ``[Install]``
section names something to hook into but nothing links to it, and *static* otherwise. Runtime
states (``/run``: enabled-runtime, generated, transient) do not exist on a disk at rest.

Only links are read here, never followed outside the guest: a link's target is a guest path.

Example::

    states = unit_states(target, {"ssh.service": {"Install_WantedBy": "multi-user.target"}})
    states["ssh.service"]   # 'enabled'
"""

from __future__ import annotations

from toolkit.schemas import diagnostic

# In systemd's order of precedence (the first directory holding a name wins); /run is runtime only.
UNIT_DIRS = ("/etc/systemd/system", "/usr/local/lib/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
LINK_DIRS = (".wants", ".requires", ".upholds")
INSTALL_KEYS = ("Install_WantedBy", "Install_RequiredBy", "Install_UpheldBy", "Install_Alias", "Install_Also")
UNIT_SUFFIXES = (".service", ".socket", ".timer", ".path", ".target", ".mount", ".automount", ".swap", ".slice")


def _base(link: str) -> str:
    return link.rstrip("/").rsplit("/", 1)[-1]


def template_of(name: str) -> str | None:
    """``getty@tty1.service`` -> ``getty@.service``; None for a name that is not an instance."""
    if "@" not in name:
        return None
    head, _, rest = name.partition("@")
    suffix = rest[rest.rfind(".") :] if "." in rest else ""
    return f"{head}@{suffix}" if rest != suffix else None


def _links(fs, directory: str, problems: list) -> dict[str, str | None]:
    """name -> link target (None for a regular file) of the unit-like entries of one directory."""
    out: dict[str, str | None] = {}
    try:
        entries = list(fs.path(directory).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return out
    except Exception as exc:  # dissect raises many types for a damaged directory
        problems.append(diagnostic("warning", "systemd unit directory not listed", directory, repr(exc)))
        return out
    for entry in entries:
        try:
            out[entry.name] = str(entry.readlink()) if entry.is_symlink() else None
        except Exception as exc:  # one unreadable link must not cost the others
            problems.append(diagnostic("warning", "systemd unit link not read", str(entry), repr(exc)))
    return out


def unit_states(target, units: dict[str, dict], problems: list | None = None) -> dict[str, str]:
    """{unit name: masked | alias | enabled | disabled | static} for every unit file on the disk.

    ``units`` maps unit name -> its parsed record (dissect ``services``: ``Install_*`` keys),
    used to tell disabled from static.
    """
    problems = problems if problems is not None else []
    fs = target.fs
    winner: dict[str, str | None] = {}  # unit name -> link target of the file that wins (None: a file)
    enabled: set[str] = set()
    for directory in UNIT_DIRS:
        entries = _links(fs, directory, problems)
        for name, link in entries.items():
            if name.endswith(LINK_DIRS) and directory == UNIT_DIRS[0]:
                for linked_name, linked_to in _links(fs, f"{directory}/{name}", problems).items():
                    enabled.update(n for n in (linked_name, _base(linked_to or "")) if n)
                    enabled.add(template_of(linked_name) or linked_name)
            elif name.endswith(UNIT_SUFFIXES):
                winner.setdefault(name, link)
    # Alias= names an enabled unit gets in /etc: the link's target is enabled
    for name, link in _links(fs, UNIT_DIRS[0], problems).items():
        if link and link != "/dev/null" and _base(link) != name and name.endswith(UNIT_SUFFIXES):
            enabled.add(_base(link))
    states = {}
    for name, link in winner.items():
        if link == "/dev/null":
            states[name] = "masked"
        elif link and _base(link) != name:
            states[name] = "alias"
        elif name in enabled:
            states[name] = "enabled"
        elif any((units.get(name) or {}).get(key) for key in INSTALL_KEYS):
            states[name] = "disabled"
        else:
            states[name] = "static"
    return states
