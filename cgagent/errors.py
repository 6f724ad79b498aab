"""The one exception type users see: a problem and its fix, printed as one line."""

from __future__ import annotations

import sys


class CgagentError(Exception):
    """A failure the user can act on. The CLI prints it as one line and exits with `exit_code`."""

    def __init__(self, problem: str, fix: str = "", exit_code: int = 2) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix
        self.exit_code = exit_code

    def __str__(self) -> str:
        return f"{self.problem}: {self.fix}" if self.fix else self.problem


def report(e: CgagentError) -> int:
    """Print `e` as the one line users see (after its findings, if it carries some); -> the exit code.
    Here, not in the CLI, so that the agent's parts (the policy controller run alone) print the same."""
    # errors that carry several findings (a bad policy file: file:line: field: reason each) list them first
    for line in getattr(e, "details", ()):
        print(line, file=sys.stderr)
    print(f"cgagent: error: {e}", file=sys.stderr)
    return e.exit_code
