"""Followers (`logs -f`, `events -f`, `wait`, the agent's streams) when the kernel gives no inotify
instance.

Root's instances are counted host-wide (fs.inotify.max_user_instances, 128 by default) and each
detached workload's stamper holds one, so past ~120 workloads a follower got none: `logs -f`,
`events -f` and `wait` ended in a traceback, and the agent's stream broke off. Now each looks every
inotify.POLL_SECONDS instead, as `tail -f` reverts to polling. The tests take the instances (or the
watches) away in a user namespace of their own (tests/starve.py: its max_inotify_instances or
max_inotify_watches 0, per-namespace limits since Linux 5.11), never on the host. The stamper's own
case is in test_logs_time.py, pause's (cgroup v2 only) in tests/vm_guest/guest_v2.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Env
from tests.starve import INSTANCES, WATCHES, starve, starved

# no instance at all, or an instance whose first watch fails (ENOSPC, past max_user_watches)
LIMITS = pytest.mark.parametrize("limit", [INSTANCES, WATCHES], ids=["instances", "watches"])


def ok(cg: Env, *args: str) -> str:
    r = cg.run(*args)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


@pytest.fixture
def gated(cg: Env, tmp_path: Path) -> Iterator[Path]:
    """A detached workload `f` that prints `one`, then `two` once the test writes to the FIFO yielded."""
    go = tmp_path / "go"
    os.mkfifo(go)
    ok(cg, "run", "-d", "--name", "f", "--", "sh", "-c", f"echo one; read x < {go}; echo two")
    try:
        yield go
    finally:
        cg.run("rm", "-f", "f")


@LIMITS
def test_logs_follow_without_an_inotify_instance_polls(cg: Env, gated: Path, limit: str) -> None:
    p = subprocess.Popen(starved(cg.cmd("logs", "-f", "f"), limit), env=cg.env(CGAGENT_DIRECT="1"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline() == "one\n"
    gated.write_text("x\n")
    out, err = p.communicate(timeout=90)
    assert (out, err, p.returncode) == ("two\n", "", 0)


def test_wait_without_an_inotify_instance_polls(cg: Env, gated: Path) -> None:
    p = subprocess.Popen(starved(cg.cmd("wait", "f")), env=cg.env(CGAGENT_DIRECT="1"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    gated.write_text("x\n")
    out, err = p.communicate(timeout=90)
    assert (out, err, p.returncode) == ("0\n", "", 0)


def test_events_follow_without_an_inotify_instance_polls(cg: Env) -> None:
    ok(cg, "run", "--name", "a", "--", "true")
    p = subprocess.Popen(starved(cg.cmd("events", "-f", "--json")), env=cg.env(CGAGENT_DIRECT="1"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    try:
        # the follower has read the log once it prints a's start: what comes next it must follow
        assert json.loads(p.stdout.readline())["name"] == "a"
        ok(cg, "run", "--name", "b", "--", "true")
        names = []
        for line in p.stdout:
            names.append(json.loads(line)["name"])
            if "b" in names:
                break
        assert "b" in names, names
    finally:
        p.terminate()   # SIGTERM: events -f exits 0
        _, err = p.communicate(timeout=60)
        cg.run("rm", "-f", "a", "b")
    assert (err, p.returncode) == ("", 0)


@LIMITS
def test_the_agents_log_stream_without_an_inotify_instance_polls(cg: Env, gated: Path, limit: str) -> None:
    """The agent's code (server.log_stream over its shared watches) in a child of the test that is
    starved as above: it sends what the stream yields back through a pipe."""
    from cgagent.api import server, watches
    from cgagent.procs import close_all_but
    from cgagent.state import Store

    r, w = os.pipe()
    client, peer = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            close_all_but({0, 1, 2, w, client.fileno()})   # earlier tests' inotify fds stay behind
            starve(limit)
            watches.WATCHES = watches.Watches()   # none inherited from an earlier test
            for chunk in server.log_stream(Store(cg.state_dir), "f", True, client):
                os.write(w, chunk)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    client.close()
    try:
        with os.fdopen(r, "rb") as f:
            assert f.readline() == b"one\n"
            gated.write_text("x\n")
            assert f.read() == b"two\n"   # to the pipe's end: the stream ended with the supervisor
    finally:
        peer.close()
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_agents_oom_watcher_without_an_inotify_instance_says_so_in_one_line(tmp_path: Path) -> None:
    """The agent's OOM watcher made its two instances before its try: starved, its thread died with
    a traceback and start() waited 10 s for a readiness that never came. Now one warning line names the
    sysctl, and the agent goes on (each kill is then logged at its workload's exit)."""
    from cgagent.oomwatch import OomWatcher
    from cgagent.procs import close_all_but
    from cgagent.state import Store

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.dup2(w, 2)
            close_all_but({0, 1, 2})
            sys.stderr = open(2, "w", buffering=1, closefd=False)   # pytest's capture object is not fd 2
            starve()
            OomWatcher(Store(str(tmp_path / "state"))).start().stop()
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        err = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, err
    assert err.startswith("cgagent: warning: OOM watcher stopped: OSError: ") and err.count("\n") == 1, err
    assert "raise fs.inotify.max_user_instances" in err, err
