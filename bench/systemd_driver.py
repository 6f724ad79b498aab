"""Launch time under the systemd driver beside the cgroupfs driver, same host, one run.

The host's init is not systemd, so both drivers run inside one real systemd 252 (PID 1 of its own
namespaces, tests/systemd_ns.py), where `cgagent run` sees a systemd host. Each sample is a whole
`cgagent run --rm ... -- true` (fast path: start-up, cgroup, fork/exec, wait, removal), entered with
nsenter; the bare nsenter cost is measured alongside so it can be subtracted by eye.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from bench.common import interleaved, summary

ROUNDS = 25
LIMITS = ["--cpus", "0.5", "--memory", "256M", "--pids-limit", "100"]


def main() -> None:
    from tests.systemd_ns import CLI, SYSTEMD, SystemdNamespace

    if os.geteuid() != 0 or not os.access(SYSTEMD, os.X_OK):
        print("skipped: needs root and systemd installed")
        return
    ns = SystemdNamespace("/var/tmp/cgagent-bench-systemd")
    try:
        ns.start()
        print(f"systemd 252 in namespaces ready (READY=1) after {1e3 * ns.startup_s:.0f} ms")
        cli = CLI(ns)

        def timed(argv: list[str], env: dict[str, str]) -> float:
            t0 = time.perf_counter()
            r = ns.run(argv, env=env)
            dt = time.perf_counter() - t0
            if r.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")
            return dt

        def run(driver: str) -> float:
            return timed(cli.argv("run", "--rm", "--cgroup-driver", driver, *LIMITS, "--", "true"), cli.env)

        cases: dict[str, Callable[[], float]] = {
            "nsenter + /bin/true (overhead)": lambda: timed(["true"], cli.env),
            "cgagent run, cgroupfs driver": lambda: run("cgroupfs"),
            "cgagent run, systemd driver": lambda: run("systemd"),
        }
        for case in cases.values():   # warm caches once
            case()
        samples = interleaved(cases, ROUNDS)
        print(f"launch to exit, {ROUNDS} interleaved runs each, limits {' '.join(LIMITS)}:")
        for k, v in samples.items():
            print(f"  {k:34} {summary(v)}")
    finally:
        leaks = ns.stop()
        try:
            os.rmdir("/var/tmp/cgagent-bench-systemd")
        except OSError:
            pass
        if leaks:
            print(f"leaks: {leaks}")


if __name__ == "__main__":
    main()
