"""The agent's local API: HTTP/1.1 + JSON on a unix socket (default <state dir>/agent.sock, mode 0600).

Who may call: the socket's file mode first (root only by default; 0660 and the group's with
--api-group), then each connection's peer credentials (SO_PEERCRED, taken by the kernel at connect()):
root, the agent's own user, or a member of the configured group (primary or supplementary, from
SO_PEERGROUPS). Membership is root-equivalent, as the docker group is: the API starts workloads.

The connection handling is the exporter's (exporters/web.py): at most HEADER_BYTES of headers, which
must arrive within HEADER_TIMEOUT, a bounded connection table; bodies here are at most MAX_BODY, which
must arrive within BODY_TIMEOUT (the socket's per-read timeout alone let a peer sending one byte a
minute hold a connection for weeks).
Every failure is a JSON object {"error": one line, "exit_code": N}: the line is what the CLI prints
after `cgagent: error: `, the exit code what it exits with. The routes are ROUTES, and openapi.json
beside this file describes each (a test holds the two equal).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from cgagent.api.stderr import MAX_CAPTURED, STDERR_HEADER, captured_stderr
from cgagent.errors import CgagentError
from cgagent.host import Host
from cgagent.state import Store
from cgagent.wakeup import ready_to_read
from exporters import web

SOCKET_NAME = "agent.sock"
MAX_BODY = 64 * 1024
BODY_TIMEOUT = 10.0   # seconds for a whole body; the CLI sends its at most 60 KiB in one write
API_VERSION = "v1"
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)   # Linux 4.13+; Python 3.11 lacks the constant
NGROUPS_MAX = 65536


def socket_path(state_root: str) -> str:
    return os.path.join(state_root, SOCKET_NAME)


class ApiError(CgagentError):
    """A CgagentError with the HTTP status to answer it with."""

    def __init__(self, status: int, problem: str, fix: str = "", exit_code: int = 2) -> None:
        super().__init__(problem, fix, exit_code)
        self.status = status


@dataclass(frozen=True)
class Route:
    """One endpoint: its method, its OpenAPI path template and the handler that answers it."""

    method: str
    template: str          # OpenAPI path template, {name} for a workload's name
    op: str                # the handler method's name (Api.op_<op>) and the OpenAPI operationId

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.template) + "$")


ROUTES = (
    Route("GET", "/v1/version", "version"),
    Route("GET", "/v1/ps", "ps"),
    Route("POST", "/v1/workloads", "run"),
    Route("GET", "/v1/workloads/{name}", "inspect"),
    Route("DELETE", "/v1/workloads/{name}", "rm"),
    Route("POST", "/v1/workloads/{name}/update", "update"),
    Route("POST", "/v1/workloads/{name}/stop", "stop"),
    Route("GET", "/v1/workloads/{name}/logs", "logs"),
    Route("GET", "/v1/events", "events"),
)
_COMPILED = [(r, r.pattern) for r in ROUTES]


def route(method: str, path: str) -> tuple[Route, dict[str, str]]:
    allowed = []
    for r, pat in _COMPILED:
        m = pat.match(path)
        if m:
            if r.method == method:
                return r, {k: unquote(v) for k, v in m.groupdict().items()}
            allowed.append(r.method)
    if allowed:
        raise ApiError(405, f"{method} is not allowed on {path}", "use " + " or ".join(allowed))
    raise ApiError(404, f"no API route {path}", "see GET /v1/version and the API's openapi.json")


@dataclass(frozen=True)
class Peer:
    """The caller at the socket's other end, as the kernel reports it (SO_PEERCRED, its groups)."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...]


def peer_of(sock: socket.socket) -> Peer:
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    groups: tuple[int, ...] = ()
    with contextlib.suppress(OSError):   # no SO_PEERGROUPS (before 4.13): the primary group still counts
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
        except OSError as e:
            if e.errno != errno.ERANGE:
                raise
            raw = _peer_groups(sock.fileno())   # more than 256 groups: rare, read through libc
        groups = struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4])
    return Peer(pid, uid, gid, groups)


