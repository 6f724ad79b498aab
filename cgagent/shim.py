"""The detached workload's supervisor as its own program: `python3 -m cgagent.shim --state-dir DIR
--pid PID NAME`. `cgagent run -d` forks a supervisor that starts the workload, then execs this, so that the
long-lived process carries no argv of the CLI (its `-e KEY=VALUE`) and learns everything from the
record (as containerd-shim and conmon do)."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if len(argv) != 5 or argv[0] != "--state-dir" or argv[2] != "--pid" or not argv[3].isdigit():
        print("usage: python3 -m cgagent.shim --state-dir DIR --pid PID NAME (started by `cgagent run -d`)",
              file=sys.stderr)
        return 2
    from cgagent import host as hostmod
    from cgagent.runtime.supervisor import shim_main
    from cgagent.state import Store

    return shim_main(Store(argv[1]), hostmod.detect(), argv[4], int(argv[3]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
