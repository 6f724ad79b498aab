"""v2 cpu: cpu.weight, cpu.max; usage and throttling from cpu.stat (µs)."""

from __future__ import annotations

from cgagent import convert
from cgagent.cgroups import fs
from cgagent.cgroups.stats import Stats
from cgagent.limits import Resources

NAME = "cpu"


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


def read_usage(d: str, s: Stats) -> None:
    """cpu.stat's usage lines exist even without the cpu controller enabled."""
    st = fs.read_kv(f"{d}/cpu.stat")
    for key, attr in (("usage_usec", "usage_ns"), ("user_usec", "user_ns"), ("system_usec", "system_ns"),
                      ("throttled_usec", "throttled_ns")):
        if key in st:
            setattr(s.cpu, attr, st[key] * 1000)
    s.cpu.periods = st.get("nr_periods")
    s.cpu.throttled_periods = st.get("nr_throttled")


def stats(d: str, s: Stats) -> None:
    read_usage(d, s)
    spec(d, s)


def spec(d: str, s: Stats) -> None:
    """cpu.weight and cpu.max (absent without the cpu controller: left None)."""
    s.spec.weight = fs.read_int(f"{d}/cpu.weight")
    try:
        quota, period = fs.read(f"{d}/cpu.max").split()
    except FileNotFoundError:
        return
    s.spec.quota_us = -1 if quota == "max" else int(quota)
    s.spec.period_us = int(period)
