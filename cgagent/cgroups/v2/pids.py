"""v2 pids: pids.max, pids.current."""

from __future__ import annotations

from cgagent.cgroups.v1.pids import NAME, apply, stats

__all__ = ["NAME", "apply", "stats"]
