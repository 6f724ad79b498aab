"""Docker's isolation options (issue 13 item 4): --tmpfs, --mount, --privileged, --pid host, --ipc,
--dns, --add-host. Each one checked where the kernel shows it: /proc/self/mountinfo, /proc/PID/status,
/proc/PID/ns/*, the device cgroup, the files the workload reads."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from cgagent.isolation.spec import IsolationSpec
from tests.conftest import Env
from tests.isolated import IMG, Box, ok, ps_json, wait_for
from tests.netkit import hosts
from tests.test_network_run import Node, node, rootfs

pytest_plugins = ("tests.isolated_fixtures",)  # the box and image_store fixtures
__all__ = ["hosts", "node", "rootfs"]   # the bridge test's fixtures


def mountinfo(text: str, target: str) -> tuple[list[str], str, list[str]]:
    """The mountinfo line of `target` (the last one: the top of its stack) -> (mount options,
    fstype, super options)."""
    rows = [ln for ln in text.splitlines() if " - " in ln and ln.split()[4:5] == [target]]
    assert rows, text
    left, _, right = rows[-1].partition(" - ")
    fstype, _src, sup = right.split()[:3]
    return left.split()[5].split(","), fstype, sup.split(",")


def status(text: str, key: str) -> str:
    return next(ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith(key + ":"))


def one_line_error(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode == 125, (r.returncode, r.stderr)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


# --- --tmpfs, --mount

def test_tmpfs_is_mounted_with_its_size_and_dockers_flags(box: Box) -> None:
    out = ok(box.sh("cat /proc/self/mountinfo; echo ==; dd if=/dev/zero of=/run/big bs=1k count=2048 2>&1; "
                    "echo dd=$?; stat -c %a /run", "--tmpfs", "/run:size=1m"))
    info, _, rest = out.partition("==\n")
    opts, fstype, sup = mountinfo(info, "/run")
    assert fstype == "tmpfs" and {"nosuid", "nodev", "noexec"} <= set(opts), (opts, sup)
    assert "size=1024k" in sup, sup   # mode 1777 is tmpfs's default, so not listed: stat shows it
    assert "dd=1" in rest and "No space left" in rest, rest    # the kernel holds it to 1 MiB
    assert rest.strip().endswith("1777")


def test_tmpfs_options_exec_ro_and_mode(box: Box) -> None:
    out = ok(box.sh("cat /proc/self/mountinfo", "--tmpfs", "/x:exec,mode=700,size=2m", "--tmpfs", "/y:ro"))
    opts, _, sup = mountinfo(out, "/x")
    assert "noexec" not in opts and "nosuid" in opts and "mode=700" in sup and "size=2048k" in sup
    assert "ro" in mountinfo(out, "/y")[0]


def test_mount_long_form_bind_and_tmpfs(box: Box, tmp_path: Path) -> None:
    (tmp_path / "hello").write_text("from the host\n")
    out = ok(box.sh("cat /data/hello; touch /data/new 2>/dev/null && echo wrote; cat /proc/self/mountinfo",
                    "--mount", f"type=bind,source={tmp_path},target=/data,readonly",
                    "--mount", "type=tmpfs,destination=/scratch,tmpfs-size=1m,tmpfs-mode=1770"))
    assert out.startswith("from the host\n") and "wrote" not in out
    assert "ro" in mountinfo(out, "/data")[0]
    _, fstype, sup = mountinfo(out, "/scratch")
    assert fstype == "tmpfs" and "size=1024k" in sup and "mode=1770" in sup
    assert not (tmp_path / "new").exists()


def test_tmpfs_on_a_volume_lands_inside_it_in_depth_order(box: Box, tmp_path: Path) -> None:
    out = ok(box.sh("cat /proc/self/mountinfo", "--tmpfs", "/v/sub:size=1m", "-v", f"{tmp_path}:/v"))
    assert mountinfo(out, "/v/sub")[1] == "tmpfs"
    assert os.path.isdir(tmp_path / "sub") and not os.listdir(tmp_path / "sub")   # the mount point only


def test_tmpfs_through_a_symlink_resolves_inside_the_root(box: Box, tmp_path: Path) -> None:
    """A target whose path goes through a symlink (in a volume the workload controls): resolved inside
    the workload's root after pivot_root. A link to a host directory the image lacks is refused in
    one line; a link to /etc lands on the image's /etc, never the host's."""
    canary = tmp_path / "canary"
    canary.mkdir()
    vol = tmp_path / "vol"
    vol.mkdir()
    os.symlink(str(canary), vol / "esc")
    os.symlink("/etc", vol / "etc")
    r = box.sh("true", "--tmpfs", "/v/esc", "-v", f"{vol}:/v")
    one_line_error(r, "--tmpfs /v/esc is not a directory inside the workload's root")
    out = ok(box.sh("ls /etc | wc -l; cat /proc/self/mountinfo", "--tmpfs", "/v/etc", "-v", f"{vol}:/v"))
    assert out.split()[0] == "0" and mountinfo(out, "/etc")[1] == "tmpfs"   # the image's /etc, covered
    assert not os.listdir(canary) and os.path.exists("/etc/passwd")


@pytest.mark.parametrize("args", [
    ["--tmpfs", "run"], ["--tmpfs", "/"], ["--tmpfs", "/run:size=lots"], ["--tmpfs", "/run:uid=-1"],
    ["--tmpfs", "/run:bind"], ["--mount", "type=volume,source=vol,target=/data"], ["--mount", "type=tmpfs"],
    ["--mount", "type=bind,target=/data"], ["--mount", "type=bind,source=/tmp,target=/d,bind-propagation=shared"],
    ["--mount", "type=tmpfs,target=/a,source=/b"], ["--pid", "shared"], ["--pid", "container:"], ["--ipc", "shared"],
    ["--dns", "999.1.1.1"], ["--dns", "1.1.1.1", "--dns", "1.1.1.2", "--dns", "1.1.1.3", "--dns", "1.1.1.4"],
    ["--add-host", "db"], ["--add-host", "d b:1.2.3.4"], ["--add-host", "db\n:1.2.3.4"],
    ["--tmpfs", "/r:size=1m\n"], ["--add-host", "db:not-an-ip"],
    ["--privileged", "--userns"], ["--tmpfs", "/x"] * 65,
])
def test_bad_values_are_one_line_and_leave_nothing(box: Box, cg: Env, args: list[str]) -> None:
    r = box.run("run", "--rm", *args, IMG, "--", "true")
    one_line_error(r)
    assert not os.listdir(f"{cg.state_dir}/workloads") if os.path.isdir(f"{cg.state_dir}/workloads") else True


@pytest.mark.parametrize("flag", [["--tmpfs", "/run"], ["--privileged"], ["--pid", "host"], ["--ipc", "host"],
                                  ["--dns", "192.0.2.53"], ["--add-host", "db:192.0.2.1"],
                                  ["--mount", "type=tmpfs,target=/x"]])
def test_isolation_flags_on_a_host_command_say_how(box: Box, flag: list[str]) -> None:
    r = box.run("run", "--rm", *flag, "--", "true")
    one_line_error(r, f"{flag[0]}: isolation options need an IMAGE or --rootfs", "cgagent run")


# --- --privileged

PROBE = ("cat /proc/self/status; echo ==; cat /proc/self/mountinfo; echo ==; "
         "cat /sys/fs/cgroup/devices/devices.list 2>/dev/null; echo ==; ls /dev")


def _probe(box: Box, *opts: str) -> tuple[str, str, str, list[str]]:
    st, info, devs, ls = ok(box.sh(PROBE, *opts)).split("==\n")
    return st, info, devs, ls.split()


def test_privileged_gives_every_capability_no_seccomp_all_devices_and_writable_sys(box: Box) -> None:
    st, info, devs, ls = _probe(box, "--privileged")
    own = Path("/proc/self/status").read_text()   # all we hold (this machine's root lacks SYS_RESOURCE)
    assert status(st, "CapEff") == status(own, "CapPrm") and status(st, "CapBnd") == status(own, "CapBnd")
    assert status(st, "Seccomp") == "0"
    assert "rw" in mountinfo(info, "/sys")[0]
    assert "/proc/kcore" not in info and "ro" not in mountinfo(info, "/proc/sys")[0] if any(
        ln.split()[4] == "/proc/sys" for ln in info.splitlines()) else True
    if os.path.isdir("/sys/fs/cgroup/devices"):   # cgroup v1: the workload's own list, from its cgroup namespace
        assert {"c *:* rwm", "b *:* rwm"} <= set(devs.splitlines()), devs   # every char and block device
    modes = {e.name: e.stat(follow_symlinks=False).st_mode for e in os.scandir("/dev")}
    host_nodes = {n for n, m in modes.items() if stat.S_ISCHR(m) or stat.S_ISBLK(m)}
    assert host_nodes <= set(ls), host_nodes - set(ls)


def test_privileged_opens_the_tests_own_loop_device_and_only_then(box: Box, tmp_path: Path) -> None:
    from tests.security.devkit import CANARY, EPERM, loop_device, read_cmd

    with loop_device(str(tmp_path)) as (dev, major, minor):
        assert CANARY.decode() in ok(box.sh(read_cmd(dev), "--privileged"))   # the host's node, allowed
        r = box.sh(f"mknod /dev/d b {major} {minor}; {read_cmd('/dev/d')}", "--security-opt", "seccomp=unconfined")
        assert CANARY.decode() not in r.stdout and EPERM in r.stdout, r.stdout


def test_without_privileged_the_defaults_hold(box: Box) -> None:
    st, info, devs, ls = _probe(box)
    assert status(st, "CapEff") == "00000000a80425fb" and status(st, "Seccomp") == "2"   # Docker's 14
    assert "ro" in mountinfo(info, "/sys")[0] and "ro" in mountinfo(info, "/proc/sys")[0]
    if os.path.isdir("/sys/fs/cgroup/devices"):
        assert "a *:* rwm" not in devs and "c 1:3 rwm" in devs, devs
    assert "kmsg" not in ls


def test_privileged_is_on_only_when_asked(box: Box) -> None:
    """Records: only the JSON value true is "privileged" (a tampered or old record is not). The API:
    only a boolean true."""
    base = {"store": "/s", "container_dir": "/s/containers/x"}
    for v in ("yes", 1, "true", [1], {"a": 1}, None):
        assert IsolationSpec.from_record({**base, "privileged": v}).privileged is False
    assert IsolationSpec.from_record({**base, "privileged": True}).privileged is True
    assert "privileged" not in IsolationSpec.from_record(base).to_record()   # old shape kept when unused
    from cgagent.errors import CgagentError
    from cgagent.runflags import given

    with pytest.raises(CgagentError, match="--privileged has a value of the wrong type"):
        list(given({"privileged": "true"}))


# --- --pid host, --ipc

def _ns(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def test_pid_host_sees_the_hosts_processes_in_its_own_mount_namespace(box: Box) -> None:
    out = ok(box.sh("cat /proc/1/comm; readlink /proc/self/ns/pid; readlink /proc/self/ns/mnt; echo $$",
                    "--pid", "host"))
    comm, pidns, mntns, me = out.split()
    assert comm == Path("/proc/1/comm").read_text().strip()
    assert pidns == _ns("self", "pid") and mntns != _ns("self", "mnt") and me != "1"
    own = ok(box.sh("readlink /proc/self/ns/pid; echo $$")).split()
    assert own[0] != _ns("self", "pid") and own[1] == "1"


def test_pid_host_workload_takes_exec_and_stop(box: Box) -> None:
    ok(box.run("run", "-d", "--name", "ph", "--pid", "host", "--hostname", "ph-box", IMG, "--", "sleep", "600"))
    pid = int(next(w for w in ps_json(box) if w["name"] == "ph")["pid"])   # type: ignore[call-overload]
    assert _ns(pid, "pid") == _ns("self", "pid") and _ns(pid, "mnt") != _ns("self", "mnt")
    assert ok(box.run("exec", "ph", "--", "hostname")).strip() == "ph-box"   # its namespaces, not the host's
    ok(box.run("rm", "-f", "ph"))
    assert not os.path.exists(f"/proc/{pid}")


def test_pid_container_joins_the_named_workloads_pid_namespace(box: Box) -> None:
    """--pid container:NAME: NAME's processes in view, NAME's PID 1 as init, exec enters it, NAME's end
    ends it; a workload in the host's pid namespace is refused, never joined."""
    host_pid = _ns("self", "pid")
    ok(box.run("run", "-d", "--name", "pc-a", IMG, "--", "sleep", "600"))
    pid = int(next(w for w in ps_json(box) if w["name"] == "pc-a")["pid"])   # type: ignore[call-overload]
    wait_for(lambda: any(_ns(p, "pid") != host_pid for p in _children(pid)))
    a_pid = next(_ns(p, "pid") for p in _children(pid) if _ns(p, "pid") != host_pid)
    out = ok(box.sh("readlink /proc/self/ns/pid; tr '\\0' ' ' < /proc/1/cmdline; echo; echo $$",
                    "--pid", "container:pc-a")).split("\n")
    assert out[0] == a_pid and out[1].strip() == "sleep 600" and out[2] != "1", out
    ok(box.run("run", "-d", "--name", "pc-b", "--pid", "container:pc-a", IMG, "--", "sleep", "601"))
    seen = ok(box.run("exec", "pc-b", "--", "sh", "-c", "readlink /proc/self/ns/pid; ps -o args"))
    assert seen.split("\n")[0] == a_pid and "sleep 600" in seen and "sleep 601" in seen, seen
    out = ok(box.sh("cat /proc/$PPID/comm; echo $$", "--pid", "container:pc-a", "--init")).split()
    assert out[0] == "init" and out[1] != "1", out   # tini as the children's subreaper
    # pc-b has no PID 1 of its own: --ipc container:pc-b finds its IPC namespace, not its relay's (the host's)
    b_ipc = ok(box.run("exec", "pc-b", "--", "readlink", "/proc/self/ns/ipc")).strip()
    assert b_ipc != _ns("self", "ipc")
    assert ok(box.sh("readlink /proc/self/ns/ipc", "--ipc", "container:pc-b")).strip() == b_ipc
    ok(box.run("rm", "-f", "pc-a"))   # the kernel ends a pid namespace with its PID 1
    assert ok(box.run("wait", "pc-b")).strip() == "137"
    ok(box.run("rm", "pc-b"))
    ok(box.run("run", "-d", "--name", "pc-h", "--pid", "host", IMG, "--", "sleep", "600"))
    one_line_error(box.run("run", "--rm", "--pid", "container:pc-h", IMG, "--", "true"),
                   "runs in the host's pid namespace")
    ok(box.run("rm", "-f", "pc-h"))
    one_line_error(box.run("run", "--rm", "--pid", "container:pc-h", IMG, "--", "true"), "no workload named")


