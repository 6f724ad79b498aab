"""The agent's own process_* series, named and valued as prometheus_client's ProcessCollector has
them (virtual and resident memory, start time, CPU seconds, open and maximum file descriptors).

Ours because of one number: ProcessCollector counts open descriptors by listing /proc/self/fd, and
an agent that keeps a directory descriptor per cgroup (cgagent.cgroups.fs.DirFds) holds thousands:
~4 ms of every scrape at a thousand cgroups. Since Linux 6.2, stat() of that directory gives the
count as its size; older kernels report 0 there, and the listing is the fallback."""

from __future__ import annotations

import os
import resource

from exporters.exposition import NO_LABELS, Family

PAGE = resource.getpagesize()
TICKS = os.sysconf("SC_CLK_TCK")


def _boot_time() -> float | None:
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def open_fds() -> int:
    n = os.stat("/proc/self/fd").st_size
    return n if n > 0 else len(os.listdir("/proc/self/fd"))


class Process:
    def __init__(self) -> None:
        self.btime = _boot_time()

    def families(self) -> list[Family]:
        if self.btime is None:
            return []
        out = []
        try:
            with open("/proc/self/stat", "rb") as f:
                parts = f.read().rsplit(b")", 1)[-1].split()
        except OSError:
            parts = []
        if parts:
            for name, kind, help_, value in (
                    ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", float(parts[20])),
                    ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
                     float(parts[21]) * PAGE),
                    ("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
                     float(parts[19]) / TICKS + self.btime),
                    ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.",
                     (float(parts[11]) + float(parts[12])) / TICKS)):
                fam = Family(name, kind, help_)
                fam.add(NO_LABELS, value)
                out.append(fam)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        for name, help_, value in (
                ("process_open_fds", "Number of open file descriptors.", float(open_fds())),
                ("process_max_fds", "Maximum number of open file descriptors.",
                 float("inf") if soft == resource.RLIM_INFINITY else float(soft))):
            fam = Family(name, "gauge", help_)
            fam.add(NO_LABELS, value)
            out.append(fam)
        return out
