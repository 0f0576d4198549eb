"""What the incident summary must tell about the lab's implant, from ground_truth.json alone."""

from __future__ import annotations


def implant_story(ground_truth: dict) -> list[str]:
    """Phrases of the implant's story (QEMU run): the process, its file on disk, what starts it,
    whom it talks to.

    Example: ``all(p in summary_text for p in implant_story(ground_truth))``
    """
    qemu = ground_truth["runs"]["qemu"]
    return [
        f"{ground_truth['implant']['comm']} (pid {qemu['implant_pid']})",
        f"file on disk {ground_truth['implant']['hidden_copy_path']}",
        f"started by cron {ground_truth['cron']['path']}",
        f"talks to tcp {qemu['beacon']['local_ip']}",
        f"{ground_truth['peer']['ip']}:{ground_truth['peer']['port']}",
    ]
