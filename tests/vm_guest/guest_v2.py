"""Runs INSIDE the cgroup v2 + systemd VM that tests/test_vm.py boots (not collected on the host:
the file name does not match test_*.py). Both drivers on a real v2 host with systemd as PID 1.

Under qemu's TCG emulation time is slow and noisy: these tests assert cgroup files and counters,
never CPU accuracy.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

M = 1024 * 1024
CG = "/sys/fs/cgroup"
pytestmark = pytest.mark.skipif(os.environ.get("CGAGENT_VM_GUEST") != "1",
                                reason="runs inside the cgroup v2 VM only (tests/test_vm.py)")


HANG = "systemd is not answering on /run/systemd/private"
DIAG_OUT = "/mnt/job/out"


def _sh(cmd: str, timeout: float = 30) -> str:
    try:
        r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=timeout)
        return (r.stdout + r.stderr).rstrip()
    except subprocess.TimeoutExpired:
        return f"(no answer within {timeout:g}s)"


def pid1_diagnostics() -> str:
    """What PID 1 is doing, taken the moment a cgagent call finds it silent: blocked in the kernel
    (state D, its stack), spinning (CPU ticks moving), or stuck on its own socket (fds, queues)."""
    def ticks() -> int:
        with open("/proc/1/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])   # utime + stime

    t0 = ticks()
    time.sleep(2)   # a CPU-time delta needs an interval: no event says "PID 1 is running"
    parts = [f"PID 1 CPU ticks in 2 s: {ticks() - t0}"]
    for what, cmd in (
            ("state", "grep -E '^(State|Threads|SigQ|voluntary|nonvoluntary)' /proc/1/status; "
                      "echo wchan: $(cat /proc/1/wchan)"),
            ("syscall", "cat /proc/1/syscall"),
            ("stacks", "for t in /proc/1/task/*; do echo \"== $t $(cat $t/comm) $(cat $t/wchan)\"; cat $t/stack; done"),
            ("fds", "ls /proc/1/fd | wc -l; ls -l /proc/1/fd | grep -c socket"),
            ("private bus", "ss -xlp 2>/dev/null | grep /run/systemd/private; "
                            "echo connections: $(ss -xp 2>/dev/null | grep -c /run/systemd/private)"),
            # a client's unread request sits in the server end's Recv-Q: systemd not reading vs. read
            # and not answered
            ("unix sockets with bytes queued", "ss -xpn 2>/dev/null | awk 'NR==1 || $3>0 || $4>0'"),
            ("cgagent processes", "for p in $(pgrep -f 'cgagent'); do echo \"== $p $(tr '\\0' ' ' "
                                  "< /proc/$p/cmdline | cut -c1-150) $(cat /proc/$p/wchan)\"; "
                                  "cat /proc/$p/stack; ls -l /proc/$p/fd | grep socket; done"),
            ("ps", "ps -eo pid,ppid,stat,wchan:32,etime,cmd --sort=pid"),
            ("jobs", "timeout 20 systemctl --no-pager list-jobs"),
            ("blocked tasks", "echo w > /proc/sysrq-trigger; dmesg | tail -n 150"),
            ("journal", "timeout 20 journalctl -b --no-pager -n 80")):
        parts.append(f"--- {what}\n{_sh(cmd)}")
    return "\n".join(parts)


def _keep(name: str, text: str) -> None:
    if os.path.isdir(DIAG_OUT):
        with open(f"{DIAG_OUT}/{name}-{time.monotonic():.0f}.txt", "w") as f:
            f.write(text + "\n")


def _diagnosed(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """A call that found systemd silent carries PID 1's state in its stderr (and in the job share)."""
    if r.returncode != 0 and HANG in (r.stderr or ""):
        diag = pid1_diagnostics()
        r.stderr += "\n=== PID 1 diagnostics\n" + diag
        _keep("pid1", f"{r.args}\n{diag}")
    return r


def _stuck(p: subprocess.Popen[str], kill: Callable[[], None]) -> tuple[str, str]:
    """A child that does not end, looked at while stuck: its state and signal masks, wait channel,
    system call, kernel stack, fds and sockets; then its Python stacks (faulthandler, on SIGABRT; it
    must run with PYTHONFAULTHANDLER=1), `kill` if that does not end it. -> (that state, its stderr)."""
    own = _sh(f"grep -E '^(State|Sig|Shd)' /proc/{p.pid}/status; cat /proc/{p.pid}/wchan; echo; "
              f"cat /proc/{p.pid}/syscall /proc/{p.pid}/stack; ls -l /proc/{p.pid}/fd; ss -xpn | grep 'pid={p.pid},'")
    p.send_signal(signal.SIGABRT)
    try:
        return own, p.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired:
        kill()
        return own, p.communicate()[1]


def _run_diagnosed(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> \
        subprocess.CompletedProcess[str]:
    """subprocess.run; a call that outlives its timeout is diagnosed while still stuck: PID 1's state,
    the call's own sockets and kernel stack, then its Python stacks (faulthandler, on SIGABRT)."""
    env = dict(env if env is not None else os.environ, PYTHONFAULTHANDLER="1")
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            diag = pid1_diagnostics()
            own, err = _stuck(p, p.kill)   # nsenter execs: p.pid is the Python process
            text = f"{argv} did not end within {timeout:g}s\n=== its stderr (Python stacks)\n{err[-6000:]}\n" \
                   f"=== its kernel stack and sockets\n{own}\n=== PID 1 diagnostics\n{diag}"
            _keep("timeout", text)
            raise AssertionError(text) from None
    return _diagnosed(subprocess.CompletedProcess(argv, p.returncode, out, err))


@pytest.fixture(scope="session", autouse=True)
def pid1_watchdog() -> Iterator[None]:
    """Ask PID 1 something every few seconds: when it stops answering, take its state at once, and
    note how long the silence lasted (whether a later call failed or not). No event says "PID 1 is
    silent": polling with a timeout is the only way to see it."""
    import threading

    stop = threading.Event()
    answers: list[float] = []

    def watch() -> None:
        since: float | None = None
        while not stop.wait(5):
            t = time.monotonic()
            try:
                subprocess.run(["systemctl", "show", "-p", "Version", "--value"], capture_output=True,
                               timeout=20, check=False)
                answers.append(time.monotonic() - t)
                if since is not None:
                    _keep("stall-end", f"PID 1 answered again after {time.monotonic() - since:.0f}s of silence")
                    since = None
            except subprocess.TimeoutExpired:
                if since is None:
                    since = t
                    _keep("stall", f"PID 1 gave no answer in 20 s (uptime {_sh('cut -d. -f1 /proc/uptime')}s)\n"
                                   f"{pid1_diagnostics()}")

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    yield
    stop.set()
    if answers:   # that the watchdog ran, and how PID 1 answered it
        _keep("watchdog", f"PID 1 answered {len(answers)} pings, the slowest in {max(answers):.1f}s")


class Guest:
    def __init__(self, state: str, parent: str) -> None:
        self.state, self.parent = state, parent

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, CGAGENT_STATE_DIR=self.state)
        return _run_diagnosed([sys.executable, "-m", "cgagent", *args], env=env, timeout=timeout)

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        r = self(*args)
        assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr)
        return r

    def record(self, name: str) -> dict[str, Any]:
        with open(f"{self.state}/workloads/{name}.json") as f:
            return dict(json.load(f))

    def file(self, name: str, f: str) -> str:
        with open(f"{self.record(name)['dirs']['']}/{f}") as fh:
            return fh.read().strip()


def systemctl(*args: str) -> str:
    try:
        return subprocess.run(["systemctl", "--no-pager", *args], capture_output=True, text=True, timeout=60).stdout
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{HANG}: systemctl {' '.join(args)} got no answer in 60 s\n"
                             f"=== PID 1 diagnostics\n{pid1_diagnostics()}") from None


def prop(unit: str, name: str) -> str:
    return systemctl("show", "-P", name, unit).strip()


def scopes() -> list[str]:
    out = systemctl("list-units", "--all", "--plain", "--no-legend", "cgagent-*.scope")
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@pytest.fixture
def g(tmp_path: Any) -> Iterator[Guest]:
    parent = f"/cgagent-vmtest-{uuid.uuid4().hex[:6]}"
    guest = Guest(str(tmp_path / "state"), parent)
    yield guest
    wl = f"{guest.state}/workloads"
    for fn in os.listdir(wl) if os.path.isdir(wl) else []:
        guest("rm", "-f", fn[:-5])
    if os.path.isdir(CG + parent):
        for d, _dirs, _files in os.walk(CG + parent, topdown=False):
            os.rmdir(d)
    assert scopes() == [], "scopes left behind"


def wait_for(what: str, cond: Any, timeout: float = 60) -> None:
    # the kernel has no event for "counter moved": poll with a deadline
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def kv(path: str) -> dict[str, int]:
    with open(path) as f:
        return {k: int(v) for k, v in (line.split() for line in f)}


