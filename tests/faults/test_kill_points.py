"""A SIGKILL at each step of `run -d` (CGAGENT_FAULT=step:NAME, the process at that step kills
itself), of the supervisor (shim) and of `serve` inside its OOM journal: afterwards `ps -a` tells
the truth and `rm -f` leaves nothing (issue 10)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from cgagent import events, procs
from tests.isolated import IMG, Box, ok, ps_json, wait_for

pytest_plugins = ("tests.isolated_fixtures",)

# (step, process that reaches it): the CLI up to the fork, the forked supervisor after it
STEPS = ["record", "cgroup", "forked", "network", "place", "placed", "started", "shim"]


def _cgroup_dirs(b: Box) -> list[str]:
    return [os.path.join(dp, d) for r in b.cg.roots if os.path.isdir(r) for dp, ds, _ in os.walk(r) for d in ds]


def _kernel_procs(b: Box) -> list[int]:
    out: list[int] = []
    for r in b.cg.roots:
        for dp, _ds, _fs in os.walk(r):
            try:
                out += [int(p) for p in open(f"{dp}/cgroup.procs").read().split()]
            except OSError:
                pass
    return out


def _leftovers(b: Box) -> list[str]:
    sd = b.cg.state_dir
    files = [os.path.join(dp, f) for dp, _ds, fs in os.walk(sd) for f in fs]
    bad = [f for f in files if ".tmp." in f or f.endswith(".stopping") or "/workloads/" in f or "/oom/" in f]
    return bad + _cgroup_dirs(b) + [f"container {c}" for c in b.containers()]


def faulty(b: Box, step: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(b.cg.cmd(*args), env={**b.env(), "CGAGENT_FAULT": f"step:{step}"}, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("step", STEPS)
def test_sigkill_at_each_step_of_run_d(box: Box, step: str) -> None:
    r = faulty(box, step, "run", "-d", "--name", "k", IMG, "--", "sleep", "1000")
    rows = {row["name"]: row for row in ps_json(box)}
    alive = _kernel_procs(box)
    if "k" in rows:
        assert (rows["k"]["status"] == "running") == bool(alive), (step, rows["k"], alive, r.stderr)
    else:
        assert not alive, (step, alive)
    if r.returncode == 0:   # the CLI was not the one killed, and the workload runs
        assert rows["k"]["status"] == "running", step
    else:
        assert "Traceback" not in r.stderr, r.stderr
    if "k" in rows:
        ok(box.run("rm", "-f", "k"))
    assert ps_json(box) == [] and _kernel_procs(box) == []
    assert _leftovers(box) == [], step


@pytest.mark.parametrize("step", ["oom-intent", "oom-appended"])
def test_serve_killed_inside_the_oom_journal_logs_the_kill_once(box: Box, step: str) -> None:
    def serve(fault: str | None) -> subprocess.Popen[str]:
        env = {**box.cg.env(), **({"CGAGENT_FAULT": f"step:{fault}"} if fault else {})}
        p = subprocess.Popen([sys.executable, "-m", "cgagent", "serve", "--listen", "127.0.0.1:0"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert p.stdout is not None and "/metrics" in p.stdout.readline()
        return p

    def kills() -> list[dict[str, object]]:
        return [e for _o, e in events.read(box.cg.state_dir) if e["kind"] == "oom_kill" and e["name"] == "hog"]

    first = serve(step)
    try:
        ok(box.run("run", "-d", "--name", "hog", "--memory", "32M", "--", "sh", "-c",
                   "python3 -c 'x = bytearray(200 << 20)'; exec sleep 1000"))
        assert first.wait(30) == -signal.SIGKILL   # it died at the step, in the middle of logging the kill
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        assert first.stdout is not None
        first.stdout.close()
    second = serve(None)
    try:
        wait_for(lambda: len(kills()) >= 1)
        assert [e["kills"] for e in kills()] == [1], kills()
        [row] = ps_json(box)
        assert row["oom_kills"] == 1
    finally:
        second.terminate()
        second.wait(30)
        assert second.stdout is not None
        second.stdout.close()
    ok(box.run("rm", "-f", "hog"))
    assert [e["kills"] for e in kills()] == [1] and _leftovers(box) == []


def test_supervisor_survives_the_cli_killed_right_after_start(box: Box) -> None:
    # the CLI dies after the fork; the supervisor's "ok" then meets a closed pipe (EPIPE): it must
    # keep supervising and record the exit
    r = faulty(box, "forked", "run", "-d", "--name", "orph", "--", "sh", "-c", "sleep 0.5; exit 7")
    assert r.returncode == -signal.SIGKILL
    wait_for(lambda: json.load(open(f"{box.cg.state_dir}/workloads/orph.json"))["status"] == "exited", 20)
    rec = json.load(open(f"{box.cg.state_dir}/workloads/orph.json"))
    assert rec["exit_code"] == 7 and procs.wait_exit(rec["supervisor_pid"], rec["supervisor_start"], 10)
    exits = [e for _o, e in events.read(box.cg.state_dir) if e["kind"] == "exit" and e["name"] == "orph"]
    assert [e["exit_code"] for e in exits] == [7]
    ok(box.run("rm", "orph"))
    assert _leftovers(box) == []


def test_supervisor_argv_carries_no_secret(box: Box) -> None:
    ok(box.run("run", "-d", "--name", "sec", "-e", "DB_PASSWORD=hunter2", IMG, "--", "sleep", "1000"))
    rec = json.load(open(f"{box.cg.state_dir}/workloads/sec.json"))
    with open(f"/proc/{rec['supervisor_pid']}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    assert b"hunter2" not in b" ".join(argv) and b"cgagent.shim" in b" ".join(argv), argv
    ok(box.run("rm", "-f", "sec"))


def _status(b: Box, name: str) -> object:
    return {row["name"]: row["status"] for row in ps_json(b)}.get(name)


@pytest.mark.parametrize("step", ["record", "cgroup"])
@pytest.mark.parametrize("cmd", ["run", "restart"])
def test_a_start_killed_after_its_record_is_started_by_restart(box: Box, cmd: str, step: str) -> None:
    """`run -d` or `restart` SIGKILLed after it saved the record (created) and before any supervisor
    existed: `restart` takes the start over. It said "started again meanwhile" for good, and only
    `rm -f` (which loses the record) got out of it."""
    if cmd == "restart":
        ok(box.run("run", "-d", "--name", "k", IMG, "--", "sleep", "1000"))
        r = faulty(box, step, "restart", "-t", "1", "k")
    else:
        r = faulty(box, step, "run", "-d", "--name", "k", IMG, "--", "sleep", "1000")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert _status(box, "k") == "created"
    ok(box.run("restart", "k"))
    assert _status(box, "k") == "running" and _kernel_procs(box)
    ok(box.run("stop", "-t", "1", "k"))
    assert _status(box, "k") == "exited" and _kernel_procs(box) == []
    ok(box.run("rm", "k"))
    assert _leftovers(box) == []


def test_an_update_killed_between_record_and_kernel_is_shown_truthfully_and_completed(box: Box) -> None:
    """SIGKILL after `update` saved the new limits and before the kernel had them: `inspect` shows
    what the kernel holds, and the next update applies the interrupted change with its own."""
    def limits() -> tuple[object, object]:
        hc = json.loads(ok(box.run("inspect", "u")))[0]["HostConfig"]
        return hc["NanoCpus"], hc["Memory"]

    ok(box.run("run", "-d", "--name", "u", "--cpus", "1", "--memory", "64m", IMG, "--", "sleep", "1000"))
    r = faulty(box, "update", "update", "u", "--cpus", "0.5")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert limits() == (1_000_000_000, 64 << 20)   # the kernel's, not the record's
    ok(box.run("update", "u", "--memory", "96m"))
    assert limits() == (500_000_000, 96 << 20)
    ok(box.run("rm", "-f", "u"))
    assert _leftovers(box) == []


def _holders(path: str) -> list[int]:
    """The processes with `path` open: who holds the start lock."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == path:
                    out.append(int(pid))
                    break
            except OSError:
                continue
    return out


