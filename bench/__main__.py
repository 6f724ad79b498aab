"""`make bench`: run every benchmark module present, in order, or the ones named on the command line."""

from __future__ import annotations

import importlib
import os
import sys

ORDER = ["launch", "launches", "launchcpu", "vm", "web", "exporter", "systemd_driver", "isolation", "seccomp",
         "network", "policy", "oom", "iofreeze"]


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    names = sys.argv[1:] or [n for n in ORDER if os.path.exists(os.path.join(here, f"{n}.py"))]
    failed = 0
    for n in names:
        print(f"\n=== bench: {n} ===", flush=True)
        try:
            importlib.import_module(f"bench.{n}").main()
        except Exception as e:  # one broken benchmark must not hide the others' numbers
            print(f"bench {n} failed: {type(e).__name__}: {e}")
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
