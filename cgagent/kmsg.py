"""Who the OOM killer killed, from the kernel log (/dev/kmsg), as cAdvisor learns it: an
"oom-kill:constraint=...,task_memcg=CGROUP,task=COMM,pid=PID,uid=UID" record names the victim's
cgroup, then "Memory cgroup out of memory: Killed process PID (COMM) total-vm:NkB, anon-rss:NkB,
file-rss:NkB, shmem-rss:NkB, ..." its memory at the kill. The first is rate-limited by the kernel (10
per 5 s), the log is a ring that can wrap and needs root to read: the victims are details added to
an OOM event when the kernel reported them, never the count (that is the cgroup's counter)."""

from __future__ import annotations

import collections
import os
import re
import time

from cgagent.wakeup import ready_to_read

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from typing import Any

_KILLED = re.compile(r"Killed process (\d+) \(([^)]*)\) total-vm:(\d+)kB, anon-rss:(\d+)kB, file-rss:(\d+)kB, "
                     r"shmem-rss:(\d+)kB")
MAX_PENDING = 256
# The kernel counts a kill, sends SIGKILL, then prints its "Killed process" line: a killer preempted
# in between (a loaded machine) prints it late, after a reader has seen the counter go up (the
# agent's OOM watcher). An "oom-kill:" line read is awaited that long for its Killed line, then given up.
LINE_WAIT = 2.0


class OomLog:
    def __init__(self) -> None:
        try:
            self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self.fd, 0, os.SEEK_END)   # kills from now on: older ones are not ours to explain
        except OSError:
            self.fd = -1   # not readable here (no root, a container's /dev): events carry no victims
        # pid -> (task_memcg, when read): an oom-kill line awaiting its Killed line
        self._memcg: dict[str, tuple[str, float]] = {}
        self._victims: collections.deque[tuple[str, dict[str, Any]]] = collections.deque(maxlen=MAX_PENDING)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _drain(self) -> None:
        while True:
            try:
                rec = os.read(self.fd, 8192).decode(errors="replace")
            except BlockingIOError:
                return
            except BrokenPipeError:   # the ring wrapped past us: go on with what is there
                continue
            except OSError:
                self.close()
                return
            text = rec.partition(";")[2].split("\n", 1)[0]
            if text.startswith("oom-kill:"):
                f = dict(kv.split("=", 1) for kv in text[len("oom-kill:"):].split(",") if "=" in kv)
                if "pid" in f and len(self._memcg) < MAX_PENDING:
                    self._memcg[f["pid"]] = (f.get("task_memcg", ""), time.monotonic())
            else:
                m = _KILLED.search(text)
                if m and m.group(1) in self._memcg:
                    memcg, _read = self._memcg.pop(m.group(1))
                    self._victims.append((memcg, {
                        "pid": int(m.group(1)), "comm": m.group(2), "total_vm_kb": int(m.group(3)),
                        "anon_rss_kb": int(m.group(4)), "file_rss_kb": int(m.group(5)),
                        "shmem_rss_kb": int(m.group(6))}))

    def victims(self, cgroup: str, wait: float = LINE_WAIT) -> list[dict[str, Any]]:
        """The victims reported for `cgroup` (its path as the workload's record has it: a suffix of the
        kernel's, which is rooted at the init cgroup namespace) since the last call, after settle()."""
        if self.fd < 0 or not cgroup:
            return []
        self.settle(cgroup, wait)
        mine = [v for memcg, v in self._victims if memcg.endswith(cgroup)]
        if mine:
            self._victims = collections.deque(((m, v) for m, v in self._victims if not m.endswith(cgroup)),
                                              maxlen=MAX_PENDING)
        return mine

    def settle(self, cgroup: str, wait: float = LINE_WAIT) -> None:
        """Read what the kernel logged; a kill of `cgroup` whose "Killed process" line has not come
        yet is waited for, up to `wait` s after its "oom-kill:" line was read (see LINE_WAIT): no wait
        when the kernel reported no such kill. Takes nothing: a caller that holds a lock for
        victims() settles first, so that a late line is not waited for under it."""
        if self.fd < 0 or not cgroup:
            return
        while True:
            self._drain()
            if self.fd < 0:
                return
            now = time.monotonic()
            for pid, (_cg, read) in list(self._memcg.items()):
                if now - read > max(wait, LINE_WAIT):   # its Killed line never came: not waited for again
                    del self._memcg[pid]
            left = max((read + wait - now for memcg, read in self._memcg.values() if memcg.endswith(cgroup)),
                       default=0.0)
            if left <= 0:
                return
            ready_to_read([self.fd], left)
