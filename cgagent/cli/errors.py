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
