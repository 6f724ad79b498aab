"""What a workload's process is given besides its cgroup, as Docker's run options name it, for host
and isolated runs alike: resource limits (--ulimit, setrlimit(2) in the child before exec), the stop
signal and grace time (--stop-signal, --stop-timeout), labels (--label, --label-file), variables from
a file (--env-file) and, for a host command, the user, directory, environment and init it runs with
(-u, -w, -e, --init; an isolated run has those in its IsolationSpec).

Kept in the base layer and free of imports beyond the standard library: the fast `run` path parses
with it, and the child applies it between fork and exec.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping

from cgagent.errors import CgagentError

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from typing import Any

# Docker's --ulimit names -> RLIMIT_* numbers (asm-generic, the same on x86_64 and aarch64; `resource`
# is not imported for them: it costs the fast path start-up time)
ULIMITS = {"cpu": 0, "fsize": 1, "data": 2, "stack": 3, "core": 4, "rss": 5, "nproc": 6, "nofile": 7,
           "memlock": 8, "as": 9, "locks": 10, "sigpending": 11, "msgqueue": 12, "nice": 13, "rtprio": 14,
           "rttime": 15}
INFINITY = -1   # RLIM_INFINITY, as resource.setrlimit takes it
MAX_KV_FILE = 1 << 20   # an --env-file / --label-file: Docker's files are a few lines; more is a mistake
MAX_LABELS = 1024
TINIS = ("/usr/bin/tini-static", "/usr/bin/tini")   # Debian's package tini
DEFAULT_STOP_TIMEOUT = 10.0
STOP_TIME_HELP = "Seconds to wait after the stop signal before SIGKILL (default: run's --stop-timeout, else 10)."


def parse_ulimit(text: str) -> tuple[str, int, int]:
    """--ulimit NAME=SOFT[:HARD] -> (name, soft, hard); -1 or unlimited is no limit; HARD defaults to SOFT."""
    name, eq, val = text.partition("=")
    fix = "e.g. --ulimit nofile=1024:4096 (names: " + ", ".join(sorted(ULIMITS)) + ")"
    if not eq or name not in ULIMITS:
        raise CgagentError(f"--ulimit {text!r} is not NAME=SOFT[:HARD] with a known NAME", fix)
    soft_s, _, hard_s = val.partition(":")

    def num(s: str) -> int:
        if s in ("-1", "unlimited"):
            return INFINITY
        if not (s.isascii() and s.isdigit() and len(s) <= 19 and int(s) < 1 << 63):
            raise CgagentError(f"--ulimit {text!r}: {s!r} is not a number", fix)
        return int(s)

    soft = num(soft_s)
    hard = num(hard_s) if hard_s else soft
    if hard != INFINITY and (soft == INFINITY or soft > hard):
        raise CgagentError(f"--ulimit {text!r}: the soft limit is above the hard one", fix)
    return name, soft, hard


def parse_ulimits(specs: list[str]) -> tuple[tuple[str, int, int], ...]:
    """The last one given for a name counts, as Docker's."""
    out = {u[0]: u for u in map(parse_ulimit, specs)}
    return tuple(out.values())


def _signum(text: str) -> int | None:
    s = text.upper().removeprefix("SIG")
    base, sign, off = s.partition("+") if "+" in s else s.partition("-")
    if s.isascii() and s.isdigit() and len(s) <= 3:
        return int(s)
    if sign and base in ("RTMIN", "RTMAX") and off.isascii() and off.isdigit() and len(off) <= 2:
        return int(getattr(signal, "SIG" + base)) + (int(off) if sign == "+" else -int(off))
    v = getattr(signal.Signals, "SIG" + s, None) if s.isidentifier() else None
    return int(v) if v is not None else None


def ulimits_from_record(v: object) -> tuple[tuple[str, int, int], ...]:
    """Record.ulimits ([[name, soft, hard], ...]) back; a malformed one is one line, not a traceback."""
    try:
        out = tuple((str(n), int(s), int(h)) for n, s, h in v)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        out = (("", 0, 0),)
    if not all(n in ULIMITS for n, _s, _h in out):
        raise CgagentError("the record's ulimits are not [name, soft, hard] entries",
                           "remove the workload with `cgagent rm -f NAME` and run it again")
    return out