def test_host_is_v2_with_systemd() -> None:
    with open("/proc/1/comm") as f:
        assert f.read().strip() == "systemd"
    assert os.path.exists(f"{CG}/cgroup.controllers") and not os.path.isdir(f"{CG}/cpu")
    doc = json.loads(subprocess.run([sys.executable, "-m", "cgagent", "doctor", "--json"], capture_output=True,
                                    text=True, check=True).stdout)
    assert doc["cgroup_mode"] == "v2" and doc["default_driver"] == "systemd"


# --- cgroupfs driver on v2

def test_cgroupfs_v2_limits_land_in_files(g: Guest) -> None:
    r = g.ok("run", "-d", "--cgroup-driver", "cgroupfs", "--cgroup-parent", g.parent, "--name", "lim",
             "--cpus", "0.5", "--cpu-shares", "1024", "--memory", "100M", "--memory-swap", "300M",
             "--pids-limit", "50", "--", "sleep", "1000")
    assert "warning: systemd is init here" in r.stderr
    assert g.record("lim")["dirs"][""] == f"{CG}{g.parent}/lim"
    assert g.file("lim", "cpu.max") == "50000 100000"
    assert g.file("lim", "cpu.weight") == "100"           # 1024 shares -> weight 100
    assert g.file("lim", "memory.max") == str(100 * M)
    assert g.file("lim", "memory.swap.max") == str(200 * M)   # swap only: 300M total - 100M memory
    assert g.file("lim", "pids.max") == "50"
    g.ok("update", "lim", "--cpus", "0.25", "--memory", "200M")
    assert (g.file("lim", "cpu.max"), g.file("lim", "memory.max")) == ("25000 100000", str(200 * M))


def test_cgroupfs_v2_throttling_counters_move(g: Guest) -> None:
    g.ok("run", "-d", "--cgroup-driver", "cgroupfs", "--cgroup-parent", g.parent, "--name", "busy",
         "--cpus", "0.1", "--", "sh", "-c", "while :; do :; done")
    stat = f"{g.record('busy')['dirs']['']}/cpu.stat"
    wait_for("nr_throttled > 0", lambda: kv(stat)["nr_throttled"] > 0)
    assert kv(stat)["throttled_usec"] > 0
    row = json.loads(g.ok("stats", "--json", "busy").stdout)[0]
    assert row["nr_throttled"] > 0 and row["throttled_seconds"] > 0


# A pipeline the memory limit OOM-kills, under a shell that lives on (so the cgroup and its
# memory.events stay). The shell makes itself unkillable first and its child undoes that for the
# pipeline: the kernel took tail, and 18 ms later, before tail's memory was freed, the shell too.
OOM_SURVIVOR = ("echo -1000 > /proc/self/oom_score_adj; "
                "sh -c 'echo 0 > /proc/self/oom_score_adj; head -c 300M /dev/zero | tail'; sleep 1000")


def _oom(g: Guest, name: str, *driver: str) -> None:
    # the shell survives its pipeline's OOM kill, so the cgroup (and its memory.events) stays
    g.ok("run", "-d", *driver, "--name", name, "--memory", "32M", "--memory-swap", "32M", "--",
         "sh", "-c", OOM_SURVIVOR)
    events = f"{g.record(name)['dirs']['']}/memory.events"
    wait_for("oom_kill in memory.events", lambda: kv(events).get("oom_kill", 0) > 0)
    row = next(r for r in json.loads(g.ok("ps", "--json").stdout) if r["name"] == name)
    assert row["oom_kills"] == kv(events)["oom_kill"] >= 1


def test_cgroupfs_v2_oom_kill_is_counted_from_memory_events(g: Guest) -> None:
    _oom(g, "oomfs", "--cgroup-driver", "cgroupfs", "--cgroup-parent", g.parent)


# --- systemd driver on v2

def test_systemd_v2_limits_are_scope_properties(g: Guest) -> None:
    g.ok("run", "-d", "--name", "slim", "--cpus", "0.5", "--cpu-shares", "1024", "--memory", "100M",
         "--memory-swap", "300M", "--pids-limit", "50", "--cpuset-cpus", "0", "--", "sleep", "1000")
    rec = g.record("slim")
    unit = "cgagent-slim.scope"
    assert (rec["driver"], rec["unit"]) == ("systemd", unit)
    assert rec["dirs"] == {"": f"{CG}/cgagent.slice/{unit}"}
    props = {p: prop(unit, p) for p in ("CPUQuotaPerSecUSec", "CPUWeight", "MemoryMax", "MemorySwapMax",
                                        "TasksMax", "AllowedCPUs", "Delegate")}
    assert props == {"CPUQuotaPerSecUSec": "500ms", "CPUWeight": "100", "MemoryMax": str(100 * M),
                     "MemorySwapMax": str(200 * M), "TasksMax": "50", "AllowedCPUs": "0", "Delegate": "yes"}
    files = ("cpu.max", "cpu.weight", "memory.max", "memory.swap.max", "pids.max", "cpuset.cpus")
    want = {"cpu.max": "50000 100000", "cpu.weight": "100", "memory.max": str(100 * M),
            "memory.swap.max": str(200 * M), "pids.max": "50", "cpuset.cpus": "0"}
    assert {f: g.file("slim", f) for f in files} == want
    subprocess.run(["systemctl", "daemon-reload"], check=True, timeout=120)
    assert {f: g.file("slim", f) for f in files} == want
    status = systemctl("status", unit)
    assert "active (running)" in status and f"{rec['pid']} sleep 1000" in status, status


def test_systemd_v2_update_survives_daemon_reload(g: Guest) -> None:
    g.ok("run", "-d", "--name", "supd", "--cpus", "0.5", "--memory", "100M", "--", "sleep", "1000")
    g.ok("update", "supd", "--cpus", "0.333", "--memory", "200M", "--pids-limit", "20")
    want = {"cpu.max": "34000 100000", "memory.max": str(200 * M), "pids.max": "20"}   # 10 ms rounding
    assert {f: g.file("supd", f) for f in want} == want
    assert prop("cgagent-supd.scope", "CPUQuotaPerSecUSec") == "340ms"
    assert g.record("supd")["resources"]["cpu_quota"] == 34000
    subprocess.run(["systemctl", "daemon-reload"], check=True, timeout=120)
    assert {f: g.file("supd", f) for f in want} == want


def test_systemd_v2_throttling_and_oom(g: Guest) -> None:
    g.ok("run", "-d", "--name", "sbusy", "--cpus", "0.1", "--", "sh", "-c", "while :; do :; done")
    stat = f"{g.record('sbusy')['dirs']['']}/cpu.stat"
    wait_for("nr_throttled > 0", lambda: kv(stat)["nr_throttled"] > 0)
    _oom(g, "soom")


def test_systemd_v2_stop_removes_the_scope(g: Guest) -> None:
    g.ok("run", "-d", "--name", "sstop", "--", "sleep", "1000")
    d = g.record("sstop")["dirs"][""]
    g.ok("stop", "-t", "5", "sstop")
    assert "cgagent-sstop.scope" not in scopes() and not os.path.isdir(d)
    g.ok("rm", "sstop")


def test_systemd_v2_over_the_system_bus(g: Guest) -> None:
    env = dict(os.environ, CGAGENT_STATE_DIR=g.state, CGAGENT_SYSTEMD_BUS="system")
    for args in (["run", "-d", "--name", "sbus", "--memory", "64M", "--", "sleep", "1000"],
                 ["update", "sbus", "--memory", "128M"], ["rm", "-f", "sbus"]):
        r = _run_diagnosed([sys.executable, "-m", "cgagent", *args], env=env, timeout=120)
        assert r.returncode == 0, (args, r.stderr)
        if args[0] == "update":
            assert prop("cgagent-sbus.scope", "MemoryMax") == str(128 * M)
    assert "cgagent-sbus.scope" not in scopes()


def _get(url: str) -> str | None:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return str(resp.read().decode())
    except OSError:
        return None


def _series(metrics: str, name: str, cid: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + "{") and f'id="{cid}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} for {cid}")


