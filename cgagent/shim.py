"""The detached workload's supervisor as its own program: `python3 -m cgagent.shim --state-dir DIR
NAME`. `cgagent run -d` forks a supervisor that starts the workload, then execs this, so that the
long-lived process carries no argv of the CLI (its `-e KEY=VALUE`) and learns everything from the
record (as containerd-shim and conmon do)."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "--state-dir":
        print("usage: python3 -m cgagent.shim --state-dir DIR NAME (started by `cgagent run -d`)", file=sys.stderr)
        return 2
    from cgagent import host as hostmod
    from cgagent.runtime import shim_main
    from cgagent.state import Store

    return shim_main(Store(argv[1]), hostmod.detect(), argv[2])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
