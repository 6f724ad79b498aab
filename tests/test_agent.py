"""The agent's local API over its real unix socket: every route, who may call it (SO_PEERCRED, with a
child process of another uid), malformed requests, streamed events and logs, its OpenAPI file, and
the adoption of running workloads by a restarted agent."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from cgagent.api import server
from cgagent.api.client import Client, Response, workload_url
from tests.conftest import Env
from tests.exporter_helpers import Agent, agent, poll, value

pytestmark = [pytest.mark.root]


def openapi() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(resources.files("cgagent.api").joinpath("openapi.json").read_text())
    return doc


def test_openapi_file_is_valid_and_matches_the_routes() -> None:
    from openapi_spec_validator import validate

    doc = openapi()
    validate(doc)   # raises on any violation of the OpenAPI 3 schema
    documented = {(m.upper(), p, op["operationId"]) for p, item in doc["paths"].items()
                  for m, op in item.items() if m != "parameters"}
    served = {(r.method, r.template, r.op) for r in server.ROUTES}
    assert documented == served
    # the run request's documented fields are the ones the server accepts, no more, no fewer
    from cgagent.api.runreq import LIMIT_FIELDS, RUN_FIELDS

    assert set(doc["components"]["schemas"]["RunRequest"]["properties"]) == set(RUN_FIELDS)
    assert set(doc["components"]["schemas"]["Limits"]["properties"]) == set(LIMIT_FIELDS)


@pytest.fixture
def api(cg: Env) -> Iterator[tuple[Agent, Client]]:
    with agent(cg) as a:
        yield a, Client(server.socket_path(cg.state_dir), timeout=60)


def run_body(cg: Env, name: str, *cmd: str, **extra: Any) -> dict[str, Any]:
    return {"cmd": ["--", *cmd], "detach": True, "name": name, "cgroup_parent": cg.parent, **extra}


def one_line_error(r: Response, status: int) -> str:
    assert r.status == status
    raw = r.resp.read()
    r.close()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1, raw
    obj = json.loads(raw)
    assert set(obj) >= {"error", "exit_code"} and "\n" not in obj["error"]
    return str(obj["error"])


def test_socket_is_private_to_root(cg: Env, api: tuple[Agent, Client]) -> None:
    st = os.lstat(api[1].path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0


def test_every_route(cg: Env, api: tuple[Agent, Client]) -> None:
    _a, c = api
    assert c.json("GET", "/v1/version")["state_dir"] == cg.state_dir
    started = c.json("POST", "/v1/workloads", run_body(cg, "w", "sh", "-c", "echo hello; exec sleep 1000"))
    assert started == {"name": "w"}
    rows = c.json("GET", "/v1/ps")
    assert [(r["name"], r["status"]) for r in rows] == [("w", "running")]
    # the same rows as the CLI's direct path prints with --json
    direct = json.loads(cg.run("ps", "--json", check=True).stdout)
    assert [{k: v for k, v in r.items() if k != "created"} for r in direct] == \
        [{k: v for k, v in r.items() if k != "created"} for r in rows]
    rec = c.json("GET", workload_url("w"))["Cgagent"]   # the raw record, beside the docker shape
    assert rec["name"] == "w" and rec["live_status"] == "running" and rec["cmd"][0] == "sh"
    up = c.json("POST", workload_url("w", "update"), {"cpus": "0.5"})
    assert up["resources"]["cpu_quota"] == 50000
    with open(f"{rec['dirs']['cpu']}/cpu.cfs_quota_us" if "cpu" in rec["dirs"] else
              f"{rec['dirs']['']}/cpu.max") as f:
        assert f.read().split()[0] == "50000"
    assert b"".join(c.call("GET", workload_url("w", "logs")).chunks()) == b"hello\n"
    kinds = [json.loads(line)["kind"] for line in c.call("GET", "/v1/events", query={"name": "w"}).lines()]
    assert kinds == ["start", "update"]
    assert c.json("POST", workload_url("w", "stop"), query={"time": 5}) == {"name": "w"}
    rec = c.json("GET", workload_url("w"))["Cgagent"]   # the raw record, beside the docker shape
    assert rec["live_status"] == "exited" and rec["exit_code"] is not None
    assert c.json("DELETE", workload_url("w")) == {"name": "w"}
    assert c.json("GET", "/v1/ps", query={"all": True}) == []
    for method, url in (("GET", workload_url("w")), ("DELETE", workload_url("w")),
                        ("POST", workload_url("w", "stop")), ("GET", workload_url("w", "logs"))):
        assert one_line_error(c.raw(method, url), 404) == "no workload named 'w': see `cgagent ps -a` for the names"


def test_errors_are_the_clis_line_and_code(cg: Env, api: tuple[Agent, Client]) -> None:
    _a, c = api
    c.json("POST", "/v1/workloads", run_body(cg, "busy", "sleep", "1000"))
    msg = one_line_error(c.raw("DELETE", workload_url("busy")), 400)
    direct = cg.run("rm", "busy")   # the direct path (CGAGENT_DIRECT is not needed: it is the CLI as it is)
    assert direct.stderr.strip().endswith(msg) and direct.returncode == 2
    assert one_line_error(c.raw("POST", "/v1/workloads", run_body(cg, "x", "sleep", "1", memory="lots")), 400)
    c.json("DELETE", workload_url("busy"), query={"force": True})


@pytest.mark.parametrize(("method", "url", "body", "why"), [
    ("POST", "/v1/workloads", b"{not json", "the request body is not JSON"),
    ("POST", "/v1/workloads", b'{"cmd": ["true"], "detach": true, "colour": "red"}', "unknown field 'colour'"),
    ("POST", "/v1/workloads", b'{"cmd": "true", "detach": true}', "field 'cmd' of the run request must be"),
    ("POST", "/v1/workloads", b"[1, 2]", "the run request must be a JSON object"),
    ("POST", "/v1/workloads", b'{"cmd": ["true"], "detach": true, "environ": {"A=B": "c"}}',
     "field 'environ' of the run request must be an object of strings"),
    ("POST", "/v1/workloads", b'{"cmd": ["true"]}', "a foreground run needs the caller's stdio"),
    ("POST", "/v1/workloads", b'{"cmd": ["true"], "detach": true, "cwd": "/tmp\\u0000x"}',
     "field 'cwd' of the run request must be a string (no NUL"),
    # a lone surrogate: JSON allows it, os.chdir() and the environment cannot encode it
    ("POST", "/v1/workloads", b'{"cmd": ["true"], "detach": true, "cwd": "/tmp/\\ud800"}',
     "field 'cwd' of the run request must be a string (no NUL, no lone surrogate)"),
    ("POST", "/v1/workloads", b'{"cmd": ["true"], "detach": true, "environ": {"A": "\\ud800"}}',
     "field 'environ' of the run request must be an object of strings"),
    ("POST", "/v1/workloads", b'{"cmd": ["true", "\\udfff"], "detach": true}',
     "field 'cmd' of the run request must be an array of strings (no NUL, no lone surrogate)"),
    ("POST", "/v1/workloads", b'{"cmd": ["true"], "detach": true, "environ": {"": "x"}}',
     "field 'environ' of the run request must be an object of strings"),
    ("POST", "/v1/workloads/x/update", b'{"device_read_bps": ["\\u0000:1"]}',
     "field 'device_read_bps' of the update request must be an array of strings (no NUL"),
    ("GET", "/v1/events?follow=yes", b"", "query parameter 'follow' is 'yes'"),
    ("GET", "/v1/ps?all=1&colour=red", b"", "unknown query parameter 'colour'"),
    ("GET", "/v1/ps?all=maybe", b"", "query parameter 'all' is 'maybe'"),
    ("POST", "/v1/workloads/x/stop?time=-1", b"", "query parameter 'time'"),
    ("GET", "/v1/ps", b"{}", "GET /v1/ps takes no body"),
    ("PUT", "/v1/ps", b"", "PUT is not allowed on /v1/ps"),
])
def test_malformed_requests_get_400_and_one_line(cg: Env, api: tuple[Agent, Client], method: str, url: str,
                                                 body: bytes, why: str) -> None:
    reply = raw_request(api[1].path, f"{method} {url} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                        f"Connection: close\r\n\r\n".encode() + body)
    head, _, payload = reply.partition(b"\r\n\r\n")
    expect = 405 if method == "PUT" else 400
    assert head.startswith(f"HTTP/1.1 {expect} ".encode()), head
    assert payload.count(b"\n") == 1 and why in json.loads(payload)["error"]


def test_oversized_and_unparsable_requests(cg: Env, api: tuple[Agent, Client]) -> None:
    path = api[1].path
    big = raw_request(path, b"POST /v1/workloads HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n")
    assert big.startswith(b"HTTP/1.1 413 ") and b"more than 65536" in big
    # a digit to str.isdigit() that int() does not take (headers are read as latin-1)
    odd = raw_request(path, b"POST /v1/workloads HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n")
    assert odd.startswith(b"HTTP/1.1 400 ") and b"is not a number" in odd, odd
    garbage = raw_request(path, b"\x16\x03\x01 hello\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400 ") and garbage.split(b"\r\n\r\n", 1)[1].count(b"\n") == 1
    # headers past the bound: the connection is dropped without a thread spending more on it
    assert raw_request(path, b"GET /v1/ps HTTP/1.1\r\n" + b"X: " + b"a" * 20000 + b"\r\n\r\n") == b""


def test_a_refused_requests_body_is_read_past_after_the_answer(cg: Env, api: tuple[Agent, Client]) -> None:
    """Refused (on its query, its route, a 501) before its body was read: the answer comes first (a
    client may wait for it before sending the body), then the body is read past. It used to be read
    as the next request (a request smuggled in it was answered); closing the connection instead cut
    off a client still sending it ("the agent closed the connection (Broken pipe)", a full run)."""
    smuggled = b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(api[1].path)
        s.sendall(b"POST /v1/workloads/x/stop?colour=red HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                  % len(smuggled))
        head = b""
        while not _whole_answer(head):   # before the body is sent
            chunk = s.recv(65536)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 400 ") and b"unknown query parameter 'colour'" in head, head
        s.sendall(smuggled + b"GET /v1/ps HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        rest = b""
        while chunk := s.recv(65536):
            rest += chunk
    assert rest.startswith(b"HTTP/1.1 200 ") and rest.count(b"HTTP/1.1 ") == 1, rest


def test_a_body_dripped_a_byte_a_second_is_cut_off_at_the_body_deadline(cg: Env, api: tuple[Agent, Client]) -> None:
    """Each byte comes well within the socket's per-read timeout (IO_TIMEOUT, 30 s), which alone let
    this peer hold the connection for as many of them as Content-Length says (before: 200 s here,
    at a byte a second). The whole body has BODY_TIMEOUT: then 408, one line, and the connection closes."""
    length = 200
    assert length > 2 * server.BODY_TIMEOUT
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(api[1].path)
        s.sendall(b"POST /v1/workloads HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % length)
        sent = 0
        while sent < length and not select.select([s], [], [], 1.0)[0]:   # the answer ends the drip
            try:
                s.sendall(b" ")
            except (BrokenPipeError, ConnectionResetError):
                break   # closed just after its answer: the answer is still queued for us
            sent += 1
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert sent < length, "the agent waited for the whole dripped body"
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert payload.count(b"\n") == 1 and "did not arrive within" in json.loads(payload)["error"]


def _whole_answer(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    return bool(sep) and length is not None and len(body) >= int(length.group(1))


def raw_request(path: str, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(path)
        try:
            s.sendall(data)
        except BrokenPipeError:
            return b""
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return out


def _call_as(uid: int, path: str) -> str:
    """In a child process of `uid` (no groups): connect to the socket and ask for /v1/ps. The socket is
    reached through an O_PATH descriptor opened before setuid, as the test's directories are private.
    -> "refused:ERRNO" or the status line."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            fd = os.open(path, os.O_PATH)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(30)
                try:
                    s.connect(f"/proc/self/fd/{fd}")
                except OSError as e:
                    os.write(w, f"refused:{e.errno}".encode())
                    os._exit(0)
                s.sendall(b"GET /v1/ps HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                reply = b""
                while chunk := s.recv(4096):
                    reply += chunk
            os.write(w, reply)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out.decode()


def test_another_uid_is_refused(cg: Env, api: tuple[Agent, Client]) -> None:
    path = api[1].path
    # the socket's mode keeps it out
    assert _call_as(65534, path) == "refused:13"
    # and if the mode let it in (a careless chmod), the peer credentials still do: 403, one line
    os.chmod(path, 0o666)
    reply = _call_as(65534, path)
    head, _, body = reply.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 403 ")
    assert body.count("\n") == 1 and json.loads(body)["error"].startswith("uid 65534 may not use the agent's API")
    assert api[1].json("GET", "/v1/ps") == []   # root still may


@pytest.mark.parametrize("others", [0, 300], ids=["one-group", "among-300"])
def test_api_group_members_may_call(cg: Env, others: int) -> None:
    """A member through a supplementary group only; also as the last of 301 (SO_PEERGROUPS past the
    256 that Python's getsockopt reads)."""
    gid = 65533
    with agent(cg, "--api-group", str(gid)) as _a:
        path = server.socket_path(cg.state_dir)
        st = os.lstat(path)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == gid
        pid = os.fork()
        if pid == 0:   # a member through its supplementary groups only
            code = 1
            try:
                fd = os.open(path, os.O_PATH)
                os.setgroups([*range(70000, 70000 + others), gid])
                os.setgid(65534)
                os.setuid(65534)
                code = 0 if Client(f"/proc/self/fd/{fd}").json("GET", "/v1/ps") == [] else 3
            finally:
                os._exit(code)
        assert os.waitpid(pid, 0)[1] == 0


def _few_fds() -> None:
    """An agent's connection table is a quarter of its fd limit: 32 slots."""
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))