def test_ipc_host_private_and_container(box: Box) -> None:
    host_ipc = _ns("self", "ipc")
    assert ok(box.sh("readlink /proc/self/ns/ipc", "--ipc", "host")).strip() == host_ipc
    assert ok(box.sh("readlink /proc/self/ns/ipc", "--ipc", "private")).strip() != host_ipc
    ok(box.run("run", "-d", "--name", "ipc-a", IMG, "--", "sleep", "600"))
    pid = int(next(w for w in ps_json(box) if w["name"] == "ipc-a")["pid"])   # type: ignore[call-overload]
    wait_for(lambda: any(_ns(p, "ipc") != host_ipc for p in _children(pid)))
    a_ipc = next(_ns(p, "ipc") for p in _children(pid) if _ns(p, "ipc") != host_ipc)
    assert ok(box.sh("readlink /proc/self/ns/ipc", "--ipc", "container:ipc-a")).strip() == a_ipc
    ok(box.run("rm", "-f", "ipc-a"))
    one_line_error(box.run("run", "--rm", "--ipc", "container:ipc-a", IMG, "--", "true"), "no workload named")


def test_ipc_host_shares_the_hosts_dev_shm(box: Box) -> None:
    name = f"cgagent-flagsiso-{os.getpid()}"
    with open(f"/dev/shm/{name}", "w") as f:   # the test's own file
        f.write("shared\n")
    try:
        assert ok(box.sh(f"cat /dev/shm/{name}", "--ipc", "host")) == "shared\n"
        assert box.sh(f"cat /dev/shm/{name}").returncode != 0   # private: a /dev/shm of its own
    finally:
        os.unlink(f"/dev/shm/{name}")


