"""v2 pids: pids.max, pids.current."""

from __future__ import annotations

from cgagent.cgroups.v1.pids import LIMIT_FILES, NAME, apply, current, limit

__all__ = ["LIMIT_FILES", "NAME", "apply", "current", "limit"]
