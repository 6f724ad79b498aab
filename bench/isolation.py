"""Isolated launch latency (issue 4): `cgagent run --rm IMG -- /bin/true` with all namespaces, an
overlay root and cgroup limits, beside `runc run` of an equivalent busybox bundle, `bwrap
--unshare-all` and `python3 -c pass`, interleaved in one run. Target: the agent's own cost (its
time minus Python's start-up) no more than runc's whole time."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid

from bench.common import PYTHON, RUNC, busybox_rootfs, measure, parent_env, report_launch, time_cmd
from bench.launch import limit_flags, runc_bundle

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "30"))


def main() -> None:
    if os.geteuid() != 0:
        print("isolation bench skipped: needs root")
        return
    sub = f"cgagent-bench-iso-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    tmp = tempfile.mkdtemp(prefix="cgagent-bench-iso-")
    env = dict(os.environ, CGAGENT_STATE_DIR=f"{tmp}/state", **parent_env(sub),
               CGAGENT_ROOT=f"{tmp}/store")
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure with .pyc files, as users run it
    cli = os.path.join(os.path.dirname(sys.executable), "cgagent")
    rootfs = f"{tmp}/rootfs"
    busybox_rootfs(rootfs)
    with tarfile.open(f"{tmp}/busybox.tar", "w") as tf:
        tf.add(rootfs, arcname=".")
    subprocess.run([cli, "image", "import", f"{tmp}/busybox.tar", "--name", "bench:1"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    # --net none, as runc's bundle (a netns with lo only); and bridging here would build cgagent0 and
    # NAT rules in this machine's own netns (bench/network.py measures bridging inside its own).
    limits = ["--net", "none", *limit_flags()]
    cases = {
        PYTHON: lambda: time_cmd([sys.executable, "-c", "pass"]),
        "cgagent run --rm IMG /bin/true": lambda: time_cmd([cli, "run", "--rm", *limits, "bench:1", "--",
                                                            "/bin/true"], env=env),
    }
    if shutil.which("bwrap"):
        cases["bwrap --unshare-all"] = lambda: time_cmd(
            ["bwrap", "--unshare-all", "--ro-bind", rootfs, "/", "--proc", "/proc", "--dev", "/dev", "/bin/true"])
    have_runc = shutil.which("runc") is not None
    if have_runc:
        runc_bundle(f"{tmp}/bundle", f"/{sub}")
        n = iter(range(10**6))
        cases[RUNC] = lambda: time_cmd(
            ["runc", "--root", f"{tmp}/runc-state", "run", "--bundle", f"{tmp}/bundle", f"bench-iso-{next(n)}"])
    report_launch(measure(cases, ROUNDS, sub, tmp), "cgagent run --rm IMG /bin/true", ROUNDS)

if __name__ == "__main__":
    main()
