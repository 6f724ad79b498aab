"""Network traffic of containers with their own network namespace (cAdvisor's container_network_*
counters, label `interface`), read inside that namespace: /proc/<pid>/net/dev of one process of the
cgroup shows the devices of that process's namespace. The process: a workload's main process (its
record's pid, as cAdvisor takes a container's init: a helper in the cgroup may sit in another
namespace), else the first one the cgroup lists. A cgroup whose processes share the agent's (or
PID 1's) namespace has no series: each would repeat the host's counters. Each namespace is read once
per scrape, however many cgroups share it (a pod's containers share the sandbox's); `lo` is left out,
as cAdvisor does."""

from __future__ import annotations

import os

from exporters.collectors import READ_ERRORS, Scrape
from exporters.exposition import Family

Counters = dict[str, tuple[int, ...]]   # interface -> the 8 counters, in FIELDS order

# (direction, what, help, column of /proc/net/dev after the interface name)
FIELDS = (
    ("receive", "bytes", "Cumulative count of bytes received", 0),
    ("receive", "packets", "Cumulative count of packets received", 1),
    ("receive", "errors", "Cumulative count of errors encountered while receiving", 2),
    ("receive", "packets_dropped", "Cumulative count of packets dropped while receiving", 3),
    ("transmit", "bytes", "Cumulative count of bytes transmitted", 8),
    ("transmit", "packets", "Cumulative count of packets transmitted", 9),
    ("transmit", "errors", "Cumulative count of errors encountered while transmitting", 10),
    ("transmit", "packets_dropped", "Cumulative count of packets dropped while transmitting", 11),
)
SKIPPED = frozenset({"lo"})
MAX_NET_DEV = 1 << 20   # bounded read: a namespace with thousands of devices is still read whole


def parse_net_dev(text: str) -> Counters:
    """/proc/net/dev: two header lines, then `iface: rx(8 columns) tx(8 columns)`."""
    out: Counters = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        name = name.strip()
        if not sep or name in SKIPPED:
            continue
        cols = rest.split()
        out[name] = tuple(int(cols[c]) for *_x, c in FIELDS)
    return out


def _netns(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:   # gone, or not ours to see
        return None


def _read_net_dev(pid: int) -> str:
    fd = os.open(f"/proc/{pid}/net/dev", os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        size = 0
        while size < MAX_NET_DEV and (b := os.read(fd, 65536)):
            chunks.append(b)
            size += len(b)
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


class Network:
    name = "network"

    def __init__(self) -> None:
        # the agent's and PID 1's namespaces: "the host" (the agent may itself run in a namespace)
        self.host = {i for i in (_netns("self"), _netns(1)) if i is not None}

    def collect(self, scrape: Scrape) -> list[Family]:
        fams = [Family(f"container_network_{d}_{w}_total", "counter", h) for d, w, h, _c in FIELDS]
        by_ns: dict[int, Counters | None] = {}
        main = {r.name: r.pid for r in scrape.records if r.pid}
        for t in scrape.targets:
            try:
                pid = main.get(t.workload) if t.workload is not None else None
                pid = pid or t.reader.a_pid()
            except READ_ERRORS as e:
                scrape.error(self.name, t, e)
                continue
            if pid is None:
                continue
            ns = _netns(pid)
            if ns is None or ns in self.host:
                continue
            if ns not in by_ns:
                try:
                    by_ns[ns] = parse_net_dev(_read_net_dev(pid))
                except READ_ERRORS as e:   # the process exited between the two reads
                    scrape.error(self.name, t, e)
                    by_ns[ns] = None
            counters = by_ns[ns]
            if not counters:
                continue
            for iface in sorted(counters):
                ls = t.labels.extend("interface", iface)
                for fam, v in zip(fams, counters[iface], strict=True):
                    fam.add(ls, v)
        return fams
