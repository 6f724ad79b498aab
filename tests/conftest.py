"""Shared fixtures: every test that touches the kernel gets its own state dir and its own cgroup
parent (nested under this process's cgroups), and both are removed even when the test fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from cgagent import host as hostmod
from tests.tiers import pytest_terminal_summary  # noqa: F401  (prints which test tiers ran)

# Isolated workloads default to --net bridge, which would build cgagent0 and NAT rules in the
# machine's own network namespace: the suite defaults to none, and the network tests ask for
# bridge explicitly, inside namespaces they create.
os.environ["CGAGENT_DEFAULT_NET"] = "none"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the `prometheus` fixture (a real Prometheus server) lives in tests/prom.py
pytest_plugins = ["tests.prom"]


def _kill_and_rmdir(top: str) -> list[str]:
    """Kill every process under `top`, then rmdir bottom-up. Returns what could not be removed."""
    if not os.path.isdir(top):
        return []
    for _ in range(200):
        pids = []
        for d, _dirs, _files in os.walk(top):
            try:
                pids += [int(p) for p in open(os.path.join(d, "cgroup.procs")).read().split()]
            except OSError:
                pass
        if not pids:
            break
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # reap our own children if any; others are reaped by their parents
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        import time

        time.sleep(0.01)
    left = []
    for d, _dirs, _files in os.walk(top, topdown=False):
        try:
            os.rmdir(d)
        except OSError:
            left.append(d)
    return left


@dataclass
class Env:
    """Where one test's workloads live, and how to call the CLI against them."""

    state_dir: str
    parent: str                  # value for --cgroup-parent / CGAGENT_CGROUP_PARENT
    roots: list[str] = field(default_factory=list)   # absolute parent dirs, one per hierarchy
    agent: bool = False          # an agent serves this state dir: the CLI goes through its API

    def env(self, **extra: str) -> dict[str, str]:
        e = dict(os.environ, CGAGENT_STATE_DIR=self.state_dir, CGAGENT_CGROUP_PARENT=self.parent)
        e.update(extra)
        return e

    def cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cgagent", *args]

    def run(self, *args: str, timeout: float = 60, check: bool = False,
            **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd(*args), env=self.env(), capture_output=True, text=True,
                              timeout=timeout, check=check, **kw)  # type: ignore[call-overload]

    def popen(self, *args: str, **kw: object) -> subprocess.Popen[str]:
        return subprocess.Popen(self.cmd(*args), env=self.env(), text=True, **kw)  # type: ignore[call-overload]

    def favour_cpu(self) -> None:
        """Give this test's own parent cgroup the largest CPU weight (v1 cpu.shares 262144, v2
        cpu.weight 10000), so that on a loaded machine (load 18 on 2 CPUs here) a workload under a
        CPU quota still gets what its quota allows and is throttled. Only for workloads under a
        quota: the quota bounds what the weight takes from the rest of the machine."""
        for root in self.roots:
            os.makedirs(root, exist_ok=True)
            for f, v in (("cpu.shares", "262144"), ("cpu.weight", "10000")):
                if os.path.exists(f"{root}/{f}"):
                    with open(f"{root}/{f}", "w") as fh:
                        fh.write(v)


def parent_roots(sub: str) -> list[str]:
    h = hostmod.detect()
    if h.is_v2:
        assert h.v2_mount
        return [os.path.normpath(f"{h.v2_mount}/{h.own_cgroup.get('', '/')}/{sub}")]
    return sorted({os.path.normpath(f"{m}/{h.own_cgroup.get(c, '/')}/{sub}") for c, m in h.v1_mounts.items()})


AGENT_MODE = os.environ.get("CGAGENT_TEST_AGENT") == "1"


def _start_agent(e: Env) -> subprocess.Popen[str]:
    """CGAGENT_TEST_AGENT=1: every test's CLI calls go through an agent on its state dir (the CLI
    suites must pass both ways; the exporter tests start their own agent and cannot run so).
    tests/test_agent_mode.py runs a set of CLI tests so inside `make test`."""
    from cgagent.api.server import confinement

    # a confined agent declines run/stop/rm and the CLI does them directly: the tests would pass
    # without proving anything about the agent's path
    why = confinement()
    assert why is None, f"CGAGENT_TEST_AGENT=1 needs an agent that can launch workloads, but {why}"
    p = subprocess.Popen(e.cmd("serve", "--listen", "127.0.0.1:0"), env=e.env(), text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and "/metrics" in p.stdout.readline(), p.communicate(timeout=30)
    return p


def _stop_agent(e: Env, p: subprocess.Popen[str]) -> None:
    # an agent that died mid-test would have let the CLI fall back to its direct path unnoticed
    alive = p.poll() is None
    p.terminate()
    try:
        err = p.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired:
        p.kill()   # by its PID: never left behind, and the hang is the failure
        err = p.communicate()[1] + "\n(did not stop within 30 s of SIGTERM: killed)"
    assert alive, f"the test's agent died during the test (exit {p.returncode}): {err[-2000:]}"
    assert p.returncode == 0, f"the test's agent exited {p.returncode} on SIGTERM: {err[-2000:]}"
    assert not os.path.exists(f"{e.state_dir}/agent.sock"), "the agent left its socket behind"


@pytest.fixture
def cg(tmp_path: object) -> Iterator[Env]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create cgroups (CI runs as root)")
    sub = f"cgagent-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    e = Env(state_dir=str(tmp_path) + "/state", parent=f"nested:{sub}", roots=parent_roots(sub), agent=AGENT_MODE)
    agent = _start_agent(e) if e.agent else None
    try:
        yield e
    finally:
        try:
            if agent is not None:
                _stop_agent(e, agent)
        finally:
            left = [d for r in e.roots for d in _kill_and_rmdir(r)]
            assert not left, f"cgroups left behind: {left}"
