"""The HTTP(S) endpoint Prometheus scrapes: /metrics, /healthz and a tiny index page.

TLS, client certificates, basic auth and extra response headers come from the exporter-toolkit web config
(exporters.webconfig). The TLS handshake runs in the per-connection thread, never in the accept loop, so a
client that connects and stays silent cannot stall other scrapes.

Nobody without credentials can starve it (each bound below is what keeps one resource finite):
- connections: at most `max_connections` (a quarter of the fd limit, at most 256), so the collectors and
  the OOM watcher always keep fds. When full, a new connection replaces the oldest one that is not
  serving a request (an idle keep-alive, a silent or slow client); if every slot is serving, it is closed.
- time: a new connection must deliver its request headers (TLS handshake included) within
  HEADER_TIMEOUT; a keep-alive connection is dropped after IDLE_TIMEOUT without a request.
- memory: request line plus headers at most HEADER_BYTES.
- CPU: bcrypt runs only for a well-formed `Authorization: Basic` header naming a configured user (or a
  user that is not, see check_basic_auth), at most AUTH_CONCURRENCY at once; a request that cannot get
  a slot within AUTH_WAIT is answered 503. A successful check is cached, so a scraper with the right
  password pays bcrypt once, not every scrape, and never waits behind failed guesses.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import gzip
import hashlib
import hmac
import ipaddress
import logging
import os
import selectors
import socket
import socketserver
import ssl
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self, cast
from urllib.parse import parse_qs, urlsplit

from cgagent.errors import CgagentError

if TYPE_CHECKING:
    from .webconfig import WebConfig

log = logging.getLogger("cgagent.web")

DEFAULT_PORT = 9730
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"
REALM = "cgagent"
# a new connection must have sent its request headers (and finished its TLS handshake) by then
HEADER_TIMEOUT = 5.0
# keep-alive connections (Prometheus reuses one per target) without a new request are closed after this
IDLE_TIMEOUT = 60.0
# the socket timeout of each read/write while a request is being served (a stalled reader of a response)
IO_TIMEOUT = 30.0
MAX_CONNECTIONS = 256
MIN_CONNECTIONS = 8
# request line + headers; a scrape sends well under 1 KiB
HEADER_BYTES = 16 * 1024
# bcrypt checks at once: it is CPU-bound, and a core must stay free for scrapes and the collectors
AUTH_CONCURRENCY = max(1, min(4, (os.cpu_count() or 1) // 2))
AUTH_WAIT = 1.0
# successful (user, password) checks remembered; more distinct ones than this means something is off
AUTH_CACHE_SIZE = 64
# bcrypt (Go's and pyca's since 5.0) refuses passwords longer than this rather than silently truncating
BCRYPT_MAX_PASSWORD = 72

INDEX_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>cgagent</title></head>
<body><h1>cgagent</h1>
<p><a href="{path}">Metrics</a> &middot; <a href="/healthz">Health</a></p></body></html>
"""


LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (the agent swaps in a per-thread capture later)."""

    @property
    def stream(self) -> Any:
        import sys

        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def setup_logging(level: str) -> None:
    """The agent's log lines (`cgagent: warn: ...`) on stderr, from `level` (--log.level) up."""
    root = logging.getLogger("cgagent")
    if not any(isinstance(h, _Stderr) for h in root.handlers):
        h = _Stderr()
        h.setFormatter(_Format())
        root.addHandler(h)
    root.setLevel(LOG_LEVELS[level])
    root.propagate = False


class _Format(logging.Formatter):
    names: ClassVar[dict[int, str]] = {v: k for k, v in LOG_LEVELS.items()}   # as --log.level spells it

    def format(self, record: logging.LogRecord) -> str:
        return f"cgagent: {self.names.get(record.levelno, record.levelname.lower())}: {record.getMessage()}"


class Collectable(Protocol):
    def collect(self) -> Any: ...


