"""A real Prometheus server for acceptance tests: generated config, loopback only, stopped by PID.

Tests use the `prometheus` fixture (registered in tests/conftest.py via `pytest_plugins`), which yields
`start_prometheus` bound to a fresh directory and stops every server it started at teardown:

    def test_x(prometheus):
        prom = prometheus(["127.0.0.1:9730"])
        prom.wait_for('up{job="cadvisor"} == 1')

`promtool_check_metrics(text)` returns promtool's lint findings for an exposition (empty list = clean).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
JOB = "cadvisor"   # the README's scrape job name (cAdvisor's, as a drop-in)


class PromServer:
    """One running Prometheus process and a client for its HTTP API."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, tmp_dir: str, log_path: str) -> None:
        self.proc = proc
        self.url = url
        self.tmp_dir = tmp_dir
        self.log_path = log_path

    def _get(self, path: str, params: dict[str, str] | None = None, timeout: float = 10) -> Any:
        q = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{q}", timeout=timeout) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            # the API returns a JSON error body with 400/422/503: surface it
            body = json.loads(e.read() or b"{}")
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; returns data.result (vector samples: {"metric": {...}, "value": [ts, "v"]})."""
        data = self._get("/api/v1/query", {"query": expr})
        result = data["result"]
        if data.get("resultType") == "scalar":
            return [{"metric": {}, "value": result}]
        return list(result)

    def wait_for(self, expr: str, predicate: Callable[[list[dict[str, Any]]], bool] = bool,
                 timeout: float = 30) -> list[dict[str, Any]]:
        """Re-query `expr` until `predicate(result)` holds. Prometheus pushes nothing to us, so polling with
        a deadline is the only way to observe a scrape having happened."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while True:
            self._check_alive()
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {expr!r}; last result: {result}; "
                    f"targets: {self._target_summary()}")
            time.sleep(0.2)

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets (scrapeUrl, health, lastError, labels, ...)."""
        return list(self._get("/api/v1/targets", {"state": "active"})["activeTargets"])

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts from loaded rule_files (labels, state "pending"/"firing", value)."""
        return list(self._get("/api/v1/alerts")["alerts"])

    def rules(self) -> list[dict[str, Any]]:
        """Rule groups with each rule's health/lastError (check a rule file actually evaluates)."""
        return list(self._get("/api/v1/rules")["groups"])

    def reload(self) -> None:
        """Re-read prometheus.yml (rewrite it with write_config first); needs --web.enable-lifecycle."""
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            if r.status != 200:
                raise RuntimeError(f"prometheus reload failed: HTTP {r.status}")

    def wait_target_health(self, health: str = "up", timeout: float = 30) -> list[dict[str, Any]]:
        """Wait until every active target reports `health` ("up"/"down") after at least one scrape."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            ts = self.targets()
            if ts and all(t["health"] == health for t in ts):
                return ts
            if time.monotonic() > deadline:
                raise AssertionError(f"targets not {health} after {timeout}s: {self._target_summary()}")
            time.sleep(0.2)

    def _target_summary(self) -> str:
        try:
            return "; ".join(f"{t['scrapeUrl']} {t['health']} {t.get('lastError', '')!r}"
                             for t in self.targets())
        except Exception as e:
            return f"(targets unavailable: {e})"

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {self.proc.returncode}; log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM by PID, wait; SIGKILL if it does not exit in 15 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp_dir: str, targets: list[str], scrape_interval: str = "1s", scheme: str = "http",
                 basic_auth: tuple[str, str] | None = None, tls_ca: str | None = None,
                 rule_files: list[str] | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None, tls_server_name: str | None = None) -> str:
    """Write prometheus.yml for one job named JOB and return its path."""
    job: dict[str, Any] = {
        "job_name": JOB,
        "scheme": scheme,
        "scrape_interval": scrape_interval,
        "scrape_timeout": scrape_interval,
        "static_configs": [{"targets": list(targets)}],
    }
    if basic_auth is not None:
        job["basic_auth"] = {"username": basic_auth[0], "password": basic_auth[1]}
    tls: dict[str, str] = {}
    if tls_ca:
        tls["ca_file"] = os.path.abspath(tls_ca)
    if tls_cert:
        tls["cert_file"] = os.path.abspath(tls_cert)
    if tls_key:
        tls["key_file"] = os.path.abspath(tls_key)
    if tls_server_name:
        tls["server_name"] = tls_server_name
    if tls:
        job["tls_config"] = tls
    cfg: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [job],
    }
    if rule_files:
        cfg["rule_files"] = [os.path.abspath(r) for r in rule_files]
    path = os.path.join(tmp_dir, "prometheus.yml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return path


def start_prometheus(tmp_dir: str, targets: list[str], scrape_interval: str = "1s", scheme: str = "http",
                     basic_auth: tuple[str, str] | None = None, tls_ca: str | None = None,
                     rule_files: list[str] | None = None, tls_cert: str | None = None,
                     tls_key: str | None = None, tls_server_name: str | None = None,
                     ready_timeout: float = 30) -> PromServer:
    """Start Prometheus on a free loopback port scraping `targets` (host:port) and wait until it is ready."""
    os.makedirs(tmp_dir, exist_ok=True)
    cfg = write_config(tmp_dir, targets, scrape_interval, scheme, basic_auth, tls_ca, rule_files,
                       tls_cert, tls_key, tls_server_name)
    check = subprocess.run([PROMTOOL, "check", "config", cfg], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"generated prometheus config is invalid:\n{check.stdout}{check.stderr}")
    log_path = os.path.join(tmp_dir, "prometheus.log")
    # The free port can be taken between probe and bind by another process: retry a few times.
    last = ""
    for _ in range(5):
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={os.path.join(tmp_dir, 'data')}",
                 f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle",
                 "--storage.tsdb.retention.time=1h", "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=tmp_dir)
        server = PromServer(proc, url, tmp_dir, log_path)
        deadline = time.monotonic() + ready_timeout
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return server
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        last = server.log_tail()
        server.stop()
        if "address already in use" not in last:
            break
    raise RuntimeError(f"prometheus did not become ready; log:\n{last}")


@pytest.fixture
def prometheus(tmp_path: Any) -> Iterator[Callable[..., PromServer]]:
    """Yields start(targets, **kw) -> PromServer (same keywords as start_prometheus, tmp dir chosen for
    you); every server started is stopped at teardown, even when the test fails."""
    servers: list[PromServer] = []

    def start(targets: list[str], **kw: Any) -> PromServer:
        d = os.path.join(str(tmp_path), f"prometheus-{len(servers)}")
        s = start_prometheus(d, targets, **kw)
        servers.append(s)
        return s

    try:
        yield start
    finally:
        for s in servers:
            s.stop()


prometheus_factory = prometheus


def promtool_check_metrics(text: str) -> list[str]:
    """Lint an exposition with `promtool check metrics`; returns one string per finding (empty = clean).
    A parse error is a finding too."""
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True)
    lines = [ln.strip() for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    if r.returncode != 0 and not lines:
        lines = [f"promtool check metrics exited {r.returncode}"]
    return lines


def make_tmp_dir(prefix: str = "cgagent-prom-") -> str:
    """For use outside pytest (bench, manual runs)."""
    return tempfile.mkdtemp(prefix=prefix)
