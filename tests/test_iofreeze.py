"""Disk I/O limits and pause/unpause on this machine's real kernel (cgroup v1 here; the VM tier runs
the v2 half in tests/vm_guest/guest_v2.py). Limits are asserted through the kernel's own files and
counters (the throttle rule, the bytes it counted), never through time: `make bench` measures that
a 2 MB/s limit makes an 8 MB read last about 4 s. Every device is a loop device over the test's
own file, never a disk of the host."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Env
from tests.security.devkit import loop_device
from tests.test_run import cgfile, cpu_usage_s, record, start_busy

MB = 1024 * 1024


@pytest.fixture
def loop(tmp_path: object) -> Iterator[tuple[str, str]]:
    """-> (the test's loop device, its MAJ:MIN) over a 16 MiB file."""
    with loop_device(str(tmp_path), 16 * MB) as (dev, major, minor):
        yield dev, f"{major}:{minor}"


def _wait(what: str, cond: object, timeout: float = 60) -> None:
    """Poll a kernel counter: nothing announces "the read is done" to a process outside the workload."""
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _read_bytes(cg: Env, name: str, dev: str) -> int:
    """The bytes the kernel counted as read from `dev` by the workload's cgroup."""
    text = cgfile(cg, name, "blkio", "blkio.throttle.io_service_bytes_recursive")
    return sum(int(n) for d, op, n in (ln.split() for ln in text.splitlines() if ln.count(" ") == 2)
               if d == dev and op == "Read")


def _one_line(r: object, *needles: str) -> None:
    err: str = r.stderr  # type: ignore[attr-defined]
    assert r.returncode != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err  # type: ignore[attr-defined]
    for n in needles:
        assert n in err, err


def test_device_read_bps_is_the_kernels_rule_counts_the_bytes_and_update_0_removes_it(
        cg: Env, loop: tuple[str, str]) -> None:
    dev, majmin = loop
    r = cg.run("run", "-d", "--name", "rd", "--device-read-bps", f"{dev}:2mb", "--device-write-iops", f"{dev}:50",
               "--", "sh", "-c", f"dd if={dev} of=/dev/null bs=1M count=8 iflag=direct; exec sleep 1000")
    assert r.returncode == 0, r.stderr
    assert cgfile(cg, "rd", "blkio", "blkio.throttle.read_bps_device").split() == [majmin, str(2 * MB)]
    assert cgfile(cg, "rd", "blkio", "blkio.throttle.write_iops_device").split() == [majmin, "50"]
    assert record(cg, "rd")["resources"]["device_read_bps"] == [f"{majmin} {2 * MB}"]
    _wait("8 MiB read through the throttle", lambda: _read_bytes(cg, "rd", majmin) >= 8 * MB)
    stats = json.loads(cg.run("stats", "rd", "--json", "--interval", "0.1").stdout)[0]
    assert stats["io_read_bytes"] >= 8 * MB and stats["io_read_ops"] >= 8, stats
    r = cg.run("update", "rd", "--device-read-bps", f"{dev}:0")
    assert r.returncode == 0, r.stderr
    assert cgfile(cg, "rd", "blkio", "blkio.throttle.read_bps_device").strip() == ""   # the rule is gone
    assert cgfile(cg, "rd", "blkio", "blkio.throttle.write_iops_device").split() == [majmin, "50"]   # kept
    r = cg.run("update", "rd", "--device-write-iops", f"{dev}:10")
    assert r.returncode == 0 and cgfile(cg, "rd", "blkio", "blkio.throttle.write_iops_device").split() == [majmin, "10"]
    assert cg.run("rm", "-f", "rd").returncode == 0


def test_blkio_weight_lands_in_the_weight_file(cg: Env, loop: tuple[str, str]) -> None:
    r = cg.run("run", "-d", "--name", "wt", "--blkio-weight", "300", "--", "sleep", "1000")
    if r.returncode != 0 and "no blkio weight file" in r.stderr:
        pytest.skip("no BFQ/CFQ weight file on this kernel")
    assert r.returncode == 0, r.stderr
    d = record(cg, "wt")["dirs"]["blkio"]
    name = "blkio.bfq.weight" if os.path.exists(f"{d}/blkio.bfq.weight") else "blkio.weight"
    assert cgfile(cg, "wt", "blkio", name).split()[-1] == "300"
    assert cg.run("rm", "-f", "wt").returncode == 0


@pytest.mark.parametrize(("value", "needle"), [
    ("/nonexistent-xyz:1mb", "No such file"), ("/dev/null:1mb", "not a block device"),
    ("{dev}:lots", "not a size"), ("{dev}", "not DEVICE:VALUE"),
])
def test_bad_device_limits_are_one_line_and_nothing_is_created(cg: Env, loop: tuple[str, str], value: str,
                                                               needle: str) -> None:
    r = cg.run("run", "--device-read-bps", value.format(dev=loop[0]), "--", "true")
    _one_line(r, needle, "--device-read-bps")
    assert not os.path.exists(f"{cg.state_dir}/workloads") or not os.listdir(f"{cg.state_dir}/workloads")
    assert not any(os.path.exists(d) for d in cg.roots)


# --- pause / unpause

def _status(cg: Env, name: str) -> str:
    return str({r["name"]: r for r in json.loads(cg.run("ps", "-a", "--json").stdout)}[name]["status"])


def test_pause_stops_cpu_time_and_unpause_resumes_it(cg: Env) -> None:
    start_busy(cg, "bz")
    _wait("the workload to use CPU", lambda: cpu_usage_s(cg, "bz") > 0.05)
    r = cg.run("pause", "bz")
    assert r.returncode == 0 and r.stdout.strip() == "bz", r.stderr
    assert cgfile(cg, "bz", "freezer", "freezer.state").strip() == "FROZEN"
    assert _status(cg, "bz") == "paused"
    frozen_at = cpu_usage_s(cg, "bz")
    time.sleep(2)   # the interval over which a frozen cgroup's CPU counter must not move
    assert cpu_usage_s(cg, "bz") == frozen_at
    r = cg.run("unpause", "bz")
    assert r.returncode == 0, r.stderr
    assert _status(cg, "bz") == "running"
    _wait("CPU time to grow again", lambda: cpu_usage_s(cg, "bz") > frozen_at)
    assert cg.run("rm", "-f", "bz").returncode == 0


def test_stop_of_a_paused_workload_ends_it_with_sigterm(cg: Env) -> None:
    r = cg.run("run", "-d", "--name", "ps1", "--", sys.executable, "-c", "import time; time.sleep(1000)")
    assert r.returncode == 0, r.stderr
    assert cg.run("pause", "ps1").returncode == 0
    r = cg.run("stop", "-t", "30", "ps1")
    assert r.returncode == 0 and "SIGKILL" not in r.stderr, r.stderr   # thawed, SIGTERM was enough
    assert record(cg, "ps1")["exit_code"] == 143 and _status(cg, "ps1") == "exited"
    assert cg.run("rm", "ps1").returncode == 0


def test_rm_force_of_a_paused_workload(cg: Env) -> None:
    start_busy(cg, "ps2")
    assert cg.run("pause", "ps2").returncode == 0
    d = record(cg, "ps2")["dirs"]
    r = cg.run("rm", "-f", "ps2")
    assert r.returncode == 0, r.stderr
    assert not any(os.path.exists(x) for x in d.values())


def test_pause_bad_input_is_one_line(cg: Env) -> None:
    _one_line(cg.run("pause", "nope"), "nope")
    r = cg.run("run", "-d", "--name", "pb", "--", "sleep", "1000")
    assert r.returncode == 0, r.stderr
    _one_line(cg.run("unpause", "pb"), "is not paused")
    assert cg.run("pause", "pb").returncode == 0
    _one_line(cg.run("pause", "pb"), "already paused")
    assert cg.run("unpause", "pb").returncode == 0
    assert cg.run("stop", "-t", "5", "pb").returncode == 0
    _one_line(cg.run("pause", "pb"), "is not running")
    assert cg.run("rm", "pb").returncode == 0
