"""`make demo`: launch a CPU-limited and a memory-limited workload and show, from the kernel's own
counters, the first being throttled and the second OOM-killed; with the exporter running, show the
same numbers as Prometheus metrics. Cleans up after itself (set DEMO_KEEP=1 to keep it running)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

# A state dir of its own per run: OOM counts are kept per workload name across runs (by design),
# and a demo should show this run's kill, not the sum of every demo ever run on this machine.
STATE = f"/run/cgagent-demo-{os.getpid()}"
PARENT = "/cgagent-demo"
LISTEN = "127.0.0.1:9730"


def cg(*args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CGAGENT_STATE_DIR=STATE, CGAGENT_CGROUP_PARENT=PARENT)
    return subprocess.run([sys.executable, "-m", "cgagent", *args], env=env, check=check, text=True,
                          capture_output=capture)


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def main() -> int:
    if os.geteuid() != 0:
        print("cgagent demo: needs root (it creates cgroups): run `sudo make demo`", file=sys.stderr)
        return 2
    serve: subprocess.Popen[str] | None = None
    try:
        say("host")
        cg("doctor")
        say("CPU-limited workload: a busy loop allowed 0.2 CPU (cgagent run -d --cpus 0.2)")
        cg("run", "-d", "--name", "demo-cpu", "--cpus", "0.2", "--", sys.executable, "-c", "while True: pass")
        try:
            import exporters.web  # noqa: F401  (the exporter may not be installed in a partial build)

            say(f"agent: cgagent serve --listen {LISTEN}  (scrape http://{LISTEN}/metrics)")
            env = dict(os.environ, CGAGENT_STATE_DIR=STATE)
            serve = subprocess.Popen([sys.executable, "-m", "cgagent", "serve", "--listen", LISTEN], env=env,
                                     text=True)
        except ImportError:
            print("exporter not available in this build: showing the CLI only")
        say("memory-limited workload: allocates 200M under --memory 64M (expect exit 137, OOM kill)")
        r = cg("run", "--name", "demo-oom", "--memory", "64M", "--", sys.executable, "-c",
               "x = b'1' * (200 * 1024 * 1024)", check=False)
        print(f"exit code: {r.returncode}")
        say("cgagent stats (2 s of sampling): throttled % of the CPU-limited workload")
        cg("stats", "--interval", "2", "demo-cpu")
        say("cgagent ps -a: the OOM kill, read from the kernel's counter")
        cg("ps", "-a")
        rows = json.loads(cg("ps", "-a", "--json", capture=True).stdout)
        oom = next(x for x in rows if x["name"] == "demo-oom")
        if serve is not None:
            say(f"metrics at http://{LISTEN}/metrics")
            body = _scrape()
            for line in body.splitlines():
                if line.startswith(("container_cpu_cfs_throttled_periods_total", "container_cpu_cfs_periods_total",
                                    "container_oom_events_total", "container_spec_cpu_quota")) and "demo-" in line:
                    print("  " + line)
        say(f"result: demo-oom exit {oom['exit_code']}, OOM kills {oom['oom_kills']}")
        if os.environ.get("DEMO_KEEP"):
            print(f"DEMO_KEEP set: workloads and agent keep running (state {STATE}); Ctrl-C to stop the agent")
            if serve is not None:
                serve.wait()
        return 0 if oom["oom_kills"] >= 1 else 1
    finally:
        if not os.environ.get("DEMO_KEEP"):
            say("cleaning up")
            if serve is not None:
                serve.terminate()
                serve.wait(10)
            for name in ("demo-cpu", "demo-oom"):
                cg("rm", "-f", name, check=False, capture=True)
            shutil.rmtree(STATE, ignore_errors=True)


def _scrape() -> str:
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"http://{LISTEN}/metrics", timeout=5) as resp:
                return str(resp.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # the agent is still binding its port


if __name__ == "__main__":
    sys.exit(main())