def test_tmpfs_under_userns_belongs_to_root_inside_and_pid_host_with_init(box: Box) -> None:
    out = ok(box.sh("stat -c '%u %g %a' /run; touch /run/x && echo wrote", "--userns", "--tmpfs", "/run"))
    assert out.split("\n")[:2] == ["0 0 1777", "wrote"], out
    out = ok(box.sh("cat /proc/$PPID/comm; echo $$", "--pid", "host", "--init"))
    assert out.split()[0] == "init" and out.split()[1] != "1", out   # tini (/dev/init), not PID 1


def _children(pid: int) -> list[int]:
    out = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            out += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return out


# --- --dns, --add-host

def test_dns_and_add_host_with_net_none(box: Box) -> None:
    out = ok(box.sh("cat /etc/resolv.conf; echo ==; cat /etc/hosts", "--net", "none", "--dns", "192.0.2.53",
                    "--dns", "2001:db8::53", "--add-host", "db:192.0.2.10", "--add-host", "v6:[2001:db8::10]"))
    resolv, hosts = out.split("==\n")
    assert [ln for ln in resolv.splitlines() if ln.startswith("nameserver")] == \
        ["nameserver 192.0.2.53", "nameserver 2001:db8::53"]
    assert "192.0.2.10\tdb" in hosts.splitlines() and "2001:db8::10\tv6" in hosts.splitlines()
    assert "127.0.0.1\tlocalhost" in hosts
    # without them the image's own files stay
    assert "192.0.2" not in ok(box.sh("cat /etc/resolv.conf /etc/hosts 2>/dev/null; true", "--net", "none"))


