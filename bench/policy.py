"""Policies (issue 7): what `--policy` adds to `cgagent run` (pydantic + the YAML search path), how long
validating the built-ins takes, and what one controller pass costs per policy-governed workload
(the controller runs a pass a second inside `cgagent serve`)."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable

from bench.common import cgroup_parent_dirs, interleaved, remove_cgroup_tree, summary, time_cmd

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "20"))
WORKLOADS = int(os.environ.get("BENCH_POLICY_WORKLOADS", "20"))
TICKS = 50


def main() -> None:
    if os.geteuid() != 0:
        print("policy bench skipped: needs root")
        return
    from cgagent import host as hostmod
    from policies.controller import Controller
    from policies.loader import BUILTIN_DIR, catalog

    sub = f"cgagent-bench-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    tmp = tempfile.mkdtemp(prefix="cgagent-bench-", dir="/run" if os.path.isdir("/run") else None)
    state = f"{tmp}/state"
    env = dict(os.environ, CGAGENT_STATE_DIR=state, CGAGENT_CGROUP_PARENT=f"nested:{sub}")
    exe = os.path.join(os.path.dirname(sys.executable), "cgagent")
    builtins = sorted(os.path.join(BUILTIN_DIR, f) for f in os.listdir(BUILTIN_DIR))
    cases: dict[str, Callable[[], float]] = {
        "cgagent run --rm -- /bin/true": lambda: time_cmd([exe, "run", "--rm", "--", "/bin/true"], env=env),
        "... --policy burstable": lambda: time_cmd([exe, "run", "--rm", "--policy", "burstable", "--", "/bin/true"],
                                                   env=env),
        f"cgagent policy check ({len(builtins)} built-ins)": lambda: time_cmd([exe, "policy", "check", *builtins]),
    }
    try:
        for f in cases.values():
            f()
        res = interleaved(cases, ROUNDS)
        t0 = time.perf_counter()
        for _ in range(ROUNDS):
            catalog()
        load = (time.perf_counter() - t0) / ROUNDS
        names = [f"p{i}" for i in range(WORKLOADS)]
        for n in names:
            subprocess.run([exe, "run", "-d", "--name", n, "--policy", "burstable", "--", "sleep", "100000"],
                           env=env, check=True, stdout=subprocess.DEVNULL)
        ctl = Controller(state, hostmod.detect())
        ctl._reload()
        ctl._catch_up()
        ticks = []
        for _ in range(TICKS):
            t1 = time.perf_counter()
            ctl.tick()
            ticks.append(time.perf_counter() - t1)
        subprocess.run([exe, "rm", "-f", *names], env=env, check=True, stdout=subprocess.DEVNULL)
    finally:
        for d in cgroup_parent_dirs(sub):
            remove_cgroup_tree(d)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{ROUNDS} rounds, interleaved")
    for k, v in res.items():
        print(f"  {k:36} {summary(v)}")
    extra = statistics.median(res["... --policy burstable"]) - statistics.median(res["cgagent run --rm -- /bin/true"])
    print(f"  --policy adds (median)               {1e3 * extra:7.1f} ms")
    print(f"  load + validate the search path      {1e3 * load:7.2f} ms (in process, pydantic already imported)")
    med = statistics.median(ticks)
    print(f"  controller pass, {WORKLOADS} workloads         {summary(ticks)}")
    print(f"    = {1e6 * med / WORKLOADS:.0f} µs per workload; {100 * med:.2f}% of one CPU at one pass a second")


if __name__ == "__main__":
    main()
