"""Launch latency (issue 2): `cgagent run -- /bin/true` beside `python3 -c pass` and `runc run` of a
busybox bundle with the same limits, in one run. The agent's own cost is its time minus Python's
start-up; the target is that it does not exceed runc's whole time. BENCH_BASELINE=DIR (a checkout of
an earlier commit) adds that tree's `cgagent run` to the same interleaved rounds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid

from bench.common import PYTHON, RUNC, busybox_rootfs, measure, parent_env, report_launch, time_cmd

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "30"))
LIMITS = {"cpus": 0.5, "memory": 256 << 20, "pids": 64}


def limit_flags() -> list[str]:
    """LIMITS as `cgagent run`'s flags (runc_bundle writes the same into runc's config)."""
    return ["--cpus", str(LIMITS["cpus"]), "--memory", str(LIMITS["memory"]), "--pids-limit", str(LIMITS["pids"])]


def true_run(cli: list[str], *flags: str) -> list[str]:
    """`cgagent run --rm FLAGS LIMITS -- /bin/true`, the launch the benches time (runc's bundle runs the same)."""
    return [*cli, "run", "--rm", *flags, *limit_flags(), "--", "/bin/true"]


def runc_bundle(d: str, parent: str, cgroups_path: str | None = None) -> None:
    """A busybox bundle running /bin/true with LIMITS, in cgroup `parent`/runc-bench (runc's
    cgroupfs driver), or at `cgroups_path` as given (runc --systemd-cgroup: "SLICE:PREFIX:NAME")."""
    busybox_rootfs(f"{d}/rootfs")
    subprocess.run(["runc", "spec"], cwd=d, check=True)
    with open(f"{d}/config.json") as f:
        cfg = json.load(f)
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["/bin/true"]
    cfg["linux"]["cgroupsPath"] = cgroups_path or f"{parent}/runc-bench"
    cfg["linux"]["resources"].update({
        "cpu": {"quota": int(LIMITS["cpus"] * 100000), "period": 100000},
        "memory": {"limit": LIMITS["memory"]},
        "pids": {"limit": LIMITS["pids"]},
    })
    with open(f"{d}/config.json", "w") as f:
        json.dump(cfg, f)


def main() -> None:
    if os.geteuid() != 0:
        print("launch bench skipped: needs root")
        return
    sub = f"cgagent-bench-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    # state on tmpfs, as the default /run/cgagent is
    tmp = tempfile.mkdtemp(prefix="cgagent-bench-", dir="/run" if os.path.isdir("/run") else None)
    env = dict(os.environ, CGAGENT_STATE_DIR=f"{tmp}/state", **parent_env(sub))
    cgagent = true_run([os.path.join(os.path.dirname(sys.executable), "cgagent")])
    cases = {
        PYTHON: lambda: time_cmd([sys.executable, "-c", "pass"]),
        "cgagent run -- /bin/true": lambda: time_cmd(cgagent, env=env),
    }
    base = os.environ.get("BENCH_BASELINE")
    if base:
        # "no slower than before": the same run from a checkout of an earlier commit (e.g. `git worktree
        # add /tmp/base REV`), both started as `python -m cgagent` from their own tree, interleaved
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        argv = [sys.executable, "-m", "cgagent", *cgagent[1:]]
        cases["python -m cgagent, this tree"] = lambda: time_cmd(argv, env=env, cwd=here)
        cases[f"python -m cgagent, {base}"] = lambda: time_cmd(argv, env=env, cwd=base)
    have_runc = shutil.which("runc") is not None
    runc_root = f"{tmp}/runc-state"
    if have_runc:
        runc_bundle(f"{tmp}/bundle", f"/{sub}")
        n = iter(range(10**6))
        cases[RUNC] = lambda: time_cmd(
            ["runc", "--root", runc_root, "run", "--bundle", f"{tmp}/bundle", f"bench-{next(n)}"])
    report_launch(measure(cases, ROUNDS, sub, tmp), "cgagent run -- /bin/true", ROUNDS)

if __name__ == "__main__":
    main()
