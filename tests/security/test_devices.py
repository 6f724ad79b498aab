"""Device control (issue 15, item 2): the attack, reproduced on devices the test makes.

A loop device over a file in tmp_path holds a canary. From inside an isolated workload, root with
MKNOD and no seccomp filter tries to read it: through a node it makes itself, through a node that
already sits in a --rootfs directory or a -v volume. The device cgroup (v1 devices.*; the v2 BPF
program is tested here on the hybrid host's unified hierarchy) and nodev mounts refuse each; the
pseudo devices keep working; --device hands over exactly the one device, with the given access.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cgagent import devrules
from cgagent.errors import CgagentError
from tests.conftest import Env
from tests.isolated import IMG, Box, ok
from tests.security import devkit
from tests.security.devkit import CANARY, EACCES, EPERM, busybox_root, loop_device, read_cmd

pytest_plugins = ("tests.isolated_fixtures",)  # the box and image_store fixtures

UNCONFINED = ("--security-opt", "seccomp=unconfined")


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[tuple[str, int, int]]:
    with loop_device(str(tmp_path)) as dev:
        yield dev


def refused(r: subprocess.CompletedProcess[str], reason: str) -> None:
    devkit.refused(r.stdout + r.stderr, reason)


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return Path(busybox_root(str(tmp_path / "rootfs")))


# --- the attack

def test_mknod_then_open_is_refused_without_seccomp(box: Box, loop: tuple[str, int, int]) -> None:
    _dev, major, minor = loop
    # mknod itself is allowed (b *:* m, as Docker): opening what was made is what the cgroup decides
    r = box.sh(f"mknod /dev/evil b {major} {minor} && echo MADE; {read_cmd('/dev/evil')}", *UNCONFINED)
    assert "MADE" in r.stdout, r.stdout + r.stderr
    refused(r, EPERM)


def test_pseudo_devices_still_work(box: Box) -> None:
    out = ok(box.sh("echo x > /dev/null && head -c 7 /dev/zero | wc -c && head -c 5 /dev/urandom | wc -c "
                    "&& head -c 3 /dev/random | wc -c && ! echo x 2>/dev/null > /dev/full && test -c /dev/pts/ptmx "
                    "&& echo fine", *UNCONFINED))
    assert out.split() == ["7", "5", "3", "fine"]


def test_node_in_a_rootfs_dir_cannot_be_opened(box: Box, rootfs: Path, loop: tuple[str, int, int]) -> None:
    _dev, major, minor = loop
    os.mknod(rootfs / "data" / "disk", stat.S_IFBLK | 0o666, os.makedev(major, minor))
    r = box.run("run", "--rm", "--rootfs", str(rootfs), *UNCONFINED, "--", "sh", "-c", read_cmd("/data/disk"))
    refused(r, EACCES)   # the rootfs directory is mounted nodev
    r = box.run("run", "--rm", "--rootfs", str(rootfs), *UNCONFINED, "--", "sh", "-c",
                f"mknod /tmp/again b {major} {minor}; {read_cmd('/tmp/again')}")
    refused(r, EACCES)   # and a node made in it later, too
    r = box.run("run", "--rm", "--read-only", "--rootfs", str(rootfs), *UNCONFINED, "--", "sh", "-c",
                f"touch /data/x; {read_cmd('/data/disk')}")
    assert "Read-only file system" in r.stdout + r.stderr
    refused(r, EACCES)   # --read-only keeps it nodev


@pytest.mark.parametrize("opts,reason", [("", EACCES), (":ro", EACCES), (":dev", EPERM), (":ro,dev", EPERM)],
                         ids=["nodev", "ro-nodev", "dev", "ro-dev"])
def test_node_in_a_volume_cannot_be_opened(box: Box, tmp_path: Path, loop: tuple[str, int, int], opts: str,
                                           reason: str) -> None:
    """Default: the volume is nodev. `dev` lifts that, and the device cgroup still refuses."""
    _dev, major, minor = loop
    vol = tmp_path / "vol"
    vol.mkdir()
    os.mknod(vol / "disk", stat.S_IFBLK | 0o666, os.makedev(major, minor))
    refused(box.sh(read_cmd("/vol/disk"), "-v", f"{vol}:/vol{opts}", *UNCONFINED), reason)


def test_node_under_the_default_seccomp_profile_too(box: Box, tmp_path: Path, loop: tuple[str, int, int]) -> None:
    _dev, major, minor = loop
    vol = tmp_path / "vol"
    vol.mkdir()
    os.mknod(vol / "disk", stat.S_IFBLK | 0o666, os.makedev(major, minor))
    refused(box.sh(read_cmd("/vol/disk"), "-v", f"{vol}:/vol:dev"), EPERM)


def test_exec_into_the_workload_is_confined_as_well(box: Box, loop: tuple[str, int, int]) -> None:
    _dev, major, minor = loop
    ok(box.run("run", "-d", "--name", "devx", *UNCONFINED, IMG, "--", "sleep", "1000"))
    try:
        r = box.run("exec", "devx", "--", "sh", "-c", f"mknod /dev/e b {major} {minor}; {read_cmd('/dev/e')}")
        refused(r, EPERM)
    finally:
        box.run("rm", "-f", "devx")


# --- --device and --device-cgroup-rule

def test_device_flag_gives_exactly_that_device(box: Box, loop: tuple[str, int, int]) -> None:
    dev, major, minor = loop
    out = ok(box.sh(f"ls -l /dev/disk0; {read_cmd('/dev/disk0')}", "--device", f"{dev}:/dev/disk0"))
    assert out.startswith("b") and f"{major},{minor}" in out.replace(" ", "") and CANARY.decode() in out
    # read-only: reads work, writes are refused by the cgroup
    r = box.sh(f"{read_cmd('/dev/disk0')}; dd if=/dev/zero of=/dev/disk0 bs=1 count=1 2>&1", "--device",
               f"{dev}:/dev/disk0:r")
    assert CANARY.decode() in r.stdout and EPERM in r.stdout
    # the same path inside by default; other loop numbers stay closed
    r = box.sh(f"{read_cmd(dev)}; mknod /dev/other b {major} {minor + 1} && {read_cmd('/dev/other')}",
               "--device", dev, *UNCONFINED)
    assert CANARY.decode() in r.stdout and EPERM in r.stdout, r


def test_device_cgroup_rule_opens_a_class(box: Box, loop: tuple[str, int, int]) -> None:
    _dev, major, minor = loop
    out = ok(box.sh(f"mknod /dev/l b {major} {minor} && {read_cmd('/dev/l')}", "--device-cgroup-rule",
                    f"b {major}:* r", *UNCONFINED))
    assert CANARY.decode() in out


def test_host_workloads_are_unrestricted_unless_a_rule_is_given(cg: Env, loop: tuple[str, int, int]) -> None:
    """A host workload (no image) uses the host's /dev, as under systemd-run; --device-cgroup-rule
    turns device control on for it: Docker's default list plus the rules."""
    dev, _major, _minor = loop
    out = cg.run("run", "--rm", "--", "sh", "-c", read_cmd(dev))
    assert CANARY.decode() in out.stdout, out
    r = cg.run("run", "--rm", "--device-cgroup-rule", "c 1:3 rwm", "--", "sh", "-c",
               f"{read_cmd(dev)}; echo x > /dev/null && echo null-ok")
    refused(r, EPERM)
    assert "null-ok" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["--device", "/nonexistent/dev"], "No such file"),
    (["--device", "/etc/passwd"], "not a character or block device"),
    (["--device", "/dev/null:/etc/null"], "must be under /dev"),
    (["--device", "/dev/null:/dev/n:rwx"], "not HOST[:CONTAINER][:PERMS]"),
    (["--device", "dev/null"], "not an absolute path"),
    (["--device-cgroup-rule", "x 1:3 rwm"], "not TYPE MAJOR:MINOR PERMS"),
    (["--device-cgroup-rule", "c 1:3 rwmq"], "not TYPE MAJOR:MINOR PERMS"),
    (["--device-cgroup-rule", "c 99999999:3 r"], "not TYPE MAJOR:MINOR PERMS"),
    (["--device-cgroup-rule", "c 4096:3 r"], "out of range"),
    (["-v", "/tmp:/x:dev,bogus"], "not HOST:CONTAINER[:OPTIONS]"),
])
def test_bad_device_input_is_one_line(box: Box, args: list[str], needle: str) -> None:
    r = box.run("run", "--rm", *args, IMG, "--", "true")
    err = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(err) == 1 and err[0].startswith("cgagent: error: ") and needle in err[0], r
    assert ok(box.run("ps", "-a", "--json")).strip() == "[]"