def test_exporter_values_match_the_files_under_both_drivers(g: Guest) -> None:
    g.ok("run", "-d", "--cgroup-driver", "cgroupfs", "--cgroup-parent", g.parent, "--name", "xfs",
         "--cpus", "0.5", "--memory", "100M", "--pids-limit", "30", "--", "sh", "-c", "while :; do :; done")
    g.ok("run", "-d", "--name", "xsd", "--cpus", "0.25", "--memory", "32M", "--memory-swap", "32M",
         "--pids-limit", "20", "--", "sh", "-c", OOM_SURVIVOR)
    events = f"{g.record('xsd')['dirs']['']}/memory.events"
    wait_for("oom_kill in memory.events", lambda: kv(events).get("oom_kill", 0) > 0)
    serve = subprocess.Popen([sys.executable, "-m", "cgagent", "serve", "--listen", "127.0.0.1:9731"],
                             env=dict(os.environ, CGAGENT_STATE_DIR=g.state), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for("serve answering", lambda: _get("http://127.0.0.1:9731/healthz") is not None, timeout=120)
        before = {n: kv(f"{g.record(n)['dirs']['']}/cpu.stat")["usage_usec"] for n in ("xfs", "xsd")}
        metrics = _get("http://127.0.0.1:9731/metrics") or ""
        after = {n: kv(f"{g.record(n)['dirs']['']}/cpu.stat")["usage_usec"] for n in ("xfs", "xsd")}
    finally:
        serve.terminate()
        serve.wait(30)
    for n in ("xfs", "xsd"):
        rec = g.record(n)
        cid, d = rec["cgroup"], rec["dirs"][""]
        quota = int(g.file(n, "cpu.max").split()[0])
        assert _series(metrics, "container_spec_cpu_quota", cid) == quota
        assert _series(metrics, "container_spec_memory_limit_bytes", cid) == int(g.file(n, "memory.max"))
        assert _series(metrics, "container_threads_max", cid) == int(g.file(n, "pids.max"))
        usage = _series(metrics, "container_cpu_usage_seconds_total", cid)
        assert before[n] / 1e6 <= usage <= after[n] / 1e6, (n, before[n], usage, after[n])
        assert _series(metrics, "container_oom_events_total", cid) == kv(f"{d}/memory.events").get("oom_kill", 0)
    assert g.record("xsd")["cgroup"] == "/cgagent.slice/cgagent-xsd.scope"


def test_python_deps_present() -> None:
    assert shutil.which("systemctl") and __import__("jeepney") and __import__("typer")

# --- oom ---

STORM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "faults", "oomstorm.py")


@pytest.mark.parametrize("driver", ["cgroupfs", "systemd"])
def test_oom_storm_counted_once_across_serve_sigkills(g: Guest, driver: str) -> None:
    # kernel count = events = container_oom_events_total = ps, serve SIGKILLed at seeded random points
    env = dict(os.environ, CGAGENT_STATE_DIR=g.state, CGAGENT_DEFAULT_NET="none",
               **({"CGAGENT_CGROUP_PARENT": g.parent} if driver == "cgroupfs" else {}))
    r = _run_diagnosed([sys.executable, STORM, "--kills", "10", "--seed", "11", "--driver", driver, "--no-swap"],
                       env=env, timeout=900)
    assert r.returncode == 0, (r.stdout, r.stderr[-3000:])
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["kills"] == 10, summary


@pytest.mark.parametrize("driver", ["cgroupfs", "systemd"])
def test_restarts_keep_limits_updated_live(g: Guest, driver: str) -> None:
    drv = ["--cgroup-driver", driver] + (["--cgroup-parent", g.parent] if driver == "cgroupfs" else [])
    g.ok("run", "-d", *drv, "--restart", "always", "--name", "upr", "--cpus", "0.2", "--memory", "64M", "--",
         "sh", "-c", "sleep 0.5; exit 1")
    g.ok("update", "upr", "--cpus", "0.5", "--memory", "128M")

    def agree() -> bool:
        try:
            ps = next(r for r in json.loads(g.ok("ps", "-a", "--json").stdout) if r["name"] == "upr")
            files = (g.file("upr", "memory.max"), g.file("upr", "cpu.max"), ps["memory"])
        except (OSError, StopIteration):
            return False   # between two runs
        unit_ok = driver == "cgroupfs" or prop("cgagent-upr.scope", "MemoryMax") == str(128 * M)
        return unit_ok and files == (str(128 * M), "50000 100000", 128 * M)

    for i in range(3):
        start = g.record("upr")["restarts"]
        wait_for(f"restart {i + 1}", lambda s=start: g.record("upr")["restarts"] > s)
        wait_for(f"limits after restart {i + 1}", agree)
    g.ok("rm", "-f", "upr")


@pytest.mark.parametrize("driver", ["cgroupfs", "systemd"])
def test_burstable_restart_runs_with_the_stepped_up_memory(g: Guest, driver: str) -> None:
    # issue 16: each run of `grow` needs ~85M; --memory 40M is OOM-killed, its restart gets +256M
    drv = ["--cgroup-driver", driver] + (["--cgroup-parent", g.parent] if driver == "cgroupfs" else [])
    g.ok("run", "-d", *drv, "--policy", "burstable", "--memory", "40M", "--memory-swap", "40M", "--name", "grow",
         "--", "python3", "-c", "import time; x = b'1' * (80 << 20); print('up', flush=True); time.sleep(999)")
    wait_for("the restart to run", lambda: g.record("grow")["restarts"] == 1 and "up" in g.ok("logs", "grow").stdout,
             timeout=120)
    assert g.file("grow", "memory.max") == str(296 * M)
    if driver == "systemd":
        assert prop("cgagent-grow.scope", "MemoryMax") == str(296 * M)
    steps = [json.loads(line) for line in open(f"{g.state}/events.jsonl")]
    steps = [e for e in steps if e["kind"] == "policy" and e.get("action") == "memory_step_up"]
    assert [(e["from_memory"], e["to_memory"], e["applied"]) for e in steps] == [(40 * M, 296 * M, "restart")]
    g.ok("rm", "-f", "grow")

# --- iso ---
# Issue 15 items 5 and 6 on cgroup v2 + systemd: the seccomp allow-list refuses what its table does not
# name (the probe of tests/security/test_seccomp.py), and --init's PID 1 is tini, under both drivers.

ISO_DRIVERS = {"cgroupfs": ("--cgroup-driver", "cgroupfs"), "systemd": ("--cgroup-driver", "systemd")}


@pytest.fixture(scope="module")
def iso_store(img: str) -> str:
    return img   # the busybox store of the v2sd block below


def _iso(g: Guest, store: str, driver: str, *args: str) -> subprocess.CompletedProcess[str]:
    parent = ("--cgroup-parent", g.parent) if driver == "cgroupfs" else ()
    cmd, rest = args[0], args[1:]
    env = dict(os.environ, CGAGENT_STATE_DIR=g.state, CGAGENT_ROOT=store)
    return _run_diagnosed([sys.executable, "-m", "cgagent", cmd, *ISO_DRIVERS[driver], *parent, *rest], env=env,
                          timeout=300)


@pytest.mark.parametrize("driver", sorted(ISO_DRIVERS))
def test_iso_seccomp_allow_list_refuses_unknown_calls(g: Guest, iso_store: str, driver: str) -> None:
    from tests.security.test_seccomp import EPERM, NEW_OR_UNKNOWN, probe_args

    for caps in ((), ("--cap-add", "SYS_ADMIN")):
        r = _iso(g, iso_store, driver, *probe_args(*caps))
        assert r.returncode == 0, (caps, r.stderr)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        assert {k: res[k] for k in NEW_OR_UNKNOWN} == dict.fromkeys(NEW_OR_UNKNOWN, EPERM), (caps, res)
        assert res["socket_vsock"] == EPERM and res["getpid"] == "0", res
        assert res["unshare_uts"] == ("0" if caps else EPERM), res


@pytest.mark.parametrize("driver", sorted(ISO_DRIVERS))
def test_iso_init_is_tini_with_the_workload_environment(g: Guest, iso_store: str, driver: str) -> None:
    from tests.isolated import IMG

    script = "cat /proc/1/comm; (exec 3<>/proc/1/mem) 2>/dev/null && echo MEM; env | grep -c SECRET_CANARY; exit 7"
    os.environ["SECRET_CANARY"] = "from-the-caller"   # the CLI's environment, which PID 1 must not carry
    try:
        r = _iso(g, iso_store, driver, "run", "--rm", "--init", "--net", "none", IMG, "--", "sh", "-c", script)
    finally:
        del os.environ["SECRET_CANARY"]
    assert r.returncode == 7 and r.stdout.split() == ["init", "0"], (r.returncode, r.stdout, r.stderr)

# --- devices ---
# Issue 15 item 2 on cgroup v2: the cgroupfs driver's BPF device program and systemd's
# DevicePolicy=strict/DeviceAllow=, each against a loop device the test makes (tests/security/devkit).

DRIVERS = {"cgroupfs": ("--cgroup-driver", "cgroupfs"), "systemd": ("--cgroup-driver", "systemd")}


@pytest.fixture
def devbox(g: Guest, tmp_path: Any) -> Iterator[tuple[Guest, str, tuple[str, int, int]]]:
    from tests.security.devkit import busybox_root, loop_device

    os.environ["CGAGENT_ROOT"] = str(tmp_path / "store")   # Guest passes os.environ on
    try:
        with loop_device(str(tmp_path)) as loop:
            yield g, busybox_root(str(tmp_path / "rootfs")), loop
    finally:
        del os.environ["CGAGENT_ROOT"]


