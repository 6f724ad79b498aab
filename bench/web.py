"""HTTP overhead of the exporter endpoint (exporters/web.py), apart from collecting: one small registry
served plain, over TLS, and over TLS with basic auth, scraped the way Prometheus does (one keep-alive
connection) and with a new connection per scrape (TLS handshake each time). Also the cost the basic-auth
cache saves: one bcrypt check at the cost users typically pick."""

from __future__ import annotations

import base64
import http.client
import os
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable

import bcrypt
from prometheus_client import CollectorRegistry, Counter

from bench.common import interleaved, summary
from exporters.web import MetricsServer
from exporters.webconfig import load_web_config

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "30")) * 10
PASSWORD = "bench-password"


def _certs(d: str) -> None:
    def ossl(*a: str) -> None:
        subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)

    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=bench ca")
    ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1")
    with open(f"{d}/ext", "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    ossl("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
         "-days", "1", "-out", "srv.crt", "-extfile", "ext")


def _client(port: int, ctx: ssl.SSLContext | None, headers: dict[str, str], keep: bool) -> Callable[[], float]:
    state: dict[str, http.client.HTTPConnection] = {}

    def conn() -> http.client.HTTPConnection:
        if ctx is not None:
            return http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        return http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def once() -> float:
        t0 = time.perf_counter()
        c = state.get("c") if keep else None
        if c is None:
            c = conn()
            if keep:
                state["c"] = c
        c.request("GET", "/metrics", headers=headers)
        r = c.getresponse()
        r.read()
        assert r.status == 200, r.status
        if not keep:
            c.close()
        return time.perf_counter() - t0

    return once


def main() -> None:
    reg = CollectorRegistry()
    for i in range(20):
        Counter(f"bench_counter_{i}", "A benchmark counter", registry=reg).inc(i)
    with tempfile.TemporaryDirectory(prefix="cgagent-bench-web-") as d:
        _certs(d)
        h12 = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(12)).decode()
        with open(f"{d}/tls.yml", "w") as f:
            f.write(f"tls_server_config:\n  cert_file: {d}/srv.crt\n  key_file: {d}/srv.key\n")
        with open(f"{d}/auth.yml", "w") as f:
            f.write(f"tls_server_config:\n  cert_file: {d}/srv.crt\n  key_file: {d}/srv.key\n"
                    f"basic_auth_users:\n  prometheus: '{h12}'\n")
        ctx = ssl.create_default_context(cafile=f"{d}/ca.crt")
        auth = {"Authorization": "Basic " + base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()}
        plain = MetricsServer(reg, "127.0.0.1:0").start()
        tls = MetricsServer(reg, "127.0.0.1:0", load_web_config(f"{d}/tls.yml")).start()
        tls_auth = MetricsServer(reg, "127.0.0.1:0", load_web_config(f"{d}/auth.yml")).start()
        try:
            cases = {
                "plain http, keep-alive": _client(plain.port, None, {}, True),
                "tls, keep-alive": _client(tls.port, ctx, {}, True),
                "tls + basic auth (cached), keep-alive": _client(tls_auth.port, ctx, auth, True),
                "plain http, new connection": _client(plain.port, None, {}, False),
                "tls, new connection (handshake)": _client(tls.port, ctx, {}, False),
            }
            for case in cases.values():
                case()   # warm up (and fill the auth cache)
            res = interleaved(cases, ROUNDS)
            for k, v in res.items():
                print(f"  {k:40} {summary(v)}")
            t0 = time.perf_counter()
            bcrypt.checkpw(PASSWORD.encode(), h12.encode())
            print(f"  one bcrypt check at cost 12 (what the auth cache saves per scrape): "
                  f"{1e3 * (time.perf_counter() - t0):.1f} ms")
        finally:
            for s in (plain, tls, tls_auth):
                s.shutdown()


if __name__ == "__main__":
    main()
