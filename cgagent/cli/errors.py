"""One line on stderr and an exit code: how every expected failure ends (cgagent.errors and cgagent.state
hold them so that libraries need not import the CLI)."""

from __future__ import annotations

from cgagent.errors import CgagentError, report
from cgagent.state import full_or_read_only

__all__ = ["CgagentError", "full_or_read_only", "report"]
