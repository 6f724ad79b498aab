"""The kernel log's OOM victims (cgagent.kmsg), fed from a socket pair that stands in for /dev/kmsg
(one record per read, as the device gives them): the parsing, and the wait for a "Killed process"
line that the kernel prints after it counted the kill."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from cgagent.kmsg import OomLog

T = TypeVar("T")

OOM_KILL = ("6,1001,5000,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
            "oom_memcg=/cgagent/hog,task_memcg=/cgagent/hog,task=python3,pid=4242,uid=0\n")
KILLED = ("3,1002,5001,-;Memory cgroup out of memory: Killed process 4242 (python3) total-vm:215000kB, "
          "anon-rss:32000kB, file-rss:4000kB, shmem-rss:0kB, UID:0 pgtables:480kB oom_score_adj:0\n")


def _log() -> tuple[OomLog, socket.socket]:
    log = OomLog()
    log.close()   # not the machine's /dev/kmsg: ours, which the test writes
    kernel, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    reader.setblocking(False)
    log.fd = os.dup(reader.fileno())
    reader.close()
    return log, kernel


def _killed_late(kernel: socket.socket, read: Callable[[], T]) -> T:
    """`read()` while the kernel logs a kill whose Killed line comes 0.3 s after its oom-kill line."""
    def killer() -> None:
        time.sleep(0.3)
        kernel.send(KILLED.encode())

    kernel.send(OOM_KILL.encode())
    late = threading.Thread(target=killer)
    late.start()
    try:
        return read()
    finally:
        late.join()


def test_a_kill_is_named_for_its_cgroup_only() -> None:
    log, kernel = _log()
    try:
        kernel.send(OOM_KILL.encode())
        kernel.send(KILLED.encode())
        assert log.victims("/cgagent/other") == []
        assert log.victims("/cgagent/hog") == [{"pid": 4242, "comm": "python3", "total_vm_kb": 215000,
                                                "anon_rss_kb": 32000, "file_rss_kb": 4000, "shmem_rss_kb": 0}]
        assert log.victims("/cgagent/hog") == []   # each victim is told once
    finally:
        log.close()
        kernel.close()


def test_a_killed_line_printed_late_is_waited_for() -> None:
    """The agent's OOM watcher (or the supervisor) reads the counter, or sees the victim exit, between
    the kernel's count and its "Killed process" line: on a loaded machine the killer is preempted
    there. The victim must still be named (it was not, with a 50 ms wait, in a full run)."""
    log, kernel = _log()
    try:
        got = _killed_late(kernel, lambda: log.victims("/cgagent/hog"))
        assert [v["pid"] for v in got] == [4242]
    finally:
        log.close()
        kernel.close()


def test_settle_waits_for_the_late_line_and_leaves_the_victim_to_victims() -> None:
    """The agent's OOM watcher settles before it takes the store lock, so that a late line is waited
    for outside the lock; victims() under the lock then finds the victim read, with no wait left."""
    log, kernel = _log()
    try:
        _killed_late(kernel, lambda: log.settle("/cgagent/hog"))
        assert [v["pid"] for v in log.victims("/cgagent/hog", wait=0)] == [4242]
    finally:
        log.close()
        kernel.close()
