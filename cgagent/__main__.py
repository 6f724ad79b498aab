"""Entry point of the `cgagent` console script."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False   # not typing's own: the thin client's path does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from typing import NoReturn


def _quick_exit(rc: int) -> NoReturn:
    """End a thin client's run without the interpreter's teardown (it frees every module one by
    one: a few ms of a launch through the agent). That path starts no thread and registers nothing
    to run at exit; what the teardown would flush is flushed here, and a flush that fails (a closed
    pipe) takes the usual way out, with its usual report."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        sys.exit(rc)
    os._exit(rc)


def main() -> None:
    argv = sys.argv[1:]
    from cgagent.cli import thin

    rc = thin.main(argv)   # through the agent's API when it runs (CGAGENT_DIRECT=1: never)
    if rc is not None:
        _quick_exit(rc)
    if argv[:1] == ["run"]:
        from cgagent.cli import fastrun

        rc = fastrun.main(argv[1:])
        if rc is not None:
            sys.exit(rc)
    from cgagent.cli.app import main as full

    sys.exit(full(argv))


if __name__ == "__main__":
    main()
