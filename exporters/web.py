"""The HTTP(S) endpoint Prometheus scrapes: /metrics, /healthz and a tiny index page.

TLS, client certificates, basic auth and extra response headers come from the exporter-toolkit web config
(exporters.webconfig). The TLS handshake runs in the per-connection thread, never in the accept loop, so a
client that connects and stays silent cannot stall other scrapes.
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
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, urlsplit

from cgagent.errors import CgagentError

if TYPE_CHECKING:
    from .webconfig import WebConfig

log = logging.getLogger("cgagent.web")

DEFAULT_PORT = 9730
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"
REALM = "cgagent"
# idle keep-alive connections (Prometheus reuses one per target) and stuck handshakes give up after this
CONNECTION_TIMEOUT = 60.0

INDEX_HTML = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>cgagent</title></head>
<body><h1>cgagent</h1>
<p><a href="/metrics">Metrics</a> &middot; <a href="/healthz">Health</a></p></body></html>
"""


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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # fail loudly on "port in use" rather than silently sharing it with another server
    allow_reuse_address = True
    allow_reuse_port = False
    dual_stack = False
    metrics: MetricsServer

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.dual_stack:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # skip HTTPServer.server_bind's getfqdn(), which can block on DNS
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def __init__(self, *a: Any, **kw: Any) -> None:
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(*a, **kw)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(CONNECTION_TIMEOUT)
        # the TLS handshake and header/body writes are small segments: without this, Nagle plus the
        # peer's delayed ACK adds ~40 ms to every new TLS connection
        with contextlib.suppress(OSError):
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._conns_lock:
            self._conns.add(request)
        try:
            self._serve_connection(request, client_address)
        finally:
            with self._conns_lock:
                self._conns.discard(request)

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        ctx = self.metrics.ssl_context
        if ctx is None:
            self.RequestHandlerClass(request, client_address, self)  # type: ignore[arg-type]
            return
        try:
            tls = ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return   # plain HTTP on the TLS port, no/untrusted client certificate, timeout: drop
        try:
            if not self.metrics.peer_allowed(tls):
                return
            self.RequestHandlerClass(tls, client_address, self)  # type: ignore[arg-type]
        finally:
            tls.close()

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that hangs up mid-response is not worth a traceback on stderr
        log.debug("error serving %s", client_address, exc_info=True)


def _bind(family: socket.AddressFamily, addr: tuple[Any, ...], dual_stack: bool) -> _Server:
    cls = type("_BoundServer", (_Server,), {"address_family": family, "dual_stack": dual_stack})
    server: _Server = cls(addr, _Handler)
    return server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "cgagent"
    sys_version = ""
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass   # no per-request access log

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
        if m.check_basic_auth(self.headers.get("Authorization")):
            return True
        self._send(401, b"Unauthorized\n", extra=[("WWW-Authenticate", f'Basic realm="{REALM}"')])
        return False

    def do_GET(self) -> None:
        if not self._authorized():
            return
        url = urlsplit(self.path)
        if url.path == "/metrics":
            self._metrics(parse_qs(url.query))
        elif url.path == "/healthz":
            self._send(200, b"ok\n")
        elif url.path == "/":
            self._send(200, INDEX_HTML, "text/html; charset=utf-8")
        else:
            self._send(404, b"Not Found\n")

    do_HEAD = do_GET

    def _metrics(self, params: dict[str, list[str]]) -> None:
        from prometheus_client.exposition import choose_encoder, gzip_accepted

        registry: Any = self.server.metrics.registry
        accept = self.headers.get("Accept", "")
        render = getattr(registry, "render", None)
        encoder: Callable[[Any], bytes]
        if callable(render) and "name[]" not in params and "openmetrics" not in accept:
            # the agent's own text renderer: ~30x cheaper per sample than generate_latest
            encoder, content_type = (lambda _r: render()), "text/plain; version=0.0.4; charset=utf-8"
        else:
            encoder, content_type = choose_encoder(accept)
        if "name[]" in params and hasattr(registry, "restricted_registry"):
            registry = registry.restricted_registry(params["name[]"])
        try:
            body = encoder(registry)
        except Exception as e:
            # collectors are meant to absorb their own errors; if one escapes, say so instead of a reset
            self._send(500, f"error collecting metrics: {type(e).__name__}: {e}\n".encode())
            return
        extra = []
        if gzip_accepted(self.headers.get("Accept-Encoding", "")):
            body = gzip.compress(body, compresslevel=6)
            extra.append(("Content-Encoding", "gzip"))
        self._send(200, body, content_type, extra)