def _follow(c: Client, n: int) -> list[Response]:
    """`n` followed event streams: connections serving a request, which are never evicted."""
    streams = [c.raw("GET", "/v1/events", query={"follow": True}) for _ in range(n)]
    assert [s.status for s in streams] == [200] * n
    return streams


def test_a_full_connection_table_is_answered_503_in_one_line(cg: Env) -> None:
    """Every slot serving a request (followed event streams, which are never evicted): the next
    caller gets a 503 saying why, and the CLI prints that line, not "the agent closed the connection"."""
    with agent(cg, preexec_fn=_few_fds):
        c = Client(server.socket_path(cg.state_dir), timeout=60)
        streams: list[Response] = []
        try:
            while (r := c.raw("GET", "/v1/events", query={"follow": True})).status == 200:
                streams.append(r)
                assert len(streams) <= 32, "the agent took more connections than its table holds"
            line = one_line_error(r, 503)
            assert len(streams) == 32
            assert line.startswith("the agent is serving as many connections as it may (32): retry when one ends")
            ps = cg.run("ps")
            assert (ps.returncode, ps.stdout, ps.stderr) == (1, "", f"cgagent: error: {line}\n")
            for how in ("--rm", "-d"):   # a request larger than the agent reads before it answers
                r = cg.run("run", how, "--cgroup-parent", cg.parent, "--", "true", stdin=subprocess.DEVNULL)
                assert (r.returncode, r.stdout, r.stderr) == (125, "", f"cgagent: error: {line}\n")
        finally:
            for s in streams:
                s.close()


