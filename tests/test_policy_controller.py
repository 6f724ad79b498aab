"""Acceptance for the policy controller inside a real `cgagent serve`, on this machine's real cgroups
(issue 7): the throttling response steps the CPU quota up to its ceiling and back down, OOM kills
raise the memory limit (live, or for the next run) or stop the workload; every action is an event
in `cgagent events` and a sample of cgagent_policy_actions_total on /metrics."""

from __future__ import annotations

import json
import math
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from policies.loader import parse_text
from tests.conftest import Env
from tests.exporter_helpers import Agent, agent, value

pytestmark = [pytest.mark.root, pytest.mark.slow]

INTERVAL = 1.0   # the controller's sampling interval (policies.controller.INTERVAL)

STEPS = """\
name: fast-steps
description: test policy with quick quota steps
limits:
  cpus: 0.2
throttling:
  threshold: 0.2
  for: 2s
  step: 0.5
  ceiling: 1.2
  idle_for: 2s
  idle_usage: 0.5
"""

OOM_MORE = """\
name: grow-mem
limits:
  memory: 32M
oom:
  action: restart-with-more-memory
  step: 16M
  ceiling: 64M
"""

OOM_RESTART = """\
name: grow-and-restart
limits:
  memory: 32M
restart: on-failure:3
oom:
  action: restart-with-more-memory
  step: 32M
  ceiling: 128M
"""

OOM_STOP = """\
name: stop-on-oom
limits:
  memory: 32M
oom:
  action: stop
"""

# two busy processes (a 2-CPU demand) that spin while the flag file exists, then the workload idles
SPIN = 'while [ -e "$0" ]; do :; done'
DEMAND = f"sh -c '{SPIN}' \"$0\" & sh -c '{SPIN}' \"$0\" & exec sleep 100000"
# a child that allocates far more than the limit (the OOM killer picks it); the workload lives on
HOG = f"{sys.executable} -c 'x = b\"x\" * (200 << 20)'"


@pytest.fixture
def policy_dir(tmp_path: Any) -> str:
    d = os.path.join(str(tmp_path), "policies.d")
    os.makedirs(d)
    for text in (STEPS, OOM_MORE, OOM_RESTART, OOM_STOP):
        ld = parse_text(text, "inline")
        assert ld.ok, ld.problems
        with open(os.path.join(d, f"{ld.key}.yaml"), "w") as f:
            f.write(text)
    return d


class EventFollower:
    """`cgagent events --follow --json` (inotify-driven): wait for events without polling the log."""

    def __init__(self, cg: Env) -> None:
        self.proc = cg.popen("events", "--follow", "--json", stdout=subprocess.PIPE)
        self.seen: list[dict[str, Any]] = []
        self._buf = b""

    def wait(self, pred: Callable[[list[dict[str, Any]]], bool], timeout: float) -> bool:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while not pred(self.seen):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return pred(self.seen)
                self._buf += chunk
                *lines, self._buf = self._buf.split(b"\n")
                self.seen += [json.loads(x) for x in lines if x.strip()]
        return True

    def policy(self, name: str, action: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.seen if e.get("kind") == "policy" and e.get("name") == name
                and (action is None or e.get("action") == action)]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def follow(cg: Env) -> Iterator[EventFollower]:
    f = EventFollower(cg)
    try:
        yield f
    finally:
        f.stop()


def record(cg: Env, name: str) -> dict[str, Any]:
    with open(f"{cg.state_dir}/workloads/{name}.json") as f:
        return json.load(f)  # type: ignore[no-any-return]


def cgroup_file(rec: dict[str, Any], ctrl: str, name: str) -> str:
    d = rec["dirs"].get(ctrl, rec["dirs"].get(""))
    with open(f"{d}/{name}") as f:
        return f.read().strip()


def quota_cpus(rec: dict[str, Any]) -> float:
    """The quota the kernel holds (v1 cpu.cfs_quota_us, v2 cpu.max), in CPUs."""
    if "cpu" in rec["dirs"]:
        return int(cgroup_file(rec, "cpu", "cpu.cfs_quota_us")) / int(cgroup_file(rec, "cpu", "cpu.cfs_period_us"))
    q, p = cgroup_file(rec, "", "cpu.max").split()
    return int(q) / int(p)


def memory_limit(rec: dict[str, Any]) -> int:
    return int(cgroup_file(rec, "memory", "memory.limit_in_bytes" if "memory" in rec["dirs"] else "memory.max"))


def run_detached(cg: Env, *args: str) -> None:
    r = cg.run("run", "-d", *args)
    assert r.returncode == 0, r.stderr


