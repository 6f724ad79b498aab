"""One inotify instance for every followed stream the agent serves (`logs -f`, `events -f`).

inotify instances are counted per user, host-wide (fs.inotify.max_user_instances, 128 by default),
and the agent runs as root: an instance per followed stream let API callers (up to the connection
bound, 256) take root's last ones from systemd, udev and every other root process. Here a thread
reads the one instance and wakes each subscriber whose file changed through its own eventfd."""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field

from cgagent.inotify import IN_IGNORED, POLL_SECONDS, Inotify, release
from cgagent.wakeup import ready_to_read

IN_MASK_ADD = 0x20000000   # add to the watch's mask: two streams on one file share the kernel's watch


@dataclass(eq=False)
class Subscription:
    """`fd` (an eventfd) is readable after a change of a watched file; `clear()` before reading the
    files. Without a watch (the kernel gave no instance or watch: inotify.Follow), `timeout` says how
    often to look instead."""

    fd: int
    wds: list[int] = field(default_factory=list)
    timeout: float | None = None

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.fd)


class Watches:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ino: Inotify | None = None
        self._subs: dict[int, list[Subscription]] = {}   # wd -> who watches that file

    def subscribe(self, paths: list[tuple[str, int]]) -> Subscription:
        """Watch each (path, mask) for the caller, from now on: a change after this returns wakes it."""
        sub = Subscription(os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK))
        with self._lock:
            try:
                if self._ino is None:
                    self._ino = Inotify()
                    threading.Thread(target=self._dispatch, args=(self._ino,), name="cgagent-watches",
                                     daemon=True).start()
                for path, mask in paths:
                    wd = self._ino.add(path, mask | IN_MASK_ADD)
                    sub.wds.append(wd)
                    self._subs.setdefault(wd, []).append(sub)
            except OSError:   # root's instances or watches are used up: a look every POLL_SECONDS
                self._release(sub)
                sub.timeout = POLL_SECONDS
            except BaseException:
                self._drop(sub)
                raise
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._drop(sub)

    def _drop(self, sub: Subscription) -> None:
        self._release(sub)
        os.close(sub.fd)

    def _release(self, sub: Subscription) -> None:
        for wd in sub.wds:
            release(self._ino, self._subs, wd, sub)
        sub.wds.clear()

    def _dispatch(self, ino: Inotify) -> None:
        while True:
            ready_to_read([ino.fd])
            with self._lock:
                for wd, mask, _name in ino.read():
                    # wd -1, IN_Q_OVERFLOW: which files changed is lost: wake everyone
                    woken = [s for users in self._subs.values() for s in users] if wd == -1 else self._subs.get(wd, [])
                    for s in woken:
                        os.eventfd_write(s.fd, 1)
                    if mask & IN_IGNORED:
                        self._subs.pop(wd, None)


WATCHES = Watches()