def _drv(g: Guest, driver: str) -> tuple[str, ...]:
    return (*DRIVERS[driver], *(("--cgroup-parent", g.parent) if driver == "cgroupfs" else ()))


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_devices_v2_attack_refused_and_device_flag(devbox: tuple[Guest, str, tuple[str, int, int]], driver: str,
                                                   tmp_path: Any) -> None:
    from tests.security.devkit import CANARY, EACCES, EPERM, read_cmd, refused

    g, root, (dev, major, minor) = devbox
    base = ("run", "--rm", *_drv(g, driver), "--net", "none", "--rootfs", root)
    # mknod is allowed (b *:* m); opening what it made is not, with no seccomp filter in the way
    r = g(*base, "--security-opt", "seccomp=unconfined", "--", "sh", "-c",
          f"echo x > /dev/null && head -c 4 /dev/urandom | wc -c && mknod /dev/e b {major} {minor} && echo MADE; "
          f"{read_cmd('/dev/e')}")
    assert r.stdout.split()[:2] == ["4", "MADE"], r
    refused(r.stdout, EPERM)
    # nodes already there: the --rootfs dir is nodev; a volume mounted with `dev` meets the cgroup
    os.mknod(f"{root}/data/disk", 0o60666, os.makedev(major, minor))   # S_IFBLK | 0666
    vol = tmp_path / "vol"
    vol.mkdir()
    os.mknod(vol / "disk", 0o60666, os.makedev(major, minor))
    r = g(*base, "-v", f"{vol}:/vol:dev", "--", "sh", "-c", f"{read_cmd('/data/disk')}; echo ---; "
          f"{read_cmd('/vol/disk')}")
    in_root, _, in_vol = r.stdout.partition("---")
    refused(in_root, EACCES)
    refused(in_vol, EPERM)
    # --device: exactly that device, with the access given
    r = g(*base, "--device", f"{dev}:/dev/disk0:r", "--", "sh", "-c",
          f"{read_cmd('/dev/disk0')}; dd if=/dev/zero of=/dev/disk0 bs=1 count=1 2>&1")   # the write fails
    assert CANARY.decode() in r.stdout and EPERM in r.stdout, r


def test_devices_v2_program_and_unit_properties(devbox: tuple[Guest, str, tuple[str, int, int]]) -> None:
    from cgagent.cgroups.v2 import devices as v2dev

    g, root, _loop = devbox
    g.ok("run", "-d", *_drv(g, "cgroupfs"), "--name", "dfs", "--net", "none", "--rootfs", root, "--", "sleep", "1000")
    fd = os.open(g.record("dfs")["dirs"][""], os.O_RDONLY | os.O_DIRECTORY)
    try:
        ours = [p for p in (v2dev._ours(i) for i in v2dev._attached(fd)) if p is not None]
        assert len(ours) == 1, "exactly one cgagent device program on the workload's cgroup"
        for p in ours:
            os.close(p)
    finally:
        os.close(fd)
    g.ok("run", "-d", *_drv(g, "systemd"), "--name", "dsd", "--net", "none", "--rootfs", root, "--", "sleep", "1000")
    assert prop("cgagent-dsd.scope", "DevicePolicy") == "strict"
    allow = systemctl("show", "-p", "DeviceAllow", "cgagent-dsd.scope")
    assert "/dev/char/1:3 rwm" in allow and "char-pts rwm" in allow and "block-* m" in allow, allow


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_devices_v2_host_workload_rule(devbox: tuple[Guest, str, tuple[str, int, int]], driver: str) -> None:
    from tests.security.devkit import EPERM, read_cmd, refused

    g, _root, (dev, _major, _minor) = devbox
    r = g("run", "--rm", *_drv(g, driver), "--device-cgroup-rule", "c 1:3 rwm", "--", "sh", "-c",
          f"echo x > /dev/null && echo null-ok; {read_cmd(dev)}")
    assert "null-ok" in r.stdout, r
    refused(r.stdout, EPERM)

# --- v2sd ---
# The product on a v2 + systemd host under the default driver: the demo, parents as paths or
# slices and their cleanup, exec, isolation (its own cgroup, escapes), bridge networking in a
# namespace of the guest, doctor/ps/stats/update honesty, and a walk through the README.

import re  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402

from tests import images, probes  # noqa: E402


def units(pattern: str) -> list[str]:
    """Active units (what `systemctl list-units` shows by default) matching pattern. (Not 'cgagent*':
    the VM's own job runner is cgagent-vm-run.service.)"""
    out = systemctl("list-units", "--plain", "--no-legend", pattern)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def root_subtree() -> list[str]:
    with open(f"{CG}/cgroup.subtree_control") as f:
        return sorted(f.read().split())


def _busybox_store(base: str) -> str:
    """An image store at base/store holding busybox:test (built from the guest's busybox-static)."""
    images.busybox_layout(f"{base}/oci")
    store = f"{base}/store"
    r = subprocess.run([sys.executable, "-m", "cgagent", "image", "import", f"{base}/oci"], capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, CGAGENT_ROOT=store))
    assert r.returncode == 0, r.stderr
    return store


@pytest.fixture(scope="module")
def img(tmp_path_factory: Any) -> str:
    return _busybox_store(str(tmp_path_factory.mktemp("img")))


class Box:
    """The CLI with an image store; isolated runs get --net none unless they say otherwise."""

    def __init__(self, g: Guest, store: str, netns: str | None = None) -> None:
        self.g, self.store, self.netns = g, store, netns

    def __call__(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, CGAGENT_STATE_DIR=self.g.state, CGAGENT_ROOT=self.store,
                   CGAGENT_DEFAULT_NET="bridge" if self.netns else "none")
        pre = ["nsenter", f"--net=/run/netns/{self.netns}", "--"] if self.netns else []
        return _run_diagnosed([*pre, sys.executable, "-m", "cgagent", *args], env=env, timeout=timeout)

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        r = self(*args)
        assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr)
        return r


@pytest.fixture
def box(g: Guest, img: str) -> Box:
    return Box(g, img)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"v2sd-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=30)
    yield name
    subprocess.run(["ip", "netns", "del", name], timeout=30)


def _in_netns(name: str, fn: Any) -> Any:
    """Run fn() with this thread in network namespace `name` (sockets it opens stay there)."""
    from cgagent.isolation.syscalls import CLONE_NEWNET, setns

    own, target = os.open("/proc/self/ns/net", os.O_RDONLY), os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        setns(target, CLONE_NEWNET)
        try:
            return fn()
        finally:
            setns(own, CLONE_NEWNET)
    finally:
        os.close(own)
        os.close(target)


def _http_get(port: int, netns: str | None = None) -> str | None:
    def get() -> str | None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                chunks = []
                while data := s.recv(65536):
                    chunks.append(data)
            return b"".join(chunks).decode(errors="replace")
        except OSError:
            return None
    return _in_netns(netns, get) if netns else get()


def test_v2sd_demo_runs_under_the_default_driver() -> None:
    r = _run_diagnosed([sys.executable, "-m", "cgagent.demo"], timeout=600)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "exit code: 137" in r.stdout and "Traceback" not in r.stderr, r.stdout
    assert re.search(r"result: demo-oom exit 137, OOM kills 1\b", r.stdout), r.stdout
    assert "demo-cpu" in r.stdout and "problems:           none" in r.stdout, r.stdout
    # its parent /cgagent-demo was the slice cgagent\x2ddemo.slice, stopped with its last workload
    assert units("cgagent*.slice") == []


def test_v2sd_parent_as_path_or_slice_is_one_place_and_goes_with_the_last_workload(g: Guest) -> None:
    g.ok("run", "-d", "--name", "pa", "--cgroup-parent", "/v2sd/a", "--", "sleep", "1000")
    g.ok("run", "-d", "--name", "pb", "--cgroup-parent", "v2sd-a.slice", "--", "sleep", "1000")
    for n in ("pa", "pb"):
        assert g.record(n)["dirs"][""] == f"{CG}/v2sd.slice/v2sd-a.slice/cgagent-{n}.scope"
    assert units("v2sd*") == ["v2sd-a.slice", "v2sd.slice"]
    g.ok("rm", "-f", "pa")
    assert units("v2sd*") == ["v2sd-a.slice", "v2sd.slice"]   # pb is still there
    g.ok("rm", "-f", "pb")
    assert units("v2sd*") == [] and units("cgagent*.slice") == []
    fs_ = ("--cgroup-driver", "cgroupfs")
    before = root_subtree()   # here: systemd itself may have changed it while starting the scopes above
    g.ok("run", "-d", *fs_, "--name", "fa", "--cgroup-parent", "v2sdfs-b.slice", "--cpus", "0.5", "--", "sleep", "1000")
    g.ok("run", "-d", *fs_, "--name", "fb", "--cgroup-parent", "/v2sdfs/b", "--", "sleep", "1000")
    for n in ("fa", "fb"):
        assert g.record(n)["dirs"][""] == f"{CG}/v2sdfs/b/{n}"
    assert g.file("fa", "cpu.max") == "50000 100000"
    g.ok("rm", "-f", "fa", "fb")
    assert not os.path.exists(f"{CG}/v2sdfs")
    assert root_subtree() == before   # the +cpu (+cpuset) it enabled at the root are off again