class MetricsServer:
    """Serve `registry` (a prometheus_client CollectorRegistry or anything with collect()) on `listen`."""

    def __init__(self, registry: Collectable, listen: str = DEFAULT_LISTEN,
                 web_config: WebConfig | None = None) -> None:
        self.registry = registry
        self.listen = listen
        self.web_config = web_config
        self.ssl_context: ssl.SSLContext | None = web_config.ssl_context() if web_config else None
        self.users: dict[str, bytes] = {
            u: h.encode() for u, h in (web_config.basic_auth_users if web_config else {}).items()}
        self.headers: dict[str, str] = web_config.response_headers() if web_config else {}
        self._allowed_sans = set(web_config.client_allowed_sans) if web_config else set()
        # successful checks, keyed by user, valued by a keyed digest of the password: a scrape every few
        # seconds must not pay bcrypt (~100 ms+) each time. The random key keeps the cache useless to
        # anyone reading process memory for offline guessing.
        self._cache_key = os.urandom(32)
        self._auth_cache: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._dummy_hash: bytes | None = None
        self._stopped = threading.Event()
        self._stopped.set()
        self._closed = False
        self._close_lock = threading.Lock()
        self._loop_thread: threading.Thread | None = None
        self._thread: threading.Thread | None = None
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
                               "choose another --listen address or stop the process using it") from None
        self._httpd.metrics = self
        # accept only when the selector says so, and never block in accept() if the client went away
        self._httpd.socket.setblocking(False)
        # the serve loop waits on the listening socket and this pipe, with no timeout: no idle wake-ups,
        # and shutdown() is immediate instead of up to socketserver's 0.5 s poll interval
        self._wake_r, self._wake_w = os.pipe()

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

    def check_basic_auth(self, header: str | None) -> bool:
        """True when `header` is `Basic base64(user:password)` for a configured user and its password."""
        import bcrypt

        user, password = "", b""
        if header and header[:6].lower() == "basic ":
            try:
                raw = base64.b64decode(header[6:].strip(), validate=True)
            except (binascii.Error, ValueError):
                raw = b""
            u, sep, password = raw.partition(b":")
            if sep:
                user = u.decode("utf-8", "replace")
        digest = hmac.new(self._cache_key, password, hashlib.sha256).digest()
        with self._lock:
            cached = self._auth_cache.get(user)
        if cached is not None and hmac.compare_digest(cached, digest):
            return True
        hashed = self.users.get(user)
        ok_user = hashed is not None
        if hashed is None:
            # check against a hash of the same cost, so response time does not reveal which names exist
            if self._dummy_hash is None:
                cost = int(next(iter(self.users.values()))[4:6]) if self.users else 4
                self._dummy_hash = bcrypt.hashpw(b"cgagent-no-such-user", bcrypt.gensalt(cost))
            hashed = self._dummy_hash
        try:
            ok = bool(bcrypt.checkpw(password, hashed))
        except ValueError:   # bcrypt>=5 refuses passwords over 72 bytes; malformed hash
            ok = False
        if ok and ok_user:
            with self._lock:
                self._auth_cache[user] = digest
            return True
        return False

    def peer_allowed(self, tls: ssl.SSLSocket) -> bool:
        """client_allowed_sans: the verified client certificate must carry one of the listed SANs."""
        if not self._allowed_sans:
            return True
        cert = tls.getpeercert() or {}
        sans = {str(entry[1]) for entry in cert.get("subjectAltName", ())}
        return bool(sans & self._allowed_sans)

    def start(self) -> MetricsServer:
        """Serve in a background daemon thread; returns self."""
        self._stopped.clear()
        self._thread = threading.Thread(target=self._loop, name="cgagent-http", daemon=True)
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

    def _loop(self) -> None:
        self._loop_thread = threading.current_thread()
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(self._httpd.socket, selectors.EVENT_READ, "accept")
                sel.register(self._wake_r, selectors.EVENT_READ, "wake")
                while True:
                    for key, _ev in sel.select():
                        if key.data == "wake":
                            return
                        self._accept_one()
        finally:
            self._stopped.set()

    def _accept_one(self) -> None:
        """Accept one connection and hand it to a new thread (socketserver's _handle_request_noblock, with
        public methods only)."""
        httpd = self._httpd
        try:
            request, client_address = httpd.get_request()
        except OSError:
            return   # the client gave up between readiness and accept
        try:
            httpd.process_request(request, client_address)
        except Exception:
            httpd.handle_error(request, client_address)
            httpd.shutdown_request(request)

    def shutdown(self) -> None:
        """Stop accepting, wait for the serving loop to end, close the listening socket and drop open
        keep-alive connections. Idempotent. From a signal handler interrupting serve_forever() it only wakes
        the loop, and serve_forever() closes the server as it returns."""
        with self._close_lock:
            if self._closed:
                return
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
            os.close(self._wake_r)
            os.close(self._wake_w)

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
