"""v2 memory: memory.max, memory.swap.max; current, peak, memory.stat, memory.events."""

from __future__ import annotations

from cgagent import convert
from cgagent.cgroups import fs
from cgagent.cgroups.fs import gone_check
from cgagent.errors import CgagentError
from cgagent.limits import Resources

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from cgagent.cgroups.stats import MemoryUsage

NAME = "memory"
# `oom_kill N` of this cgroup and its descendants (memory.events.local would leave the descendants
# out: a workload's own sub-cgroups are part of it); inotify reports each change of it
OOM_FILE = "memory.events"
OWN_OOM_FILE = "memory.events.local"   # (kernel 5.2+) the kills of this cgroup's own processes
LIMIT_FILES = ("memory.max", "memory.min")
SWAP_LIMIT_FILES = ("memory.max", "memory.swap.max")


def apply(d: str, r: Resources) -> None:
    if r.memory is not None:
        fs.write(f"{d}/memory.max", convert.v2_limit(r.memory))
    if r.memory_swap is not None:
        try:
            swap = convert.v2_swap_max(r.memory, r.memory_swap)
        except ValueError as e:
            raise CgagentError(f"--memory-swap: {e}", "give --memory and a --memory-swap at least as large") from None
        if fs.read_int(f"{d}/memory.swap.max") is None:
            raise CgagentError("--memory-swap is not supported: the kernel has no swap controller",
                               "enable CONFIG_MEMCG_SWAP, or drop --memory-swap")
        fs.write(f"{d}/memory.swap.max", convert.v2_limit(swap))


def usage(d: str, swap: bool = False) -> MemoryUsage:
    """current, peak, the memory.stat breakdown and the memory.events counters (no limits)."""
    from cgagent.cgroups.stats import MemoryUsage

    m = MemoryUsage(fs.read_int(f"{d}/memory.current"), fs.read_int(f"{d}/memory.peak"))
    if m.usage is None:
        gone_check(d)
    st = fs.read_fields(f"{d}/memory.stat", (("anon",), ("file",), ("inactive_file",)))
    m.rss = st.get("anon")
    m.cache = st.get("file")
    m.inactive_file = st.get("inactive_file")
    ev = fs.read_fields(f"{d}/{OOM_FILE}", (("max",), ("oom",), ("oom_kill",)))
    m.limit_hits = ev.get("max")
    m.oom_events = ev.get("oom")
    m.oom_kills = ev.get("oom_kill")
    if swap:
        m.swap = fs.read_int(f"{d}/memory.swap.current")
    return m


def limit(d: str) -> int | None:
    n = fs.read_int(f"{d}/memory.max")
    if n is None:
        gone_check(d)
    return n


def reservation(d: str) -> int | None:
    """memory.min, which cAdvisor reports as the reservation on v2; None without the controller."""
    return fs.read_int(f"{d}/memory.min")


def swap_limit(d: str, memory: int | None) -> int | None:
    """memory + swap, as --memory-swap means it (memory.swap.max holds swap alone); -1 unlimited."""
    swap = fs.read_int(f"{d}/memory.swap.max")
    if swap is None or memory is None:
        return None
    return -1 if swap < 0 or memory < 0 else memory + swap
