"""One line on stderr and an exit code: how every expected failure ends."""

from __future__ import annotations

import sys

from cgagent.errors import CgagentError


def report(e: CgagentError) -> int:
    print(f"cgagent: error: {e}", file=sys.stderr)
    return e.exit_code
