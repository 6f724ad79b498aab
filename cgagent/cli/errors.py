"""One line on stderr and an exit code: how every expected failure ends."""

from __future__ import annotations

from cgagent.errors import CgagentError, report

__all__ = ["full_or_read_only", "report"]


def full_or_read_only(e: OSError) -> CgagentError | None:
    """A write that failed because the state dir's filesystem is full or read-only, wherever it was
    made: the one line that says so (other OSErrors are bugs and keep their traceback)."""
    from cgagent.state import WRITE_ERRNOS, write_error

    if e.errno not in WRITE_ERRNOS:
        return None
    return write_error(str(e.filename or "the state dir"), e, 0)
