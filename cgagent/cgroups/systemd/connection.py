"""One connection to systemd for the steps of one operation: a run's create and start (the look at
its name and slices, then StartTransientUnit), its end and the prune of its slices. Not kept beyond
that: systemd sends every signal of every unit to each connection on its private socket, so an idle
kept one would fill with messages nobody reads.

Its own module, below the driver and cgagent.cgroups.parents, which both use it; jeepney is
imported only when a connection is opened."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cgagent.cgroups.systemd.dbus import Systemd


class _Kept(threading.local):
    def __init__(self) -> None:
        self.bus: Systemd | None = None
        self.pid = 0
        self.holds = 0


_kept = _Kept()


def _mine() -> _Kept:
    """The thread's state; in a forked child, the parent's connection is forgotten (this process's
    copy of its fds closed: the parent's connection is untouched)."""
    if _kept.pid != os.getpid():
        _drop()
        _kept.holds, _kept.pid = 0, os.getpid()
    return _kept


def connection() -> Systemd:
    """This thread's connection, opened on first use and reused until release() (or the end of the
    outermost one_connection())."""
    kept = _mine()
    if kept.bus is None:
        from cgagent.cgroups.systemd.dbus import Systemd  # jeepney: only where systemd is asked

        kept.bus = Systemd()
    return kept.bus


def release() -> None:
    """Done with systemd for now: close the connection, unless a one_connection() around us still needs it."""
    if _mine().holds == 0:
        _drop()


def _drop() -> None:
    bus, _kept.bus = _kept.bus, None
    if bus is not None:
        bus.close()


@contextlib.contextmanager
def one_connection() -> Iterator[None]:
    """Steps that each release() when done share one connection until the block ends (a
    workload's end: its scope stopped, then its slices pruned)."""
    kept = _mine()
    kept.holds += 1
    try:
        yield
    finally:
        kept.holds -= 1
        release()