def parse_listen(listen: str) -> tuple[str, int]:
    """"127.0.0.1:9730", "[::1]:9730", "localhost:9730", ":9730" (all addresses) -> (host, port).
    host "" means all addresses."""
    def bad(why: str) -> CgagentError:
        return CgagentError(f"invalid listen address {listen!r} ({why})",
                            "use HOST:PORT, e.g. 127.0.0.1:9730, [::1]:9730 or :9730 for all addresses")

    if listen.startswith("["):
        host, sep, rest = listen[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise bad("IPv6 addresses are written [ADDR]:PORT")
        port_s = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_s = listen.rpartition(":")
        if not sep:
            raise bad("no port")
        if ":" in host:
            raise bad("IPv6 addresses must be in brackets")
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise bad(f"port {port_s!r} is not a number from 0 to 65535")
    return host, int(port_s)


def _resolve(host: str, port: int) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    if host == "":
        if socket.has_ipv6:
            # dual-stack "::" covers IPv4 too (IPV6_V6ONLY is cleared in server_bind)
            return socket.AF_INET6, ("::", port, 0, 0)
        return socket.AF_INET, ("0.0.0.0", port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise CgagentError(f"cannot resolve listen host {host!r} ({e.strerror})",
                           "use an IP address such as 127.0.0.1") from None
    family, _t, _p, _c, addr = infos[0]
    return family, addr


def connection_bound(nofile: int | None = None) -> int:
    """The most connections to serve at once for an fd soft limit (default: this process's): a quarter of
    it, between 8 and 256. The rest of the fds stay for the collectors (directory fds, cgroup files), the
    OOM watcher and the policy controller."""
    import resource

    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, nofile // 4))


def fd_bound(max_connections: int) -> int:
    """The most connection fds the server holds: the served ones plus those it has shut down whose
    threads are still closing them (normally a handful, for a moment)."""
    return max_connections + max_connections // 4 + 1


@dataclass
class _Conn:
    """One client connection of the scrape endpoint, and when it is closed."""

    fd: int
    deadline: float              # while idle (not serving a request): closed when it passes
    closing: bool = False        # shut down by the reaper or an eviction; its thread is closing it
    # a new connection waits in the accept loop's selector, without a thread, until its first bytes
    # arrive: a thousand silent connections then cost a thousand fds at most, not a thousand threads, and
    # accepting the next one stays cheap enough that a real scrape is not stuck behind them in the backlog
    parked: socket.socket | None = None
    address: Any = None
    # plain HTTP: what arrived while parked. A connection leaves the selector for a thread only with its
    # request's whole header block, so a slow client (slowloris) costs no thread either.
    head: bytes = b""


def _shutdown_fd(fd: int) -> None:
    """Wake the thread blocked on this connection (its recv returns EOF) without closing the fd: only the
    owning thread closes it, after deregistering, so the number cannot be reused under us."""
    s = socket.socket(fileno=fd)
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        s.detach()


class _Prefixed:
    """The handler's raw rfile, serving the bytes read while the connection was parked first."""

    def __init__(self, raw: Any, prefix: bytes) -> None:
        self.raw = raw
        self.prefix = prefix

    def readline(self, size: int = -1) -> bytes:
        if not self.prefix:
            return bytes(self.raw.readline(size))
        limit = len(self.prefix) if size < 0 else min(size, len(self.prefix))
        nl = self.prefix.find(b"\n", 0, limit)
        end = nl + 1 if nl >= 0 else limit
        line, self.prefix = self.prefix[:end], self.prefix[end:]
        if nl < 0 and not self.prefix and (size < 0 or len(line) < size):
            line += self.raw.readline(-1 if size < 0 else size - len(line))
        return line

    def read1(self, size: int = -1) -> bytes:
        """At most one read of the connection: the parked bytes first, if any are left."""
        if not self.prefix:
            return bytes(self.raw.read1(size))
        return self.read(len(self.prefix) if size < 0 else min(size, len(self.prefix)))

    def read(self, size: int = -1) -> bytes:
        head = self.prefix if size < 0 else self.prefix[:size]
        self.prefix = self.prefix[len(head):]
        if size < 0:
            return head + bytes(self.raw.read())
        return head + (bytes(self.raw.read(size - len(head))) if size > len(head) else b"")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class _HeaderBudget:
    """The handler's rfile while a request's line and headers are read: at most HEADER_BYTES of them
    (http.server alone allows 100 headers of 64 KiB each, per connection)."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.left = HEADER_BYTES

    def readline(self, size: int = -1) -> bytes:
        if self.left <= 0:
            raise ConnectionAbortedError("request headers too large")
        line: bytes = self.raw.readline(self.left if size < 0 else min(size, self.left))
        self.left -= len(line)
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # the kernel caps it at net.core.somaxconn; socketserver's default of 5 overflows under any burst
    request_queue_size = socket.SOMAXCONN
    # fail loudly on "port in use" rather than silently sharing it with another server
    allow_reuse_address = True
    allow_reuse_port = False
    dual_stack = False
    loop: ConnectionLoop         # the accept loop serving this server's connections
    metrics: MetricsServer       # the /metrics handler's (the same object as loop, for MetricsServer)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.dual_stack:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # skip HTTPServer.server_bind's getfqdn(), which can block on DNS
        socketserver.TCPServer.server_bind(self)
        # Linux hands a connection to accept() only once its first bytes arrive (or after this many
        # seconds): a flood of silent connections then waits in the kernel, not in front of a scraper,
        # which sends its request (or TLS hello) at once. nginx's `listen ... deferred`.
        with contextlib.suppress(AttributeError, OSError):
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, int(HEADER_TIMEOUT))
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def __init__(self, *a: Any, **kw: Any) -> None:
        self._conns: dict[int, _Conn] = {}
        # the idle ones, each dict in deadline order (its timeout is fixed), so that admitting, evicting and
        # reaping cost O(1) however many connections a flood opens: new connections that have not sent
        # their request headers yet, and keep-alive connections between requests
        self._waiting: OrderedDict[int, _Conn] = OrderedDict()
        self._kept: OrderedDict[int, _Conn] = OrderedDict()
        self._closing = 0
        self._conns_cv = threading.Condition()
        self._local = threading.local()
        self.max_connections = MAX_CONNECTIONS
        self.wake: Callable[[float], None] = lambda _deadline: None
        self.close_parked: Callable[[_Conn], None] = lambda _c: None
        super().__init__(*a, **kw)

    # --- the connection table (the accept loop admits and reaps, each connection's thread marks itself)

    def admit(self, request: socket.socket, address: Any) -> _Conn | None:
        """Register a new (parked) connection, making room when full by evicting the oldest connection that
        has not sent its request yet, else the oldest keep-alive one (a scraper reconnects; a client
        without credentials cannot keep a connection, see _Handler._authorized). None: no room (every
        slot is serving a request); the caller closes it."""
        with self._conns_cv:
            if len(self._conns) - self._closing >= self.max_connections:
                victims = self._waiting or self._kept
                if not victims:
                    return None
                self._kill(next(iter(victims.values())))
            # shut-down connections keep their fd until their thread closes it, within moments: a burst
            # of evictions may wait for that, so that the fds held stay under fd_bound()
            limit = fd_bound(self.max_connections)
            if not self._conns_cv.wait_for(lambda: len(self._conns) < limit, 1.0):
                return None
            c = _Conn(request.fileno(), time.monotonic() + HEADER_TIMEOUT, parked=request, address=address)
            self._conns[c.fd] = c
            self._waiting[c.fd] = c
        return c

    def refuse(self, request: socket.socket) -> None:
        """No room for `request` (see admit): close it. Over TLS nothing can be said before a handshake,
        which the accept loop does not do."""
        self.shutdown_request(request)

    def forget(self, c: _Conn) -> None:
        with self._conns_cv:
            self._waiting.pop(c.fd, None)
            self._kept.pop(c.fd, None)
            if self._conns.pop(c.fd, None) is not None and c.closing:
                self._closing -= 1
            self._conns_cv.notify_all()

    def current(self) -> _Conn | None:
        """The connection this (handler) thread serves."""
        c: _Conn | None = getattr(self._local, "conn", None)
        return c

    def drop(self, c: _Conn) -> None:
        with self._conns_cv:
            self._kill(c)

    def _kill(self, c: _Conn) -> None:
        self._waiting.pop(c.fd, None)
        self._kept.pop(c.fd, None)
        if c.parked is not None:
            self.close_parked(c)   # no thread yet: the accept loop (the caller) closes it itself
            return
        c.closing = True
        self._closing += 1
        _shutdown_fd(c.fd)

    def reap(self) -> float | None:
        """Shut down idle connections past their deadline; -> the next deadline (None: none pending)."""
        now = time.monotonic()
        nxt: float | None = None
        with self._conns_cv:
            for idle in (self._waiting, self._kept):
                while idle:
                    c = next(iter(idle.values()))
                    if c.deadline > now:
                        nxt = c.deadline if nxt is None else min(nxt, c.deadline)
                        break
                    self._kill(c)
        return nxt

    def mark_busy(self) -> None:
        c = self.current()
        if c is not None:
            with self._conns_cv:
                self._waiting.pop(c.fd, None)
                self._kept.pop(c.fd, None)

    def mark_idle(self) -> None:
        c = self.current()
        if c is None:
            return
        with self._conns_cv:
            if c.closing:
                return
            c.deadline = time.monotonic() + IDLE_TIMEOUT
            self._kept[c.fd] = c
        self.wake(c.deadline)

    def open_connections(self) -> int:
        with self._conns_cv:
            return len(self._conns)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(IO_TIMEOUT)
        # the TLS handshake and header/body writes are small segments: without this, Nagle plus the
        # peer's delayed ACK adds ~40 ms to every new TLS connection
        with contextlib.suppress(OSError):
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        fd = request.fileno()
        with self._conns_cv:
            conn = self._local.conn = self._conns.get(fd)
        ctx = self.loop.ssl_context
        tls: ssl.SSLSocket | None = None
        try:
            if ctx is None:
                self.RequestHandlerClass(request, client_address, self)  # type: ignore[arg-type]
            else:
                # handshake separately: a failing wrap_socket() closes the fd itself, before we deregister
                tls = ctx.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
                self._serve_tls(tls, client_address)
        finally:
            self._local.conn = None
            # deregister before the fd is closed (here for TLS, by shutdown_request for plain sockets), so a
            # new connection reusing the number is never mistaken for this one
            if conn is not None:
                self.forget(conn)
            if tls is not None:
                tls.close()

    def _serve_tls(self, tls: ssl.SSLSocket, client_address: Any) -> None:
        try:
            tls.do_handshake()
        except (ssl.SSLError, OSError):
            return   # plain HTTP on the TLS port, no/untrusted client certificate, timeout: drop
        if self.metrics.peer_allowed(tls):
            self.RequestHandlerClass(tls, client_address, self)  # type: ignore[arg-type]

    def close_connections(self) -> None:
        with self._conns_cv:
            for c in list(self._conns.values()):
                self._kill(c)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that hangs up mid-response is not worth a traceback on stderr
        log.debug("error serving %s", client_address, exc_info=True)


class UnixServer(_Server):
    """The same bounded server on a unix stream socket at `path`, created with `mode` (the umask is set
    around bind(): no moment at which the socket has looser permissions). A stale socket left by a
    killed server is replaced; a live one (another server answers) or anything that is not a socket is
    an error."""

    address_family = socket.AF_UNIX
    socket_mode = 0o600

    def server_bind(self) -> None:
        path = str(self.server_address)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            import stat

            if not stat.S_ISSOCK(st.st_mode):
                raise CgagentError(f"{path} exists and is not a socket", "move it away, then start again")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
                raise CgagentError(f"another process serves {path}", "stop it first (only one agent per state dir)")
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)   # left by a server that was killed
            finally:
                probe.close()
        old = os.umask(0o777 & ~self.socket_mode)
        try:
            self.socket.bind(path)
        finally:
            os.umask(old)
        self.bound = True
        self.server_address = path  # type: ignore[assignment]   # AF_UNIX addresses are paths
        self.server_name, self.server_port = "localhost", 0

    bound = False   # the path is ours to remove (not when bind() failed: it may be another server's)

    def server_close(self) -> None:
        super().server_close()
        if self.bound:
            with contextlib.suppress(OSError):
                os.unlink(str(self.server_address))


def _bind(family: socket.AddressFamily, addr: tuple[Any, ...], dual_stack: bool) -> _Server:
    cls = type("_BoundServer", (_Server,), {"address_family": family, "dual_stack": dual_stack})
    server: _Server = cls(addr, _Handler)
    return server


class BoundedHandler(BaseHTTPRequestHandler):
    """A handler for a _Server run by a ConnectionLoop: request headers within HEADER_BYTES, the bytes
    read while the connection was parked served first; `serving()` around each request keeps the
    connection table right (busy while serving, idle with a deadline between requests)."""

    protocol_version = "HTTP/1.1"
    server_version = "cgagent"
    sys_version = ""
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass   # no per-request access log

    def setup(self) -> None:
        super().setup()
        c = self.server.current()
        self._raw_rfile: Any = _Prefixed(self.rfile, c.head) if c is not None and c.head else self.rfile

    def handle_one_request(self) -> None:
        self.rfile = cast(Any, _HeaderBudget(self._raw_rfile))   # a fresh budget for each request on the connection
        super().handle_one_request()

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        self.server.mark_busy()
        try:
            yield
        finally:
            if not self.close_connection:
                self.server.mark_idle()


class _Handler(BoundedHandler):

    def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
              extra: list[tuple[str, str]] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        for k, v in extra or []:
            self.send_header(k, v)
        for k, v in self.server.metrics.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorized(self) -> bool:
        m = self.server.metrics
        if not m.users:
            return True
        verdict = m.authenticate(self.headers.get("Authorization"))
        if verdict == AUTH_OK:
            return True
        # a failed or refused attempt does not get to keep its connection for the next guess
        self.close_connection = True
        close = ("Connection", "close")
        if verdict == AUTH_BUSY:
            self._send(503, b"Too many authentication attempts at once, retry\n",
                       extra=[("Retry-After", "1"), close])
        else:
            self._send(401, b"Unauthorized\n", extra=[("WWW-Authenticate", f'Basic realm="{REALM}"'), close])
        return False

    def do_GET(self) -> None:
        with self.serving():
            self._get()

    def _get(self) -> None:
        if not self._authorized():
            return
        url = urlsplit(self.path)
        m = self.server.metrics
        if url.path == m.telemetry_path:
            self._metrics(parse_qs(url.query))
        elif url.path == "/healthz":
            self._send(200, b"ok\n")
        elif url.path == "/":
            self._send(200, m.index_html, "text/html; charset=utf-8")
        else:
            self._send(404, b"Not Found\n")

    do_HEAD = do_GET

    def _metrics(self, params: dict[str, list[str]]) -> None:
        from prometheus_client.exposition import choose_encoder, gzip_accepted

        registry: Any = self.server.metrics.registry
        accept = self.headers.get("Accept", "")
        render = getattr(registry, "render", None)
        stream = getattr(registry, "stream", None)
        gz = gzip_accepted(self.headers.get("Accept-Encoding", ""))
        if callable(stream) and "name[]" not in params and "openmetrics" not in accept and \
                self.command == "GET" and self.request_version == "HTTP/1.1":
            t0 = time.perf_counter()
            try:
                pieces = stream()
            except Exception as e:
                self._failed(e)
                return
            self._scraped(self._send_chunked(pieces, "text/plain; version=0.0.4; charset=utf-8", gz), t0)
            return
        encoder: Callable[[Any], bytes]
        if callable(render) and "name[]" not in params and "openmetrics" not in accept:
            # the agent's own text renderer: ~30x cheaper per sample than generate_latest
            encoder, content_type = (lambda _r: render()), "text/plain; version=0.0.4; charset=utf-8"
        else:
            encoder, content_type = choose_encoder(accept)
        if "name[]" in params and hasattr(registry, "restricted_registry"):
            registry = registry.restricted_registry(params["name[]"])
        t0 = time.perf_counter()
        try:
            body = encoder(registry)
        except Exception as e:
            self._failed(e)
            return
        self._scraped(len(body), t0)
        extra = []
        if gz:
            body = gzip.compress(body, compresslevel=6)
            extra.append(("Content-Encoding", "gzip"))
        self._send(200, body, content_type, extra)

    def _scraped(self, size: int, t0: float) -> None:
        peer = self.client_address[0] if isinstance(self.client_address, tuple) else "-"
        log.debug("scrape from %s: %d bytes in %.3f s", peer, size, time.perf_counter() - t0)

    def _failed(self, e: Exception) -> None:
        # collectors are meant to absorb their own errors; if one escapes, say so instead of a reset
        self._send(500, f"error collecting metrics: {type(e).__name__}: {e}\n".encode())
        log.error("scrape failed: %s: %s", type(e).__name__, e)

    def _send_chunked(self, pieces: Iterator[bytes], content_type: str, gz: bool) -> int:
        """200 with the body sent as it is made (chunked; gzip'ed on the way when asked): the agent
        never holds a whole exposition, its largest passing allocation at a thousand containers.
        -> the body's size before compression."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        if gz:
            self.send_header("Content-Encoding", "gzip")
        for k, v in self.server.metrics.headers.items():
            self.send_header(k, v)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        z = zlib.compressobj(6, zlib.DEFLATED, 31) if gz else None   # wbits 31: the gzip format
        size = 0
        for piece in pieces:
            size += len(piece)
            self._chunk(z.compress(piece) if z is not None else piece)
        if z is not None:
            self._chunk(z.flush())
        self.wfile.write(b"0\r\n\r\n")
        return size

    def _chunk(self, data: bytes) -> None:
        if data:   # an empty chunk would end the body
            self.wfile.write(b"%x\r\n" % len(data))
            self.wfile.write(data)
            self.wfile.write(b"\r\n")


AUTH_OK, AUTH_DENIED, AUTH_BUSY = "ok", "denied", "busy"


def _basic_credentials(header: str | None) -> tuple[str, bytes] | None:
    """`Basic base64(user:password)` -> (user, password); None when absent or malformed."""
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        raw = base64.b64decode(header[6:].strip(), validate=True)
        u, sep, password = raw.partition(b":")
        return (u.decode("utf-8"), password) if sep else None
    except (binascii.Error, ValueError):   # UnicodeDecodeError is a ValueError
        return None


class ConnectionLoop:
    """The accept loop of a _Server: connections parked in a selector until their request headers have
    arrived, the connection table's deadlines reaped without polling, shutdown without delay. Subclasses
    bind the server and call _serve()."""

    ssl_context: ssl.SSLContext | None = None
    thread_name = "cgagent-http"

    def _serve(self, httpd: _Server, max_connections: int | None) -> None:
        self._httpd = httpd
        httpd.loop = self
        self._stopped = threading.Event()
        self._stopped.set()
        self._closed = False
        self._close_lock = threading.Lock()
        self._loop_thread: threading.Thread | None = None
        self._thread: threading.Thread | None = None
        httpd.max_connections = max_connections or connection_bound()
        httpd.wake = self._wake_for
        httpd.close_parked = self._close_parked
        self._sel = selectors.DefaultSelector()
        self._wake_at = float("-inf")
        self._stopping = False
        # accept only when the selector says so, and never block in accept() if the client went away
        httpd.socket.setblocking(False)
        # the serve loop waits on the listening socket and this pipe, with no timeout: no idle wake-ups,
        # and shutdown() is immediate instead of up to socketserver's 0.5 s poll interval
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    @property
    def max_connections(self) -> int:
        return self._httpd.max_connections

    def open_connections(self) -> int:
        return self._httpd.open_connections()

    def start(self) -> Self:
        """Serve in a background daemon thread; returns self."""
        self._stopped.clear()
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until shutdown() is called (from another thread or from a signal
        handler); closes the server before returning."""
        self._stopped.clear()
        try:
            self._loop()
        finally:
            self._close()

    def _wake_for(self, deadline: float) -> None:
        """A connection got a deadline: wake the loop if it would sleep past it."""
        if deadline < self._wake_at:
            with contextlib.suppress(OSError):   # full pipe: the loop is awake already
                os.write(self._wake_w, b"t")

    def _loop(self) -> None:
        self._loop_thread = threading.current_thread()
        sel = self._sel
        try:
            sel.register(self._httpd.socket, selectors.EVENT_READ, "accept")
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            while True:
                # sleep until a connection's deadline, never polling: while the table is scanned any new
                # deadline wakes us (-inf), afterwards only one earlier than the next we know of
                self._wake_at = float("-inf")
                nxt = self._httpd.reap()
                self._wake_at = float("inf") if nxt is None else nxt
                timeout = None if nxt is None else max(0.0, nxt - time.monotonic())
                for key, _ev in sel.select(timeout):
                    if key.data == "wake":
                        with contextlib.suppress(OSError):
                            os.read(self._wake_r, 4096)
                        if self._stopping:
                            return
                    elif key.data == "accept":
                        self._accept_some()
                    else:
                        self._unpark(key.data)
        finally:
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(self._httpd.socket)
                sel.unregister(self._wake_r)
            self._stopped.set()

    def _accept_some(self) -> None:
        """Accept what the backlog holds (a bounded batch) and park each connection until it sends."""
        httpd = self._httpd
        for _ in range(64):
            try:
                request, client_address = httpd.get_request()
            except OSError:
                return   # backlog empty, or the client gave up between readiness and accept
            c = httpd.admit(request, client_address)
            if c is None:
                httpd.refuse(request)
                continue
            request.setblocking(False)
            self._sel.register(request, selectors.EVENT_READ, c)

    def _unpark(self, c: _Conn) -> None:
        """The connection has something to say: once it is a whole header block (or, with TLS, any byte of
        the handshake), hand it to its own thread (socketserver's _handle_request_noblock, with public
        methods only)."""
        httpd = self._httpd
        request = c.parked
        if request is None:
            # a stale event of this select() batch: an earlier key of the batch (an accept that needed
            # room) evicted and closed this connection
            return
        if self.ssl_context is None:
            try:
                data = request.recv(4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            c.head += data
            if not data or len(c.head) > HEADER_BYTES:
                httpd.drop(c)   # gone, or headers too large: nothing worth a thread
                return
            if b"\r\n\r\n" not in c.head and b"\n\n" not in c.head:
                return
        self._sel.unregister(request)
        c.parked = None   # parked connections are only ever touched by this (the accept loop's) thread
        request.setblocking(True)
        try:
            httpd.process_request(request, c.address)
        except Exception:
            httpd.forget(c)
            httpd.handle_error(request, c.address)
            httpd.shutdown_request(request)

    def _close_parked(self, c: _Conn) -> None:
        request = c.parked
        assert request is not None
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(request)
        c.parked = None
        self._httpd.forget(c)
        self._httpd.shutdown_request(request)

    def shutdown(self) -> None:
        """Stop accepting, wait for the serving loop to end, close the listening socket and drop open
        keep-alive connections. Idempotent. From a signal handler interrupting serve_forever() it only wakes
        the loop, and serve_forever() closes the server as it returns."""
        with self._close_lock:
            if self._closed:
                return
            self._stopping = True
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
        if self._loop_thread is threading.current_thread() and not self._stopped.is_set():
            return
        self._stopped.wait()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._close()

    def _close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._httpd.server_close()
            self._httpd.close_connections()
            self._sel.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


class MetricsServer(ConnectionLoop):
    """Serve `registry` (a prometheus_client CollectorRegistry or anything with collect()) on `listen`.

    `max_connections` defaults to connection_bound() (from the fd limit at construction)."""

    def __init__(self, registry: Collectable, listen: str = DEFAULT_LISTEN,
                 web_config: WebConfig | None = None, max_connections: int | None = None,
                 telemetry_path: str = "/metrics") -> None:
        import html

        self.registry = registry
        self.listen = listen
        self.telemetry_path = telemetry_path
        self.index_html = INDEX_HTML.format(path=html.escape(telemetry_path)).encode()
        self.web_config = web_config
        self.ssl_context: ssl.SSLContext | None = web_config.ssl_context() if web_config else None
        self.users: dict[str, bytes] = {
            u: h.encode() for u, h in (web_config.basic_auth_users if web_config else {}).items()}
        self.headers: dict[str, str] = web_config.response_headers() if web_config else {}
        self._allowed_sans = set(web_config.client_allowed_sans) if web_config else set()
        # successful checks, as HMACs of user and password under a per-process key: a scrape every few
        # seconds must not pay bcrypt (~100 ms+) each time, and the cache holds no password
        self._cache_key = os.urandom(32)
        self._auth_cache: set[bytes] = set()
        self._lock = threading.Lock()
        self._auth_slots = threading.BoundedSemaphore(AUTH_CONCURRENCY)
        self.bcrypt_checks = 0    # bcrypt computations done; for tests and debugging
        # unknown users are checked against this (of the highest configured cost), see authenticate()
        self._dummy_hash = b""
        if self.users:
            import bcrypt

            cost = max(int(h[4:6]) for h in self.users.values())
            self._dummy_hash = bcrypt.hashpw(os.urandom(16).hex().encode(), bcrypt.gensalt(cost))
        host, port = parse_listen(listen)
        family, addr = _resolve(host, port)
        try:
            try:
                self._httpd: _Server = _bind(family, addr, dual_stack=host == "")
            except OSError as e:
                if host != "" or family != socket.AF_INET6 or e.errno not in (errno.EAFNOSUPPORT,
                                                                                errno.EADDRNOTAVAIL):
                    raise
                # IPv6 disabled on this host: all addresses means all IPv4 addresses
                self._httpd = _bind(socket.AF_INET, ("0.0.0.0", port), dual_stack=False)
        except OSError as e:
            why = {errno.EADDRINUSE: "the port is already in use",
                   errno.EADDRNOTAVAIL: "the address is not on this machine",
                   errno.EACCES: "permission denied"}.get(e.errno or 0, e.strerror or str(e))
            raise CgagentError(f"cannot listen on {listen} ({why})",
                               "choose another --web.listen-address or stop the process using it") from None
        self._httpd.metrics = self
        self._serve(self._httpd, max_connections)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def url(self) -> str:
        """Base URL to reach this server (an all-addresses bind is reached through loopback)."""
        scheme = "https" if self.ssl_context else "http"
        host = self.host
        if host in ("::", "0.0.0.0"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"

    def authenticate(self, header: str | None) -> str:
        """AUTH_OK when `header` is `Basic base64(user:password)` for a configured user and its password,
        AUTH_BUSY when no bcrypt slot freed up within AUTH_WAIT, else AUTH_DENIED.

        No header, another scheme, bad base64, no colon, an empty or over-long password: denied without
        bcrypt, as these reveal nothing about the configured users. A well-formed attempt for an unknown
        user is checked against a dummy hash of the same cost: answering it faster would tell an attacker
        which user names exist, and it buys no protection against load, since anyone can make the server
        pay bcrypt by guessing a password for a user that does exist. What bounds that load is the slot
        semaphore, for known and unknown users alike.
        """
        import bcrypt

        creds = _basic_credentials(header)
        if creds is None:
            return AUTH_DENIED
        user, password = creds
        if not password or len(password) > BCRYPT_MAX_PASSWORD:
            return AUTH_DENIED   # the config refuses empty passwords; bcrypt would refuse long ones
        key = hmac.new(self._cache_key, user.encode() + b"\0" + password, hashlib.sha256).digest()
        with self._lock:
            if key in self._auth_cache:
                return AUTH_OK
        hashed = self.users.get(user)
        if not self._auth_slots.acquire(timeout=AUTH_WAIT):
            return AUTH_BUSY
        try:
            with self._lock:
                self.bcrypt_checks += 1
            ok = bool(bcrypt.checkpw(password, hashed or self._dummy_hash))
        except ValueError:   # a malformed hash
            ok = False
        finally:
            self._auth_slots.release()
        if not ok or hashed is None:
            return AUTH_DENIED
        with self._lock:
            if len(self._auth_cache) >= AUTH_CACHE_SIZE:
                self._auth_cache.clear()
            self._auth_cache.add(key)
        return AUTH_OK

    def peer_allowed(self, tls: ssl.SSLSocket) -> bool:
        """client_allowed_sans: the verified client certificate must carry one of the listed SANs."""
        if not self._allowed_sans:
            return True
        cert = tls.getpeercert() or {}
        sans = {str(entry[1]) for entry in cert.get("subjectAltName", ())}
        return bool(sans & self._allowed_sans)