def test_v2sd_exec_joins_the_scope_of_a_host_workload(g: Guest) -> None:
    g.ok("run", "-d", "--name", "ex", "--", "sleep", "1000")
    r = g.ok("exec", "ex", "--", "cat", "/proc/self/cgroup")
    assert r.stdout.strip() == "0::/cgagent.slice/cgagent-ex.scope"
    assert scopes() == ["cgagent-ex.scope"]
    assert g("exec", "ex", "--", "sh", "-c", "exit 7").returncode == 7
    g.ok("run", "-d", "--cgroup-driver", "cgroupfs", "--cgroup-parent", g.parent, "--name", "exfs", "--",
         "sleep", "1000")
    assert g.ok("exec", "exfs", "--", "cat", "/proc/self/cgroup").stdout.strip() == f"0::{g.parent}/exfs"


def test_v2sd_isolated_workload_sees_its_own_cgroup_systemd(box: Box) -> None:
    _own_cgroup(box, "systemd")


def test_v2sd_isolated_workload_sees_its_own_cgroup_cgroupfs(box: Box) -> None:
    _own_cgroup(box, "cgroupfs")


def _own_cgroup(box: Box, driver: str) -> None:
    where = ["--cgroup-driver", "cgroupfs", "--cgroup-parent", box.g.parent] if driver == "cgroupfs" else []
    script = ("cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max /proc/self/cgroup; "
              "mkdir /sys/fs/cgroup/x 2>/dev/null && echo WROTE; "
              "echo 1 2>/dev/null > /sys/fs/cgroup/cgroup.procs && echo WROTE; "
              "echo 10M 2>/dev/null > /sys/fs/cgroup/memory.max && echo WROTE; "
              "grep -c cgroup2 /proc/self/mounts")
    r = box.ok("run", "--rm", *where, "--memory", "64M", "--cpus", "0.5", "busybox:test", "--", "sh", "-c", script)
    assert r.stdout.split("\n") == ["67108864", "50000 100000", "0::/", "1", ""], r.stdout
    # exec joins the same cgroup (and cgroup namespace)
    box.ok("run", "-d", "--name", f"iso{driver}", *where, "--memory", "64M", "busybox:test", "--", "sleep", "1000")
    r = box.ok("exec", f"iso{driver}", "--", "sh", "-c", "cat /proc/self/cgroup /sys/fs/cgroup/memory.max")
    assert r.stdout.split() == ["0::/", "67108864"]
    if driver == "systemd":
        assert scopes() == [f"cgagent-iso{driver}.scope"]


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_v2sd_a_workload_holds_only_its_stdio(box: Box, driver: str) -> None:
    """On v2 the child is cloned into its cgroup (clone3 takes a cgroup directory fd) and a systemd
    run holds a D-Bus connection and a keeper: none of the launcher's fds reach the workload, host or
    isolated, started by run, run -d or exec (tests/security/test_fds.py on the host)."""
    where = ("--cgroup-driver", "cgroupfs", "--cgroup-parent", box.g.parent) if driver == "cgroupfs" else ()
    script = probes.SHELL_FDS
    for image in ((), ("busybox:test",)):
        assert box.ok("run", "--rm", *where, *image, "--", "sh", "-c", script).stdout.split() == ["0", "1", "2"]
        name = f"fds{driver}{len(image)}"
        box.ok("run", "-d", "--name", name, *where, *image, "--", "sh", "-c", script + "; exec sleep 1000")
        wait_for("the detached listing", lambda name=name: len(box.ok("logs", name).stdout.split()) >= 3)
        assert box.ok("logs", name).stdout.split() == ["0", "1", "2"], (driver, image)
        assert box.ok("exec", name, "--", "sh", "-c", script).stdout.split() == ["0", "1", "2"], (driver, image)
        box.ok("rm", "-f", name)


def test_v2sd_isolated_escape_basics(box: Box) -> None:
    box.ok("run", "-d", "--name", "esc", "--memory", "64M", "busybox:test", "--", "sleep", "1000")
    script = ("ps -o pid,comm | tail -n +2 | wc -l; "
              "mount -t tmpfs t /mnt 2>/dev/null && echo MOUNTED; "
              "echo x 2>/dev/null > /proc/sys/kernel/hostname && echo SYSCTL; "
              "mkdir /sys/fs/cgroup/esc 2>/dev/null && echo CGROUP; "
              "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status")
    r = box.ok("exec", "esc", "--", "sh", "-c", script)
    lines = r.stdout.split("\n")
    assert int(lines[0]) < 10, r.stdout   # sleep, sh, ps, tail, wc: not the guest's processes
    for bad in ("MOUNTED", "SYSCTL", "CGROUP"):
        assert bad not in r.stdout, r.stdout
    assert "NoNewPrivs:\t1" in r.stdout and "Seccomp:\t2" in r.stdout, r.stdout
    from cgagent.isolation.namespaces import init_pid

    pid1 = init_pid([box.g.record("esc")["pid"], *map(int, box.g.file("esc", "cgroup.procs").split())])
    assert pid1 and os.readlink(f"/proc/{pid1}/ns/cgroup") != os.readlink("/proc/self/ns/cgroup")


def test_v2sd_bridge_and_published_port_in_a_guest_netns_systemd(g: Guest, netns: str, tmp_path: Any) -> None:
    _published(g, netns, tmp_path, "systemd")


def test_v2sd_bridge_and_published_port_in_a_guest_netns_cgroupfs(g: Guest, netns: str, tmp_path: Any) -> None:
    _published(g, netns, tmp_path, "cgroupfs")


def _published(g: Guest, netns: str, tmp_path: Any, driver: str) -> None:
    b = Box(g, _busybox_store(str(tmp_path / "net")), netns)
    where = ["--cgroup-driver", "cgroupfs", "--cgroup-parent", g.parent] if driver == "cgroupfs" else []
    b.ok("run", "-d", "--name", "web", *where, "-p", "8080:80", "busybox:test", "--", "sh", "-c",
         "mkdir -p /www && echo published > /www/index.html && exec httpd -f -p 80 -h /www")
    wait_for("the published port answers", lambda: "published" in (_http_get(8080, netns) or ""), timeout=120)
    b.ok("run", "-d", "--name", "client", *where, "busybox:test", "--", "sleep", "1000")
    ip = b.ok("exec", "web", "--", "sh", "-c", "ip -o -4 addr show dev eth0").stdout.split()[3].split("/")[0]
    r = b.ok("exec", "client", "--", "wget", "-qO-", f"http://{ip}/")
    assert r.stdout.strip() == "published"
    assert _dnat_ports(netns) == {8080} and _dnat_ports(None) == set()   # the guest's own namespace is untouched
    b.ok("rm", "-f", "web", "client")
    assert _dnat_ports(netns) == set()


def _dnat_ports(netns: str | None) -> set[int]:
    """In `netns` (None: the guest's own namespace)."""
    from tests.netkit import dnat_ports

    pre = ["ip", "netns", "exec", netns] if netns else []
    return dnat_ports(subprocess.run([*pre, "nft", "-j", "list", "ruleset"], capture_output=True, text=True,
                                     timeout=30).stdout)


def test_v2sd_doctor_ps_stats_update_tell_the_truth(g: Guest) -> None:
    doc = json.loads(g.ok("doctor", "--json").stdout)
    assert doc["problems"] == [] and doc["default_driver"] == "systemd"
    g.ok("run", "-d", "--name", "tr", "--memory", "64M", "--", "sleep", "1000")
    g.ok("run", "-d", "--name", "tp", "--pids-limit", "30", "--", "sleep", "1000")
    ps = {r["name"]: r for r in json.loads(g.ok("ps", "--json").stdout)}
    st = {r["name"]: r for r in json.loads(g.ok("stats", "--json", "tr", "tp").stdout)}
    for n in ("tr", "tp"):
        kernel = g.file(n, "pids.max")
        want = -1 if kernel == "max" else int(kernel)
        assert ps[n]["pids_limit"] == st[n]["pids_limit"] == want, (n, ps[n], st[n], kernel)
    assert ps["tp"]["pids_limit"] == 30
    # --memory-swap alone: memory plus swap over the workload's current 64M
    g.ok("update", "tr", "--memory-swap", "128M")
    assert g.file("tr", "memory.swap.max") == str(64 * M) and g.file("tr", "memory.max") == str(64 * M)
    r = g("update", "tr", "--memory-swap", "32M")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "--memory-swap 32M is smaller than the workload's memory limit 64M: give --memory-swap" in r.stderr
    r = g("update", "tp", "--memory-swap", "64M")
    assert r.returncode == 2 and "the workload has none: give --memory too" in r.stderr, r.stderr


