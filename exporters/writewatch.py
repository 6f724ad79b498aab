"""Values that change only when someone writes their file (limits), kept per cgroup until inotify
reports such a write (IN_MODIFY; a write(2) to a cgroup file raises it). The events are drained at
the start of each scrape: no thread, no timer. A cgroup re-created under the same path is another
Target, so nothing stale carries over. Without inotify (no instance, out of watches, a file
missing) the target is simply read every scrape."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from cgagent import inotify
from exporters.targets import Target


@dataclass(eq=False, slots=True)   # one per cgroup: no __dict__ each
class Entry:
    """What one target's watched files last read, and the watches on them."""

    values: Any = None
    wds: list[int] = field(default_factory=list)
    fresh: bool = False


class WriteWatch:
    def __init__(self) -> None:
        self._entries: dict[Target, Entry] = {}
        self._by_wd: dict[int, Entry] = {}
        self._ino: inotify.Inotify | None = None
        with contextlib.suppress(OSError):
            self._ino = inotify.Inotify()

    def begin(self) -> None:
        """Start of a scrape: mark every target whose files were written since as stale."""
        if self._ino is None:
            return
        for wd, _mask, _name in self._ino.read():
            if wd == -1:   # IN_Q_OVERFLOW: events were lost, trust nothing
                for e in self._entries.values():
                    e.fresh = False
                continue
            hit = self._by_wd.get(wd)
            if hit is not None:
                hit.fresh = False

    def cached(self, t: Target) -> Any:
        """The values kept for `t`, or None when they must be read (call `watch` first, then read)."""
        e = self._entries.get(t)
        return e.values if e is not None and e.fresh else None

    def watch(self, t: Target, paths: list[str]) -> None:
        """Watch `t`'s files (once); call before reading them so a write in between is not missed."""
        if t in self._entries or self._ino is None:
            return
        e = self._entries[t] = Entry()
        try:
            for p in paths:
                wd = self._ino.add(p, inotify.IN_MODIFY)
                e.wds.append(wd)
                self._by_wd[wd] = e
        except OSError:   # missing file or out of watches: read this target every scrape
            self._forget(e)

    def store(self, t: Target, values: Any) -> None:
        e = self._entries.get(t)
        if e is not None:
            e.values = values
            e.fresh = bool(e.wds)

    def end(self, live: list[Target]) -> None:
        """End of a scrape: drop the targets that are gone and their watches."""
        keep = set(live)
        for t in [t for t in self._entries if t not in keep]:
            self._forget(self._entries.pop(t))

    def close(self) -> None:
        self.end([])
        if self._ino is not None:
            self._ino.close()
            self._ino = None

    def _forget(self, e: Entry) -> None:
        for wd in e.wds:
            self._by_wd.pop(wd, None)
            if self._ino is not None:
                self._ino.remove(wd)
        e.wds.clear()
        e.fresh = False