def _peer_groups(fd: int) -> bytes:
    """SO_PEERGROUPS whole: Python's getsockopt() reads at most 1024 bytes (256 groups), and a caller
    in more (up to NGROUPS_MAX) gets ERANGE there."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    size = ctypes.c_uint32(NGROUPS_MAX * 4)
    buf = ctypes.create_string_buffer(size.value)
    if libc.getsockopt(fd, socket.SOL_SOCKET, SO_PEERGROUPS, buf, ctypes.byref(size)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return buf.raw[:size.value]


# run, stop and rm make and tear down what a workload has in the namespaces of whoever does it
LAUNCH_OPS = frozenset({"run", "rm", "stop"})
LAUNCH_NAMESPACES = ("net", "mnt")


def foreign_namespace(pid: int, proc: str = "/proc") -> str | None:
    """The first of LAUNCH_NAMESPACES in which process `pid` is not where this agent is, or None.
    A caller under `nsenter --net` (or in a container with the CLI) means its own bridge, paths and
    mounts, which only the direct path gives it: the agent would make them in its own. An unknown
    peer (pid 0: in a PID namespace the agent cannot see; /proc unreadable) counts as elsewhere."""
    for ns in LAUNCH_NAMESPACES:
        try:
            if pid <= 0 or os.readlink(f"{proc}/{pid}/ns/{ns}") != os.readlink(f"{proc}/self/ns/{ns}"):
                return ns
        except OSError:
            return ns
    return None


# what the direct path uses to launch and tear down: mounts, netns/links, chroot, device nodes, setuid
LAUNCH_CAPS = {"CAP_SYS_ADMIN": 21, "CAP_NET_ADMIN": 12, "CAP_SYS_CHROOT": 18, "CAP_MKNOD": 27, "CAP_SETUID": 7}


def confinement(status: str = "/proc/self/status") -> str | None:
    """Why this process cannot do what the direct CLI does, or None. A hardened service (the shipped
    systemd unit: a capability bounding set, no_new_privs, a private mount namespace) serves reads and
    limit changes, but workloads started from it would inherit its sandbox."""
    try:
        with open(status) as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        eff = int(fields["CapEff"], 16)
        no_new_privs = fields.get("NoNewPrivs", "0").strip() == "1"
    except (OSError, KeyError, ValueError):
        return "its privileges cannot be read from /proc"
    missing = [n for n, bit in LAUNCH_CAPS.items() if not eff >> bit & 1]
    if missing:
        return "it runs without " + ", ".join(missing)
    if no_new_privs:
        return "it runs with no_new_privs"
    try:
        if os.readlink("/proc/self/ns/mnt") != os.readlink("/proc/1/ns/mnt"):
            return "it runs in a mount namespace of its own"
    except OSError:
        pass   # PID 1 not ours to inspect (a container): the checks above stand alone
    return None


class Api:
    """The operations, each on today's runtime functions (the CLI's direct path calls the same)."""

    def __init__(self, store: Store, host: Host, group: int | None, confined: str | None = None,
                 forker: Any = None) -> None:
        self.store = store
        self.host = host
        self.group = group
        self.confined = confined if confined is not None else confinement()
        self.forker = forker   # the launcher process (cgagent.api.launcher): run needs one

    def launcher(self, what: str) -> None:
        """run, stop and rm make, kill and tear down what a workload has (mounts, namespaces, links):
        an agent without the privileges of the direct path refuses them with 501, and the CLI then does
        them directly, as without an agent."""
        if self.confined:
            raise ApiError(501, f"this agent cannot {what} workloads ({self.confined})",
                           "use the CLI without the agent (CGAGENT_DIRECT=1), or run the agent unconfined")
        if what == "run" and self.forker is None:
            raise ApiError(501, "this agent has no launcher process",
                           "use the CLI without the agent (CGAGENT_DIRECT=1)")

    def allowed(self, peer: Peer) -> bool:
        if peer.uid in (0, os.geteuid()):
            return True
        return self.group is not None and (peer.gid == self.group or self.group in peer.groups)

    def workload(self, name: str) -> None:
        """404 unless `name` has a record (the message is the CLI's)."""
        if not self.store.exists(name):
            try:
                self.store.load(name)   # the CLI's error for a bad or unknown name
            except CgagentError as e:
                raise ApiError(404, e.problem, e.fix, e.exit_code) from None

    # --- operations: (path params, query, body) -> JSON-able answer, or a stream (see Handler)

    def op_version(self, _p: dict[str, str], _q: Query, _b: Any) -> Any:
        from cgagent import __version__

        return {"version": __version__, "api": API_VERSION, "state_dir": self.store.root}

    def op_ps(self, _p: dict[str, str], q: Query, _b: Any) -> Any:
        from cgagent.api.views import ps_rows

        return ps_rows(self.host, self.store, q.flag("all"))

    def op_run(self, _p: dict[str, str], _q: Query, body: Any) -> Any:
        from cgagent.api import attach
        from cgagent.api.runreq import RUN_FIELDS, check_fields
        from cgagent.errors import run_code

        self.launcher("run")
        try:
            fields = check_fields(body, RUN_FIELDS, "run request")
            if not fields.get("detach"):
                return Attach(fields)
            return {"name": attach.run_detached_as(self.forker, fields)}
        except CgagentError as e:
            e.exit_code = run_code(e.exit_code)   # what `cgagent run` exits with: Docker's codes
            raise

    def op_inspect(self, p: dict[str, str], _q: Query, _b: Any) -> Any:
        from cgagent.api.views import inspect_view

        self.workload(p["name"])
        return inspect_view(self.store, self.host, p["name"])

    def op_rm(self, p: dict[str, str], q: Query, _b: Any) -> Any:
        from cgagent.runtime import remove

        self.launcher("remove")   # first: the CLI's fallback must come before any name's answer
        if not q.flag("force"):   # -f also removes what a damaged or deleted record left
            self.workload(p["name"])
        remove(self.store, self.host, p["name"], q.flag("force"))
        return {"name": p["name"]}

    def op_update(self, p: dict[str, str], _q: Query, body: Any) -> Any:
        from cgagent.api.runreq import LIMIT_TYPES, check_fields, limits
        from cgagent.runtime import update

        # in the direct path's order: the values first, then the workload
        values = limits(check_fields(body, LIMIT_TYPES, "update request"))
        if not values:
            raise CgagentError("no limit given", "add at least one, e.g. --cpus 0.2")
        self.workload(p["name"])
        rec = update(self.store, self.host, p["name"], values)
        return {"name": rec.name, "resources": rec.resources}

    def op_stop(self, p: dict[str, str], q: Query, _b: Any) -> Any:
        from cgagent.runtime import stop

        timeout = q.number("time", -1.0)   # absent: the workload's --stop-timeout
        self.launcher("stop")
        self.workload(p["name"])
        stop(self.store, self.host, p["name"], timeout if timeout >= 0 else None)
        return {"name": p["name"]}

    def op_logs(self, p: dict[str, str], q: Query, _b: Any) -> Any:
        from cgagent.logtime import parse_since
        from cgagent.state import parse_tail

        self.workload(p["name"])
        tail, since, stamps = parse_tail(q.get("tail")), parse_since(q.get("since")), q.flag("timestamps")
        follow = q.flag("follow")   # here, not in the stream: a bad value must be a 400, not a cut reply
        return Stream("application/octet-stream", lambda client: log_stream(self.store, p["name"], follow,
                                                                            client, tail, since, stamps))

    def op_events(self, _p: dict[str, str], q: Query, _b: Any) -> Any:
        name, follow = q.get("name"), q.flag("follow")
        return Stream("application/x-ndjson", lambda client: event_stream(self.store.root, name, follow, client))


class Query:
    """The query string: each parameter once; flags are 1/true/0/false."""

    def __init__(self, raw: str, allowed: set[str]) -> None:
        self.values: dict[str, str] = {}
        for k, vs in parse_qs(raw, keep_blank_values=True, strict_parsing=False).items():
            if k not in allowed:
                raise ApiError(400, f"unknown query parameter {k!r}",
                               "the parameters here are " + (", ".join(sorted(allowed)) or "none"))
            if len(vs) != 1:
                raise ApiError(400, f"query parameter {k!r} given {len(vs)} times", "give it once")
            self.values[k] = vs[0]

    def get(self, k: str) -> str | None:
        return self.values.get(k)

    def flag(self, k: str) -> bool:
        v = self.values.get(k, "0").lower()
        if v not in ("1", "true", "0", "false", ""):
            raise ApiError(400, f"query parameter {k!r} is {v!r}", "use 1 or 0 (true or false)")
        return v in ("1", "true")

    def number(self, k: str, default: float) -> float:
        v = self.values.get(k)
        if v is None:
            return default
        try:
            n = float(v)
        except ValueError:
            n = -1.0
        if not 0 <= n <= 86400:
            raise ApiError(400, f"query parameter {k!r} is {v!r}", "give seconds from 0 to 86400")
        return n


QUERY = {"ps": {"all"}, "rm": {"force"}, "stop": {"time"}, "logs": {"follow", "tail", "since", "timestamps"},
         "events": {"name", "follow"}}


@dataclass(frozen=True)
class Attach:
    """A foreground run (its fields checked): the connection becomes its stdio channel (attach.py)."""

    fields: dict[str, Any]


@dataclass(frozen=True)
class Stream:
    """An answer of unknown length, written as it comes until done or the client goes away; the
    connection closes after it (the end of the body is the end of the connection)."""

    content_type: str
    produce: Callable[[socket.socket], Generator[bytes, None, None]]


def _watching(paths: list[tuple[str, int]], fds: list[int], client: socket.socket) -> Iterator[list[int]]:
    """Yield the ready fds each time a watched file changes or an fd is readable, until the client
    closes: inotify (the agent's one instance), or when the kernel gives no watch, a look (an empty
    list) every POLL_SECONDS."""
    from cgagent.api.watches import WATCHES

    sub = WATCHES.subscribe(paths)
    try:
        yield []   # watches in place: the caller reads what is there (nothing is missed in between)
        while True:
            ready = ready_to_read([sub.fd, client.fileno(), *fds], sub.timeout)
            if client.fileno() in ready:
                return
            if sub.fd in ready:
                sub.clear()
            yield ready
    finally:
        WATCHES.unsubscribe(sub)


def log_stream(store: Store, name: str, follow: bool, client: socket.socket,
               tail: int | None = None, since: int | None = None,
               timestamps: bool = False) -> Generator[bytes, None, None]:
    """The workload's log (as `cgagent logs [-f] [--tail N] [--since T] [--timestamps]`): what is
    there (its last TAIL lines), then, with follow, what its supervisor writes until it exits."""
    from cgagent import procs
    from cgagent.inotify import IN_MODIFY
    from cgagent.logtime import LogReader
    from cgagent.state import seek_tail

    found = store.read_log(name)
    if found is None:
        return
    rec, path = found
    with open(path, "rb") as f:
        seek_tail(f, tail)
        reader = LogReader(f, store.index_path(name), timestamps)
        reader.seek_since(since)
        yield b""   # checked: the answer is 200 from here on
        live = follow and procs.alive(rec.supervisor_pid, rec.supervisor_start)
        yield from reader.chunks(final=not live)
        if not live:
            return
        sup = procs.pidfd(rec.supervisor_pid, rec.supervisor_start)
        if sup is None:   # it has exited since
            yield from reader.chunks(final=True)
            return
        try:
            for ready in _watching([(path, IN_MODIFY)], [sup], client):
                # the supervisor is gone: nothing more will be written
                yield from reader.chunks(final=sup in ready)
                if sup in ready:
                    return
        finally:
            os.close(sup)


def event_stream(state_root: str, name: str | None, follow: bool,
                 client: socket.socket) -> Generator[bytes, None, None]:
    """The events log as newline-delimited JSON (as `cgagent events --json [-f]`)."""
    from cgagent import events, inotify

    reader = events.Reader(state_root)
    yield b""   # the answer's headers go out before the first event, which may be long in coming

    def lines() -> Iterator[bytes]:
        for ev in reader.read():
            if name is None or ev.get("name") == name:
                yield json.dumps(ev, sort_keys=True).encode() + b"\n"

    if not follow:
        yield from lines()
        return
    for _ready in _watching([(state_root, inotify.IN_MODIFY | inotify.IN_CREATE | inotify.IN_MOVED_TO)], [],
                            client):
        yield from lines()


def _error_body(e: CgagentError) -> dict[str, Any]:
    body: dict[str, Any] = {"error": str(e), "exit_code": e.exit_code}
    details = list(getattr(e, "details", ()))
    if details:
        body["details"] = [str(d) for d in details]
    return body


class Handler(web.BoundedHandler):
    server: ApiHttpServer

    def setup(self) -> None:
        super().setup()
        self.peer = peer_of(self.connection)

    captured = ""
    body_read = False

    def end_headers(self) -> None:
        if self.captured:
            self.send_header(STDERR_HEADER, json.dumps(self.captured[:MAX_CAPTURED]))
            self.captured = ""
        super().end_headers()

    def _json(self, code: int, obj: Any) -> None:
        body = json.dumps(obj).encode() + b"\n"
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _fail(self, e: CgagentError, status: int) -> None:
        # refused before its body was read: the answer first (a client may wait for it before it
        # sends the body), then read past the body, which must not be taken for the next request;
        # closing instead cut off a client still sending it (a 501's caller goes on to the direct path)
        left = 0
        if not self.body_read and not self.close_connection:
            with contextlib.suppress(ApiError):   # a length that cannot be read closes the connection
                left = self._length()
        self._json(status, _error_body(e))
        if left:
            with contextlib.suppress(ApiError):   # it closes the connection itself
                self._read(left)
        self.body_read = True

    def _length(self) -> int:
        """The request body's length, checked; a body that cannot be read closes the connection."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise ApiError(400, "chunked request bodies are not accepted", "send the body with Content-Length")
        raw_len = self.headers.get("Content-Length", "0")
        if not (raw_len.isascii() and raw_len.isdigit()):   # "²" is a digit to isdigit(), not to int()
            self.close_connection = True
            raise ApiError(400, f"Content-Length {raw_len!r} is not a number", "send the body's length in bytes")
        n = int(raw_len)
        if n > MAX_BODY:
            self.close_connection = True   # the body is not read: the connection cannot go on
            raise ApiError(413, f"the request body is {n} bytes, more than {MAX_BODY}", "send a smaller request")
        return n

    def _read(self, n: int) -> bytes:
        """The body's n bytes, within BODY_TIMEOUT of the first read: one read1() at a time, each
        with the socket's timeout set to what is left of it (a plain read(n) waits up to the timeout
        for each of its recv()s)."""
        deadline = time.monotonic() + BODY_TIMEOUT
        got: list[bytes] = []
        left = n
        try:
            while left:
                self.connection.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = self.rfile.read1(left)
                if not chunk:
                    self.close_connection = True
                    raise ApiError(400, "the request body ended early", "send as many bytes as Content-Length says")
                got.append(chunk)
                left -= len(chunk)
        except TimeoutError:
            self.close_connection = True
            raise ApiError(408, f"the request body did not arrive within {BODY_TIMEOUT:g} s",
                           "send the whole body right after the headers") from None
        finally:
            self.connection.settimeout(web.IO_TIMEOUT)
        return b"".join(got)

    def _body(self) -> Any:
        n = self._length()
        self.body_read = True
        raw = self._read(n) if n else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise ApiError(400, f"the request body is not JSON ({str(e).splitlines()[0]})",
                           "send a JSON object") from None

    def _dispatch(self) -> None:
        with self.serving():
            self._handle()

    def _handle(self) -> None:
        api = self.server.api
        self.body_read = False
        try:
            if not api.allowed(self.peer):
                self.close_connection = True
                raise ApiError(403, f"uid {self.peer.uid} may not use the agent's API",
                               "call it as root" + (" or as a member of its --api-group" if api.group is not None
                                                    else " (or start the agent with --api-group GROUP)"))
            url = urlsplit(self.path)
            r, params = route(self.command, url.path)
            if r.op in LAUNCH_OPS and (ns := foreign_namespace(self.peer.pid)) is not None:
                # 501: the CLI does it directly, in the caller's namespaces, as without an agent
                raise ApiError(501, f"the caller is in another {ns} namespace than this agent",
                               "run the CLI in the agent's namespaces, or without the agent (CGAGENT_DIRECT=1)")
            query = Query(url.query, QUERY.get(r.op, set()))
            body = self._body()
            if body is not None and r.method != "POST":
                raise ApiError(400, f"{r.method} {r.template} takes no body", "send the request without one")
            with captured_stderr() as printed:
                try:
                    answer = getattr(api, "op_" + r.op)(params, query, body)
                finally:
                    self.captured = "".join(printed)
        except ApiError as e:
            self._fail(e, e.status)
            return
        except CgagentError as e:
            self._fail(e, 400)
            return
        except OSError as e:
            from cgagent.state import full_or_read_only

            err = full_or_read_only(e)
            if err is None:
                self._internal(e)
                return
            self._fail(err, 500)
            return
        except Exception as e:
            self._internal(e)
            return
        if isinstance(answer, Stream):
            self._stream(answer)
        elif isinstance(answer, Attach):
            self._attach(answer)
        else:
            self._json(200, answer)

    def _internal(self, e: BaseException) -> None:
        # a bug: its traceback in the agent's log, one line to the client
        traceback.print_exc(file=getattr(sys.stderr, "real", sys.stderr))
        self._fail(CgagentError(f"internal error in the agent: {type(e).__name__}: {e}",
                                "see the agent's log (stderr)", 1), 500)

    def _stream(self, s: Stream) -> None:
        """A body of unknown length: its end is the connection's. The producer yields b"" once its checks
        are done: a failure before that is still a JSON error, one after it ends the body (the client
        sees it cut short)."""
        self.close_connection = True
        chunks = s.produce(self.connection)
        try:
            first = next(chunks, b"")
        except CgagentError as e:
            self._fail(e, 400)
            return
        self.send_response(200)
        self.send_header("Content-Type", s.content_type)
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            self.wfile.write(first)
            self.wfile.flush()
            for chunk in chunks:
                if chunk:
                    self.wfile.write(chunk)
                    self.wfile.flush()
        except (OSError, CgagentError):
            pass   # the client went away, or the source failed mid-body: the cut body says so
        finally:
            chunks.close()

    def _attach(self, a: Attach) -> None:
        from cgagent.api import attach, runclient

        self.close_connection = True
        if self.headers.get("Upgrade", "").lower() != runclient.PROTOCOL:
            self._fail(ApiError(400, "a foreground run needs the caller's stdio",
                                f"send \"detach\": true, or the header Upgrade: {runclient.PROTOCOL}"), 400)
            return
        self.send_response(101)
        self.send_header("Connection", "Upgrade")
        self.send_header("Upgrade", runclient.PROTOCOL)
        self.end_headers()
        self.wfile.flush()
        fds = attach.receive_stdio(self.connection)
        if fds is None:
            return
        try:
            child = attach.spawn_supervisor(self.server.api.forker, a.fields, fds)
        finally:
            for fd in fds:
                os.close(fd)
        try:
            attach.relay(self.connection, child)
        finally:
            child.close()

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _dispatch

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, headers too long): one JSON line too."""
        self.close_connection = True
        self.request_version = "HTTP/1.1"   # a request line that did not parse: answer with headers anyway
        with contextlib.suppress(OSError):
            self._fail(ApiError(code, f"malformed HTTP request ({message or code})",
                                "send an HTTP/1.1 request"), code)


