"""The seccomp allow-list's costs (issue 15): building the BPF program at each isolated launch, and
what each syscall of a filtered workload pays, against the same loop unfiltered. Interleaved rounds."""

from __future__ import annotations

import os
import statistics
import time

from cgagent.isolation import seccomp
from cgagent.isolation.spec import DEFAULT_CAPS
from cgagent.isolation.syscalls import PR_SET_NO_NEW_PRIVS, prctl

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "30"))
CALLS = 200_000


def _build() -> float:
    t0 = time.perf_counter()
    seccomp.build(seccomp.machine(), list(DEFAULT_CAPS))
    return time.perf_counter() - t0


def _per_call(filtered: bool) -> float:
    """ns per getppid(2) in a child, with or without the default filter installed."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            if filtered:
                prctl(PR_SET_NO_NEW_PRIVS, 1)
                seccomp.install(list(DEFAULT_CAPS))
            t0 = time.perf_counter()
            for _ in range(CALLS):
                os.getppid()
            os.write(w, str((time.perf_counter() - t0) / CALLS * 1e9).encode())
        finally:
            os._exit(0)
    os.close(w)
    out = os.read(r, 64)
    os.close(r)
    os.waitpid(pid, 0)
    return float(out)


def main() -> None:
    builds, plain, filtered = [], [], []
    for _ in range(ROUNDS):
        builds.append(_build())
        plain.append(_per_call(False))
        filtered.append(_per_call(True))
    print(f"{ROUNDS} rounds, interleaved; {seccomp.machine()}; load {os.getloadavg()[0]:.1f}")
    print(f"  build the default filter ({len(seccomp.build(seccomp.machine(), list(DEFAULT_CAPS))) // 8} "
          f"instructions): median {statistics.median(builds) * 1e3:.3f} ms")
    p, f = statistics.median(plain), statistics.median(filtered)
    print(f"  getppid() loop in Python: unfiltered {p:.0f} ns/call, filtered {f:.0f} ns/call "
          f"(filter: {f - p:+.0f} ns/call)")


if __name__ == "__main__":
    main()
