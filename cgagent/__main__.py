"""Entry point of the `cgagent` console script."""

from __future__ import annotations

import sys


def main() -> None:
    argv = sys.argv[1:]
    from cgagent.cli import thin

    rc = thin.main(argv)   # through the agent's API when it runs (CGAGENT_DIRECT=1: never)
    if rc is not None:
        sys.exit(rc)
    if argv[:1] == ["run"]:
        from cgagent.cli import fastrun

        rc = fastrun.main(argv[1:])
        if rc is not None:
            sys.exit(rc)
    from cgagent.cli.app import main as full

    sys.exit(full(argv))


if __name__ == "__main__":
    main()
