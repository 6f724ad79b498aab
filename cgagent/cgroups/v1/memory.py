"""v1 memory: limit_in_bytes, memsw.limit_in_bytes, usage, failcnt, memory.stat, oom_control."""

from __future__ import annotations

from cgagent.cgroups import fs
from cgagent.cgroups.fs import gone_check
from cgagent.errors import CgagentError
from cgagent.limits import Resources

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from cgagent.cgroups.stats import MemoryUsage

NAME = "memory"
OOM_FILE = "memory.oom_control"   # `oom_kill N` (kernel 4.13+); also the file an OOM eventfd is bound to
LIMIT_FILES = ("memory.limit_in_bytes", "memory.soft_limit_in_bytes")
SWAP_LIMIT_FILES = ("memory.memsw.limit_in_bytes",)
# total_* include descendants, which is what a workload (with its own sub-cgroups) is
_STAT_KEYS = (("total_rss", "rss"), ("total_cache", "cache"), ("total_inactive_file", "inactive_file"))
_SWAP_KEYS = (("total_swap", "swap"),)


def apply(d: str, r: Resources) -> None:
    mem, swap = r.memory, r.memory_swap
    if swap is not None and fs.read_int(f"{d}/memory.memsw.limit_in_bytes") is None:
        raise CgagentError("--memory-swap is not supported: the kernel has no swap accounting",
                           "boot with swapaccount=1, or drop --memory-swap")
    if mem is None:
        if swap is not None:
            fs.write(f"{d}/memory.memsw.limit_in_bytes", swap)
        return
    # The kernel insists memsw >= memory at every moment: raise the larger one first.
    cur_swap = fs.read_int(f"{d}/memory.memsw.limit_in_bytes")
    growing = swap is not None and cur_swap is not None and (swap < 0 or (mem >= 0 and mem > cur_swap))
    if growing:
        fs.write(f"{d}/memory.memsw.limit_in_bytes", swap)  # type: ignore[arg-type]
        fs.write(f"{d}/memory.limit_in_bytes", mem)
    else:
        fs.write(f"{d}/memory.limit_in_bytes", mem)
        if swap is not None:
            fs.write(f"{d}/memory.memsw.limit_in_bytes", swap)


def usage(d: str, swap: bool = False) -> MemoryUsage:
    """Usage, peak, limit hits and the memory.stat breakdown (swap in use with swap accounting only)."""
    from cgagent.cgroups.stats import MemoryUsage

    m = MemoryUsage(fs.read_int(f"{d}/memory.usage_in_bytes"), fs.read_int(f"{d}/memory.max_usage_in_bytes"))
    if m.usage is None:
        gone_check(d)
    m.limit_hits = fs.read_int(f"{d}/memory.failcnt")
    st = fs.read_fields(f"{d}/memory.stat", _STAT_KEYS + _SWAP_KEYS if swap else _STAT_KEYS)
    m.rss = st.get("total_rss")
    m.cache = st.get("total_cache")
    m.inactive_file = st.get("total_inactive_file")
    if swap:
        m.swap = st.get("total_swap")
    return m


def limit(d: str) -> int | None:
    n = _unlimited(fs.read_int(f"{d}/memory.limit_in_bytes"))
    if n is None:
        gone_check(d)
    return n


def reservation(d: str) -> int | None:
    """The soft limit (--memory-reservation); -1 unlimited."""
    return _unlimited(fs.read_int(f"{d}/memory.soft_limit_in_bytes"))


def swap_limit(d: str) -> int | None:
    """memory + swap (memsw), as --memory-swap means it; None without swap accounting."""
    return _unlimited(fs.read_int(f"{d}/memory.memsw.limit_in_bytes"))


def _unlimited(n: int | None) -> int | None:
    # v1 reports "unlimited" as PAGE_COUNTER_MAX pages: a huge number, not -1.
    if n is not None and n >= 1 << 62:
        return -1
    return n
