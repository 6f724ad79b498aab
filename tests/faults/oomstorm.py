"""OOM kills in a row with `cgagent serve` SIGKILLed and restarted at random points in between; then
the kernel's count = the events log = container_oom_events_total from a scrape = `ps` OOM column.

A program, not a test module: it runs inside the tier under test (the host, systemd's namespaces,
the v2 VM) with CGAGENT_STATE_DIR (and CGAGENT_CGROUP_PARENT) set, and the CLI on `python -m cgagent`:
    python3 tests/faults/oomstorm.py --kills 50 --seed 7 [--driver systemd]
It prints one JSON summary line and exits 0 when every count agrees, 1 otherwise.

Each step is one of: a foreground run killed whole (exit 137, 1 kill), a detached run killed whole
(1 kill), a detached run whose children are killed K times while its shell lives on (K kills, read
from the kernel counter). A seeded schedule SIGKILLs serve after a random delay during some steps,
sometimes with a fault hook that kills it inside the OOM journal, and restarts it after others.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

HOG = "x = bytearray(200 << 20)"    # touches 200 MiB: the OOM killer ends it under a 32M limit
STATE = os.environ.get("CGAGENT_STATE_DIR", "/run/cgagent")


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # direct: serve (the agent) is what this storm kills, as the OOM kills' recorder; a CLI call that
    # goes through an agent SIGKILLed mid-call fails with one line by design (tests/test_agent_cli.py)
    return subprocess.run([sys.executable, "-m", "cgagent", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "CGAGENT_DIRECT": "1", **(env or {})})


def record(name: str) -> dict[str, Any]:
    with open(f"{STATE}/workloads/{name}.json") as f:
        return dict(json.load(f))


def until(what: str, cond: Any, timeout: float = 60) -> Any:
    """The kernel has no event a test outside the workload could wait on for "counter moved" or
    "record written": poll, bounded."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise SystemExit(f"oomstorm: timed out waiting for {what}")
        time.sleep(0.02)


