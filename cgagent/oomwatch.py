"""The OOM watcher: a thread that waits on kernel notifications (no polling loop) and logs every
OOM kill of a cgagent workload to the durable events log as it happens.

- Each workload's cgroup: the notification its driver's reader sets up (Reader.oom_notifier): an
  eventfd that fires when the cgroup hits OOM and when it is removed (v1), or an inotify watch that
  reports each change of the counter and the cgroup's removal (v2).
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
from cgagent.cgroups.reader import OomNotifier, Reader
from cgagent.cgroups.readers import reader_for
from cgagent.errors import CgagentError
from cgagent.kmsg import OomLog
from cgagent.state import Record, Store

# An eventfd notifier (v1) fires before the OOM killer has picked and counted its victim: the counter
# is re-read for this long after such a notification (the kernel has no event for the increment itself).
EVENTFD_SETTLE = 2.0
EVENTFD_RECHECK = 0.005


@dataclass(eq=False)
class _Watch:
    """One watched workload: its record's identity, its cgroup's reader and its OOM notifier."""

    name: str
    created: float        # tells a re-created workload of the same name apart
    reader: Reader
    cgroup: str = ""      # the record's: whose kernel log lines check() reads
    notify: OomNotifier | None = None
    settle_until: float = 0.0
    running: bool = False  # the record says running: start() has saved it, only locked writers follow

    def counter(self) -> tuple[int, int]:
        return self.reader.oom_counter()

    def close(self) -> None:
        if self.notify is not None:
            self.notify.close()


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
        inos: list[inotify.Inotify] = []
        try:
            dir_ino = inotify.Inotify()
            inos.append(dir_ino)
            ev_ino = inotify.Inotify()
            inos.append(ev_ino)
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
                timeout = EVENTFD_RECHECK if settling else -1
                ready = ep.poll(timeout)
                # events that arrived together with the stop request are handled first: a supervisor
                # stops its watcher right after the workload's exit, maybe before this thread woke
                stopping = any(fd == self._stop_r for fd, _mask in ready)
                for fd, _mask in ready:
                    if fd == self._stop_r:
                        continue
                    if fd == dir_ino.fd:
                        dir_ino.drain()
                        self.sync()
                    elif fd == ev_ino.fd:
                        for wd, mask, _name in ev_ino.read():
                            w = self._by_wd.get(wd)
                            if w is None:
                                continue
                            if mask & inotify.IN_IGNORED:   # the watched file is gone with its cgroup
                                self._drop(w, rm_watch=False)
                            else:
                                self.check(w)
                    else:
                        w = self._by_efd.get(fd)
                        if w is not None:
                            with contextlib.suppress(BlockingIOError, OSError):
                                os.eventfd_read(fd)
                            if not w.reader.exists("memory"):
                                self._drop(w)   # removal also wakes the eventfd
                            else:
                                # the eventfd fires before the killer has counted its victim
                                w.settle_until = time.monotonic() + EVENTFD_SETTLE
                                self.check(w)
                if stopping:
                    return
                now = time.monotonic()
                for w in settling:
                    if w.settle_until and (now >= w.settle_until or not w.reader.exists("memory")):
                        w.settle_until = 0.0
                    elif w.settle_until:
                        self.check(w)
        except Exception as e:  # the agent keeps serving; OOMs are still logged at workload exit
            # root's inotify instances are counted host-wide: a start with none left is told apart
            fix = "" if len(inos) == 2 else ("; no inotify instance to spare: raise fs.inotify.max_user_instances"
                                             " and restart the agent (until then each kill is logged at its"
                                             " workload's exit)")
            print(f"cgagent: warning: OOM watcher stopped: {type(e).__name__}: {e}{fix}", file=sys.stderr, flush=True)
        finally:
            self._ready.set()
            for w in list(self._watches.values()):
                self._drop(w)
            for ino in inos:
                ino.close()
            ep.close()
            if self._kmsg is not None:
                self._kmsg.close()

    # --- workloads

    def sync(self) -> None:
        """Watch every live workload's cgroup, forget those that are gone, and catch up on kills that
        happened while nothing watched (the agent was down, or the workload is new)."""
        live: dict[str, Record] = {}
        for rec in self.store.all():
            if rec.status != "exited" and reader_for(rec.dirs).has("memory") and self.only in (None, rec.name):
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
        w = _Watch(rec.name, rec.created, reader_for(rec.dirs), cgroup=rec.cgroup)
        try:
            n = w.notify = w.reader.oom_notifier(self._ev_ino)
            if n.wd >= 0:
                self._by_wd[n.wd] = w
            if n.fd >= 0:
                self._ep.register(n.fd, select.EPOLLIN)
                self._by_efd[n.fd] = w
        except OSError:
            w.close()   # the cgroup is not there yet (record written first) or already gone
            return None
        self._watches[rec.name] = w
        return w

    def _drop(self, w: _Watch, rm_watch: bool = True) -> None:
        if self._watches.get(w.name) is w:
            del self._watches[w.name]
        n = w.notify
        if n is not None and n.fd >= 0:
            self._by_efd.pop(n.fd, None)
            with contextlib.suppress(OSError, ValueError):
                self._ep.unregister(n.fd)
        if n is not None and n.wd >= 0:
            self._by_wd.pop(n.wd, None)
            if rm_watch:
                self._ev_ino.remove(n.wd)
        w.close()

    def check(self, w: _Watch) -> None:
        """Read the kernel counter and log what is new, under the lock the supervisor's finish() takes."""
        if self._kmsg is not None:
            self._kmsg.settle(w.cgroup)   # a late Killed line is waited for here, not under the lock
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
