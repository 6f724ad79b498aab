"""The stop flag: a file next to the record that tells a workload's supervisor not to restart it
again (`stop`, `rm -f`, `prune`). It lives beside the record, not in it, so that setting it never
races the supervisor's own saves of the record."""

from __future__ import annotations

import contextlib
import os

from cgagent.state import Store


def flag_path(store: Store, name: str) -> str:
    return os.path.join(store.workloads, f"{name}.stopping")


def request_stop(store: Store, name: str) -> None:
    """Tell the supervisor not to restart `name` again (stop, rm -f)."""
    store.ensure()
    with open(flag_path(store, name), "w"):
        pass


def clear_stop(store: Store, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(flag_path(store, name))


def stop_requested(store: Store, name: str) -> bool:
    return os.path.exists(flag_path(store, name))