def test_device_without_an_image_asks_for_one(cg: Env) -> None:
    r = cg.run("run", "--rm", "--device", "/dev/null", "--", "true")
    assert r.returncode != 0 and "need an IMAGE or --rootfs" in r.stderr and r.stderr.count("\n") == 1


# --- what each driver writes

def test_v1_devices_list_is_dockers_default(box: Box) -> None:
    if "devices" not in _v1_mounts():
        pytest.skip("no v1 devices hierarchy on this host")
    ok(box.run("run", "-d", "--name", "devl", IMG, "--", "sleep", "1000"))
    try:
        with open(f"{box.cg.state_dir}/workloads/devl.json") as f:
            d = json.load(f)["dirs"]["devices"]
        with open(f"{d}/devices.list") as f:
            assert sorted(f.read().split("\n")[:-1]) == sorted(devrules.DEFAULT)
        ok(box.run("update", "devl", "--memory", "64M"))   # an update leaves the device list alone
        with open(f"{d}/devices.list") as f:
            assert sorted(f.read().split("\n")[:-1]) == sorted(devrules.DEFAULT)
    finally:
        box.run("rm", "-f", "devl")


def _v1_mounts() -> dict[str, str]:
    from cgagent import host

    return host.detect().v1_mounts


@contextlib.contextmanager
def _unified_cgroup() -> Iterator[str]:
    """A test cgroup on the hybrid host's v2 hierarchy (device programs work there too)."""
    from cgagent import host

    h = host.detect()
    if h.is_v2 or not h.v2_mount:
        pytest.skip("no hybrid v2 hierarchy here (the VM tier tests the v2 driver)")
    d = os.path.join(h.v2_mount, h.own_cgroup.get("", "/").lstrip("/"), f"cgagent-devtest-{os.getpid()}")
    os.mkdir(d)
    try:
        yield d
    finally:
        os.rmdir(d)