def test_a_start_whose_cli_died_but_whose_supervisor_goes_on_is_not_taken_over(box: Box) -> None:
    """The CLI that saved the record is killed while the supervisor it forked is still starting the
    workload: that start is not abandoned, and `restart` must not start a second one beside it."""
    lock = f"{box.cg.state_dir}/workloads/k.starting"
    cli = subprocess.Popen(box.cg.cmd("run", "-d", "--name", "k", IMG, "--", "sleep", "1000"),
                           env={**box.env(), "CGAGENT_FAULT": "stop:place"}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        # held by the CLI, the supervisor (stopped at place) and the workload's child it waits to place
        wait_for(lambda: [p for p in _holders(lock) if procs.state(p) == "T"], 30)
        cli.kill()
        cli.wait(30)
        [sup] = [p for p in _holders(lock) if procs.state(p) == "T"]
        assert cli.pid not in _holders(lock)
        r = box.run("restart", "k")
        assert r.returncode != 0 and "started again meanwhile" in r.stderr, r.stderr
        os.kill(sup, signal.SIGCONT)
        wait_for(lambda: _status(box, "k") == "running", 30)
        assert _holders(lock) == []   # let go once the record says running
    finally:
        for pid in _holders(lock):
            os.kill(pid, signal.SIGCONT)
    ok(box.run("rm", "-f", "k"))
    assert _leftovers(box) == []
