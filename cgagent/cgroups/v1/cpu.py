"""v1 cpu: cpu.shares, cpu.cfs_quota_us / cpu.cfs_period_us, throttling from cpu.stat."""

from __future__ import annotations

from cgagent.cgroups import fs
from cgagent.cgroups.fs import gone_check
from cgagent.limits import Resources

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from cgagent.cgroups.stats import Limits, Throttling

NAME = "cpu"
LIMIT_FILES = ("cpu.shares", "cpu.cfs_quota_us", "cpu.cfs_period_us")
_STAT_KEYS = (("nr_periods",), ("nr_throttled",), ("throttled_time",))


def apply(d: str, r: Resources) -> None:
    shares = r.effective_shares()
    if shares is not None:
        fs.write(f"{d}/cpu.shares", shares)
    if r.cpu_period is not None:
        fs.write(f"{d}/cpu.cfs_period_us", r.cpu_period)
    if r.cpu_quota is not None:
        fs.write(f"{d}/cpu.cfs_quota_us", r.cpu_quota)


def throttling(d: str) -> Throttling:
    from cgagent.cgroups.stats import Throttling

    st = fs.read_fields(f"{d}/cpu.stat", _STAT_KEYS)
    if not st:
        gone_check(d)
    return Throttling(st.get("nr_periods"), st.get("nr_throttled"), st.get("throttled_time"))


def limits(d: str, out: Limits) -> None:
    out.cpu_shares = fs.read_int(f"{d}/cpu.shares")
    if out.cpu_shares is None:
        gone_check(d)
    out.cpu_quota_us = fs.read_int(f"{d}/cpu.cfs_quota_us")
    out.cpu_period_us = fs.read_int(f"{d}/cpu.cfs_period_us")
