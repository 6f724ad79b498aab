"""Who is starting a workload. A record says "created" from the moment `run` or `restart` saves it
until the process that starts the workload records it running (or undoes the start). That process
holds an flock on `workloads/NAME.starting` all along: taken under the store lock together with the
save, inherited by the detached supervisor (a fork shares the open file description, and so the
lock), released once the record says running. A "created" record whose lock anyone can take was
left by a start that was killed (SIGKILL of `run -d` or `restart` after the save): `restart` may
take it over. A pid in the record could not tell this: the CLI that saved the record may die while
the supervisor it forked goes on to finish the start."""

from __future__ import annotations

import contextlib
import fcntl
import os

from cgagent.state import WRITE_ERRNOS, Store, write_error

_held: dict[str, int] = {}
# the lock's fd sits above the ones a launch opens (pipes, netns, userns), so that it changes none of
# their numbers: a workload's setup sees the same fds with or without it
_FLOOR = 100


def lock_path(store: Store, name: str) -> str:
    return os.path.join(store.workloads, f"{name}.starting")


def hold(store: Store, name: str) -> None:
    """Take the lock for `name` (caller holds the store lock, and saves the "created" record next).
    A workload must not inherit it: its child closes it before anything else (launch.spawn's
    `private`)."""
    release(name)   # a lock this process took before is another open file: it would hold this one off
    store.ensure()
    path = lock_path(store, name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno in WRITE_ERRNOS:   # a full or read-only state dir: one line, as the save's
            raise write_error(path, e, 4096) from None
        raise
    # RLIMIT_NOFILE below the floor: the fd stays low, and the child still closes it first
    with contextlib.suppress(OSError):
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _FLOOR)
        os.close(fd)
        fd = high
    # only a process that leaked an old lock could hold it now: then restart sees it held and refuses,
    # which is what it did before this lock existed
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _held[name] = fd


def release(name: str) -> None:
    """This process lets go (its forked supervisor may still hold the lock)."""
    fd = _held.pop(name, None)
    if fd is not None:
        os.close(fd)


def held() -> tuple[int, ...]:
    """The fds of the locks this process holds: a workload's child closes them first."""
    return tuple(_held.values())


def abandoned(store: Store, name: str) -> bool:
    """No process is starting `name` (caller holds the store lock and has read a "created" record).
    No lock file: a record from before this lock, or one `prune` removed; never taken for abandoned."""
    try:
        fd = os.open(lock_path(store, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def forget(store: Store, name: str) -> None:
    """The record is gone (caller holds the store lock): so is its lock file."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lock_path(store, name))
