"""Helpers shared by the benchmarks: timing whole commands, a private cgroup parent, a busybox bundle."""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from cgagent import host as hostmod

# `cgagent` as its console script runs it (cgagent.__main__.main), with this interpreter and the
# tree on PYTHONPATH: `python -m cgagent` would add runpy's imports, which a user's command never pays
CGAGENT = [sys.executable, "-c", "import sys; from cgagent.__main__ import main; sys.exit(main())"]

# the driver a user of this host gets by default: systemd where it is PID 1 (the v2 VM), else cgroupfs
DRIVER_SYSTEMD = hostmod.detect().init_is_systemd


def parent_env(sub: str) -> dict[str, str]:
    """The cgroup parent of a bench's cgagent runs: `sub`, nested under the bench's own cgroup, with the
    cgroupfs driver; with the systemd driver (nested: is the cgroupfs driver's only) its default slice,
    where --rm runs leave nothing behind."""
    return {} if DRIVER_SYSTEMD else {"CGAGENT_CGROUP_PARENT": f"nested:{sub}"}


def time_cmd(argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


SETTLE = float(os.environ.get("BENCH_SETTLE", "0.1"))


def interleaved(cases: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each case once per round, in turn, so machine noise hits all of them alike; SETTLE
    seconds (BENCH_SETTLE) before each, so that what a case leaves running (an agent's runner
    removing what its run did not use, forking the next) ends before the next case is timed
    instead of being charged to it (0: back to back, as a script's loop runs them)."""
    out: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for k, f in cases.items():
            if SETTLE:
                time.sleep(SETTLE)
            out[k].append(f())
    return out


def summary(samples: list[float]) -> str:
    return (f"median {1e3 * statistics.median(samples):7.1f} ms   "
            f"p10 {1e3 * sorted(samples)[len(samples) // 10]:7.1f}   max {1e3 * max(samples):7.1f}")


def cgroup_parent_dirs(sub: str) -> list[str]:
    """`sub` nested under our own cgroup, and at the root, in EVERY mounted hierarchy: runc creates its
    cgroupsPath at the hierarchy roots, in named and unified hierarchies too."""
    h = hostmod.detect()
    out = set()
    for line in open("/proc/self/mountinfo"):
        left, _, right = line.partition(" - ")
        if right.split()[0] in ("cgroup", "cgroup2"):
            mount = left.split()[4]
            out.add(os.path.normpath(f"{mount}/{sub}"))
            for own in h.own_cgroup.values():
                out.add(os.path.normpath(f"{mount}/{own}/{sub}"))
    return sorted(out)


def remove_cgroup_tree(top: str) -> None:
    """Kill what is left under `top` (ours), then rmdir bottom-up."""
    if not os.path.isdir(top):
        return
    for d, _dirs, _files in os.walk(top):
        try:
            for p in open(os.path.join(d, "cgroup.procs")).read().split():
                os.kill(int(p), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + 5
    for d, _dirs, _files in os.walk(top, topdown=False):
        while True:
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)


def busybox_rootfs(root: str) -> None:
    """A minimal rootfs from Debian's busybox-static: /bin/busybox plus applet links."""
    bb = shutil.which("busybox") or "/bin/busybox"
    os.makedirs(f"{root}/bin", exist_ok=True)
    shutil.copy(bb, f"{root}/bin/busybox")
    for applet in ("sh", "true", "ps", "hostname", "ip", "cat", "ls", "sleep"):
        if not os.path.exists(f"{root}/bin/{applet}"):
            os.symlink("busybox", f"{root}/bin/{applet}")
    for d in ("proc", "dev", "sys", "tmp", "etc"):
        os.makedirs(f"{root}/{d}", exist_ok=True)


PYTHON = "python3 -c pass"
RUNC = "runc run (busybox, same limits)"
RUNC_SYSTEMD = "runc --systemd-cgroup run (the same)"


def measure(cases: dict[str, Callable[[], float]], rounds: int, sub: str, tmp: str) -> dict[str, list[float]]:
    """Warm every case once, run them interleaved, then remove the benchmark's cgroups and files."""
    try:
        for f in cases.values():
            f()
        return interleaved(cases, rounds)
    finally:
        for d in cgroup_parent_dirs(sub):
            remove_cgroup_tree(d)
        shutil.rmtree(tmp, ignore_errors=True)


def report_launch(res: dict[str, list[float]], ours_key: str, rounds: int) -> None:
    """Medians, the agent's own cost (its time minus Python's start-up) and the ratios to the others;
    the target every launch benchmark shares: own cost no more than runc's whole time."""
    print(f"{rounds} rounds, interleaved; kernel {os.uname().release}; load {os.getloadavg()[0]:.1f}")
    for k, v in res.items():
        print(f"  {k:34} {summary(v)}")
    med = {k: statistics.median(v) for k, v in res.items()}
    ours = med[ours_key]
    own = ours - med[PYTHON]
    print(f"  agent's own cost (cgagent - python) {1e3 * own:6.1f} ms")
    for other, t in med.items():
        if other != ours_key:
            print(f"  cgagent / {other:32} {ours / t:6.2f}x")
    if RUNC in med:
        verdict = "meets" if own <= med[RUNC] else "misses"
        print(f"  target: own cost <= runc's time ({1e3 * med[RUNC]:.1f} ms): {verdict}")
    else:
        print("  runc not installed: no runc comparison (apt-get install runc)")
