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


# `run` and `exec` exit as Docker's do, so that a script can tell whose failure it was: the workload's
# own code; 126 when its command exists but cannot be executed; 127 when it is not found; 125 for any
# error of cgagent's own (bad usage or input, a refused request). Other commands exit 2 for those, a
# code that workloads use themselves (`sh -c 'exit 2'`, grep, diff), where 125 is Docker's and rare.
OWN_ERROR = 125
CANNOT_INVOKE = 126
NOT_FOUND = 127


def kind_of(value: object) -> str:
    """What a value read from JSON or YAML is, as an error line names it ("a list", "null")."""
    if value is None:
        return "null"
    for t, name in ((bool, "a boolean"), (str, "a string"), (int, "a number"), (float, "a number"),
                    (list, "a list"), (tuple, "a list"), (dict, "an object")):
        if isinstance(value, t):
            return name
    return f"a {type(value).__name__}"


def run_code(code: int) -> int:
    """The exit code of a `run`/`exec` that failed with a CgagentError of `code`."""
    return code if code in (CANNOT_INVOKE, NOT_FOUND) else OWN_ERROR


def report(e: CgagentError) -> int:
    """Print `e` as the one line users see (after its findings, if it carries some); -> the exit code.
    Here, not in the CLI, so that the agent's parts (the policy controller run alone) print the same."""
    # errors that carry several findings (a bad policy file: file:line: field: reason each) list them first
    for line in getattr(e, "details", ()):
        print(line, file=sys.stderr)
    print(f"cgagent: error: {e}", file=sys.stderr)
    return e.exit_code
