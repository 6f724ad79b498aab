"""Workload records on disk: one JSON file per workload, written atomically, guarded by a lock.

Layout under the state dir (default /run/cgagent):
  workloads/<name>.json   the record
  logs/<name>.log         output of detached workloads
  logs/<name>.idx         (log size, time) entries: when its lines were written (cgagent.logtime)
  lock                    flock() for create/update/finalise

Records, logs and the events log hold `-e` values and command lines: the dirs are 0700 and the
files 0600 (an older version's 0755/0644 are tightened at the next write). A record that does not
parse is `Damaged`: named in one line, never a traceback, and never hides the other workloads.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
import sys
from collections.abc import Iterator
from dataclasses import MISSING, dataclass, field, fields

from cgagent.errors import CgagentError, kind_of
from cgagent.faults import fault
from cgagent.regular import NotRegular, open_regular

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from typing import Any

DEFAULT_STATE_DIR = "/run/cgagent"
DIR_MODE = 0o700
FILE_MODE = 0o600
MAX_RECORD = 1 << 20   # a record is a few KiB; a bigger file is damage, not something to read whole
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")   # fullmatch: `$` would take "x\n"


def validate_name(name: str) -> str:
    if not _NAME.fullmatch(name) or ".." in name:
        raise CgagentError(f"name {name!r} is not allowed",
                           "use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return name


def state_dir() -> str:
    return os.environ.get("CGAGENT_STATE_DIR") or DEFAULT_STATE_DIR


def private_dir(d: str) -> None:
    """mkdir -p `d` 0700, or tighten it if an older version made it 0755."""
    try:
        st = os.stat(d)   # the usual case, on every save: one syscall
    except FileNotFoundError:
        st = None
    if st is None or not stat.S_ISDIR(st.st_mode):
        os.makedirs(d, mode=DIR_MODE, exist_ok=True)   # raises as before for a file in the way
        st = os.stat(d)
    if st.st_mode & 0o077:
        os.chmod(d, DIR_MODE)


def private_fd(fd: int) -> None:
    """An existing file an older version made 0644: make it 0600 before anything more goes in."""
    if os.fstat(fd).st_mode & 0o077:
        os.fchmod(fd, FILE_MODE)


WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def write_error(path: str, e: OSError, need: int) -> CgagentError:
    """ENOSPC/EROFS/EDQUOT as one line naming the path and what it needs; anything else as is."""
    d = os.path.dirname(path) or "."
    if e.errno == errno.EROFS:
        return CgagentError(f"cannot write {path}: the filesystem is read-only",
                            f"remount {d} read-write or point --state-dir / CGAGENT_STATE_DIR elsewhere")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            st = os.statvfs(d)
            free = f"{st.f_bavail * st.f_frsize} bytes free"
        except OSError:
            free = "free space unknown"
        needs = f"needs {need} bytes, " if need > 0 else ""
        return CgagentError(f"cannot write {path}: no space left on the device ({needs}{free})",
                            f"free at least {max(need, 4096)} bytes on the filesystem of {d}, or point "
                            "--state-dir / CGAGENT_STATE_DIR elsewhere")
    return CgagentError(f"cannot write {path}: {e.strerror or e}", "check the state dir's filesystem and permissions")


def atomic_write(path: str, data: bytes, mode: int = FILE_MODE, durable: bool = True) -> None:
    """Write temp, fsync, rename, fsync the directory: a reader sees the old or the new file, whole.
    On failure the temp file is gone and the old file untouched; a full or read-only filesystem is
    one CgagentError line. `durable=False` skips both fsyncs, for what describes kernel objects that
    a power loss takes with it (links, addresses, counters): the rename alone keeps it whole against
    a SIGKILL at any point, and the page cache has it for every later reader."""
    d = os.path.dirname(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
        try:
            view = memoryview(data)
            while view:   # a short write (disk filling up) is not an error by itself: finish or fail
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        fault("written")
        os.rename(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if e.errno in WRITE_ERRNOS:
            raise write_error(path, e, len(data) + 4096) from None
        raise
    if durable:
        fsync_dir(d)


def fsync_dir(d: str, whole_filesystem: bool = False) -> None:
    """Put `d`'s entries (a rename into it) on disk; with `whole_filesystem`, every file written on
    its filesystem too (syncfs(2): one call for a tree of thousands of files, where an fsync each
    would be thousands)."""
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if whole_filesystem:
            import ctypes

            if ctypes.CDLL(None, use_errno=True).syncfs(dfd) != 0:
                e = ctypes.get_errno()
                raise OSError(e, os.strerror(e), d)
        else:
            os.fsync(dfd)
    finally:
        os.close(dfd)


def last_words(msg: str) -> None:
    """A background process (the supervisor) that cannot go on: say why on its stderr (its log
    file); when that cannot be written either (the disk is full), in the kernel log."""
    line = f"cgagent[{os.getpid()}]: {msg}"
    try:
        print(line, file=sys.stderr, flush=True)
        return
    except OSError:
        pass
    with contextlib.suppress(OSError):
        fd = os.open("/dev/kmsg", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, f"<3>{line}"[:1000].encode())
        finally:
            os.close(fd)


@contextlib.contextmanager
def exclusive_lock(path: str) -> Iterator[None]:
    """flock(LOCK_EX) on `path` (created if missing) for the duration of the block."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        if e.errno in WRITE_ERRNOS:
            raise write_error(path, e, 0) from None
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass
class Record:
    """A workload as the store keeps it (`<state>/workloads/<name>.json`)."""

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
    restart: str = "no"                  # no | on-failure[:N] | always | unless-stopped (the supervisor)
    restarts: int = 0                    # how many times the supervisor restarted it
    keeper_pid: int | None = None        # systemd driver: holds the scope until its OOM counter is read
    keeper_start: int | None = None
    policy_oom_seq: int = 0              # OOM kills of this instance its policy has answered (see oom.py seq)
    preserve_fds: int = 0                # --preserve-fds: fds 3.. the workload inherits from the caller
    tty: bool = False                    # -t: a pty of its own (detached: served at Store.tty_path)
    labels: dict[str, str] = field(default_factory=dict)   # --label / --label-file
    ulimits: list[list[Any]] = field(default_factory=list)   # --ulimit: [name, soft, hard] (-1 unlimited)
    stop_signal: str = ""                # --stop-signal or the image's StopSignal; empty: SIGTERM
    stop_timeout: float | None = None    # --stop-timeout; None: `stop`'s default (10 s)
    process: dict[str, Any] = field(default_factory=dict)    # a host command's -e/-w/-u/--init (procopts)
    # the events log's size before this instance's start event: finish() looks for its exit event
    # from there, not through the whole log (which only grows)
    log_offset: int = 0

    def to_json(self) -> bytes:
        # every field holds JSON values already: no deep copy (dataclasses.asdict) on the launch path
        return json.dumps({n: getattr(self, n) for n in _FIELD_TYPES}, sort_keys=True).encode() + b"\n"


