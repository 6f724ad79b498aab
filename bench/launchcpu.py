"""Where a launch's CPU goes, per process: for N back-to-back launches of each kind (`python3 -c
pass`, `runc run`, `runc --systemd-cgroup run` and `systemd-run --scope` (one transient scope with the same limits:
systemd's own floor for a launch) where systemd is PID 1, `cgagent run` direct and
through an agent, and on a systemd host the agent with the cgroupfs driver too), the CPU time per
launch of the clients, the agent, its launcher with the runners it reaped (a launch's own work),
systemd, the D-Bus daemon, journald, logind, and the whole machine (/proc/stat), beside the wall time.

Why not interleaved, as `bench launches` is: a launch leaves work behind (systemd processes the
scope's stop after the client has exited), and interleaving would charge it to whichever launch
comes next. Back to back, a kind's trailing work falls on its own next launch, and a 2 s pause
after each kind's last launch lets its tail be counted before the next kind starts.
BENCH_ROUNDS (default 10) launches per kind. Run it where the question is, in the cgroup v2 +
systemd VM: `BENCH_VM="launches launchcpu" python -m bench vm`."""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable

from bench.common import (
    CGAGENT,
    DRIVER_SYSTEMD,
    busybox_rootfs,
    cgroup_parent_dirs,
    parent_env,
    remove_cgroup_tree,
)
from bench.launch import LIMITS, runc_bundle, true_run
from bench.launches import start_agent

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "10"))
SETTLE = 2.0   # seconds after a kind's last launch: its trailing work (a scope's stop) is counted
CLK = os.sysconf("SC_CLK_TCK")
DAEMONS = {"dbus-daemon": "dbus", "dbus-broker": "dbus", "systemd-journal": "journald",
           "systemd-logind": "logind"}   # comm (15 bytes at most) -> column
Ticks = dict[str, int]


def _ticks(pid: int, children: bool = False) -> int:
    """utime + stime of `pid` (all its threads), plus what its reaped children used with `children`."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2:].split()
    return sum(int(x) for x in fields[11:15 if children else 13])


def _machine() -> int:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4]   # all but idle and iowait


def _daemons() -> Ticks:
    out: Ticks = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/comm") as f:
                col = DAEMONS.get(f.read().strip())
        except OSError:
            continue
        if col is not None:
            out[col] = out.get(col, 0) + _ticks(int(p))
    return out


def _launcher(agent: int) -> int | None:
    """The agent's launcher: its one child process (cgagent.api.launcher)."""
    try:
        with open(f"/proc/{agent}/task/{agent}/children") as f:
            kids = f.read().split()
    except OSError:
        return None
    return int(kids[0]) if len(kids) == 1 else None


def _snapshot(agent: int | None) -> Ticks:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    out: Ticks = {"machine": _machine(), "clients": round((ru.ru_utime + ru.ru_stime) * CLK), **_daemons()}
    if DRIVER_SYSTEMD:
        out["systemd"] = _ticks(1, children=True)   # and what it reaped: keepers, runc's leftovers
    if agent is not None:
        out["agent"] = _ticks(agent)
        launcher = _launcher(agent)
        if launcher is not None:
            out["launcher+runners"] = _ticks(launcher, children=True)
    return out


def _kind(label: str, argv: Callable[[], list[str]], env: dict[str, str], agent: int | None) -> None:
    first = subprocess.run(argv(), env=env, capture_output=True, text=True)   # warm caches, check it works
    if first.returncode != 0:
        print(f"  {label}: exited {first.returncode}: {first.stderr.strip()[-200:]}")
        return
    time.sleep(SETTLE)
    before, walls = _snapshot(agent), []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        subprocess.run(argv(), env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        walls.append(time.perf_counter() - t0)
    time.sleep(SETTLE)
    after = _snapshot(agent)
    per = {k: 1e3 * (after[k] - before.get(k, 0)) / CLK / ROUNDS for k in after}
    other = per["machine"] - sum(v for k, v in per.items() if k != "machine")
    cols = "  ".join(f"{k} {v:.0f}" for k, v in per.items() if k != "machine" and v >= 0.5)
    print(f"  {label:40} wall {1e3 * statistics.median(walls):7.1f} ms | CPU ms per launch: "
          f"machine {per['machine']:.0f} = {cols}  other {other:.0f}", flush=True)


def main() -> None:
    if os.geteuid() != 0:
        print("launchcpu bench skipped: needs root")
        return
    sub = f"cgagent-bench-cpu-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    tmp = tempfile.mkdtemp(prefix="cgagent-bench-cpu-", dir="/dev/shm")   # state on tmpfs, as /run is
    env = dict(os.environ, CGAGENT_STATE_DIR=f"{tmp}/cgagent", CGAGENT_ROOT=f"{tmp}/store", **parent_env(sub))
    env.pop("CGAGENT_DIRECT", None)
    run = true_run(CGAGENT)
    n = iter(range(10**6))
    print(f"{ROUNDS} launches of each kind, back to back; kernel {os.uname().release}; "
          f"cgroup {'v2' if os.path.exists('/sys/fs/cgroup/cgroup.controllers') else 'v1'}, "
          f"{'systemd' if DRIVER_SYSTEMD else 'cgroupfs'} driver")
    agent = None
    try:
        _kind("python3 -c pass", lambda: [sys.executable, "-c", "pass"], env, None)
        if shutil.which("runc"):
            busybox_rootfs(f"{tmp}/rootfs")
            runc_bundle(f"{tmp}/bundle", f"/{sub}")
            _kind("runc run", lambda: ["runc", "--root", f"{tmp}/runc", "run", "--bundle", f"{tmp}/bundle",
                                       f"cpu-{next(n)}"], env, None)
            if DRIVER_SYSTEMD:
                runc_bundle(f"{tmp}/bundle-sd", "", cgroups_path=f"system.slice:{sub}:runc")
                _kind("runc --systemd-cgroup run", lambda: ["runc", "--systemd-cgroup", "--root", f"{tmp}/runc", "run",
                                                            "--bundle", f"{tmp}/bundle-sd", f"sd-{next(n)}"], env, None)
        if DRIVER_SYSTEMD and shutil.which("systemd-run"):   # the floor: one transient scope, nothing else asked
            props = [f"MemoryMax={LIMITS['memory']}", f"CPUQuota={LIMITS['cpus'] * 100:g}%",
                     f"TasksMax={LIMITS['pids']}"]
            _kind("systemd-run --scope (same limits)", lambda: [
                "systemd-run", "--quiet", "--scope", "--slice", "system.slice",
                *(a for p in props for a in ("-p", p)), "/bin/true"], env, None)
        _kind("cgagent run (direct)", lambda: run, dict(env, CGAGENT_DIRECT="1"), None)
        agent = start_agent(CGAGENT, env)
        _kind("cgagent run (agent)", lambda: run, env, agent.pid)
        if DRIVER_SYSTEMD:   # like for like with runc's default driver
            fs = true_run(CGAGENT, "--cgroup-driver", "cgroupfs", "--cgroup-parent", f"/{sub}")
            _kind("cgagent run (agent, cgroupfs driver)", lambda: fs, env, agent.pid)
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=60)
        for d in cgroup_parent_dirs(sub):
            remove_cgroup_tree(d)
        shutil.rmtree(tmp, ignore_errors=True)
    print("  (clients: the launching commands and what they reaped; launcher+runners: the agent's launcher and"
          " the runners it reaped, the launch's own work; systemd: PID 1 and what it reaped, keepers included)")


if __name__ == "__main__":
    main()
