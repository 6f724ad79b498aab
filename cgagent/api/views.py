"""What `ps` and `inspect` show, the same on the direct path and through the API."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from cgagent.host import Host
from cgagent.limits import Resources
from cgagent.runtime import live_status, oom_kills, oom_victim
from cgagent.runtime.pause import is_paused
from cgagent.state import Record, Store
from cgagent.units import format_bytes


def record_view(store: Store, host: Host, name: str) -> dict[str, Any]:
    """The workload's record, plus live_status: what the kernel says now (the record says what was)."""
    rec = store.load(name)
    return {**asdict(rec), "live_status": live_status(host, rec)}


def ps_rows(host: Host, store: Store, all_: bool) -> list[dict[str, Any]]:
    from cgagent import prune

    rows = []
    for left in prune.find(store, host):
        # damaged: a record that does not parse; orphaned: a cgroup of cgagent's with no record
        if left.kind in ("damaged", "orphaned") and (all_ or left.pids):
            rows.append({"name": left.name, "status": left.kind, "pid": None, "cgroup": left.what,
                         "command": f"({left.what}; `cgagent rm -f {left.name}` removes it)",
                         "processes": left.pids})
    for rec in store.all():
        status = live_status(host, rec)
        if status == "exited" and not all_:
            continue
        r = Resources.from_dict(rec.resources)
        running = status == "running"
        if running and is_paused(rec):
            status = "paused"
        rows.append({
            "name": rec.name, "status": status, "pid": rec.pid if running else None,
            "cpus": f"{r.cpus:g}" if r.cpus else None,
            "memory": format_bytes(r.memory) if r.memory is not None else None,
            "pids_limit": _pids_limit(rec, r) if running else r.pids_limit,
            "oom_kills": oom_kills(store, rec),
            "exit_code": rec.exit_code if status == "exited" else None,
            "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.created)),
            "command": " ".join(rec.cmd), "cgroup": rec.cgroup, "driver": rec.driver,
            "image": (rec.isolation or {}).get("image_ref") or (rec.isolation or {}).get("rootfs"),
            "restarts": rec.restarts, "oom_victim": oom_victim(store, rec),
        })
    return rows


def _pids_limit(rec: Record, r: Resources) -> int | None:
    """What the kernel enforces (-1 = max), as `stats` shows: under systemd a scope without
    --pids-limit still has TasksMax's default, so the record alone would not tell the truth."""
    from cgagent.cgroups.readers import reader_for

    reader = reader_for(rec.dirs)
    try:
        return reader.limits("pids").pids if reader.has("pids") else r.pids_limit
    except (OSError, ValueError):
        return r.pids_limit
