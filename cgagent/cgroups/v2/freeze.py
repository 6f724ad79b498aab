"""v2 freezer: cgroup.freeze (1/0) asks, cgroup.events `frozen 1` says it is done. The kernel
notifies each change of cgroup.events (IN_MODIFY), so the wait is an event, not a poll."""

from __future__ import annotations

import time
from collections.abc import Callable

from cgagent.cgroups import fs
from cgagent.errors import CgagentError
from cgagent.wakeup import ready_to_read


def is_frozen(d: str) -> bool | None:
    """cgroup.events `frozen` (None: no such line, a kernel before 5.2)."""
    v = fs.read_kv(f"{d}/cgroup.events").get("frozen")
    return None if v is None else v == 1


def set_frozen(d: str, frozen: bool, timeout: float = 10.0) -> None:
    """Freeze or thaw and return once cgroup.events says so (a task in uninterruptible sleep can hold
    a freeze back: bounded by `timeout`)."""
    wait_frozen(d, frozen, timeout, lambda: fs.write(f"{d}/cgroup.freeze", int(frozen)))


def wait_frozen(d: str, frozen: bool, timeout: float = 10.0, start: Callable[[], object] | None = None) -> None:
    """Call `start` (what asks for the change: a write, or systemd's FreezeUnit), then wait until
    cgroup.events says the cgroup is `frozen` (or thawed)."""
    # ctypes: only when pausing, not on every CLI start
    from cgagent.inotify import IN_MODIFY, Follow

    with Follow([(f"{d}/cgroup.events", IN_MODIFY)]) as watch:   # before asking: no change can be missed
        if start is not None:
            start()
        deadline = time.monotonic() + timeout
        while is_frozen(d) not in (frozen, None):
            left = deadline - time.monotonic()
            if left <= 0:
                raise CgagentError(f"{d} did not {'freeze' if frozen else 'thaw'} within {timeout:g}s",
                                   "a process may be in uninterruptible sleep (D state); retry")
            ready_to_read(watch.fds, min(left, watch.timeout or left))
            watch.drain()