# --- the README walk

README = "/mnt/project/README.md"
WALKED = ("## Running workloads", "## Isolated workloads")
_DIRECTIVE = re.compile(r'^<!-- walk "(?P<text>[^"]+)": (?:ctrl-c when (?P<ready>port \d+ answers|its log is open), )?'
                        r"exit (?P<code>\d+) -->$")


def readme_examples() -> list[tuple[str, list[dict[str, Any]]]]:
    """(section, its commands in order). A command: line, exit, ready (None, "port N", "log"), output."""
    out: list[tuple[str, list[dict[str, Any]]]] = []
    with open(README) as f:
        lines = f.read().splitlines()
    section, fence, pending = None, None, []
    cmds: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if fence is None and line.startswith("## "):
            section = next((w for w in WALKED if line.startswith(w)), None)
            if section:
                cmds = []
                out.append((section, cmds))
            continue
        if section is None:
            continue
        if fence is None:
            m = _DIRECTIVE.match(line)
            if m:
                pending.append(m)
            elif line.startswith("```"):
                fence = line[3:].strip()
                directives, pending = pending, []
            elif line.strip():
                pending = []
            continue
        if line.startswith("```"):
            fence = None
            continue
        if fence == "bash" and line.strip():
            cmd = {"line": line, "exit": 0, "ready": None, "output": None}
            for m in directives:
                if m["text"] in line:
                    cmd.update(exit=int(m["code"]), ready=m["ready"])
            cmds.append(cmd)
        elif fence == "console" and line.startswith("# "):
            expect = lines[i + 1]
            code = re.search(r"\(exit (\d+)\)\s*$", expect)
            cmds.append({"line": line[2:], "exit": int(code.group(1)) if code else 2, "ready": None,
                         "output": re.sub(r"\s*\(exit \d+\)\s*$", "", expect)})
    return out


def _walk_fixtures(d: str) -> None:
    """What the examples name: an OCI layout ./busybox-oci whose image has /job.sh, ./job.sh, /srv/www
    with a page, /srv/rootfs (busybox), and `cgagent` and `sudo` on PATH (the walk runs as root)."""
    job = b"#!/bin/sh\necho job done\n"
    images.write_layout(f"{d}/busybox-oci", [images.layer1(), images.layer2(),
                                             images.TarBuilder().file("job.sh", job, 0o755).bytes()])
    with open(f"{d}/job.sh", "wb") as f:
        f.write(job)
    os.chmod(f"{d}/job.sh", 0o755)
    os.makedirs("/srv/www", exist_ok=True)
    with open("/srv/www/index.html", "w") as f:
        f.write("hello from the README\n")
    if not os.path.isdir("/srv/rootfs"):
        import io
        import tarfile

        with tarfile.open(fileobj=io.BytesIO(images.layer1())) as tf:
            tf.extractall("/srv/rootfs")
    os.makedirs(f"{d}/bin")
    for name, body in (("cgagent", f'exec {sys.executable} -m cgagent "$@"'), ("sudo", 'exec "$@"')):
        with open(f"{d}/bin/{name}", "w") as f:
            f.write(f"#!/bin/sh\n{body}\n")
        os.chmod(f"{d}/bin/{name}", 0o755)


def _holds_log(pid: int) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}").endswith(".log") for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def _port_answers(p: subprocess.Popen[str], port: int, netns: str) -> bool:
    return p.poll() is not None or _http_get(port, netns) is not None


def _walk_one(cmd: dict[str, Any], d: str, env: dict[str, str], netns: str) -> str | None:
    """Run one example; None when it exited as the README says, else what went wrong."""
    ready = cmd["ready"]
    # a command to interrupt is exec'ed (nsenter, bash and the cgagent wrapper all exec): p.pid is cgagent
    line = f"exec {cmd['line']}" if ready else cmd["line"]
    argv = ["nsenter", f"--net=/run/netns/{netns}", "--", "bash", "-c", line]
    env = dict(env, PYTHONFAULTHANDLER="1") if ready else env   # SIGABRT prints its stacks if it hangs
    p = subprocess.Popen(argv, cwd=d, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    if ready:
        if ready.startswith("port"):
            port = int(ready.split()[1])
            wait_for(f"{cmd['line']!r}: port {port}", lambda: _port_answers(p, port, netns), timeout=120)
        else:
            wait_for(f"{cmd['line']!r}: its log open", lambda: p.poll() is not None or _holds_log(p.pid), timeout=120)
        if p.poll() is None:
            os.kill(p.pid, signal.SIGINT)   # Ctrl-C, as `kill -INT` (cgagent forwards it to a foreground workload)
    try:
        out, err = p.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        state, err = _stuck(p, lambda: os.killpg(p.pid, signal.SIGKILL))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)   # whatever else it started
        return f"{cmd['line']!r} did not end\n{state}\n=== its stderr\n{err[-4000:]}"
    if p.returncode != cmd["exit"]:
        return f"{cmd['line']!r} exited {p.returncode}, the README says {cmd['exit']}:\n{out[-1500:]}\n{err[-1500:]}"
    if cmd["output"] and cmd["output"] not in err + out:
        return f"{cmd['line']!r} did not print {cmd['output']!r}:\n{out[-1500:]}\n{err[-1500:]}"
    return None


def test_v2sd_readme_examples_run_as_the_readme_says(netns: str) -> None:
    examples = readme_examples()
    assert [s for s, _c in examples] == list(WALKED) and all(len(c) >= 8 for _s, c in examples), examples
    problems = []
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        _walk_fixtures(d)
        for i, (section, cmds) in enumerate(examples):
            env = {k: v for k, v in os.environ.items() if not k.startswith("CGAGENT_")}
            env.update(PATH=f"{d}/bin:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
                       CGAGENT_STATE_DIR=f"{d}/state{i}", CGAGENT_ROOT=f"{d}/root{i}")
            try:
                for cmd in cmds:
                    why = _walk_one(cmd, d, env, netns)
                    if why:
                        problems.append(f"[{section}] {why}")
            finally:
                wl = f"{d}/state{i}/workloads"
                names = [f[:-5] for f in os.listdir(wl) if f.endswith(".json")] if os.path.isdir(wl) else []
                if names:
                    subprocess.run([f"{d}/bin/cgagent", "rm", "-f", *names], env=env, capture_output=True, timeout=300)
    assert problems == [], "\n".join(problems)
    assert scopes() == [] and units("cgagent*.slice") == [] and units("batch*") == []


# --- fast ---
# clone3(CLONE_INTO_CGROUP) (issue 14): under the cgroupfs driver on v2 the workload is created in
# its cgroup; no cgroup.procs is ever opened for writing (an audit hook on `open` watches the CLI).

WATCHED_RUN = r"""
import os, runpy, sys
def hook(event, args):
    if event == "open" and str(args[0]).endswith("cgroup.procs") and isinstance(args[2], int) \
            and args[2] & (os.O_WRONLY | os.O_RDWR):
        os.write(2, f"cgroup.procs written: {args[0]}\n".encode())
sys.addaudithook(hook)
sys.argv = ["cgagent", *sys.argv[1:]]
runpy.run_module("cgagent", run_name="__main__", alter_sys=True)
"""