def test_a_foreground_run_whose_caller_died_gives_its_connection_back(cg: Env) -> None:
    """The caller of a foreground run SIGKILLed: the agent stops holding the run's connection (it
    held it until the workload ended, here never, so 32 such deaths locked the API out), and the
    workload runs on under its supervisor, as `docker run` killed leaves its container."""
    direct = {**cg.env(), "CGAGENT_DIRECT": "1"}
    with agent(cg, preexec_fn=_few_fds):
        c = Client(server.socket_path(cg.state_dir), timeout=60)
        streams = _follow(c, 30)
        try:
            started = c.call("GET", "/v1/events", query={"follow": True, "name": "fg"})
            fg = cg.popen("run", "--name", "fg", "--cgroup-parent", cg.parent, "--", "sleep", "1000",
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            assert json.loads(next(started.lines()))["kind"] == "start"
            started.close()
            fg.kill()
            assert fg.wait() == -signal.SIGKILL

            def one_more() -> bool:   # the agent sees the caller's end on its own time: nothing to wait on
                r = c.raw("GET", "/v1/events", query={"follow": True})
                if r.status == 200:
                    streams.append(r)
                else:
                    r.close()
                return len(streams) == 32
            assert poll(one_more, 10), "the dead caller's connection is still held"
            inspect = subprocess.run(cg.cmd("inspect", "fg"), env=direct, capture_output=True, text=True, timeout=60)
            assert json.loads(inspect.stdout)[0]["State"]["Status"] == "running", inspect.stderr
        finally:
            for s in streams:
                s.close()
            subprocess.run(cg.cmd("rm", "-f", "fg"), env=direct, capture_output=True, timeout=60)


def test_events_are_streamed_until_the_client_closes(cg: Env, api: tuple[Agent, Client]) -> None:
    _a, c = api
    stream = c.call("GET", "/v1/events", query={"follow": True})
    lines = stream.lines()
    c.json("POST", "/v1/workloads", run_body(cg, "e1", "sleep", "1000"))
    first = json.loads(next(lines))
    assert (first["kind"], first["name"]) == ("start", "e1")
    c.json("POST", workload_url("e1", "stop"), query={"time": 5})
    ev = json.loads(next(lines))
    assert (ev["kind"], ev["name"]) == ("exit", "e1")
    stream.close()
    c.json("DELETE", workload_url("e1"))


def test_logs_follow_streams_until_the_supervisor_exits(cg: Env, api: tuple[Agent, Client]) -> None:
    _a, c = api
    c.json("POST", "/v1/workloads", run_body(cg, "l1", "sh", "-c", "echo one; exec sleep 1000"))
    chunks = c.call("GET", workload_url("l1", "logs"), query={"follow": True}).chunks()
    got = b""
    while got != b"one\n":
        got += next(chunks)
    os.kill(c.json("GET", workload_url("l1"))["State"]["Pid"], signal.SIGKILL)
    assert b"".join(chunks) == b""   # the supervisor recorded the end and exited: the stream ends
    assert c.json("GET", workload_url("l1"))["State"]["ExitCode"] == 128 + signal.SIGKILL
    c.json("DELETE", workload_url("l1"))


def _inotify_instances(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify"
        except FileNotFoundError:   # closed since the listing
            pass
    return n


def test_followed_streams_share_one_inotify_instance(cg: Env, api: tuple[Agent, Client], tmp_path: Path) -> None:
    """root's inotify instances are counted host-wide (128 by default): an instance per followed
    stream let API callers take the last ones from systemd and every other root process."""
    a, c = api
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    script = f"echo one; read x < {fifo}; echo two; exec sleep 1000"
    c.json("POST", "/v1/workloads", run_body(cg, "f1", "sh", "-c", script))
    logs = [c.call("GET", workload_url("f1", "logs"), query={"follow": True}).chunks() for _ in range(6)]
    for chunks in logs:
        assert next(chunks) == b"one\n"
    before = _inotify_instances(a.proc.pid)
    events = [c.call("GET", "/v1/events", query={"follow": True}).lines() for _ in range(6)]
    more = [c.call("GET", workload_url("f1", "logs"), query={"follow": True}).chunks() for _ in range(6)]
    for chunks in more:
        assert next(chunks) == b"one\n"
    assert _inotify_instances(a.proc.pid) == before, "each followed stream took an inotify instance"
    fifo.write_text("\n")
    for chunks in logs + more:   # each log stream is woken by its file's change
        assert next(chunks) == b"two\n"
    c.json("POST", workload_url("f1", "stop"), query={"time": 5})
    for lines in events:   # what was logged, then what the stop adds: each stream is woken by it
        kinds = [json.loads(next(lines))["kind"] for _ in range(2)]
        assert kinds == ["start", "exit"], kinds
    for chunks in logs + more:
        assert b"".join(chunks) == b""   # the supervisor exited: each stream ends
    c.json("DELETE", workload_url("f1"))


def test_serve_says_where_the_api_is(cg: Env) -> None:
    a = Agent(cg)
    try:
        assert a.proc.stdout is not None
        a.proc.stdout.readline()
        assert a.proc.stdout.readline().strip() == f"API: curl --unix-socket {cg.state_dir}/agent.sock http://x/v1/ps"
    finally:
        assert a.stop() == 0
    assert not os.path.lexists(server.socket_path(cg.state_dir))   # removed on the way out


def test_a_second_agent_on_the_same_state_dir_is_refused(cg: Env, api: tuple[Agent, Client]) -> None:
    r = cg.run("serve", "--listen", "127.0.0.1:0", timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        f"cgagent: error: another process serves {api[1].path}: stop it first (only one agent per state dir)")
    assert api[1].json("GET", "/v1/ps") == []   # the first one's socket is untouched


N_ADOPTED = 10


@pytest.mark.slow
def test_a_restarted_agent_adopts_running_workloads(cg: Env) -> None:
    names = [f"a{i}" for i in range(N_ADOPTED)]
    first = Agent(cg)
    c = Client(server.socket_path(cg.state_dir), timeout=60)
    try:
        for n in names:
            c.json("POST", "/v1/workloads", run_body(cg, n, "sleep", "1000", memory="64M"))
        pids = {r["name"]: r["pid"] for r in c.json("GET", "/v1/ps")}
        assert sorted(pids) == names
    finally:
        first.proc.send_signal(signal.SIGKILL)   # no chance to clean up: the socket file stays behind
        first.stop()
    assert os.path.exists(server.socket_path(cg.state_dir))
    with agent(cg) as second:
        rows = c.json("GET", "/v1/ps")
        assert {r["name"]: (r["status"], r["pid"]) for r in rows} == {n: ("running", pids[n]) for n in names}
        stats = json.loads(cg.run("stats", "--json", *names, check=True).stdout.splitlines()[0])
        assert sorted(s["name"] for s in stats) == names
        samples = second.samples()
        for n in names:
            assert value(samples, "container_spec_memory_limit_bytes", name=n) == 64 * 1024 * 1024
        for n in names:
            c.json("POST", workload_url(n, "stop"), query={"time": 10})
        for n in names:
            rec = c.json("GET", workload_url(n))["Cgagent"]
            # sleep dies of the SIGTERM: its supervisor (not the agent) recorded the code
            assert (rec["live_status"], rec["exit_code"]) == ("exited", 128 + signal.SIGTERM)
            c.json("DELETE", workload_url(n))


def test_the_clients_default_state_dir_is_the_stores() -> None:
    from cgagent import state
    from cgagent.api import client

    assert client.DEFAULT_STATE_DIR == state.DEFAULT_STATE_DIR


# --- fastlaunch: the launcher's pool cgroups (cgagent.zygote) on cgroup v1

def _pools(cg: Env) -> list[str]:
    from cgagent.zygote import POOL_PREFIX

    return [os.path.join(r, n) for r in cg.roots if os.path.isdir(r)
            for n in os.listdir(r) if n.startswith(POOL_PREFIX)]


def test_pool_cgroups_are_never_workloads_and_go_with_a_killed_agent(cg: Env) -> None:
    from cgagent import host as hostmod

    if hostmod.detect().is_v2:
        pytest.skip("the pool is for cgroup v1 (v2 launches with clone3(CLONE_INTO_CGROUP))")
    a = Agent(cg)
    try:
        cg.run("run", "-d", "--name", "keep", "--", "sleep", "300", check=True)   # the parent exists now
        assert poll(lambda: _pools(cg), 30), "the launcher made no pool cgroup at idle"
        r = cg.run("run", "--rm", "--name", "fg", "--", "cat", "/proc/self/cgroup", check=True)
        # the pool cgroup it ran in was renamed to the workload's before it ran
        assert any(ln.endswith("/fg") for ln in r.stdout.splitlines()) and "pool" not in r.stdout, r.stdout
        rows = Client(server.socket_path(cg.state_dir)).json("GET", "/v1/ps", query={"all": True})
        assert [row["name"] for row in rows] == ["keep"]
        a.proc.send_signal(signal.SIGKILL)   # its launcher sees the end of its socket: the pool goes
        assert poll(lambda: not _pools(cg), 30), _pools(cg)
    finally:
        a.stop()
    cg.run("rm", "-f", "keep", check=True)


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def _stopped_descendants(root: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    state: dict[int, str] = {}
    for p in os.listdir("/proc"):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if p.isdigit():
            kids.setdefault(int(fields[1]), []).append(int(p))
            state[int(p)] = fields[0]
    out, todo = [], list(kids.get(root, []))
    while todo:
        pid = todo.pop()
        out += [pid] if state.get(pid) == "T" else []
        todo += kids.get(pid, [])
    return out


def test_a_runs_code_reaches_the_caller_before_its_runner_has_exited(cg: Env) -> None:
    """A runner reports its workload's code itself once its work is done (the end recorded, the
    cgroup gone), so a run does not also wait for the runner's own exit (its memory's teardown).
    Each runner here stops itself right after its report (CGAGENT_FAULT=stop:reported): the run
    returns with its code all the same, and the runner is still there, stopped. (A runner takes its
    caller's environment: the fault is set in the CLI's.)"""
    p = subprocess.Popen(cg.cmd("serve", "--listen", "127.0.0.1:0"), env=cg.env(), text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert p.stdout is not None and "/metrics" in p.stdout.readline()
        launcher = _children(p.pid)
        assert poll(lambda: len(_children(launcher[0])) >= 2, 30)   # its runners, forked ahead at idle
        r = subprocess.run(cg.cmd("run", "--rm", "--name", "quick", "--", "sh", "-c", "exit 7"),
                           env=cg.env(CGAGENT_FAULT="stop:reported"), capture_output=True, text=True, timeout=30)
        assert r.returncode == 7, r.stderr
        assert cg.run("ps", "-a", "--json", check=True).stdout.strip() == "[]"
        assert poll(lambda: _stopped_descendants(p.pid), 30)
        assert len(_stopped_descendants(p.pid)) == 1
    finally:
        for pid in _stopped_descendants(p.pid):
            os.kill(pid, signal.SIGCONT)   # it exits; the launcher reaps it
        p.terminate()
        p.wait(30)
        if p.stdout is not None:
            p.stdout.close()


def test_runs_back_to_back_each_start_in_a_parked_pool_cgroup(cg: Env, capfd: pytest.CaptureFixture[str]) -> None:
    """A script's loop of runs: the launcher refills its pool as each run ends, not only after 50 ms
    without a request, so every run execs in a parked zygote (a session leader: it called setsid),
    none pays the fork and the cgroup move (there the workload is in its runner's session). The runs
    go from this process, ~1 ms apart: the old idle-only refill left the third one without."""
    from cgagent import host as hostmod
    from cgagent.api.runclient import encode, run_attached
    from cgagent.cli import fastrun

    if hostmod.detect().is_v2:
        pytest.skip("the pool is for cgroup v1")
    script = 'read -r _ _ _ _ _ sid _ < /proc/$$/stat; [ "$sid" = $$ ] && echo parked || echo forked'
    p = fastrun.parse(["--rm", "--", "sh", "-c", script])
    assert p is not None
    data = encode({**p.values, "cmd": ["--", *p.cmd], "cwd": "/", "environ": cg.env()})
    cg.run("run", "-d", "--name", "keep", "--", "sleep", "300", check=True)   # the pool's parent exists now
    with agent(cg):
        assert poll(lambda: len(_pools(cg)) == 2 * len([r for r in cg.roots if os.path.isdir(r)]), 30), _pools(cg)
        capfd.readouterr()
        codes = [run_attached(server.socket_path(cg.state_dir), data) for _ in range(6)]
        out = capfd.readouterr().out
    assert codes == [0] * 6 and out == "parked\n" * 6, out
    cg.run("rm", "-f", "keep", check=True)


def test_a_workload_started_by_a_parked_zygote_inherits_no_fd(cg: Env) -> None:
    """The zygote receives a job's fds over SCM_RIGHTS: they arrive close-on-exec, as the direct
    path's are, so the workload has 0-2 and nothing else. Before, the exec-failure pipe's write end
    reached it (a pipe at fd 3 or 5), and the run's start was only seen when the workload ended."""
    from cgagent import host as hostmod

    cg.run("run", "-d", "--name", "keep", "--", "sleep", "300", check=True)   # the pool's parent exists now
    with agent(cg):
        if not hostmod.detect().is_v2:
            assert poll(lambda: _pools(cg), 30), "the launcher made no pool cgroup at idle"
        r = cg.run("run", "--rm", "--", "ls", "-l", "/proc/self/fd", check=True)
    fds = {ln.split()[8]: ln.split()[-1] for ln in r.stdout.splitlines() if ln.startswith("l")}
    assert sorted(fds) == ["0", "1", "2", "3"] and fds["3"].endswith("/fd"), r.stdout   # 3: ls's own listing
    cg.run("rm", "-f", "keep", check=True)


def test_prune_removes_the_pool_cgroups_a_crash_left_and_no_live_one(cg: Env) -> None:
    from cgagent import host as hostmod
    from cgagent.cgroups import fs
    from cgagent.zygote import POOL_PREFIX

    if hostmod.detect().is_v2:
        pytest.skip("the pool is for cgroup v1")
    cg.run("run", "-d", "--name", "keep", "--", "sleep", "300", check=True)
    with agent(cg):
        def settled() -> list[str] | None:   # both runners' pools made, each with its zygote in it
            ds = _pools(cg)
            roots = [r for r in cg.roots if os.path.isdir(r)]
            return ds if len(ds) == 2 * len(roots) and all(fs.procs(d) for d in ds) else None

        live = poll(settled, 30)
        assert isinstance(live, list), _pools(cg)
        left = [os.path.join(r, POOL_PREFIX + "00000000-dead") for r in cg.roots if os.path.isdir(r)]
        for d in left:   # as a SIGKILLed runner leaves it: empty
            os.mkdir(d)
        out = cg.run("prune", check=True).stdout
        assert all(not os.path.exists(d) for d in left) and all(d in out for d in left), out
        assert all(os.path.isdir(d) for d in live), out   # each holds its zygote: its agent's
    cg.run("rm", "-f", "keep", check=True)


def _start_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def test_a_parked_zygote_forks_pid_1_ahead_and_host_runs_keep_the_hosts_pid_namespace(cg: Env, tmp_path: Any) -> None:
    """The zygote forks the PID 1 of a new pid namespace once it is in its pool cgroup: an isolated
    run is handed to that PID 1 (born before the run was asked for), and any other run ends it and
    puts the zygote's children back in the host's pid namespace (a host workload's children are
    born there, as without an agent)."""
    from cgagent import host as hostmod
    from tests import images

    if hostmod.detect().is_v2:
        pytest.skip("the pool is for cgroup v1")
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "busybox").write_bytes(open(images.BUSYBOX, "rb").read())
    (root / "bin" / "busybox").chmod(0o755)
    for a in ("sh", "sleep", "cat"):
        (root / "bin" / a).symlink_to("busybox")

    def parked() -> bool:   # each pool cgroup holds its zygote and the zygote's PID 1
        pools = _pools(cg)
        return bool(pools) and all(len(open(f"{p}/cgroup.procs").read().split()) == 2 for p in pools)

    host_ns = os.readlink("/proc/self/ns/pid")
    cg.run("run", "-d", "--name", "keep", "--", "sleep", "300", check=True)   # the pool's parent exists now
    with agent(cg):
        assert poll(parked, 30), _pools(cg)
        r = cg.run("run", "--rm", "--", "sh", "-c", "readlink /proc/self/ns/pid; true", check=True)
        assert r.stdout.strip() == host_ns, r.stdout   # sh forked readlink: in the host's namespace
        assert poll(parked, 30), _pools(cg)
        client = cg.popen("run", "--rm", "--name", "iso", "--rootfs", str(root), "--net", "none", "--",
                          "sh", "-c", "echo $$; exec sleep 300", stdout=subprocess.PIPE)
        try:
            assert client.stdout is not None and client.stdout.readline().strip() == "1"
            relay = json.loads(cg.run("inspect", "iso", check=True).stdout)[0]["State"]["Pid"]
            with open(f"/proc/{relay}/task/{relay}/children") as f:
                (pid1,) = (int(p) for p in f.read().split())
            assert _start_ticks(pid1) <= _start_ticks(client.pid), "PID 1 was forked after the run was asked for"
        finally:
            cg.run("stop", "-t", "0", "iso")
            client.wait(timeout=60)
    cg.run("rm", "-f", "keep", check=True)


_PARK_AND_DISCARD = """
import os, sys
from cgagent import host as hostmod, zygote
from cgagent.cgroups import new_manager
h = hostmod.detect()
left = []
for i in range(int(sys.argv[2])):
    mgr = new_manager(h, "cgroupfs", sys.argv[1], f"{zygote.POOL_PREFIX}t{i}")
    zygote.park(mgr.dirs, mgr.create, mgr.apply)
    zygote.discard()   # at once: the zygote is still forking its PID 1, or reporting it
    left += [d for d in mgr.dirs.values() if os.path.isdir(d)]
print(len(left), left[:3])
"""


def test_a_zygote_discarded_while_it_forks_its_pid_1_leaves_no_pool_cgroup(cg: Env) -> None:
    """The agent stops (or a launch does not fit) just as a runner parked its zygote: the zygote ends
    its PID 1 before it exits, so the runner's rmdir of the pool cgroup finds it empty. Each of the
    30 rounds discards at once; any round whose PID 1 outlived its zygote leaves a directory."""
    from cgagent import host as hostmod

    if hostmod.detect().is_v2:
        pytest.skip("the pool cgroup is for cgroup v1")
    r = subprocess.run([sys.executable, "-c", _PARK_AND_DISCARD, cg.parent, "30"], env=cg.env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("0 "), r.stdout
