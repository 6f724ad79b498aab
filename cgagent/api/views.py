"""What `inspect` shows, the same on the direct path and through the API."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from cgagent.host import Host
from cgagent.state import Store


def record_view(store: Store, host: Host, name: str) -> dict[str, Any]:
    """The workload's record, plus live_status: what the kernel says now (the record says what was)."""
    from cgagent.runtime import live_status

    rec = store.load(name)
    return {**asdict(rec), "live_status": live_status(host, rec)}