def parse_signal(text: str) -> str:
    """--stop-signal TERM | SIGTERM | 15 | SIGRTMIN+3 -> its name: SIGTERM, SIGRTMIN+3."""
    num = _signum(text)
    if num is None or not 0 < num <= signal.SIGRTMAX:
        raise CgagentError(f"--stop-signal {text!r} is not a signal", "e.g. --stop-signal SIGINT or 2")
    if num == signal.SIGSTOP:
        raise CgagentError(f"--stop-signal {text!r} cannot end a process", "e.g. --stop-signal SIGQUIT")
    if num in signal.valid_signals() and num not in (signal.SIGRTMIN, signal.SIGRTMAX):
        try:
            return signal.Signals(num).name
        except ValueError:
            pass
    return f"SIGRTMIN+{num - signal.SIGRTMIN}" if num >= signal.SIGRTMIN else str(num)


def signal_number(name: str) -> int:
    """A recorded stop signal (empty: SIGTERM) -> its number."""
    return (_signum(name) if name else None) or int(signal.SIGTERM)


def parse_stop_timeout(text: str) -> float:
    """--stop-timeout N: seconds `stop` waits after the stop signal before SIGKILL (0 to a day)."""
    if not (text.isascii() and text.isdigit() and int(text) <= 86400):
        raise CgagentError(f"--stop-timeout {text!r} is not whole seconds from 0 to 86400", "e.g. --stop-timeout 30")
    return float(text)


def read_kv_file(path: str, flag: str) -> list[str]:
    """Docker's --env-file / --label-file format: KEY=VALUE lines (the value as is: no quotes taken
    off), a line starting with # and an empty line skipped, a bare KEY as given. One line naming
    FILE:LINE on a bad line."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)   # a FIFO must not hang us
        try:
            data = os.read(fd, MAX_KV_FILE + 1)
        finally:
            os.close(fd)
    except OSError as e:
        raise CgagentError(f"{flag} {path}: {e.strerror}", "give a readable file of KEY=VALUE lines") from None
    if len(data) > MAX_KV_FILE:
        raise CgagentError(f"{flag} {path} is larger than {MAX_KV_FILE} bytes", "give a file of KEY=VALUE lines")
    try:
        text = data.decode()
    except UnicodeDecodeError as e:
        at = data[:e.start].count(b"\n") + 1
        raise CgagentError(f"{flag} {path}:{at}: not UTF-8", "save the file as UTF-8") from None
    out = []
    for i, raw in enumerate(text.split("\n"), 1):
        line = raw.removesuffix("\r")
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        key = stripped.partition("=")[0]
        if not key or "\0" in line or any(c.isspace() for c in key):
            what = "no KEY before =" if not key else "a NUL byte" if "\0" in line else f"the key {key!r} has a space"
            raise CgagentError(f"{flag} {path}:{i}: {what}", "write KEY=VALUE, one a line (# starts a comment)")
        out.append(stripped)
    return out


def parse_labels(specs: list[str]) -> dict[str, str]:
    """--label KEY=VALUE (a bare KEY: an empty value) -> {KEY: VALUE}; the last one for a key counts."""
    out: dict[str, str] = {}
    for s in specs:
        k, _, v = s.partition("=")
        if not k or not k.isprintable() or not v.isprintable():
            raise CgagentError(f"--label {s[:80]!r} is not KEY=VALUE of printable characters", "e.g. --label tier=web")
        out[k] = v
    if len(out) > MAX_LABELS:
        raise CgagentError(f"{len(out)} labels are more than {MAX_LABELS}", "give fewer --label options")
    return out


def with_env(base: Mapping[str, str], entries: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`base` plus -e/--env-file entries: KEY=VALUE sets, a bare KEY takes the caller's value (and
    is left out when the caller has none), as Docker's."""
    out = dict(base)
    for e in entries:
        k, eq, v = e.partition("=")
        if eq:
            out[k] = v
        elif k in os.environ:
            out[k] = os.environ[k]
    return out


class HostProcess:
    """How a host command runs (-e, -w, -u, --init); stored in the record as a dict. A plain class:
    a dataclass's or NamedTuple's generated code costs the fast path time."""

    __slots__ = ("env", "init", "user", "workdir")

    def __init__(self, env: tuple[str, ...] = (), workdir: str = "", user: str = "", init: bool = False) -> None:
        self.env, self.workdir, self.user, self.init = env, workdir, user, init

    def to_record(self) -> dict[str, Any]:
        return {"env": list(self.env), "workdir": self.workdir, "user": self.user, "init": self.init}

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> HostProcess:
        env = d.get("env") or []
        return cls(tuple(str(e) for e in env) if isinstance(env, list) else (), str(d.get("workdir") or ""),
                   str(d.get("user") or ""), bool(d.get("init")))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HostProcess) and self.to_record() == other.to_record()

    __hash__ = None  # type: ignore[assignment]   # mutable, as a dataclass without frozen


