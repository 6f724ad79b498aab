"""Issue 15 item 7: the exporter cannot be starved without credentials.

The abuse test drives a real `cgagent serve` on loopback with a real attacker process (2,000 idle
connections plus 50 clients guessing passwords); the rest run a MetricsServer in the test process and
read its own counters (bcrypt checks performed, connections held) rather than timing anything.
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import bcrypt
import pytest
from prometheus_client import CollectorRegistry, Counter

from cgagent.errors import CgagentError
from exporters import web
from exporters.web import MetricsServer
from exporters.webconfig import MAX_BCRYPT_COST, load_web_config
from tests.conftest import Env
from tests.exporter_helpers import agent

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PASSWORD = "correct horse"
IDLE = 2000
GUESSERS = 50
# The acceptance criterion. By design an authorized scrape never waits for a bcrypt slot (its check is
# cached after the first scrape) nor for a connection slot (it takes the oldest idle one's), so on a
# quiet machine it answers in milliseconds. The median of SCRAPES is held to 1 s: on the shared 2-core CI
# machine (load 15 with other jobs' VMs) the scheduler alone can stall any one request for a second,
# while a server that starves (the old one: fds exhausted, every scrape queued) fails every scrape.
SCRAPE_BOUND = 1.0
SCRAPES = 7


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _config(tmp: object, users: str) -> str:
    p = os.path.join(str(tmp), "web.yml")
    with open(p, "w") as f:
        f.write(f"basic_auth_users:\n{users}")
    return p


def _request(port: int, headers: dict[str, str], path: str = "/metrics") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --- the attacker, run as `python -c` in its own process so the measuring client does not share its GIL

ATTACKER = r'''
import base64, resource, socket, sys, threading, time
port, idle, guessers, slow = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "slow"
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
want = min(idle, hard - guessers - 32)     # keep fds for the guessers
held = []
until = time.monotonic() + 30                # a server that stops accepting must not stall the test
while len(held) < want and time.monotonic() < until:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if slow:                            # a request line and then nothing (slowloris)
            s.sendall(b"GET /metrics HTTP/1.1\r\n")
        held.append(s)
    except OSError:
        pass
stop = threading.Event()
counts = {}
lock = threading.Lock()
bad = "Basic " + base64.b64encode(b"prometheus:wrong guess").decode()
req = f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: {bad}\r\n\r\n".encode()
def guess():
    for _ in range(100000):                  # bounded; stdin closing ends it much sooner
        if stop.is_set():
            return
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(req)
                data = s.recv(64)
            code = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"
        except OSError as e:
            code = type(e).__name__
        with lock:
            counts[code] = counts.get(code, 0) + 1
threads = [threading.Thread(target=guess, daemon=True) for _ in range(guessers)]
for t in threads:
    t.start()
print(f"ready {len(held)} of {idle} (fd hard limit {hard})", flush=True)
sys.stdin.read()                              # the test closes stdin to end the attack
stop.set()
for t in threads:
    t.join(15)
print(" ".join(f"{k}={v}" for k, v in sorted(counts.items())), flush=True)
'''


@pytest.fixture
def attacker() -> Iterator[Callable[[int, str], tuple[subprocess.Popen[str], int]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(port: int, kind: str) -> tuple[subprocess.Popen[str], int]:
        p = subprocess.Popen([sys.executable, "-c", ATTACKER, str(port), str(IDLE), str(GUESSERS), kind],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.startswith("ready "), line
        return p, int(line.split()[1])

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.parametrize("kind", ["silent", "slow"])
def test_idle_flood_and_password_guessing_do_not_starve_a_scrape(
        cg: Env, tmp_path: object, kind: str,
        attacker: Callable[[int, str], tuple[subprocess.Popen[str], int]]) -> None:
    """`silent`: connections that send nothing (the kernel keeps them from accept() for HEADER_TIMEOUT,
    see TCP_DEFER_ACCEPT in exporters.web); `slow`: each sends a request line, then nothing, so each is
    accepted and must be bounded by the connection table."""
    h = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
    cfg = _config(tmp_path, f"  prometheus: '{h}'\n")
    good = {"Authorization": _basic("prometheus", PASSWORD)}
    with agent(cg, "--web.config.file", cfg) as a:
        pid, port = a.proc.pid, int(a.listen.rsplit(":", 1)[1])
        # the agent raises its fd soft limit to the hard one at start; the bound follows from that
        bound = web.fd_bound(web.connection_bound(resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        assert _request(port, good)[0] == 200   # Prometheus has scraped before: its check is cached
        base = _fds(pid)

        peak = [base]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.02):
                peak[0] = max(peak[0], _fds(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        proc, opened = attacker(port, kind)
        try:
            took = []
            for _ in range(SCRAPES):
                t0 = time.monotonic()
                status, body = _request(port, good)
                took.append(time.monotonic() - t0)
                assert status == 200 and b"cgagent" in body
            # header-less and unknown-scheme requests are refused too, without waiting for bcrypt
            assert _request(port, {})[0] == 401
        finally:
            sampling.set()
            sampler.join()
            out, _ = proc.communicate("", timeout=30)   # closing its stdin ends the attack
        print(f"attacker held {opened} {kind} connections; guesses answered: {out.strip()}; "
              f"scrapes took {', '.join(f'{t * 1000:.0f} ms' for t in took)}; agent fds {base} at rest, "
              f"peak {peak[0]} (bound {base} + {bound})")
        assert opened > bound, "the attack must exceed the connection bound to test it"
        assert sorted(took)[SCRAPES // 2] < SCRAPE_BOUND, took
        assert peak[0] <= base + bound, f"agent held {peak[0]} fds, more than {base} + {bound}"
        assert a.proc.poll() is None


# --- in-process: the counters tell what the server did


@pytest.fixture
def serve() -> Iterator[Callable[..., MetricsServer]]:
    servers: list[MetricsServer] = []
    reg = CollectorRegistry()
    Counter("cgagent_test_requests", "A counter for the abuse tests", registry=reg).inc()

    def start(cfg_path: str, max_connections: int | None = None) -> MetricsServer:
        s = MetricsServer(reg, "127.0.0.1:0", load_web_config(cfg_path), max_connections=max_connections)
        servers.append(s.start())
        return s

    yield start
    for s in servers:
        s.shutdown()


def test_bcrypt_runs_only_for_well_formed_credentials(serve: Callable[..., MetricsServer],
                                                      tmp_path: object) -> None:
    h = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    srv = serve(_config(tmp_path, f"  prometheus: '{h}'\n"))
    cheap = [{}, {"Authorization": "Bearer abc"}, {"Authorization": "Basic !!!not-base64"},
             {"Authorization": "Basic " + base64.b64encode(b"no colon").decode()},
             {"Authorization": _basic("prometheus", "")},
             {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:pw").decode()},
             {"Authorization": _basic("prometheus", "x" * 73)}]
    for headers in cheap * 20:
        assert _request(srv.port, headers)[0] == 401, headers
    assert srv.bcrypt_checks == 0

    assert _request(srv.port, {"Authorization": _basic("prometheus", "wrong")})[0] == 401
    assert srv.bcrypt_checks == 1
    # an unknown user costs the same check (against a dummy hash): the answer does not say who exists
    assert _request(srv.port, {"Authorization": _basic("mallory", "wrong")})[0] == 401
    assert srv.bcrypt_checks == 2
    for _ in range(5):
        assert _request(srv.port, {"Authorization": _basic("prometheus", PASSWORD)})[0] == 200
    assert srv.bcrypt_checks == 3, "a successful check is cached: scrapes do not pay bcrypt each time"


def test_full_table_evicts_the_oldest_idle_connection(serve: Callable[..., MetricsServer],
                                                      tmp_path: object) -> None:
    h = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    srv = serve(_config(tmp_path, f"  prometheus: '{h}'\n"), max_connections=8)
    idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(40)]
    try:
        for s in idle:   # a request line and no more: accepted (silent ones wait in the kernel), never served
            s.sendall(b"GET / HTTP/1.1\r\n")
        assert _request(srv.port, {"Authorization": _basic("prometheus", PASSWORD)})[0] == 200
        assert srv.open_connections() <= web.fd_bound(8)
        # the first ones were evicted to make room: the server closed them (EOF, no response)
        assert idle[0].recv(1) == b""
    finally:
        for s in idle:
            s.close()


def test_event_for_a_connection_evicted_in_the_same_batch_is_ignored(tmp_path: object) -> None:
    """One select() batch can hold an accept that evicts a parked connection and, after it, that
    connection's own readiness: the loop must skip the stale event (it once died on an assertion there,
    and the server stopped accepting). Driven step by step on a server whose loop is not running."""
    h = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    srv = MetricsServer(CollectorRegistry(), "127.0.0.1:0",
                        load_web_config(_config(tmp_path, f"  prometheus: '{h}'\n")), max_connections=1)
    a = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    b = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    try:
        a.sendall(b"GET / HTTP/1.1\r\n")
        srv._accept_some()
        (parked_a,) = [k.data for k in srv._sel.get_map().values() if not isinstance(k.data, str)]
        b.sendall(b"GET / HTTP/1.1\r\n")
        srv._accept_some()                # the table is full: a is evicted to admit b
        assert parked_a.parked is None and a.recv(1) == b""
        srv._unpark(parked_a)             # a's readiness, from the same batch: ignored, not a crash
        assert srv.open_connections() == 1
    finally:
        a.close()
        b.close()
        srv.shutdown()


def test_silent_connection_is_closed_after_the_header_timeout(serve: Callable[..., MetricsServer],
                                                              tmp_path: object) -> None:
    h = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    srv = serve(_config(tmp_path, f"  prometheus: '{h}'\n"))
    with socket.create_connection(("127.0.0.1", srv.port), timeout=web.HEADER_TIMEOUT * 4) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\n")   # a slow client: the headers never end
        assert s.recv(1) == b""                   # closed by the server, not by our timeout


def test_oversized_headers_are_refused(serve: Callable[..., MetricsServer], tmp_path: object) -> None:
    h = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    srv = serve(_config(tmp_path, f"  prometheus: '{h}'\n"))
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000)
                                                          for i in range(40)) + b"\r\n")
        data = s.recv(65536)
        while data and not data.startswith(b"HTTP/"):
            data = s.recv(65536)
        assert data == b"", "a request with 40 KB of headers must not be served"


# --- the web config


@pytest.mark.parametrize("cost", [MAX_BCRYPT_COST + 1, 31])
def test_unreasonable_bcrypt_cost_refused(tmp_path: object, cost: int) -> None:
    h = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    h = f"{h[:4]}{cost:02d}{h[6:]}"   # the cost is only read, never paid, when refusing
    with pytest.raises(CgagentError) as e:
        load_web_config(_config(tmp_path, f"  prometheus: '{h}'\n"))
    msg = str(e.value)
    assert "\n" not in msg and f"bcrypt cost {cost} is above {MAX_BCRYPT_COST}" in msg, msg


def test_empty_password_refused(tmp_path: object) -> None:
    h = bcrypt.hashpw(b"", bcrypt.gensalt(4)).decode()
    with pytest.raises(CgagentError) as e:
        load_web_config(_config(tmp_path, f"  prometheus: '{h}'\n"))
    assert "\n" not in str(e.value) and "basic_auth_users.prometheus: the password is empty" in str(e.value)


def test_key_others_can_read_is_warned(tmp_path: object, capfd: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", "k.pem", "-out", "c.pem", "-days", "1", "-subj", "/CN=127.0.0.1"],
                   cwd=d, check=True, capture_output=True)
    cfg = os.path.join(d, "web.yml")
    with open(cfg, "w") as f:
        f.write("tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n")
    key = os.path.join(d, "k.pem")
    os.chmod(key, 0o600)
    load_web_config(cfg)
    assert capfd.readouterr().err == ""
    os.chmod(key, 0o644)
    load_web_config(cfg)
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "warning" in err and "other users" in err and f"chmod 600 {key}" in err, err


def test_shipped_unit_sets_the_fd_limit_the_connection_bound_derives_from() -> None:
    with open(os.path.join(ROOT, "deploy", "systemd", "cgagent.service")) as f:
        m = re.search(r"^LimitNOFILE=(\d+)$", f.read(), re.MULTILINE)
    assert m, "the unit must set LimitNOFILE (systemd's default soft limit is 1024)"
    nofile = int(m.group(1))
    # connections may take at most half of it even counting those being closed: the rest is the agent's
    assert web.fd_bound(web.connection_bound(nofile)) <= nofile // 2
    assert web.fd_bound(web.connection_bound(1024)) <= 512


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_key_file_that_never_ends_is_refused(tmp_path: object, target: str) -> None:
    d = str(tmp_path)
    if target == "fifo":
        target = os.path.join(d, "fifo")
        os.mkfifo(target)   # opening it for reading would wait for a writer forever
    cfg = os.path.join(d, "web.yml")
    with open(cfg, "w") as f:
        f.write(f"tls_server_config:\n  cert_file: {target}\n  key_file: {target}\n")
    with pytest.raises(CgagentError) as e:
        load_web_config(cfg)
    assert "\n" not in str(e.value) and f"tls_server_config.cert_file: {target!r} is not a regular file" in str(e.value)
