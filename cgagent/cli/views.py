"""Tables and JSON for ps, stats and doctor."""

from __future__ import annotations

import json
import time
from typing import Any

from cgagent.host import Host
from cgagent.runtime import live_status, manager
from cgagent.state import Record, Store
from cgagent.units import format_bytes


def print_table(rows: list[dict[str, Any]], cols: list[str], title: str | None = None) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, box=None, header_style="bold")
    for c in cols:
        # only the command may be cut; numbers and names must stay whole and on one line
        t.add_column(c.upper().replace("_", " "), no_wrap=True,
                     overflow="ellipsis" if c == "command" else "fold", max_width=48 if c == "command" else None)
    for r in rows:
        t.add_row(*("-" if r.get(c) is None else "max" if c == "pids_limit" and r[c] == -1 else str(r[c])
                    for c in cols))
    Console(width=None if sys.stdout.isatty() else 200).print(t)


def _sample(host: Host, recs: list[Record]) -> dict[str, Any]:
    out = {}
    for rec in recs:
        try:
            out[rec.name] = (time.monotonic(), manager(host, rec).stats())
        except (OSError, ValueError):
            continue
    return out


def stats_rows(host: Host, recs: list[Record], before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for rec in recs:
        if rec.name not in after:
            continue
        t1, s1 = after[rec.name]
        row: dict[str, Any] = {"name": rec.name, "cpu_percent": None, "throttled_percent": None}
        if rec.name in before:
            t0, s0 = before[rec.name]
            u0, u1 = s0.cpu.total_ns, s1.cpu.total_ns
            if u1 is not None and u0 is not None and t1 > t0:
                row["cpu_percent"] = round(100 * (u1 - u0) / 1e9 / (t1 - t0), 1)
            p0, p1 = s0.throttling, s1.throttling
            if p1.periods is not None and p0.periods is not None and p1.periods > p0.periods:
                row["throttled_percent"] = round(
                    100 * (p1.throttled_periods - p0.throttled_periods) / (p1.periods - p0.periods), 1)
        lim, mem, th = s1.limits, s1.memory, s1.throttling
        q, p = lim.cpu_quota_us, lim.cpu_period_us
        row.update({
            "cpu_limit": q / p if q and q > 0 and p else None,   # CPUs; null: unlimited
            "memory_usage": mem.usage, "memory_limit": lim.memory,
            "memory_percent": round(100 * mem.usage / lim.memory, 1)
            if mem.usage is not None and lim.memory and lim.memory > 0 else None,
            "pids": s1.pids, "pids_limit": lim.pids,
            "nr_periods": th.periods, "nr_throttled": th.throttled_periods,
            "throttled_seconds": th.throttled_ns / 1e9 if th.throttled_ns is not None else None,
            "oom_kills": max(rec.oom_kills, s1.oom_kills or 0),
            "io_read_bytes": s1.io.read_bytes, "io_write_bytes": s1.io.write_bytes,
            "io_read_ops": s1.io.read_ops, "io_write_ops": s1.io.write_ops,
        })
        rows.append(row)
    return rows


def _display(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        d = dict(r)
        d["cpu_percent"] = "-" if r["cpu_percent"] is None else f"{r['cpu_percent']}%"
        d["cpu_limit"] = "unlimited" if r["cpu_limit"] is None else f"{r['cpu_limit']:g}"
        d["throttled_percent"] = "-" if r["throttled_percent"] is None else f"{r['throttled_percent']}%"
        d["memory"] = f"{format_bytes(r['memory_usage'])} / {format_bytes(r['memory_limit'])}"
        d["pids"] = f"{r['pids']} / {'max' if r['pids_limit'] in (None, -1) else r['pids_limit']}"
        d["block_io"] = ("-" if r["io_read_bytes"] is None else
                         f"{format_bytes(r['io_read_bytes'])} / {format_bytes(r['io_write_bytes'])}")
        out.append(d)
    return out


COLS = ["name", "cpu_percent", "cpu_limit", "throttled_percent", "memory", "memory_percent", "pids", "block_io",
        "oom_kills"]


def stats(host: Host, store: Store, names: list[str], watch: bool, interval: float, as_json: bool) -> None:
    recs = [store.load(n) for n in names] if names else [r for r in store.all() if live_status(host, r) == "running"]
    before = _sample(host, recs)
    while True:
        time.sleep(interval)
        after = _sample(host, recs)
        rows = stats_rows(host, recs, before, after)
        if as_json:
            print(json.dumps(rows), flush=True)
        else:
            if watch:
                print("\033[H\033[2J", end="")
            print_table(_display(rows), COLS)
        if not watch:
            return
        before = after
        interval = max(interval, 1.0)


def doctor(host: Host, as_json: bool) -> None:
    import os

    fixes = []
    if host.mode == "none":
        fixes.append("no cgroup filesystem: mount -t cgroup2 none /sys/fs/cgroup")
    for c in host.missing():
        if host.is_v2:
            fixes.append(f"controller {c} is not available at the v2 root: enable it in the parent's "
                         "cgroup.subtree_control (systemd: Delegate=yes)")
        else:
            fixes.append(f"controller {c} is not mounted: mount -t cgroup -o {c} cgroup /sys/fs/cgroup/{c}")
    driver = os.environ.get("CGAGENT_CGROUP_DRIVER")
    if host.init_is_systemd and driver == "cgroupfs":   # the default is systemd there: only a choice to flag
        fixes.append("systemd is init but CGAGENT_CGROUP_DRIVER=cgroupfs: systemd may revert limits on "
                     "daemon-reload; unset it to use the systemd driver")
    if os.geteuid() != 0:
        fixes.append("not root: run, update, stop and rm need root")
    info = {
        "cgroup_mode": host.mode, "v2_mount": host.v2_mount, "v1_mounts": host.v1_mounts,
        "usable_controllers": host.usable(), "missing_controllers": host.missing(),
        "init_is_systemd": host.init_is_systemd, "online_cpus": len(host.online_cpus),
        "own_cgroup": host.own_cgroup, "default_driver": "systemd" if host.init_is_systemd else "cgroupfs",
        "problems": fixes,
    }
    if as_json:
        print(json.dumps(info, indent=1))
        return
    for k, v in info.items():
        if k != "problems":
            print(f"{k:20} {v}")
    print("problems:" if fixes else "problems:           none")
    for f in fixes:
        print(f"  - {f}")