def test_v2_device_program_enforces_and_replaces(loop: tuple[str, int, int]) -> None:
    """The BPF program the v2 driver attaches, on this kernel: default list allows the pseudo
    devices and refuses the loop device; a second apply (an `update`) replaces, never stacks."""
    from cgagent.cgroups.v2 import devices as v2dev
    from cgagent.limits import Resources

    dev, major, minor = loop
    with _unified_cgroup() as d:
        for rules in (devrules.DEFAULT, (*devrules.DEFAULT, f"b {major}:{minor} r")):
            v2dev.apply(d, Resources(devices=devrules.merge(rules)))
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert len(v2dev._attached(fd)) == 1
        finally:
            os.close(fd)
        script = (f"echo $$ > {d}/cgroup.procs; echo x > /dev/null && echo null-ok; {read_cmd(dev)}; "
                  f"dd if=/dev/zero of={dev} bs=1 count=1 2>&1; dd if=/dev/loop-control bs=1 count=0 2>&1")
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60).stdout
        assert "null-ok" in out and CANARY.decode() in out     # allowed: null, and the loop for reading
        assert out.count(EPERM) == 2, out                       # refused: writing it, another device


def test_rule_parsing() -> None:
    assert devrules.parse("a *:* m") == [devrules.Rule("c", -1, -1, "m"), devrules.Rule("b", -1, -1, "m")]
    assert devrules.merge(["c 1:3 r", "c 1:3 mw", "b 7:*  rwm"]) == ("c 1:3 rwm", "b 7:* rwm")
    with pytest.raises(CgagentError):
        devrules.parse("c 1:3 rr")
    assert devrules.for_workload(False, [], []) is None
    assert devrules.for_workload(True, [], []) == devrules.DEFAULT


def test_device_flag_under_userns(box: Box, loop: tuple[str, int, int]) -> None:
    """The node is owned, as seen from inside, by the host node's owner (root inside = uid 100000)."""
    dev, _major, _minor = loop
    out = ok(box.sh(f"ls -ln /dev/disk0; {read_cmd('/dev/disk0')}", "--userns", "--device", f"{dev}:/dev/disk0"))
    assert out.split()[2:4] == ["0", str(os.stat(dev).st_gid)] and CANARY.decode() in out, out
