"""Workload records on disk: one JSON file per workload, written atomically, guarded by a lock.

Layout under the state dir (default /run/cgagent):
  workloads/<name>.json   the record
  logs/<name>.log         output of detached workloads
  lock                    flock() for create/update/finalise
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from cgagent.errors import CgagentError

DEFAULT_STATE_DIR = "/run/cgagent"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def validate_name(name: str) -> str:
    if not _NAME.match(name) or ".." in name:
        raise CgagentError(f"name {name!r} is not allowed",
                           "use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return name


def state_dir() -> str:
    return os.environ.get("CGAGENT_STATE_DIR") or DEFAULT_STATE_DIR


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write temp, fsync, rename, fsync the directory: a reader sees the old or the new file, whole."""
    d = os.path.dirname(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@contextlib.contextmanager
def exclusive_lock(path: str) -> Iterator[None]:
    """flock(LOCK_EX) on `path` (created if missing) for the duration of the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass
class Record:
    name: str
    cmd: list[str]
    driver: str
    mode: str
    dirs: dict[str, str]                 # controller -> absolute cgroup directory
    cgroup: str                          # path inside the hierarchy (the exporter's `id` label)
    resources: dict[str, Any] = field(default_factory=dict)
    status: str = "created"              # created | running | exited
    pid: int | None = None
    pid_start: int | None = None         # /proc/<pid>/stat starttime, guards against pid reuse
    supervisor_pid: int | None = None
    supervisor_start: int | None = None
    exit_code: int | None = None
    oom_kills: int = 0
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    detached: bool = False
    auto_remove: bool = False
    policy: str | None = None
    unit: str | None = None              # systemd driver: the scope's name
    isolation: dict[str, Any] = field(default_factory=dict)  # image runs: see cgagent.isolation.spec
    restart: str = "no"                  # no | on-failure[:N] | always (the supervisor applies it)
    restarts: int = 0                    # how many times the supervisor restarted it
    preserve_fds: int = 0                # --preserve-fds: fds 3.. the workload inherits from the caller

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode() + b"\n"


class Store:
    def __init__(self, root: str | None = None) -> None:
        self.root = root or state_dir()
        self.workloads = os.path.join(self.root, "workloads")
        self.logs = os.path.join(self.root, "logs")

    def ensure(self) -> None:
        for d in (self.root, self.workloads, self.logs):
            os.makedirs(d, mode=0o755, exist_ok=True)

    def path(self, name: str) -> str:
        return os.path.join(self.workloads, f"{validate_name(name)}.json")

    def log_path(self, name: str) -> str:
        return os.path.join(self.logs, f"{validate_name(name)}.log")

    def lock(self) -> contextlib.AbstractContextManager[None]:
        self.ensure()
        return exclusive_lock(os.path.join(self.root, "lock"))

    def save(self, rec: Record) -> None:
        self.ensure()
        atomic_write(self.path(rec.name), rec.to_json())

    def exists(self, name: str) -> bool:
        return os.path.exists(self.path(name))

    def load(self, name: str) -> Record:
        try:
            with open(self.path(name)) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise CgagentError(f"no workload named {name!r}", "see `cgagent ps -a` for the names") from None
        return Record(**data)

    def delete(self, name: str) -> None:
        for p in (self.path(name), self.log_path(name)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)

    def all(self) -> list[Record]:
        out = []
        try:
            names = sorted(os.listdir(self.workloads))
        except FileNotFoundError:
            return []
        for fn in names:
            if fn.endswith(".json"):
                try:
                    out.append(self.load(fn[:-5]))
                except (CgagentError, ValueError, TypeError):
                    continue  # a record written by a newer/older version: skip, don't crash `ps`
        return out