_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
                                      "list": (list,), "dict": (dict,), "None": (type(None),)}


def _annotation_types(annotation: object) -> tuple[type, ...]:
    """'int | None', 'dict[str, str]' ... as an isinstance() tuple."""
    alts = [a.strip().partition("[")[0] for a in str(annotation).split("|")]
    return tuple(t for a in alts for t in _TYPES.get(a, (object,)))


# at import (the agent's launcher preloads this module: its runners inherit the table made), in field order
_FIELD_TYPES = {f.name: _annotation_types(f.type) for f in fields(Record)}


_REQUIRED = {f.name for f in fields(Record) if f.default is MISSING and f.default_factory is MISSING}


class Damaged(CgagentError):
    """A record that cannot be used: its file and what is wrong with it."""

    def __init__(self, name: str, path: str, reason: str) -> None:
        super().__init__(f"record {path} is damaged: {reason}",
                         f"`cgagent rm -f {name}` or `cgagent prune` removes it and what it left running")
        self.name, self.path, self.reason = name, path, reason


def parse_record(name: str, path: str, raw: bytes) -> Record:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise Damaged(name, path, f"not JSON ({e})" if raw.strip() else "empty file") from None
    if not isinstance(data, dict):
        raise Damaged(name, path, f"{kind_of(data)}, not an object")
    types = _FIELD_TYPES
    missing = sorted(_REQUIRED - data.keys())
    if missing:
        raise Damaged(name, path, f"missing {', '.join(missing)}")
    for k, v in data.items():
        want = types.get(k)
        if want is not None and (not isinstance(v, want) or (isinstance(v, bool) and bool not in want)):
            raise Damaged(name, path, f"{k} is {kind_of(v)}, of the wrong type")
    if data["name"] != name:
        raise Damaged(name, path, f"it names workload {data['name']!r}")
    if not all(isinstance(k, str) and isinstance(v, str) and os.path.isabs(v) for k, v in data["dirs"].items()):
        raise Damaged(name, path, "dirs is not a map of controller to absolute directory")
    # fields a newer version added are dropped: this version cannot act on them anyway
    return Record(**{k: v for k, v in data.items() if k in types})


_warned: set[tuple[str, str]] = set()


def warn_damaged(d: Damaged) -> None:
    """One line per damaged record per process (serve scans often: do not repeat it each scrape)."""
    if (d.path, d.reason) not in _warned:
        _warned.add((d.path, d.reason))
        print(f"cgagent: warning: {d}", file=sys.stderr, flush=True)


