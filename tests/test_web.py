"""The exporter's HTTP side: listen addresses, /metrics, /healthz, TLS, client certificates, basic auth and
the exporter-toolkit web config file, against real sockets, real OpenSSL-made certificates and a real
Prometheus."""

from __future__ import annotations

import base64
import gzip
import http.client
import os
import signal
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import bcrypt
import pytest
from prometheus_client import CollectorRegistry, Counter

from cgagent.errors import CgagentError
from exporters import web as webmod
from exporters.web import DEFAULT_LISTEN, MetricsServer, parse_listen
from exporters.webconfig import WebConfig, load_web_config
from tests.prom import JOB, PROMTOOL, PromServer

PASSWORD = "s3cret pass"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


@dataclass
class Certs:
    dir: str
    ca: str
    server_crt: str
    server_key: str
    client_crt: str
    client_key: str
    other_ca: str
    rogue_crt: str        # client cert signed by other_ca
    rogue_key: str


def _openssl(*args: str, cwd: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(d: str, name: str, ca: str, subj: str, ext: str) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subj, cwd=d)
    with open(os.path.join(d, f"{name}.ext"), "w") as f:
        f.write(ext)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = str(tmp_path_factory.mktemp("certs"))
    for ca in ("ca", "otherca"):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2", "-subj", f"/CN=cgagent test {ca}",
                 cwd=d)
    _issue(d, "server", "ca", "/CN=127.0.0.1",
           "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _issue(d, "client", "ca", "/CN=prometheus",
           "subjectAltName=DNS:prometheus\nextendedKeyUsage=clientAuth\n")
    _issue(d, "rogue", "otherca", "/CN=prometheus",
           "subjectAltName=DNS:prometheus\nextendedKeyUsage=clientAuth\n")
    def j(n: str) -> str:
        return os.path.join(d, n)

    return Certs(d, j("ca.crt"), j("server.crt"), j("server.key"), j("client.crt"), j("client.key"),
                 j("otherca.crt"), j("rogue.crt"), j("rogue.key"))


def _write(tmp: Any, text: str, name: str = "web.yml") -> str:
    p = os.path.join(str(tmp), name)
    with open(p, "w") as f:
        f.write(text)
    return p


@pytest.fixture
def registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    Counter("cgagent_test_requests", "A counter for the web tests", registry=reg).inc(7)
    return reg


@pytest.fixture
def serve(registry: CollectorRegistry) -> Iterator[Callable[..., MetricsServer]]:
    servers: list[MetricsServer] = []

    def start(web_config: WebConfig | None = None, listen: str = "127.0.0.1:0") -> MetricsServer:
        s = MetricsServer(registry, listen, web_config).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.shutdown()


