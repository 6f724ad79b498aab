"""Take inotify instances or watches away from one process, never from the host.

inotify's limits are counted per user in each user namespace (Linux 5.11+): a process that enters a
user namespace of its own and sets that namespace's /proc/sys/user limit to 0 gets no instance (or
no watch), while the host's limits and root's counts stay as they are."""

from __future__ import annotations

from pathlib import Path

INSTANCES = "max_inotify_instances"
WATCHES = "max_inotify_watches"   # the instance is made, its first watch fails (ENOSPC)


def starve(limit: str = INSTANCES) -> None:
    """This process (a forked child of a test) makes no more of `limit`'s kind from now on."""
    from cgagent.isolation.syscalls import CLONE_NEWUSER, unshare

    unshare(CLONE_NEWUSER)
    Path("/proc/sys/user", limit).write_text("0")


def starved(argv: list[str], limit: str = INSTANCES) -> list[str]:
    """argv run as root of a new user namespace whose `limit` is 0 (and bounded in time: a follower
    that never ends must not hang the suite)."""
    return ["timeout", "60", "unshare", "--user", "--map-root-user", "sh", "-c",
            f'echo 0 > /proc/sys/user/{limit} && exec "$@"', "sh", *argv]