class Store:
    def __init__(self, root: str | None = None) -> None:
        self.root = root or state_dir()
        self.workloads = os.path.join(self.root, "workloads")
        self.logs = os.path.join(self.root, "logs")

    def ensure(self) -> None:
        for d in (self.root, self.workloads, self.logs):
            try:
                private_dir(d)
            except OSError as e:
                raise write_error(d, e, 4096) from None

    def path(self, name: str) -> str:
        return os.path.join(self.workloads, f"{validate_name(name)}.json")

    def log_path(self, name: str) -> str:
        return os.path.join(self.logs, f"{validate_name(name)}.log")

    def index_path(self, name: str) -> str:
        """When each part of the log was written (cgagent.logtime), for `logs --since/--timestamps`."""
        return os.path.join(self.logs, f"{validate_name(name)}.idx")

    def tty_path(self, name: str) -> str:
        """The attach socket of a detached workload with a terminal (`run -dit`)."""
        return os.path.join(self.logs, f"{validate_name(name)}.tty")

    def read_log(self, name: str) -> tuple[Record, str] | None:
        """The workload's record and its output file's path, for `logs` (CLI or API); None: a
        detached workload that has written nothing yet. A foreground run's output went to its terminal."""
        rec = self.load(name)
        path = self.log_path(name)
        if not os.path.exists(path):
            if not rec.detached:
                raise CgagentError(f"workload {name!r} ran in the foreground: its output went to the terminal",
                                   "run it with -d to keep its output for `cgagent logs`")
            return None
        return rec, path

    def open_log(self, name: str) -> int:
        """The detached workload's output file, for appending (0600: its output may hold secrets)."""
        self.ensure()
        fd = os.open(self.log_path(name), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW,
                     FILE_MODE)
        private_fd(fd)
        return fd

    def lock(self) -> contextlib.AbstractContextManager[None]:
        self.ensure()
        return exclusive_lock(os.path.join(self.root, "lock"))

    def save(self, rec: Record) -> None:
        self.ensure()
        atomic_write(self.path(rec.name), rec.to_json())

    def exists(self, name: str) -> bool:
        return os.path.lexists(self.path(name))

    def load(self, name: str) -> Record:
        path = self.path(name)
        try:
            fd = open_regular(path, follow=False)
        except FileNotFoundError:
            raise CgagentError(f"no workload named {name!r}", "see `cgagent ps -a` for the names") from None
        except OSError as e:
            raise Damaged(name, path, e.strerror or str(e)) from None
        except NotRegular as e:
            raise Damaged(name, path, "symbolic links are not followed" if e.symlink
                          else "not a regular file") from None
        try:
            raw = os.read(fd, MAX_RECORD + 1)
        finally:
            os.close(fd)
        if len(raw) > MAX_RECORD:
            raise Damaged(name, path, f"larger than {MAX_RECORD} bytes")
        return parse_record(name, path, raw)

    def delete(self, name: str) -> None:
        # the record last: killed before it, the name stays taken and `rm` finishes the job (the
        # other way round, a new workload of the name appended to the old one's log)
        for p in (self.log_path(name), self.index_path(name), self.tty_path(name), self.path(name)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)

    def names(self) -> list[str]:
        """Every name with a record file, valid or not."""
        try:
            files = sorted(os.listdir(self.workloads))
        except FileNotFoundError:
            return []
        return [fn[:-5] for fn in files if fn.endswith(".json") and _NAME.fullmatch(fn[:-5]) and ".." not in fn]

    def scan(self) -> tuple[list[Record], list[Damaged]]:
        """(valid records, damaged ones): one bad file never hides the others."""
        good, bad = [], []
        for n in self.names():
            try:
                good.append(self.load(n))
            except Damaged as d:
                bad.append(d)
            except CgagentError:
                continue   # removed between listdir and open
        return good, bad

    def all(self) -> list[Record]:
        """The valid records; each damaged one is named once on stderr."""
        good, bad = self.scan()
        for d in bad:
            warn_damaged(d)
        return good


def parse_tail(value: str | None) -> int | None:
    """`logs --tail`'s value: a line count, or all (None), as docker takes it."""
    if value is None or value == "all":
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 12:
        raise CgagentError(f"--tail {value!r} is not a number of lines", "give --tail N (N >= 0) or --tail all")
    return int(value)


def seek_tail(f: Any, lines: int | None) -> None:
    """Put the log F at the start of its last LINES lines (a last line without its newline counts),
    reading back from the end a block at a time: a long log is never read whole."""
    if lines is None:
        return
    end = f.seek(0, os.SEEK_END)
    if lines == 0:
        return
    pos, seen = end, 0
    while pos > 0:
        start = max(0, pos - 65536)
        f.seek(start)
        chunk = f.read(pos - start)
        i = len(chunk)
        while (i := chunk.rfind(b"\n", 0, i)) >= 0:
            # the newline that ends the file ends the last line: the others each begin a later line
            if start + i != end - 1:
                seen += 1
                if seen == lines:
                    f.seek(start + i + 1)
                    return
        pos = start
    f.seek(0)


def full_or_read_only(e: OSError) -> CgagentError | None:
    """A write that failed because the state dir's filesystem is full or read-only, wherever it was
    made: the one line that says so (other OSErrors are bugs and keep their traceback)."""
    if e.errno not in WRITE_ERRNOS:
        return None
    return write_error(str(e.filename or "the state dir"), e, 0)
