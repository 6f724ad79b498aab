"""Waiting for a cgroup to empty after SIGKILL. v1 has no event for it, so this polls, bounded."""

from __future__ import annotations

import time

from cgagent.errors import CgagentError

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
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