def host_user(text: str) -> tuple[int, int, list[int], str | None]:
    """-u USER[:GROUP] | UID[:GID] on the host -> (uid, gid, supplementary groups, home), names read
    from the host's user database. A uid without an entry gets gid 0 and no other group, as Docker."""
    import grp
    import pwd

    user, _, group = text.partition(":")
    fix = "give a user of this host (see /etc/passwd) or a number, e.g. -u 1000:1000 or -u nobody"
    entry = None
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        if not user.isdigit():
            raise CgagentError(f"-u {text!r}: no user {user!r} on this host", fix) from None
    except (OverflowError, ValueError):
        raise CgagentError(f"-u {text!r} is not a user", fix) from None
    uid = entry.pw_uid if entry else int(user)
    gid = entry.pw_gid if entry else 0
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise CgagentError(f"-u {text!r}: no group {group!r} on this host", fix) from None
    if not (0 <= uid < 1 << 32 and 0 <= gid < 1 << 32):
        raise CgagentError(f"-u {text!r} is out of range", fix)
    groups = [gid] if group or entry is None else sorted(set(os.getgrouplist(entry.pw_name, gid)))
    return uid, gid, groups, entry.pw_dir if entry else None


def tini() -> str:
    for t in TINIS:
        if os.access(t, os.X_OK):
            return t
    raise CgagentError("--init needs tini, which is not installed",
                       "install the Debian package tini (apt-get install tini), or drop --init")


def child_setup(ulimits: tuple[tuple[str, int, int], ...], host: HostProcess | None,
                then: Callable[[], list[str] | None] | None) -> Callable[[], list[str] | None] | None:
    """launch.spawn's child_setup: the limits, then (a host command) the user and directory, or (an
    isolated run) `then`, its own setup. Everything the child needs is resolved here, in the parent,
    so that a bad user is told before anything is made and the child only makes system calls."""
    if not ulimits and (host is None or not (host.user or host.workdir or host.init)):
        return then
    import resource

    ids = host_user(host.user) if host is not None and host.user else None
    wrapper = [tini(), "-s", "--"] if host is not None and host.init else None
    workdir = host.workdir if host is not None else ""

    def setup() -> list[str] | None:
        for name, soft, hard in ulimits:
            try:
                resource.setrlimit(ULIMITS[name], (soft, hard))
            except (ValueError, OSError) as e:   # above the hard limit without CAP_SYS_RESOURCE
                raise ValueError(f"--ulimit {name}: {e}") from None
        if ids is not None:
            uid, gid, groups, _ = ids
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
        if workdir:
            os.chdir(workdir)   # after the change of user: a directory the user cannot enter is refused
        return then() if then is not None else wrapper

    return setup


def host_env(host: HostProcess) -> dict[str, str] | None:
    """The environment of a host command: the caller's plus -e / --env-file (and HOME for -u); None
    when it is the caller's as is."""
    if not host.env and not host.user:
        return None
    env = with_env(os.environ, host.env)
    if host.user:
        home = host_user(host.user)[3]
        if home and not any(e.startswith("HOME=") for e in host.env):
            env["HOME"] = home
    return env


def host_process(opts: Mapping[str, Any]) -> HostProcess | None:
    """-e, -w, -u, --init of a host command (runflags' isolation options, which a host run takes
    too) -> its HostProcess, checked now: a missing user, directory or tini is told before anything
    is made. None when none was given."""
    # a bare KEY takes the caller's value now: the supervisor (or the agent) that starts the command
    # later need not have the caller's environment
    env = tuple(f"{k}={v}" for k, v in with_env({}, list(opts.get("env") or ())).items())
    hp = HostProcess(env=env, workdir=str(opts.get("workdir") or ""),
                     user=str(opts.get("user") or ""), init=bool(opts.get("init")))
    if not (hp.env or hp.workdir or hp.user or hp.init):
        return None
    if hp.workdir:
        wd = os.path.abspath(hp.workdir)   # the caller's directory is not the supervisor's
        if not os.path.isdir(wd):
            raise CgagentError(f"-w {hp.workdir}: not a directory on this host", "give an existing directory")
        hp.workdir = wd
    if hp.user:
        host_user(hp.user)
    if hp.init:
        tini()
    return hp
