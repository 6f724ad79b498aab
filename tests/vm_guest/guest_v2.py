"""Runs INSIDE the cgroup v2 + systemd VM that tests/test_vm.py boots (not collected on the host:
the file name does not match test_*.py). Both drivers on a real v2 host with systemd as PID 1.

Under qemu's TCG emulation time is slow and noisy: these tests assert cgroup files and counters,
never CPU accuracy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

M = 1024 * 1024
CG = "/sys/fs/cgroup"
pytestmark = pytest.mark.skipif(os.environ.get("CGAGENT_VM_GUEST") != "1",
                                reason="runs inside the cgroup v2 VM only (tests/test_vm.py)")


class Guest:
    def __init__(self, state: str, parent: str) -> None:
        self.state, self.parent = state, parent

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, CGAGENT_STATE_DIR=self.state)
        return subprocess.run([sys.executable, "-m", "cgagent", *args], env=env, capture_output=True,
                              text=True, timeout=timeout)

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
    return subprocess.run(["systemctl", "--no-pager", *args], capture_output=True, text=True, timeout=60).stdout


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


def _oom(g: Guest, name: str, *driver: str) -> None:
    # the shell survives its pipeline's OOM kill, so the cgroup (and its memory.events) stays
    g.ok("run", "-d", *driver, "--name", name, "--memory", "32M", "--memory-swap", "32M", "--",
         "sh", "-c", "head -c 300M /dev/zero | tail; sleep 1000")
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
        r = subprocess.run([sys.executable, "-m", "cgagent", *args], env=env, capture_output=True, text=True,
                           timeout=120)
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
         "--pids-limit", "20", "--", "sh", "-c", "head -c 300M /dev/zero | tail; sleep 1000")
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