def step_bound(text: str) -> tuple[int, float]:
    """(steps from floor to ceiling, seconds the policy allows for them): each step needs `for`
    seconds of throttling, observed at the controller's sampling interval; plus start-up slack."""
    ld = parse_text(text, "inline")
    assert ld.policy is not None and ld.policy.throttling is not None and ld.policy.limits.cpus is not None
    t = ld.policy.throttling
    ceiling = min(t.ceiling, os.cpu_count() or 1)
    steps = math.ceil((ceiling - ld.policy.limits.cpus) / t.step - 1e-9)
    return steps, steps * (t.for_ + INTERVAL) + 10.0


def test_throttled_workload_steps_up_to_its_ceiling(cg: Env, policy_dir: str, follow: EventFollower,
                                                    tmp_path: Any) -> None:
    flag = os.path.join(str(tmp_path), "spin")
    open(flag, "w").close()
    steps, bound = step_bound(STEPS)
    # the policy's own timing is the lower bound asserted below (each step after `for` seconds of
    # throttling); how soon the machine lets the workload get throttled is not the test's business:
    # the wait only guards against a hang (the climb's duration is measured by `make bench`)
    bound *= 6
    assert steps == 2   # 0.2 -> 0.7 -> 1.2
    cg.favour_cpu()   # throttling needs the 2-CPU demand to exhaust its quota on a loaded machine
    with agent(cg, "--policy-dir", policy_dir) as a:
        t0 = time.monotonic()
        run_detached(cg, "--name", "hot", "--policy", "fast-steps", "--policy-dir", policy_dir,
                     "--", "sh", "-c", DEMAND, flag)
        rec = record(cg, "hot")
        assert rec["policy"] == "fast-steps"
        assert quota_cpus(rec) == pytest.approx(0.2)   # the policy's limits were the base
        reached = follow.wait(lambda _: len(follow.policy("hot", "cpu_step_up")) >= steps, bound)
        elapsed = time.monotonic() - t0
        ups = follow.policy("hot", "cpu_step_up")
        assert reached, f"{len(ups)} of {steps} steps within {bound:.0f}s: {ups}"
        assert elapsed >= steps * 2.0   # `for: 2s` of throttling before each step
        assert ups[1]["time"] - ups[0]["time"] >= 1.5   # another full `for` at the new quota (less the logging jitter)
        assert [e["to_cpus"] for e in ups] == pytest.approx([0.7, 1.2])
        assert [e["from_cpus"] for e in ups] == pytest.approx([0.2, 0.7])
        assert all(e["throttled_ratio"] > 0.2 and e["policy"] == "fast-steps" for e in ups)
        assert quota_cpus(record(cg, "hot")) == pytest.approx(1.2)   # the kernel holds the ceiling
        # each step in `cgagent events` (the human form) ...
        out = cg.run("events", "hot", check=True).stdout
        assert out.count("action=cpu_step_up") == steps, out
        for to in ("0.7", "1.2"):
            assert f"to_cpus={to}" in out
        # ... and in the metric, which labels the workload's own series with its policy too
        samples = a.samples()
        assert value(samples, "cgagent_policy_actions_total", policy="fast-steps", action="cpu_step_up") == steps
        assert value(samples, "container_spec_cpu_quota", name="hot", policy="fast-steps") == 120000
        os.unlink(flag)   # stop spinning: no throttling, near-zero usage -> back down to the floor
        assert follow.wait(lambda _: len(follow.policy("hot", "cpu_step_down")) >= steps, bound), \
            follow.policy("hot")
        downs = follow.policy("hot", "cpu_step_down")
        assert [e["to_cpus"] for e in downs] == pytest.approx([0.7, 0.2])
        assert quota_cpus(record(cg, "hot")) == pytest.approx(0.2)
        assert value(a.samples(), "cgagent_policy_actions_total", policy="fast-steps", action="cpu_step_down") == steps
    assert cg.run("rm", "-f", "hot").returncode == 0


def test_oom_kill_raises_memory_live(cg: Env, policy_dir: str, follow: EventFollower) -> None:
    with agent(cg, "--policy-dir", policy_dir) as a:
        run_detached(cg, "--name", "hog", "--policy", "grow-mem", "--policy-dir", policy_dir,
                     "--", "sh", "-c", f"{HOG}; exec sleep 100000")
        assert follow.wait(lambda _: bool(follow.policy("hog", "memory_step_up")), 30), follow.seen
        ev = follow.policy("hog", "memory_step_up")[0]
        assert (ev["from_memory"], ev["to_memory"], ev["applied"]) == (32 << 20, 48 << 20, "live")
        rec = record(cg, "hog")
        assert rec["status"] == "running" and memory_limit(rec) == 48 << 20
        assert value(a.samples(), "cgagent_policy_actions_total", policy="grow-mem", action="memory_step_up") == 1
    assert cg.run("rm", "-f", "hog").returncode == 0


