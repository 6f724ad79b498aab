"""The OOM watcher: a thread that waits on kernel notifications (no polling loop) and logs every
OOM kill of a cgagent workload to the durable events log as it happens.

- v1: an eventfd registered on memory.oom_control through cgroup.event_control; it fires when the
  cgroup hits OOM (and when the cgroup is removed).
- v2: inotify IN_MODIFY on memory.events.
- New and removed workloads: inotify on the state dir's workloads/ directory (records are replaced
  by rename, so IN_MOVED_TO/IN_CREATE/IN_DELETE cover every change).

On each notification the kernel's oom_kill counter is read under the store lock and handed to
cgagent.oom.note(), which the workload's supervisor also calls at exit: each kill is logged once.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
import time
from dataclasses import dataclass

from cgagent import inotify, oom
from cgagent.errors import CgagentError
from cgagent.kmsg import OomLog
from cgagent.state import Record, Store

# v1 notifies before the OOM killer has picked and counted its victim: the counter is re-read for
# this long after a notification (the kernel has no event for the increment itself).
V1_SETTLE = 2.0
V1_RECHECK = 0.005


@dataclass(eq=False)
class _Watch:
    name: str
    created: float        # tells a re-created workload of the same name apart
    memdir: str
    v2: bool
    efd: int = -1         # v1 eventfd
    cfd: int = -1         # v1 memory.oom_control fd (must stay open while registered)
    wd: int = -1          # v2 inotify watch
    settle_until: float = 0.0
    running: bool = False  # the record says running: start() has saved it, only locked writers follow

    def counter(self) -> tuple[int, int]:
        return oom.read_counter(self.memdir, self.v2)

    def close(self) -> None:
        for fd in (self.efd, self.cfd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.efd = self.cfd = -1


class OomWatcher:
    def __init__(self, store: Store, source: str = "serve", only: str | None = None) -> None:
        self.store = store
        self.source = source  # who logged a kill, in its event: the agent ("serve") or a supervisor
        self.only = only      # a supervisor watches its own workload, the agent every workload
        self._watches: dict[str, _Watch] = {}
        self._by_efd: dict[int, _Watch] = {}
        self._by_wd: dict[int, _Watch] = {}
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._ready = threading.Event()
        self.logged = 0       # kills this watcher wrote to the log (the supervisor may write others)
        self._kmsg: OomLog | None = None

    # --- lifecycle

    def start(self) -> OomWatcher:
        self.store.ensure()
        self._kmsg = OomLog()   # before the first catch-up: victims of the kills it logs from now on
        self._thread = threading.Thread(target=self._run, name="cgagent-oom", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        ep = select.epoll()
        dir_ino, ev_ino = inotify.Inotify(), inotify.Inotify()
        try:
            dir_ino.add(self.store.workloads, inotify.IN_MOVED_TO | inotify.IN_CREATE | inotify.IN_DELETE
                        | inotify.IN_MOVED_FROM)
            self._ev_ino = ev_ino
            for fd in (self._stop_r, dir_ino.fd, ev_ino.fd):
                ep.register(fd, select.EPOLLIN)
            self._ep = ep
            self.sync()
            self._ready.set()
            while True:
                settling = [w for w in self._watches.values() if w.settle_until]
                timeout = V1_RECHECK if settling else -1
                ready = ep.poll(timeout)
                # events that arrived together with the stop request are handled first: a supervisor
                # stops its watcher right after the workload's exit, maybe before this thread woke
                stopping = any(fd == self._stop_r for fd, _mask in ready)
                for fd, _mask in ready:
                    if fd == self._stop_r:
                        continue
                    if fd == dir_ino.fd:
                        for _ in dir_ino.read():
                            pass
                        self.sync()
                    elif fd == ev_ino.fd:
                        for wd, mask, _name in ev_ino.read():
                            w = self._by_wd.get(wd)
                            if w is None:
                                continue
                            if mask & inotify.IN_IGNORED:   # memory.events is gone with its cgroup
                                self._drop(w, rm_watch=False)
                            else:
                                self.check(w)
                    else:
                        w = self._by_efd.get(fd)
                        if w is not None:
                            with contextlib.suppress(BlockingIOError, OSError):
                                os.eventfd_read(fd)
                            if not os.path.isdir(w.memdir):
                                self._drop(w)   # removal also wakes the eventfd
                            else:
                                w.settle_until = time.monotonic() + V1_SETTLE
                                self.check(w)
                if stopping:
                    return
                now = time.monotonic()
                for w in settling:
                    if w.settle_until and (now >= w.settle_until or not os.path.isdir(w.memdir)):
                        w.settle_until = 0.0
                    elif w.settle_until:
                        self.check(w)
        except Exception as e:  # the agent keeps serving; OOMs are still logged at workload exit
            print(f"cgagent: warning: OOM watcher stopped: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        finally:
            self._ready.set()
            for w in list(self._watches.values()):
                self._drop(w)
            dir_ino.close()
            ev_ino.close()
            ep.close()
            if self._kmsg is not None:
                self._kmsg.close()

    # --- workloads

    def sync(self) -> None:
        """Watch every live workload's cgroup, forget those that are gone, and catch up on kills that
        happened while nothing watched (the agent was down, or the workload is new)."""
        live: dict[str, Record] = {}
        for rec in self.store.all():
            if rec.status != "exited" and ("memory" in rec.dirs or "" in rec.dirs) \
                    and self.only in (None, rec.name):
                live[rec.name] = rec
        for name, w in list(self._watches.items()):
            cur = live.get(name)
            if cur is None or cur.created != w.created:
                self._drop(w)
        for name, rec in live.items():
            known = self._watches.get(name)
            if known is None:
                known = self._add(rec)
                if known is None:
                    continue
            if rec.status == "running" and not known.running:
                known.running = True
                self.check(known)

    def _add(self, rec: Record) -> _Watch | None:
        v2 = "" in rec.dirs
        w = _Watch(rec.name, rec.created, rec.dirs["" if v2 else "memory"], v2)
        try:
            if v2:
                w.wd = self._ev_ino.add(f"{w.memdir}/memory.events", inotify.IN_MODIFY)
                self._by_wd[w.wd] = w
            else:
                w.efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
                w.cfd = os.open(f"{w.memdir}/memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
                fd = os.open(f"{w.memdir}/cgroup.event_control", os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, f"{w.efd} {w.cfd}".encode())
                finally:
                    os.close(fd)
                self._ep.register(w.efd, select.EPOLLIN)
                self._by_efd[w.efd] = w
        except OSError:
            w.close()   # the cgroup is not there yet (record written first) or already gone
            return None
        self._watches[rec.name] = w
        return w

    def _drop(self, w: _Watch, rm_watch: bool = True) -> None:
        if self._watches.get(w.name) is w:
            del self._watches[w.name]
        if w.efd >= 0:
            self._by_efd.pop(w.efd, None)
            with contextlib.suppress(OSError, ValueError):
                self._ep.unregister(w.efd)
        if w.wd >= 0:
            self._by_wd.pop(w.wd, None)
            if rm_watch:
                self._ev_ino.remove(w.wd)
        w.close()

    def check(self, w: _Watch) -> None:
        """Read the kernel counter and log what is new, under the lock the supervisor's finish() takes."""
        with self.store.lock():
            try:
                rec = self.store.load(w.name)
            except CgagentError:
                return
            if rec.status != "running" or rec.created != w.created:
                # created: start() still writes the record unlocked; exited: finish() logged the rest
                return
            try:
                count = w.counter()
            except (OSError, ValueError):
                return
            victims = self._kmsg.victims(rec.cgroup) if self._kmsg is not None else []
            new = oom.note(self.store, rec, count, self.source, {"victims": victims[-10:]} if victims else None)
            if new:
                self.logged += new
                w.settle_until = 0.0
