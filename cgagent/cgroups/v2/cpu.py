"""v2 cpu: cpu.weight, cpu.max; usage and throttling from cpu.stat (µs)."""

from __future__ import annotations

from cgagent import convert
from cgagent.cgroups import fs
from cgagent.cgroups.fs import gone_check
from cgagent.limits import Resources

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from cgagent.cgroups.stats import CpuUsage, Limits, Throttling

NAME = "cpu"
# cpu.weight.nice rewrites cpu.weight: a write to either changes the weight
LIMIT_FILES = ("cpu.weight", "cpu.weight.nice", "cpu.max")


def apply(d: str, r: Resources) -> None:
    weight = r.effective_weight()
    if weight is not None:
        fs.write(f"{d}/cpu.weight", weight)
    if r.cpu_quota is not None or r.cpu_period is not None:
        quota = r.cpu_quota
        if quota is None:  # period alone: keep the current quota
            cur = fs.read(f"{d}/cpu.max").split()[0]
            quota = -1 if cur == "max" else int(cur)
        fs.write(f"{d}/cpu.max", convert.v2_cpu_max(quota, r.cpu_period))


def _stat(d: str) -> dict[str, int]:
    """cpu.stat: its usage lines exist even without the cpu controller enabled."""
    st = fs.read_kv(f"{d}/cpu.stat")
    if not st:
        gone_check(d)
    return st


def _ns(st: dict[str, int], key: str) -> int | None:
    v = st.get(key)
    return None if v is None else v * 1000


def usage(d: str) -> CpuUsage:
    from cgagent.cgroups.stats import CpuUsage

    st = _stat(d)
    return CpuUsage(_ns(st, "usage_usec"), _ns(st, "user_usec"), _ns(st, "system_usec"))


def throttling(d: str) -> Throttling:
    from cgagent.cgroups.stats import Throttling

    st = _stat(d)
    return Throttling(st.get("nr_periods"), st.get("nr_throttled"), _ns(st, "throttled_usec"))


def limits(d: str, out: Limits) -> None:
    """cpu.weight and cpu.max (absent without the cpu controller: left None)."""
    out.cpu_weight = fs.read_int(f"{d}/cpu.weight")
    try:
        quota, period = fs.read(f"{d}/cpu.max").split()
    except FileNotFoundError:
        if out.cpu_weight is None:
            gone_check(d)
        return
    out.cpu_quota_us = -1 if quota == "max" else int(quota)
    out.cpu_period_us = int(period)
