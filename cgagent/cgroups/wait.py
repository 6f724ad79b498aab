"""Waiting for a cgroup to empty after SIGKILL (v1 has no event for it, so this polls, bounded), and
for a cgroup to be removed by its owner (an event)."""

from __future__ import annotations

import os
import select
import time

from cgagent.errors import CgagentError

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from collections.abc import Callable

    from cgagent.cgroups.manager import CgroupManager


def wait_empty(mgr: CgroupManager, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while mgr.procs():
        if time.monotonic() > deadline:
            raise CgagentError(f"processes {mgr.procs()[:5]} did not die within {timeout:g}s",
                               "they may be in uninterruptible sleep (D state); retry `cgagent rm -f`")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def wait_removed(d: str, start: Callable[[], object], timeout: float) -> bool:
    """Call `start`, then wait until the cgroup directory `d` has been removed by whoever owns it
    (systemd, for its scopes): True once it is gone, False after `timeout`. The kernel reports a
    cgroup's rmdir as IN_DELETE in its parent's directory (kernfs sends no IN_DELETE_SELF)."""
    from cgagent.inotify import IN_DELETE, IN_ONLYDIR, Inotify

    with Inotify() as ino:
        try:
            ino.add(os.path.dirname(d), IN_DELETE | IN_ONLYDIR)   # before `start`: no removal can be missed
        except OSError:
            return not os.path.isdir(d)   # no parent: no cgroup either
        start()
        deadline = time.monotonic() + timeout
        while os.path.isdir(d):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([ino.fd], [], [], left)
            for _ in ino.read():   # a sibling's removal wakes us too: look again
                pass
        return True