def _client_ctx(certs: Certs, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=certs.ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def get(srv: MetricsServer, path: str = "/metrics", auth: tuple[str, str] | None = None,
        ctx: ssl.SSLContext | None = None, headers: dict[str, str] | None = None,
        host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    h = dict(headers or {})
    if auth:
        h["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    conn: http.client.HTTPConnection
    if ctx is not None:
        conn = http.client.HTTPSConnection(host, srv.port, context=ctx, timeout=10)
    else:
        conn = http.client.HTTPConnection(host, srv.port, timeout=10)
    try:
        conn.request("GET", path, headers=h)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _tls_config(tmp: Any, certs: Certs, extra: str = "", users: bool = True) -> WebConfig:
    text = f"tls_server_config:\n  cert_file: {certs.server_crt}\n  key_file: {certs.server_key}\n{extra}"
    if users:
        text += f"basic_auth_users:\n  prometheus: '{HASH}'\n"
    return load_web_config(_write(tmp, text))


# --- plain HTTP ---------------------------------------------------------------------------------------

def test_default_listen_is_loopback_9730() -> None:
    assert DEFAULT_LISTEN == "127.0.0.1:9730"
    assert parse_listen(DEFAULT_LISTEN) == ("127.0.0.1", 9730)


def test_metrics_healthz_index_and_404(serve: Callable[..., MetricsServer]) -> None:
    srv = serve()
    code, hdrs, body = get(srv, "/metrics")
    assert code == 200
    assert hdrs["content-type"].startswith("text/plain; version=0.0.4")
    assert b"cgagent_test_requests_total 7.0" in body
    assert get(srv, "/healthz")[:1] == (200,) and get(srv, "/healthz")[2] == b"ok\n"
    code, hdrs, body = get(srv, "/")
    assert code == 200 and b'href="/metrics"' in body and hdrs["content-type"].startswith("text/html")
    assert get(srv, "/nope")[0] == 404


def test_openmetrics_and_gzip_negotiation(serve: Callable[..., MetricsServer]) -> None:
    srv = serve()
    code, hdrs, body = get(srv, headers={"Accept": "application/openmetrics-text; version=1.0.0",
                                         "Accept-Encoding": "gzip"})
    assert code == 200
    assert hdrs["content-type"].startswith("application/openmetrics-text")
    assert hdrs["content-encoding"] == "gzip"
    text = gzip.decompress(body)
    assert b"cgagent_test_requests_total 7.0" in text and text.endswith(b"# EOF\n")


def test_failing_collector_is_500_and_server_survives(registry: CollectorRegistry,
                                                      serve: Callable[..., MetricsServer]) -> None:
    class Broken:
        def collect(self) -> Any:
            raise RuntimeError("boom")

    registry.register(Broken())
    srv = serve()
    code, _h, body = get(srv)
    assert code == 500 and b"RuntimeError: boom" in body
    assert get(srv, "/healthz")[0] == 200


def test_head_has_no_body(serve: Callable[..., MetricsServer]) -> None:
    srv = serve()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request("HEAD", "/metrics")
        r = conn.getresponse()
        assert r.status == 200 and int(r.getheader("Content-Length") or 0) > 0 and r.read() == b""
    finally:
        conn.close()


def test_name_filter(serve: Callable[..., MetricsServer], registry: CollectorRegistry) -> None:
    Counter("cgagent_other", "Another counter", registry=registry)
    srv = serve()
    _c, _h, body = get(srv, "/metrics?name[]=cgagent_other_total")
    assert b"cgagent_other_total" in body and b"cgagent_test_requests" not in body


def test_keepalive_serves_several_requests_on_one_connection(serve: Callable[..., MetricsServer]) -> None:
    srv = serve()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        for _ in range(3):
            conn.request("GET", "/healthz")
            r = conn.getresponse()
            assert (r.status, r.read()) == (200, b"ok\n")
    finally:
        conn.close()


def test_listen_variants(serve: Callable[..., MetricsServer]) -> None:
    everywhere = serve(listen=":0")
    assert get(everywhere, "/healthz")[0] == 200                       # via IPv4 loopback
    if socket.has_ipv6:
        assert get(everywhere, "/healthz", host="::1")[0] == 200       # and IPv6
        v6 = serve(listen="[::1]:0")
        assert v6.host == "::1" and get(v6, "/healthz", host="::1")[0] == 200


@pytest.mark.parametrize("listen", ["9730", "127.0.0.1:99999", "::1:9730", "[::1]9730", "[nothost]:1",
                                    "127.0.0.1:http"])
def test_bad_listen_address(listen: str, registry: CollectorRegistry) -> None:
    with pytest.raises(CgagentError) as e:
        MetricsServer(registry, listen)
    assert "\n" not in str(e.value) and listen in str(e.value)


def test_port_in_use_is_one_line_error(serve: Callable[..., MetricsServer], registry: CollectorRegistry,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    first = serve()
    # Track the sockets the failing server makes (counting /proc/self/fd would also count what other
    # threads of this test process open meanwhile): every one must be closed again.
    created: list[socket.socket] = []

    class Tracking(socket.socket):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            created.append(self)

    monkeypatch.setattr(socket, "socket", Tracking)
    with pytest.raises(CgagentError) as e:
        MetricsServer(registry, f"127.0.0.1:{first.port}")
    monkeypatch.undo()
    assert "already in use" in str(e.value) and "\n" not in str(e.value)
    assert created and all(s.fileno() == -1 for s in created)   # nothing left open by the failed bind


def test_address_not_on_machine(registry: CollectorRegistry) -> None:
    with pytest.raises(CgagentError, match="not on this machine"):
        MetricsServer(registry, "192.0.2.1:0")


def test_shutdown_frees_port_and_closes_keepalive(registry: CollectorRegistry) -> None:
    srv = MetricsServer(registry, "127.0.0.1:0").start()
    port = srv.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/healthz")
    assert conn.getresponse().read() == b"ok\n"
    srv.shutdown()
    # the idle keep-alive connection was shut down by the server, not left to its timeout
    with pytest.raises((http.client.HTTPException, OSError)):
        conn.request("GET", "/healthz")
        conn.getresponse()
    conn.close()
    MetricsServer(registry, f"127.0.0.1:{port}").shutdown()


def test_serve_forever_stops_on_signal_handler_shutdown(registry: CollectorRegistry) -> None:
    """The `cgagent serve` shape: serve_forever() in the main thread, SIGTERM-style handler calls
    shutdown(); serve_forever() returns and the port is closed."""
    srv = MetricsServer(registry, "127.0.0.1:0")
    port = srv.port
    answered: list[int] = []

    def client() -> None:
        answered.append(get(srv, "/healthz")[0])   # proves the loop is serving
        os.kill(os.getpid(), signal.SIGUSR1)

    old = signal.signal(signal.SIGUSR1, lambda *_: srv.shutdown())
    t = threading.Thread(target=client)
    try:
        t.start()
        srv.serve_forever()
    finally:
        signal.signal(signal.SIGUSR1, old)
        t.join()
    assert answered == [200]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    srv.shutdown()   # idempotent


def test_shutdown_from_other_thread_ends_serve_forever(registry: CollectorRegistry) -> None:
    srv = MetricsServer(registry, "127.0.0.1:0")
    t = threading.Thread(target=srv.serve_forever)
    t.start()
    assert get(srv, "/healthz")[0] == 200
    srv.shutdown()
    t.join(10)
    assert not t.is_alive()


# --- basic auth ---------------------------------------------------------------------------------------

@pytest.fixture
def auth_server(serve: Callable[..., MetricsServer], tmp_path: Any) -> MetricsServer:
    cfg = load_web_config(_write(tmp_path, f"basic_auth_users:\n  prometheus: {HASH}\n"))
    return serve(cfg)


def test_no_credentials_is_401(auth_server: MetricsServer) -> None:
    code, hdrs, body = get(auth_server)
    assert code == 401
    assert hdrs["www-authenticate"] == 'Basic realm="cgagent"'
    assert b"cgagent_test_requests" not in body


@pytest.mark.parametrize("auth", [("prometheus", "wrong"), ("nobody", PASSWORD), ("prometheus", ""),
                                  ("prometheus", PASSWORD + "x"), ("prometheus", "x" * 100)])
def test_wrong_credentials_are_401(auth_server: MetricsServer, auth: tuple[str, str]) -> None:
    code, hdrs, _ = get(auth_server, auth=auth)
    assert code == 401 and hdrs["www-authenticate"] == 'Basic realm="cgagent"'


@pytest.mark.parametrize("header", ["Bearer abc", "Basic !!!notbase64", "Basic " + base64.b64encode(b"nocolon")
                                    .decode()])
def test_malformed_authorization_is_401(auth_server: MetricsServer, header: str) -> None:
    assert get(auth_server, headers={"Authorization": header})[0] == 401


def test_right_credentials_get_metrics_and_healthz(auth_server: MetricsServer) -> None:
    code, _, body = get(auth_server, auth=("prometheus", PASSWORD))
    assert code == 200 and b"cgagent_test_requests_total 7.0" in body
    assert get(auth_server, "/healthz", auth=("prometheus", PASSWORD))[:3:2] == (200, b"ok\n")
    assert get(auth_server, "/healthz")[0] == 401


def test_htpasswd_2y_hash_is_accepted(serve: Callable[..., MetricsServer], tmp_path: Any) -> None:
    # `htpasswd -nB` writes $2y$ hashes; exporter-toolkit accepts them
    h2y = "$2y$" + HASH[4:]
    srv = serve(load_web_config(_write(tmp_path, f"basic_auth_users:\n  alice: {h2y}\n")))
    assert get(srv, auth=("alice", PASSWORD))[0] == 200
    assert get(srv, auth=("alice", "nope"))[0] == 401


def test_successful_check_is_cached(auth_server: MetricsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = bcrypt.checkpw

    def counting(pw: bytes, h: bytes) -> bool:
        calls.append(pw)
        return bool(real(pw, h))

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    for _ in range(3):
        assert get(auth_server, auth=("prometheus", PASSWORD))[0] == 200
    assert len(calls) == 1
    # a wrong password is never answered from the cache
    assert get(auth_server, auth=("prometheus", "wrong"))[0] == 401
    assert len(calls) == 2


# --- TLS ----------------------------------------------------------------------------------------------

def test_tls_right_credentials(serve: Callable[..., MetricsServer], tmp_path: Any, certs: Certs) -> None:
    srv = serve(_tls_config(tmp_path, certs))
    assert srv.url.startswith("https://127.0.0.1:")
    code, _, body = get(srv, auth=("prometheus", PASSWORD), ctx=_client_ctx(certs))
    assert code == 200 and b"cgagent_test_requests_total" in body
    assert get(srv, auth=("prometheus", "wrong"), ctx=_client_ctx(certs))[0] == 401


def test_plain_http_to_tls_port_fails(serve: Callable[..., MetricsServer], tmp_path: Any,
                                      certs: Certs) -> None:
    srv = serve(_tls_config(tmp_path, certs))
    with pytest.raises((http.client.HTTPException, OSError)):
        get(srv, auth=("prometheus", PASSWORD))
    # the server survives the bad client
    assert get(srv, auth=("prometheus", PASSWORD), ctx=_client_ctx(certs))[0] == 200


def test_silent_client_does_not_block_others(serve: Callable[..., MetricsServer], tmp_path: Any,
                                             certs: Certs) -> None:
    srv = serve(_tls_config(tmp_path, certs, users=False))
    with socket.create_connection(("127.0.0.1", srv.port)):   # connects, never starts the handshake
        assert get(srv, "/healthz", ctx=_client_ctx(certs))[0] == 200


def test_require_and_verify_client_cert(serve: Callable[..., MetricsServer], tmp_path: Any,
                                        certs: Certs) -> None:
    srv = serve(_tls_config(tmp_path, certs, f"  client_auth_type: RequireAndVerifyClientCert\n"
                                             f"  client_ca_file: {certs.ca}\n"))
    with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
        get(srv, auth=("prometheus", PASSWORD), ctx=_client_ctx(certs))
    with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
        get(srv, auth=("prometheus", PASSWORD), ctx=_client_ctx(certs, certs.rogue_crt, certs.rogue_key))
    code, _, body = get(srv, auth=("prometheus", PASSWORD),
                        ctx=_client_ctx(certs, certs.client_crt, certs.client_key))
    assert code == 200 and b"cgagent_test_requests_total" in body


def test_verify_client_cert_if_given(serve: Callable[..., MetricsServer], tmp_path: Any,
                                     certs: Certs) -> None:
    srv = serve(_tls_config(tmp_path, certs, f"  client_auth_type: VerifyClientCertIfGiven\n"
                                             f"  client_ca_file: {certs.ca}\n", users=False))
    assert get(srv, "/healthz", ctx=_client_ctx(certs))[0] == 200
    assert get(srv, "/healthz", ctx=_client_ctx(certs, certs.client_crt, certs.client_key))[0] == 200
    with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
        get(srv, "/healthz", ctx=_client_ctx(certs, certs.rogue_crt, certs.rogue_key))


def test_client_allowed_sans(serve: Callable[..., MetricsServer], tmp_path: Any, certs: Certs) -> None:
    base = (f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {certs.ca}\n"
            "  client_allowed_sans: [{}]\n")
    ok = serve(_tls_config(tmp_path, certs, base.format("prometheus"), users=False))
    assert get(ok, "/healthz", ctx=_client_ctx(certs, certs.client_crt, certs.client_key))[0] == 200
    denied = serve(_tls_config(tmp_path, certs, base.format("someone-else"), users=False))
    with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
        get(denied, "/healthz", ctx=_client_ctx(certs, certs.client_crt, certs.client_key))


def test_min_version_tls13_refuses_tls12(serve: Callable[..., MetricsServer], tmp_path: Any,
                                         certs: Certs) -> None:
    srv = serve(_tls_config(tmp_path, certs, "  min_version: TLS13\n", users=False))
    ctx = _client_ctx(certs)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
        get(srv, "/healthz", ctx=ctx)
    assert get(srv, "/healthz", ctx=_client_ctx(certs))[0] == 200


@pytest.mark.parametrize("auth_type", ["RequestClientCert", "NoClientCert", "''"])
def test_client_auth_types_without_verification(serve: Callable[..., MetricsServer], tmp_path: Any,
                                                certs: Certs, auth_type: str) -> None:
    srv = serve(_tls_config(tmp_path, certs, f"  client_auth_type: {auth_type}\n", users=False))
    assert get(srv, "/healthz", ctx=_client_ctx(certs))[0] == 200
    assert get(srv, "/healthz", ctx=_client_ctx(certs, certs.client_crt, certs.client_key))[0] == 200


def test_custom_headers(serve: Callable[..., MetricsServer], tmp_path: Any) -> None:
    cfg = load_web_config(_write(tmp_path, "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
                                           "    Strict-Transport-Security: max-age=31536000\n"))
    _c, hdrs, _b = get(serve(cfg), "/healthz")
    assert hdrs["x-frame-options"] == "deny" and hdrs["strict-transport-security"] == "max-age=31536000"


def test_relative_paths_resolve_against_config_dir(serve: Callable[..., MetricsServer], certs: Certs) -> None:
    p = _write(certs.dir, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n", "rel.yml")
    assert get(serve(load_web_config(p)), "/healthz", ctx=_client_ctx(certs))[0] == 200


# --- broken config files: one line naming file, field and fix -----------------------------------------

def _broken_cases(c: Certs) -> list[tuple[str, str, list[str]]]:
    tls = f"tls_server_config:\n  cert_file: {c.server_crt}\n  key_file: {c.server_key}\n"
    return [
        ("yaml", "basic_auth_users:\n  a: [unclosed\n", ["YAML syntax error", "line "]),
        ("unknown top", "basic_auth_user:\n  a: b\n", ["basic_auth_user", "unknown key", "basic_auth_users"]),
        ("unknown tls", tls + "  cert_flie: x\n", ["tls_server_config.cert_flie", "unknown key", "cert_file"]),
        ("inline cert", tls + "  cert: x\n", ["tls_server_config.cert", "not supported", "cert_file"]),
        ("bad hash", "basic_auth_users:\n  prometheus: plaintext\n",
         ["basic_auth_users.prometheus", "not a bcrypt hash"]),
        ("missing cert", f"tls_server_config:\n  cert_file: /nonexistent/x.crt\n  key_file: {c.server_key}\n",
         ["tls_server_config.cert_file", "/nonexistent/x.crt", "No such file"]),
        ("cert not pem", f"tls_server_config:\n  cert_file: {c.server_key}\n  key_file: {c.server_key}\n",
         ["tls_server_config.cert_file", "no PEM certificate"]),
        ("key mismatch", f"tls_server_config:\n  cert_file: {c.server_crt}\n  key_file: {c.client_key}\n",
         ["tls_server_config.key_file", "does not match"]),
        ("no key", f"tls_server_config:\n  cert_file: {c.server_crt}\n", ["tls_server_config.key_file",
                                                                         "required"]),
        ("needs ca", tls + "  client_auth_type: RequireAndVerifyClientCert\n",
         ["tls_server_config.client_ca_file", "RequireAndVerifyClientCert"]),
        ("ca without auth", tls + f"  client_ca_file: {c.ca}\n", ["client_auth_type", "client_ca_file"]),
        ("bad auth type", tls + "  client_auth_type: Sometimes\n",
         ["tls_server_config.client_auth_type", "'Sometimes'", "RequireAndVerifyClientCert"]),
        ("unsupported auth", tls + "  client_auth_type: RequireAnyClientCert\n",
         ["RequireAnyClientCert", "not supported"]),
        ("bad version", tls + "  min_version: TLS14\n", ["tls_server_config.min_version", "TLS13"]),
        ("bad cipher", tls + "  cipher_suites: [TLS_FOO]\n", ["tls_server_config.cipher_suites", "TLS_FOO"]),
        ("bad header", "http_server_config:\n  headers:\n    Content-Type: x\n",
         ["http_server_config.headers.Content-Type", "cannot be configured"]),
        ("not mapping", "- a\n- b\n", ["top level", "mapping"]),
        ("users not mapping", "basic_auth_users: [a]\n", ["basic_auth_users", "mapping"]),
    ]


@pytest.mark.parametrize("case", range(18))
def test_broken_config_is_one_line_error(case: int, tmp_path: Any, certs: Certs) -> None:
    cases = _broken_cases(certs)
    assert len(cases) == 18
    _name, text, needles = cases[case]
    path = _write(tmp_path, text)
    with pytest.raises(CgagentError) as e:
        load_web_config(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(path + ": "), msg
    assert e.value.fix, msg
    for n in needles:
        assert n in msg, (n, msg)


# Where cgagent is deliberately stricter than Prometheus' own checker (promtool 2.42's exporter-toolkit).
STRICTER_THAN_PROMTOOL = {"needs ca", "unsupported auth"}


def _promtool_web_ok(path: str) -> bool:
    return subprocess.run([PROMTOOL, "check", "web-config", path], capture_output=True).returncode == 0


def test_broken_configs_are_broken_for_promtool_too(tmp_path: Any, certs: Certs) -> None:
    """Same file format as the official exporters: what we reject, `promtool check web-config` rejects."""
    for name, text, _ in _broken_cases(certs):
        if name not in STRICTER_THAN_PROMTOOL:
            assert not _promtool_web_ok(_write(tmp_path, text)), name


def test_valid_configs_agree_with_promtool(tmp_path: Any, certs: Certs) -> None:
    tls = f"tls_server_config:\n  cert_file: {certs.server_crt}\n  key_file: {certs.server_key}\n"
    good = {
        "tls": tls,
        "tls+auth": tls + f"basic_auth_users:\n  prometheus: {HASH}\n",
        "mtls": tls + f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {certs.ca}\n",
        "if given": tls + f"  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: {certs.ca}\n",
        "request": tls + "  client_auth_type: RequestClientCert\n",
        "ciphers": tls + "  max_version: TLS12\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n"
                         "  prefer_server_cipher_suites: false\n",
        "versions": tls + "  min_version: TLS13\n  max_version: TLS13\n",
        "headers": "http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n"
                   "    Content-Security-Policy: \"default-src 'self'\"\n",
        "auth only": f"basic_auth_users:\n  prometheus: {HASH}\n  other: '$2y${HASH[4:]}'\n",
        "empty": "",
        "relative": "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
    }
    for name, text in good.items():
        path = _write(certs.dir if name == "relative" else tmp_path, text, f"good-{name.replace(' ', '-')}.yml")
        assert _promtool_web_ok(path), name
        load_web_config(path)


def test_missing_config_file(tmp_path: Any) -> None:
    with pytest.raises(CgagentError) as e:
        load_web_config(str(tmp_path / "nope.yml"))
    assert "nope.yml" in str(e.value) and "cannot read" in str(e.value) and "\n" not in str(e.value)


def test_empty_config_means_plain_http_no_auth(serve: Callable[..., MetricsServer], tmp_path: Any) -> None:
    cfg = load_web_config(_write(tmp_path, ""))
    assert not cfg.tls_enabled and not cfg.auth_enabled
    assert get(serve(cfg), "/healthz")[0] == 200


def test_cipher_suites_applied(serve: Callable[..., MetricsServer], tmp_path: Any, certs: Certs) -> None:
    cfg = _tls_config(tmp_path, certs, "  max_version: TLS12\n  cipher_suites: "
                                       "[TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n", users=False)
    ctx = _client_ctx(certs)
    conn = http.client.HTTPSConnection("127.0.0.1", serve(cfg).port, context=ctx, timeout=10)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        assert isinstance(conn.sock, ssl.SSLSocket)
        assert (conn.sock.cipher() or ("",))[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"
    finally:
        conn.close()


# --- a real Prometheus scrapes the TLS + client-cert + basic-auth endpoint -----------------------------

def test_real_prometheus_scrapes_tls_basic_auth(serve: Callable[..., MetricsServer], tmp_path: Any,
                                                certs: Certs, prometheus: Callable[..., PromServer]) -> None:
    srv = serve(_tls_config(tmp_path, certs, f"  client_auth_type: RequireAndVerifyClientCert\n"
                                             f"  client_ca_file: {certs.ca}\n"))
    prom = prometheus([f"127.0.0.1:{srv.port}"], scheme="https", basic_auth=("prometheus", PASSWORD),
                      tls_ca=certs.ca, tls_cert=certs.client_crt, tls_key=certs.client_key)
    res = prom.wait_for(f'up{{job="{JOB}"}} == 1')
    assert float(res[0]["value"][1]) == 1.0
    assert float(prom.wait_for("cgagent_test_requests_total")[0]["value"][1]) == 7.0
    assert [t["health"] for t in prom.targets()] == ["up"]


def test_real_prometheus_with_wrong_password_is_down(serve: Callable[..., MetricsServer], tmp_path: Any,
                                                     certs: Certs,
                                                     prometheus: Callable[..., PromServer]) -> None:
    srv = serve(_tls_config(tmp_path, certs))
    prom = prometheus([f"127.0.0.1:{srv.port}"], scheme="https", basic_auth=("prometheus", "wrong"),
                      tls_ca=certs.ca)
    ts = prom.wait_target_health("down")
    assert "401" in ts[0]["lastError"]


def test_module_exports() -> None:
    assert webmod.DEFAULT_PORT == 9730


def test_the_agents_exposition_is_streamed(tmp_path: Any) -> None:
    """The agent's /metrics goes out chunked, as it is made (gzip'ed on the way when asked), and says
    the same as its whole-body render; an HTTP/1.0 client, which knows no chunks, gets a length."""
    from exporters.registry import Exporter, Options
    from tests.test_discover import host_tree
    from tests.test_exporter_values import v2_host

    exp = Exporter(Options(host=v2_host(host_tree(tmp_path)), watch=["/"], process_metrics=False))
    srv = MetricsServer(exp, "127.0.0.1:0", None).start()

    def steady(text: bytes) -> list[bytes]:
        # what differs from one scrape to the next by design: the scrape's own duration, and "last
        # seen", which is the scrape's time (whole seconds: two scrapes can straddle a tick)
        return [ln for ln in text.splitlines()
                if not ln.startswith((b"cgagent_scrape_duration_seconds", b"container_last_seen"))]

    try:
        want = steady(bytes(exp.render()))
        assert len(want) > 50
        code, hdrs, body = get(srv)
        assert (code, hdrs.get("transfer-encoding"), "content-length" in hdrs) == (200, "chunked", False)
        assert steady(body) == want
        code, hdrs, body = get(srv, headers={"Accept-Encoding": "gzip"})
        assert (code, hdrs.get("content-encoding"), hdrs.get("transfer-encoding")) == (200, "gzip", "chunked")
        assert steady(gzip.decompress(body)) == want
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            raw = b""
            while chunk := s.recv(65536):
                raw += chunk
        head, _, rest = raw.partition(b"\r\n\r\n")
        assert b"Content-Length: " in head and b"chunked" not in head and steady(rest) == want
    finally:
        srv.shutdown()
        exp.close()
