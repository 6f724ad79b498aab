"""The stop flag: a file next to the record that tells a workload's supervisor not to restart it
again (`stop`, `rm -f`, `prune`). It lives beside the record, not in it, so that setting it never
races the supervisor's own saves of the record."""

from __future__ import annotations

import contextlib
import os

from cgagent.state import Store


def flag_path(store: Store, name: str) -> str:
    return os.path.join(store.workloads, f"{name}.stopping")


def request_stop(store: Store, name: str, created: float | None = None) -> None:
    """Tell the supervisor not to restart `name` again (stop, rm -f): the workload created at `created`
    (None: whichever), not a later one of the same name that a --rm workload's end made room for."""
    store.ensure()
    fd = os.open(flag_path(store, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if created is not None:
            # a full state dir takes the empty file (no data block) but not its content: the flag then
            # stops whichever workload has the name, as it always did, and must not keep `rm -f` from working
            with contextlib.suppress(OSError):
                os.write(fd, repr(created).encode())
    finally:
        os.close(fd)


def clear_stop(store: Store, name: str, created: float | None = None) -> None:
    """Remove the flag; with `created`, only one meant for that workload (or for whichever)."""
    if created is not None and not stop_requested(store, name, created):
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(flag_path(store, name))


def stop_requested(store: Store, name: str, created: float) -> bool:
    try:
        with open(flag_path(store, name)) as f:
            meant = f.read(64)
    except FileNotFoundError:
        return False
    try:
        return not meant or float(meant) == created
    except ValueError:   # torn by a kill as it was written: a stop was asked for
        return True
