"""v1 freezer: freezer.state FROZEN/THAWED; lets kill() stop forks racing the SIGKILLs."""

from __future__ import annotations

import time

from cgagent.cgroups import fs
from cgagent.limits import Resources

NAME = "freezer"


def apply(d: str, r: Resources) -> None:
    """No limits here."""


def set_state(d: str, frozen: bool, timeout: float = 5.0) -> None:
    want = "FROZEN" if frozen else "THAWED"
    fs.write(f"{d}/freezer.state", want)
    deadline = time.monotonic() + timeout
    # FREEZING is transient: the kernel offers no event for the end of it on v1.
    while fs.read(f"{d}/freezer.state").strip() != want and time.monotonic() < deadline:
        fs.write(f"{d}/freezer.state", want)
        time.sleep(0.001)


def is_frozen(d: str) -> bool | None:
    """FROZEN (FREEZING is not yet: some task still runs). None: the directory has no freezer."""
    try:
        return fs.read(f"{d}/freezer.state").strip() == "FROZEN"
    except FileNotFoundError:
        from cgagent.cgroups.fs import gone_check

        gone_check(d)
        return None