def test_oom_kill_of_the_main_process_raises_memory_of_the_next_run(cg: Env, policy_dir: str,
                                                                    follow: EventFollower) -> None:
    with agent(cg, "--policy-dir", policy_dir):
        run_detached(cg, "--name", "job", "--policy", "grow-mem", "--policy-dir", policy_dir,
                     "--", sys.executable, "-c", "x = b'x' * (200 << 20)")
        assert follow.wait(lambda _: bool(follow.policy("job", "memory_step_up")), 30), follow.seen
        ev = follow.policy("job", "memory_step_up")[0]
        assert ev["to_memory"] == 48 << 20
        assert cg.run("rm", "-f", "job").returncode == 0
        run_detached(cg, "--name", "job", "--policy", "grow-mem", "--policy-dir", policy_dir,
                     "--", "sleep", "100000")
        rec = record(cg, "job")
        assert rec["resources"]["memory"] == 48 << 20 and memory_limit(rec) == 48 << 20
        # an explicit --memory still wins over what the controller learned
        run_detached(cg, "--name", "job2", "--policy", "grow-mem", "--policy-dir", policy_dir,
                     "--memory", "40M", "--", "sleep", "100000")
        assert record(cg, "job2")["resources"]["memory"] == 40 << 20
    assert cg.run("rm", "-f", "job", "job2").returncode == 0


def test_oom_kill_restarts_the_workload_with_more_memory(cg: Env, policy_dir: str, follow: EventFollower) -> None:
    # needs ~50M (Python + 40M); the first run at 32M is OOM-killed, the supervisor restarts it (the
    # policy's restart: on-failure:3) in the same cgroup, which the controller has raised to 64M by then
    job = "import time; time.sleep(3); x = b'x' * (40 << 20); print('done')"
    with agent(cg, "--policy-dir", policy_dir):
        run_detached(cg, "--name", "grower", "--policy", "grow-and-restart", "--policy-dir", policy_dir,
                     "--", sys.executable, "-c", job)
        assert record(cg, "grower")["restart"] == "on-failure:3"   # the policy's restart policy
        done = follow.wait(lambda s: any(e["kind"] == "exit" and e["name"] == "grower" for e in s), 60)
        assert done, follow.seen
    kinds = [(e["kind"], e.get("action")) for e in follow.seen if e["name"] == "grower"]
    assert kinds.index(("oom_kill", None)) < kinds.index(("policy", "memory_step_up")) < kinds.index(("exit", None))
    assert ("restart", None) in kinds
    step = follow.policy("grower", "memory_step_up")[0]
    assert (step["from_memory"], step["to_memory"], step["restart"]) == (32 << 20, 64 << 20, "on-failure:3")
    # "restart": answered between two runs (the next one runs with it); "live": the restarted process
    # was already running and got it in its cgroup
    assert step["applied"] in ("live", "restart")
    rec = record(cg, "grower")
    assert rec["exit_code"] == 0 and rec["restarts"] >= 1 and rec["resources"]["memory"] >= 64 << 20
    assert cg.run("rm", "-f", "grower").returncode == 0


def test_oom_stop_policy_stops_the_workload(cg: Env, policy_dir: str, follow: EventFollower) -> None:
    with agent(cg, "--policy-dir", policy_dir) as a:
        run_detached(cg, "--name", "victim", "--policy", "stop-on-oom", "--policy-dir", policy_dir,
                     "--", "sh", "-c", f"{HOG}; exec sleep 100000")
        assert follow.wait(lambda _: bool(follow.policy("victim", "oom_stop")), 30), follow.seen
        assert follow.policy("victim", "oom_stop")[0]["applied"] == "live"
        assert follow.wait(lambda s: any(e["kind"] == "exit" and e["name"] == "victim" for e in s), 30)
        assert record(cg, "victim")["status"] == "exited"
        assert value(a.samples(), "cgagent_policy_actions_total", policy="stop-on-oom", action="oom_stop") == 1
    assert cg.run("rm", "-f", "victim").returncode == 0


def test_serve_refuses_a_missing_policy_dir(cg: Env) -> None:
    a: Agent | None = None
    with pytest.raises(AssertionError, match="is not a directory"):
        a = Agent(cg, "--policy-dir", "/nonexistent/policies")
    assert a is None
