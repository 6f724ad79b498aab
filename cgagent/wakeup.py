"""Waits that a signal always ends: `readable()` is select() with a wakeup pipe among its fds.

Python runs a signal's handler (Ctrl-C's KeyboardInterrupt, a SIGTERM that exits) in the main
thread, between bytecodes. A plain blocking select() is only cut short by a signal that lands while
the main thread is inside the system call: one that lands just before it (after the interpreter's
last check, while select's arguments are being built) or in another thread leaves the call waiting
for its fds, and `logs -f` on a quiet workload then ignores Ctrl-C (seen in the v2 VM's README walk).
The C-level handler writes each signal to the wakeup fd (signal.set_wakeup_fd), whenever it comes:
with that fd in the set, select returns and the handler runs.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # the C module: `signal`'s enum tables are not for the thin client
import _thread
import os
import select

TYPE_CHECKING = False   # not typing's own: the thin client's path does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from threading import Event

_read_end: int | None = None
_owner: int | None = None   # the thread that set it: the main thread, the only one a signal's handler runs in


def _wakeup_fd() -> int | None:
    """The read end of this process's wakeup pipe, set up at the first call; None outside the main
    thread (only it may set one), or for good when another wakeup fd was set at that first call."""
    global _read_end, _owner
    if _read_end is not None:
        return _read_end if _thread.get_ident() == _owner else None
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        old = _signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except ValueError:   # not the main thread
        old = None
    if old != -1:
        if old is not None:
            _signal.set_wakeup_fd(old)
        os.close(r)
        os.close(w)
        return None
    _read_end, _owner = r, _thread.get_ident()   # the write end stays open for as long as the process lives
    return r


def ready_to_read(fds: list[int], timeout: float | None = None) -> list[int]:
    """select()'s readable set, by poll(): select() takes no fd from 1024 up, and the agent (its soft
    fd limit raised for the exporter's directory fds) holds more than that."""
    p = select.poll()
    for fd in fds:
        p.register(fd, select.POLLIN)
    return [fd for fd, _ in p.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999)))]


def readable(fds: list[int], timeout: float | None = None) -> list[int]:
    """The fds of `fds` that are readable, waiting up to `timeout` seconds (None: for ever) for one;
    a signal that arrives meanwhile, or had just arrived, ends the wait and has its handler run
    (which may raise, as Ctrl-C's does). An empty answer: the timeout, or a handler that returned."""
    wake = _wakeup_fd()
    ready = ready_to_read(fds if wake is None else [*fds, wake], timeout)
    if wake is not None and wake in ready:
        try:
            while os.read(wake, 512):
                pass
        except BlockingIOError:
            pass
        ready.remove(wake)
    return ready


def wait_readable(fd: int) -> None:
    """Until `fd` is readable (a blocking read on it then returns at once); a signal's handler runs
    meanwhile, whenever the signal comes, and the wait goes on unless it raised."""
    while not readable([fd]):
        pass


def until_set(flag: Event) -> None:
    """Block until a signal's handler sets `flag` (a daemon's main thread: SIGTERM, Ctrl-C). A lock's
    wait (Event.wait) misses a signal that lands just before it; this one does not. Without a wakeup
    fd of its own (another is set), it falls back on Event.wait."""
    if _wakeup_fd() is None:
        flag.wait()
        return
    while not flag.is_set():
        readable([])