def test_fast_cgroupfs_v2_workload_is_born_in_its_cgroup(g: Guest) -> None:
    env = dict(os.environ, CGAGENT_STATE_DIR=g.state, CGAGENT_DIRECT="1")
    script = 'cat /proc/self/cgroup; cat "/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max"'
    r = subprocess.run([sys.executable, "-c", WATCHED_RUN, "run", "--rm", "--cgroup-driver", "cgroupfs",
                        "--cgroup-parent", g.parent, "--name", "born", "--memory", "64M", "--pids-limit", "20",
                        "--", "sh", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "cgroup.procs written" not in r.stderr, r.stderr
    assert r.stdout.split() == [f"0::{g.parent}/born", str(64 * M)], r.stdout
    assert not os.path.exists(f"{CG}{g.parent}/born")   # --rm: its cgroup went with it


# --- lifecycle ---

@pytest.mark.parametrize("driver", ["cgroupfs", "systemd"])
def test_lifecycle_inspect_restart_kill_wait_on_v2(g: Guest, driver: str) -> None:
    drv = ["--cgroup-driver", driver] + (["--cgroup-parent", g.parent] if driver == "cgroupfs" else [])
    g.ok("run", "-d", *drv, "--name", "lc", "--cpus", "0.5", "--memory", "64M", "--", "sleep", "1000")
    view = json.loads(g.ok("inspect", "lc").stdout)[0]
    pid = view["State"]["Pid"]
    assert pid == next(r for r in json.loads(g.ok("ps", "--json").stdout) if r["name"] == "lc")["pid"]
    hc = view["HostConfig"]
    assert (hc["Memory"], hc["NanoCpus"], hc["CpuQuota"]) == (64 * M, 500_000_000, 50_000)
    with open(f"/proc/{pid}/cgroup") as f:
        assert view["Cgroups"] == {"unified": f.read().strip().partition("0::")[2]}
    for typ, ino in view["Namespaces"].items():
        assert ino == os.stat(f"/proc/{pid}/ns/{typ}").st_ino
    g.ok("update", "lc", "--memory", "96M")
    assert g.ok("restart", "-t", "5", "lc").stdout == "lc\n"
    again = json.loads(g.ok("inspect", "lc").stdout)[0]
    assert again["State"]["Status"] == "running" and again["State"]["Pid"] != pid
    assert again["HostConfig"]["Memory"] == 96 * M   # the limits the record holds now
    g.ok("kill", "-s", "TERM", "lc")
    assert g.ok("wait", "lc").stdout == "143\n"
    assert g.ok("restart", "lc").stdout == "lc\n"   # exited: started again
    assert json.loads(g.ok("inspect", "lc").stdout)[0]["State"]["Status"] == "running"
    g.ok("rm", "-f", "lc")


# --- iofreeze ---
# Issue 12 items 1-2 on cgroup v2 under both drivers: io.max (IOReadBandwidthMax...) on a loop device
# over the test's own file, io.stat counting the bytes; pause/unpause through cgroup.freeze / FreezeUnit.


@pytest.fixture
def io_loop(g: Guest, tmp_path: Any) -> Iterator[tuple[Guest, str, str]]:
    from tests.security.devkit import loop_device

    with loop_device(str(tmp_path), 16 * M) as (dev, major, minor):
        yield g, dev, f"{major}:{minor}"


def _io_max(g: Guest, name: str, majmin: str) -> str:
    return next((ln for ln in g.file(name, "io.max").splitlines() if ln.startswith(f"{majmin} ")), "")


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_iofreeze_io_max_lands_counts_and_update_0_removes_it(io_loop: tuple[Guest, str, str], driver: str) -> None:
    g, dev, majmin = io_loop
    g.ok("run", "-d", *_drv(g, driver), "--name", "io", "--device-read-bps", f"{dev}:2mb",
         "--device-write-iops", f"{dev}:50", "--", "sh", "-c",
         f"dd if={dev} of=/dev/null bs=1M count=4 iflag=direct; exec sleep 1000")
    assert _io_max(g, "io", majmin) == f"{majmin} rbps={2 * M} wbps=max riops=max wiops=50"
    if driver == "systemd":
        assert prop("cgagent-io.scope", "IOReadBandwidthMax").endswith(f" {2 * M}")
    wait_for("4 MiB read, counted in io.stat",
             lambda: json.loads(g.ok("stats", "io", "--json", "--interval", "0.1").stdout)[0]["io_read_bytes"] >= 4 * M)
    g.ok("update", "io", "--device-read-bps", f"{dev}:0")
    assert _io_max(g, "io", majmin) == f"{majmin} rbps=max wbps=max riops=max wiops=50"
    g.ok("update", "io", "--device-write-iops", f"{dev}:0")
    assert _io_max(g, "io", majmin) == ""   # no limit left: the kernel drops the line
    g.ok("rm", "-f", "io")


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_iofreeze_pause_freezes_cpu_and_paused_workloads_stop_and_go(g: Guest, driver: str) -> None:
    g.ok("run", "-d", *_drv(g, driver), "--name", "fz", "--", sys.executable, "-c", "while True: pass")

    def usage() -> int:
        return kv(f"{g.record('fz')['dirs']['']}/cpu.stat")["usage_usec"]

    wait_for("CPU use", lambda: usage() > 0)
    g.ok("pause", "fz")
    assert "frozen 1" in g.file("fz", "cgroup.events").splitlines()
    assert {r["name"]: r for r in json.loads(g.ok("ps", "--json").stdout)}["fz"]["status"] == "paused"
    frozen_at = usage()
    time.sleep(2)   # the interval over which a frozen cgroup's CPU counter must not move
    assert usage() == frozen_at
    g.ok("unpause", "fz")
    assert "frozen 0" in g.file("fz", "cgroup.events").splitlines()
    wait_for("CPU use again", lambda: usage() > frozen_at)
    g.ok("pause", "fz")
    g.ok("rm", "-f", "fz")
    g.ok("run", "-d", *_drv(g, driver), "--name", "fs", "--", "sleep", "1000")
    g.ok("pause", "fs")
    r = g.ok("stop", "-t", "30", "fs")
    assert "SIGKILL" not in r.stderr and g.record("fs")["exit_code"] == 143, r.stderr
    g.ok("rm", "fs")


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_iofreeze_pause_without_an_inotify_instance_polls(g: Guest, driver: str) -> None:
    """pause and unpause wait for cgroup.events through inotify.Follow; root's instances are counted
    host-wide, and a call the kernel gives none looks once a second instead of failing (the host is
    v1: this v2 path is tested here). tests/starve.py takes them away in a user namespace of its own."""
    from tests.starve import starved

    def starved_call(*args: str) -> subprocess.CompletedProcess[str]:
        return _run_diagnosed(starved([sys.executable, "-m", "cgagent", *args]), timeout=120,
                              env=dict(os.environ, CGAGENT_STATE_DIR=g.state))

    probe = starved([sys.executable, "-c", "from cgagent.inotify import Inotify; Inotify()"])
    assert "Too many open files" in subprocess.run(probe, capture_output=True, text=True).stderr   # starved indeed
    g.ok("run", "-d", *_drv(g, driver), "--name", "fz", "--", "sleep", "1000")
    for verb, events in (("pause", "frozen 1"), ("unpause", "frozen 0")):
        r = starved_call(verb, "fz")
        assert (r.returncode, r.stderr) == (0, ""), (verb, r.stdout, r.stderr)
        assert events in g.file("fz", "cgroup.events").splitlines()
    g.ok("rm", "-f", "fz")

# --- series ---
# Issue 11 items 3-4 on cgroup v2: io.stat per device -> container_fs_*/container_blkio_device_usage_total,
# cpu.weight -> cAdvisor's container_spec_cpu_shares, unlimited limits as 0, lifecycle series.


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_series_v2_io_stat_and_cadvisor_spec(io_loop: tuple[Guest, str, str], driver: str) -> None:
    from cgagent import host as hostmod
    from cgagent.convert import weight_to_cadvisor_shares
    from exporters.registry import Exporter, Options

    g, dev, majmin = io_loop
    done = f"{g.state}/series-dd-done"
    g.ok("run", "-d", *_drv(g, driver), "--name", "sio", "--", "sh", "-c",
         f"dd if=/dev/zero of={dev} bs=1M count=12 oflag=direct 2>/dev/null && touch {done} && exec sleep 1000")
    wait_for("dd finished", lambda: os.path.exists(done), timeout=120)
    cid = g.record("sio")["cgroup"]
    exp = Exporter(Options(host=hostmod.detect(), state_dir=g.state, process_metrics=False))
    try:
        text = exp.render().decode()
    finally:
        exp.close()
    major, minor = majmin.split(":")

    def sample(name: str, *labels: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + "{") and f'id="{cid}"' in line and all(lb in line for lb in labels):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no {name}{labels} for {cid}")

    written = sample("container_fs_writes_bytes_total", f'device="{dev}"')
    assert written >= 12 * M
    assert sample("container_blkio_device_usage_total", f'device="{dev}"', f'major="{major}"', f'minor="{minor}"',
                  'operation="Write"') == written
    assert sample("container_fs_writes_total", f'device="{dev}"') >= 12
    assert sample("container_spec_cpu_shares") == weight_to_cadvisor_shares(int(g.file("sio", "cpu.weight")))
    assert "container_spec_cpu_weight" not in text
    assert sample("container_spec_memory_limit_bytes") == 0    # no --memory: memory.max "max"
    assert sample("container_threads_max") == (0 if g.file("sio", "pids.max").strip() == "max"
                                               else int(g.file("sio", "pids.max")))
    assert sample("container_last_seen") > 0 and sample("container_start_time_seconds") > 0
    assert not [ln for ln in text.splitlines() if ln.startswith("container_cpu_usage_seconds_total{")
                and 'cpu="total"' not in ln]   # v2: no per-CPU split, the total only
    g.ok("rm", "-f", "sio")

# --- pty ---
# Issue 13 item 2 on cgroup v2 with the systemd driver: `run -it` and `exec -it` give an image's shell a
# pty of its own devpts (/dev/pts/0), resizes reach it, the caller's terminal is restored; `run -dit`
# + `attach` + Ctrl-P Ctrl-Q leave it running.

from tests import ptyterm  # noqa: E402
from tests.ptyterm import Term, attach_session, shell_session  # noqa: E402


@pytest.fixture
def terms() -> Iterator[list[Term]]:
    yield from ptyterm.closing()


def _pty_env(box: Box) -> dict[str, str]:
    return dict(os.environ, CGAGENT_STATE_DIR=box.g.state, CGAGENT_ROOT=box.store, CGAGENT_DEFAULT_NET="none")


def test_pty_run_exec_attach_under_systemd_on_v2(box: Box, terms: list[Term]) -> None:
    cgagent = [sys.executable, "-m", "cgagent"]
    drv = ("--cgroup-driver", "systemd")
    t = Term([*cgagent, "run", "-it", "--rm", *drv, "busybox:test", "sh"], _pty_env(box))
    terms.append(t)
    shell_session(t)
    box.ok("run", "-d", "--name", "ptyx", *drv, "busybox:test", "--", "sleep", "1000")
    x = Term([*cgagent, "exec", "-it", "ptyx", "sh"], _pty_env(box))
    terms.append(x)
    shell_session(x)
    box.ok("rm", "-f", "ptyx")
    box.ok("run", "-dit", "--name", "ptya", *drv, "busybox:test", "sh")
    attach_session([*cgagent, "attach", "ptya"], _pty_env(box), terms)
    assert box.g.record("ptya")["status"] == "running" and scopes() == ["cgagent-ptya.scope"]
    box.ok("rm", "-f", "ptya")

# --- flagsrt ---

@pytest.mark.parametrize("driver", ["cgroupfs", "systemd"])
def test_flagsrt_ulimit_user_and_stop_signal_on_v2(g: Guest, driver: str) -> None:
    """--ulimit and -u hold in the workload (born in its cgroup on v2 with cgroupfs, or moved into a
    scope), and `stop` sends --stop-signal; with systemd the scope's KillSignal is that signal too."""
    drv = ["--cgroup-driver", driver] + (["--cgroup-parent", g.parent] if driver == "cgroupfs" else [])
    ready = f"/tmp/flagsrt-ready-{driver}-{os.getpid()}"   # /tmp: where nobody may write it
    g.ok("run", "-d", *drv, "--name", "frt", "--ulimit", "nofile=100:200", "-u", "65534:65534",
         "--stop-signal", "USR1", "--", "sh", "-c", f'trap "exit 7" USR1; touch {ready}; sleep 1000 & wait')
    pid = g.record("frt")["pid"]
    with open(f"/proc/{pid}/limits") as f:
        assert "Max open files            100                  200" in f.read()
    assert os.stat(f"/proc/{pid}").st_uid == 65534
    if driver == "systemd":
        assert prop("cgagent-frt.scope", "KillSignal") == "10"
    deadline = time.monotonic() + 60
    while not os.path.exists(ready):   # polling: nothing announces that a trap is set
        assert time.monotonic() < deadline, "the workload never got ready"
        time.sleep(0.05)
    g.ok("stop", "frt")
    assert g.record("frt")["exit_code"] == 7
    os.unlink(ready)
    g.ok("rm", "frt")

# --- flagsiso ---
# --privileged and --tmpfs on cgroup v2 under both drivers: the device BPF program / DeviceAllow= let
# the test's own loop device open under --privileged only; the cgroup2 mount is writable only then.

@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_flagsiso_privileged_opens_every_device_and_a_writable_cgroup(
        devbox: tuple[Guest, str, tuple[str, int, int]], driver: str) -> None:
    from tests.security.devkit import CANARY, EPERM, read_cmd

    g, root, (dev, _major, _minor) = devbox
    base = ("run", "--rm", *_drv(g, driver), "--net", "none", "--rootfs", root)
    probe = (f"{read_cmd(dev)}; echo ---; busybox grep Seccomp: /proc/self/status; "   # devkit's root: few applets
             "busybox mkdir /sys/fs/cgroup/sub 2>/dev/null && echo CGWRITE; busybox rmdir /sys/fs/cgroup/sub; true")
    r = g.ok(*base, "--privileged", "--", "sh", "-c", probe)
    assert CANARY.decode() in r.stdout and "Seccomp:\t0" in r.stdout and "CGWRITE" in r.stdout, r.stdout
    r = g.ok(*base, "--security-opt", "seccomp=unconfined", "--", "sh", "-c", f"mknod /dev/d b {_major} {_minor}; "
             f"{read_cmd('/dev/d')}; busybox mkdir /sys/fs/cgroup/sub 2>/dev/null && echo CGWRITE; true")
    assert CANARY.decode() not in r.stdout and EPERM in r.stdout and "CGWRITE" not in r.stdout, r.stdout


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_flagsiso_tmpfs_size_and_flags(devbox: tuple[Guest, str, tuple[str, int, int]], driver: str) -> None:
    g, root, _loop = devbox
    r = g.ok("run", "--rm", *_drv(g, driver), "--net", "none", "--rootfs", root, "--tmpfs", "/run:size=1m",
             "--", "sh", "-c", "busybox grep ' /run ' /proc/self/mountinfo")
    assert "nosuid,nodev,noexec" in r.stdout and "size=1024k" in r.stdout, r.stdout


def _start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])   # field 22: start time, in clock ticks