class ApiHttpServer(web.UnixServer):
    api: Api

    def refuse(self, request: socket.socket) -> None:
        """Every slot is serving a request: a 503 saying so, sent without waiting (a full socket buffer
        drops it), so that the CLI prints why instead of "the agent closed the connection". The
        kernel keeps it for the client to read before the close, whatever the client had sent."""
        e = ApiError(503, f"the agent is serving as many connections as it may ({self.max_connections})",
                     "retry when one ends; each `logs -f`, `events -f` and foreground run holds one", 1)
        body = json.dumps(_error_body(e)).encode() + b"\n"
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode()
        with contextlib.suppress(OSError):
            request.send(head + body, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        super().refuse(request)


class ApiServer(web.ConnectionLoop):
    """The API on `path`; start() serves it in a thread, shutdown() stops it and removes the socket."""

    thread_name = "cgagent-api"

    def __init__(self, api: Api, path: str, group: int | None = None) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        cls = type("_ApiHttpServer", (ApiHttpServer,), {"socket_mode": 0o600 if group is None else 0o660})
        try:
            httpd: ApiHttpServer = cls(path, Handler)
        except OSError as e:
            raise CgagentError(f"cannot listen on {path} ({e.strerror or e})",
                               "check the directory, or give another --api-socket") from None
        if group is not None:
            os.chown(path, -1, group, follow_symlinks=False)
        httpd.api = api
        self._serve(httpd, None)
