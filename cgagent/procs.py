"""Process identity and waiting on processes that are not our children (pidfd)."""

from __future__ import annotations

import os

from cgagent.wakeup import ready_to_read


def close_all_but(keep: set[int]) -> None:
    """Close every fd of this process not in `keep` (stdio too, unless kept): what a process forked
    from a long-lived one must not carry into what it runs."""
    for fd in [int(n) for n in os.listdir("/proc/self/fd")]:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:   # the listing's own fd is already gone
                pass


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: with the pid, a process identity that survives pid reuse."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return int(data.rsplit(")", 1)[1].split()[19])


def alive(pid: int | None, start: int | None) -> bool:
    if not pid:
        return False
    st = start_time(pid)
    if st is None or (start is not None and st != start):
        return False
    # Z: exited, not reaped; X: being reaped (its /proc entry lasts until then): neither runs any more
    return state(pid) not in (None, "Z", "X")


def state(pid: int) -> str | None:
    """The process's state letter in /proc/PID/stat (R, S, D, T, Z ...); None: no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def pidfd(pid: int | None, start: int | None) -> int | None:
    """A pidfd of the process `pid` that started at `start` (procs.start_time), while it runs; None
    once it has ended. Checked after the open: the fd names whoever holds the pid at that moment, and
    a pid reused since the record was written is another process."""
    if not pid:
        return None
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    if alive(pid, start):
        return fd
    os.close(fd)
    return None


def send_signal(pid: int | None, start: int | None, sig: int) -> bool:
    """`sig` to the process `pid` that started at `start`, through a pidfd: never to a process that took
    the pid over since the record named it (a check and then kill(pid) leaves that window open).
    False: it has ended."""
    import signal

    fd = pidfd(pid, start)
    if fd is None:
        return False
    try:
        signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)
    return True


def wait_exit(pid: int, start: int | None, timeout: float) -> bool:
    """Block until the process `pid` that started at `start` exits, or the timeout passes. True = it
    has exited (a reused pid is not waited for)."""
    fd = pidfd(pid, start)
    if fd is None:
        return True
    try:
        return bool(ready_to_read([fd], max(0.0, timeout)))
    finally:
        os.close(fd)
