"""v2 memory: memory.max, memory.swap.max; current, peak, memory.stat, memory.events."""

from __future__ import annotations

from cgagent import convert
from cgagent.cgroups import fs
from cgagent.cgroups.stats import Stats
from cgagent.errors import CgagentError
from cgagent.limits import Resources

NAME = "memory"


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


def oom_kills(d: str) -> int:
    return fs.read_kv(f"{d}/memory.events").get("oom_kill", 0)


def stats(d: str, s: Stats) -> None:
    usage(d, s)
    limits(d, s)
    s.memory.swap_limit = fs.read_int(f"{d}/memory.swap.max")


def usage(d: str, s: Stats) -> None:
    """current, peak, the memory.stat breakdown and the memory.events counters (no limits)."""
    m = s.memory
    m.usage = fs.read_int(f"{d}/memory.current")
    m.max_usage = fs.read_int(f"{d}/memory.peak")
    st = fs.read_fields(f"{d}/memory.stat", ("anon", "file", "inactive_file"))
    m.rss = st.get("anon")
    m.cache = st.get("file")
    m.inactive_file = st.get("inactive_file")
    ev = fs.read_kv(f"{d}/memory.events")
    m.limit_hits = ev.get("max")
    m.oom_events = ev.get("oom")
    m.oom_kills = ev.get("oom_kill")


def limits(d: str, s: Stats) -> None:
    s.memory.limit = fs.read_int(f"{d}/memory.max")