class Serve:
    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.kills = 0
        self.starts = 0

    def start(self, fault: str | None = None) -> None:
        env = dict(os.environ)
        if fault:
            env["CGAGENT_FAULT"] = fault
        # --pdeathsig: a storm SIGKILLed itself (pytest's subprocess.run does that on a lone Ctrl-C) takes
        # its agent along instead of leaving it running
        self.proc = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--",
                                      sys.executable, "-m", "cgagent", "serve", "--listen", "127.0.0.1:0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        assert self.proc.stdout is not None
        m = re.search(r"(https?://\S+)/metrics", self.proc.stdout.readline())
        self.starts += 1
        if not m and fault:   # the fault hit while it caught up, before it listened: that is a crash too
            self.kill()
            return self.start()
        if not m:
            raise SystemExit("oomstorm: cgagent serve did not start")
        self.url = m.group(1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
                self.kills += 1
            self.proc.wait()
            assert self.proc.stdout is not None
            self.proc.stdout.close()

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        self.kill()

    def scrape(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as r:
            return str(r.read().decode())


def counter(name: str) -> int:
    from cgagent import oom
    from cgagent.state import Record

    got = oom.read_rec_counter(Record(**record(name)))
    return got[1] if got else -1


def step(kind: str, name: str, k: int, opts: list[str]) -> None:
    if kind == "fg-whole":
        r = cli("run", "--name", name, "--memory", "32M", *opts, "--", "python3", "-c", HOG)
        if r.returncode != 137:
            raise SystemExit(f"oomstorm: {name}: exit {r.returncode}, not 137: {r.stderr}")
    elif kind == "d-whole":
        r = cli("run", "-d", "--name", name, "--memory", "32M", *opts, "--", "python3", "-c", HOG)
        if r.returncode != 0:
            raise SystemExit(f"oomstorm: {name}: {r.stderr}")
        until(f"{name} to exit", lambda: record(name)["status"] == "exited")
        if record(name)["exit_code"] != 137:
            raise SystemExit(f"oomstorm: {name}: exit {record(name)['exit_code']}, not 137")
    else:   # d-child: the shell lives on, its children are killed one after the other
        script = f"for i in $(seq {k}); do python3 -c '{HOG}'; done; exec sleep 1000"
        r = cli("run", "-d", "--name", name, "--memory", "32M", *opts, "--", "sh", "-c", script)
        if r.returncode != 0:
            raise SystemExit(f"oomstorm: {name}: {r.stderr}")
        until(f"{k} kills in {name}", lambda: counter(name) >= k)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--seed", default="1")
    ap.add_argument("--driver", default=None)
    ap.add_argument("--prefix", default="storm")
    ap.add_argument("--no-swap", action="store_true", help="--memory-swap 32M too (hosts with swap)")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    opts = ["--cgroup-driver", args.driver] if args.driver else []
    opts += ["--memory-swap", "32M"] if args.no_swap else []
    serve = Serve()
    serve.start()
    want: dict[str, int] = {}
    kernel: dict[str, int] = {}
    i = 0
    try:
        while sum(want.values()) < args.kills:
            name = f"{args.prefix}{i}"
            i += 1
            kind = rng.choice(["fg-whole", "d-whole", "d-child"])
            k = 1 if kind != "d-child" else min(rng.randint(2, 4), args.kills - sum(want.values()))
            if k == 1 and kind == "d-child":
                kind = "d-whole"
            timer = None
            if serve.alive() and rng.random() < 0.5:
                timer = threading.Timer(rng.uniform(0.0, 0.8), serve.kill)   # at a random point of the step
                timer.start()
            step(kind, name, k, opts)
            if timer is not None:
                timer.cancel()
                timer.join()
            want[name] = k
            if kind == "d-child":
                kernel[name] = counter(name)
            if not serve.alive() and rng.random() < 0.7:
                serve.kill()
                # sometimes killed inside the OOM journal, between its steps, at its next logging
                serve.start(rng.choice([None, None, "step:oom-intent", "step:oom-appended"]))
        if serve.alive():
            serve.kill()
        serve.start()   # no fault: it catches up on what nobody logged yet

        def metrics() -> dict[str, int] | None:
            got: dict[str, int] = {}
            for line in serve.scrape().splitlines():
                m = re.match(r'container_oom_events_total\{.*name="([^"]+)".*\} (\S+)$', line)
                if m and m.group(1) in want:
                    got[m.group(1)] = int(float(m.group(2)))
            return got if got == want else None

        try:
            scraped = until("the scrape to agree", metrics, timeout=30)
        except SystemExit:
            scraped = metrics() or {}
        logged: dict[str, int] = {}
        with open(f"{STATE}/events.jsonl") as f:
            for line in f:
                ev = json.loads(line)
                if ev.get("kind") == "oom_kill" and ev.get("name") in want:
                    logged[ev["name"]] = logged.get(ev["name"], 0) + int(ev["kills"])
        ps = {r["name"]: r["oom_kills"] for r in json.loads(cli("ps", "-a", "--json").stdout) if r["name"] in want}
        kernel = {n: kernel.get(n, want[n]) for n in want}
        ok = kernel == want and logged == want and ps == want and scraped == want
        print(json.dumps({"ok": ok, "kills": sum(want.values()), "workloads": len(want), "serve_kills": serve.kills,
                          "serve_starts": serve.starts,
                          "diff": {n: [want[n], kernel.get(n), logged.get(n), scraped.get(n), ps.get(n)]
                                   for n in want if not (want[n] == kernel.get(n) == logged.get(n)
                                                         == scraped.get(n) == ps.get(n))}}), flush=True)
        return 0 if ok else 1
    finally:
        serve.stop()
        left = [f"{args.prefix}{j}" for j in range(i) if os.path.exists(f"{STATE}/workloads/{args.prefix}{j}.json")]
        if left:
            cli("rm", "-f", *left)


if __name__ == "__main__":
    sys.exit(main())
