"""v1 cpu: cpu.shares, cpu.cfs_quota_us / cpu.cfs_period_us, throttling from cpu.stat."""

from __future__ import annotations

import os

from cgagent.cgroups import fs
from cgagent.cgroups.stats import Stats
from cgagent.limits import Resources

NAME = "cpu"


def apply(d: str, r: Resources) -> None:
    shares = r.effective_shares()
    if shares is not None:
        fs.write(f"{d}/cpu.shares", shares)
    if r.cpu_period is not None:
        fs.write(f"{d}/cpu.cfs_period_us", r.cpu_period)
    if r.cpu_quota is not None:
        fs.write(f"{d}/cpu.cfs_quota_us", r.cpu_quota)


def stats(d: str, s: Stats) -> None:
    throttling(d, s)
    spec(d, s)


def throttling(d: str, s: Stats) -> None:
    """cpu.stat only (the exporter's throttling collector reads nothing else)."""
    st = fs.read_kv(os.path.join(d, "cpu.stat"))
    s.cpu.periods = st.get("nr_periods")
    s.cpu.throttled_periods = st.get("nr_throttled")
    s.cpu.throttled_ns = st.get("throttled_time")


def spec(d: str, s: Stats) -> None:
    s.spec.shares = fs.read_int(f"{d}/cpu.shares")
    s.spec.quota_us = fs.read_int(f"{d}/cpu.cfs_quota_us")
    s.spec.period_us = fs.read_int(f"{d}/cpu.cfs_period_us")
