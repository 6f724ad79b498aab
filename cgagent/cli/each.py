"""Commands on several workloads (stop, rm, kill, restart ...) go on past a name that fails."""

from __future__ import annotations

from collections.abc import Callable

from cgagent.errors import CgagentError


def each(names: list[str], act: Callable[[str], None]) -> int:
    """Apply `act` to each name in turn, printing each name as it is done; a name that fails is
    reported in one line and the rest are still done (as docker does). -> exit code."""
    from cgagent.cli.errors import full_or_read_only, report

    code = 0
    for n in names:
        try:
            try:
                act(n)
            except OSError as e:
                raise full_or_read_only(e) or e from None
        except CgagentError as e:
            code = report(e)
            continue
        print(n, flush=True)
    return code
