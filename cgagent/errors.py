"""The one exception type users see: a problem and its fix, printed as one line."""

from __future__ import annotations


class CgagentError(Exception):
    """A failure the user can act on. The CLI prints it as one line and exits with `exit_code`."""

    def __init__(self, problem: str, fix: str = "", exit_code: int = 2) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix
        self.exit_code = exit_code

    def __str__(self) -> str:
        return f"{self.problem}: {self.fix}" if self.fix else self.problem