def _parked_pid1s(agent: int) -> list[int]:
    """Processes in the agent's cgroup and in another pid namespace than ours."""
    with open(f"/proc/{agent}/cgroup") as f:
        where = f.read()
    own, out = os.readlink("/proc/self/ns/pid"), []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/cgroup") as f:
                if f.read() == where and os.readlink(f"/proc/{p}/ns/pid") != own:
                    out.append(int(p))
        except OSError:
            pass   # ended meanwhile
    return out


def test_v2sd_agent_runs_are_handed_a_parked_zygote_and_its_pid_1(box: Box) -> None:
    """Through the agent (systemd driver): each parked runner holds a zygote, with the PID 1 of a new
    pid namespace forked ahead, in no scope; a run's scope is made around them and the keeper."""
    env = dict(os.environ, CGAGENT_STATE_DIR=box.g.state, CGAGENT_ROOT=box.store, CGAGENT_DEFAULT_NET="none")
    env.pop("CGAGENT_DIRECT", None)
    agent = subprocess.Popen([sys.executable, "-m", "cgagent", "serve", "--listen", "127.0.0.1:0"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    client = None
    try:
        assert agent.stdout is not None
        assert any("API:" in line for line in agent.stdout), "the agent did not serve its API"
        # at idle: both parked runners' PID 1s, each in a pid namespace of its own, in the agent's cgroup
        wait_for("the parked PID 1s", lambda: len(_parked_pid1s(agent.pid)) == 2, timeout=120)
        client = subprocess.Popen([sys.executable, "-m", "cgagent", "run", "--rm", "--name", "zy", "--memory", "64M",
                                   "busybox:test", "--", "sleep", "1000"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        wait_for("zy running", lambda: os.path.exists(f"{box.g.state}/workloads/zy.json")
                 and box.g.record("zy")["status"] == "running", timeout=120)
        rec = box.g.record("zy")
        assert rec["dirs"] == {"": f"{CG}/cgagent.slice/cgagent-zy.scope"}
        with open(f"{rec['dirs']['']}/cgroup.procs") as f:
            procs = sorted(int(p) for p in f.read().split())
        own_ns = os.readlink("/proc/self/ns/pid")
        pid1 = [p for p in procs if os.readlink(f"/proc/{p}/ns/pid") != own_ns]
        assert sorted([rec["pid"], rec["keeper_pid"], *pid1]) == procs and len(pid1) == 1, (procs, rec)
        # forked ahead: no later than the client that asked for the run (spawn forks it after)
        assert _start_time(pid1[0]) <= _start_time(client.pid), "PID 1 was not forked ahead"
        assert box.g.file("zy", "memory.max") == str(64 * M)
        box.ok("stop", "-t", "1", "zy")
        assert client.wait(60) in (137, 143), client.stderr   # its exit, by SIGKILL or SIGTERM, comes back
        # a host run, and an isolated run that the PID 1 forked ahead cannot be: as without the agent
        r = box.ok("run", "--rm", "--memory", "64M", "--", "sh", "-c", "cat /proc/self/cgroup")
        assert r.stdout.startswith("0::/cgagent.slice/cgagent-w-") and r.stdout.strip().endswith(".scope"), r.stdout
        r = box.ok("run", "--rm", "--pid", "host", "busybox:test", "--", "sh", "-c", "echo $$")
        assert int(r.stdout) > 1, r.stdout
        r = box("run", "--rm", "busybox:test", "--", "sh", "-c", "exit 7")
        assert r.returncode == 7, r.stderr
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait(60)
        agent.terminate()
        agent.wait(120)
    assert scopes() == [] and units("cgagent*.slice") == []