def test_add_host_with_net_host_keeps_the_hosts_names(box: Box) -> None:
    hosts = ok(box.sh("cat /etc/hosts", "--net", "host", "--add-host", "db:192.0.2.10")).splitlines()
    with open("/etc/hosts") as f:
        assert hosts[:-1] == f.read().splitlines() and hosts[-1] == "192.0.2.10\tdb"


def test_dns_and_add_host_on_a_bridge_survive_a_neighbour(node: Node) -> None:
    """On a bridge the network rewrites the hosts file as workloads come and go: --add-host's lines
    stay in it, --dns is its resolv.conf's."""
    node.ok("run", *node.box("-d", "--name", "dn1", "--net", "bridge", "--dns", "192.0.2.53", "--add-host",
                             "db:192.0.2.10", "--", "sleep", "600"))
    node.ok("run", *node.box("--rm", "--name", "dn2", "--net", "bridge", "--", "true"))  # joins and leaves
    out = node.ok("exec", "dn1", "--", "sh", "-c", "cat /etc/resolv.conf; echo ==; cat /etc/hosts")
    resolv, hosts = out.split("==\n")
    assert [ln for ln in resolv.splitlines() if ln.startswith("nameserver")] == ["nameserver 192.0.2.53"]
    assert "192.0.2.10\tdb" in hosts.splitlines() and "\tdn1" in hosts, hosts
    node.ok("rm", "-f", "dn1")


def test_new_fields_round_trip_through_the_record() -> None:
    from cgagent.isolation.spec import Tmpfs

    spec = IsolationSpec(store="/s", container_dir="/s/containers/x", tmpfs=(Tmpfs("/run", "nosuid,size=1m"),),
                         privileged=True, pid="host", ipc="container:a", dns=("192.0.2.53",),
                         extra_hosts=("192.0.2.10\tdb",))
    again = IsolationSpec.from_record(json.loads(json.dumps(spec.to_record())))
    assert again == spec
