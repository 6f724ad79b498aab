"""One line on stderr and an exit code: how every expected failure ends."""

from __future__ import annotations

import sys

from cgagent.errors import CgagentError


def report(e: CgagentError) -> int:
    # errors that carry several findings (a bad policy file: file:line: field: reason each) list them first
    for line in getattr(e, "details", ()):
        print(line, file=sys.stderr)
    print(f"cgagent: error: {e}", file=sys.stderr)
    return e.exit_code


def full_or_read_only(e: OSError) -> CgagentError | None:
    """A write that failed because the state dir's filesystem is full or read-only, wherever it was
    made: the one line that says so (other OSErrors are bugs and keep their traceback)."""
    from cgagent.state import WRITE_ERRNOS, write_error

    if e.errno not in WRITE_ERRNOS:
        return None
    return write_error(str(e.filename or "the state dir"), e, 0)
