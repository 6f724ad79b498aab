"""inspect (docker's shape), top, kill, wait, port, restart: the CLI on the real kernel. The bridged
workload runs in a "host" network namespace the test makes (tests/test_network_run.py's node)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable

import pytest

from cgagent import procs
from cgagent.cli.gotemplate import render
from cgagent.errors import CgagentError
from tests.conftest import Env
from tests.isolated import wait_for
from tests.systemd_ns import CLI, SystemdNamespace
from tests.test_network_run import Node, hosts, node, rootfs
from tests.test_systemd_ns import cli, sdns

__all__ = ["cli", "hosts", "node", "rootfs", "sdns"]


def ok(cg: Env, *args: str) -> str:
    res = cg.run(*args)
    assert res.returncode == 0, (args, res.stderr)
    return res.stdout


def one_line_error(res: subprocess.CompletedProcess[str], starts: str) -> None:
    assert res.returncode != 0 and res.stdout == ""
    assert res.stderr.startswith(f"cgagent: error: {starts}"), res.stderr
    assert res.stderr.count("\n") == 1, res.stderr


def inspect(run: object, name: str) -> dict[str, object]:
    out = run("inspect", name)   # type: ignore[operator]
    views = json.loads(out)
    assert isinstance(views, list) and len(views) == 1
    return views[0]   # type: ignore[no-any-return]


def test_go_templates() -> None:
    data = {"State": {"Pid": 42, "Running": True}, "Config": {"Cmd": ["sleep", "9"], "Labels": {}},
            "NetworkSettings": {"Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}}}
    assert render("{{.State.Pid}}", data) == "42"
    assert render("pid={{ .State.Pid }} up={{.State.Running}}", data) == "pid=42 up=true"
    assert render("{{json .State}}", data) == '{"Pid": 42, "Running": true}'
    assert render("{{.Config.Cmd}} {{.Config.Labels}}", data) == "[sleep 9] map[]"
    assert render('{{index .NetworkSettings.Ports "80/tcp"}}', data) == "[map[HostIp:0.0.0.0 HostPort:8080]]"
    for bad in ("{{.State.Nope}}", "{{.State.Pid.X}}", "{{range .State}}", "{{.State.Pid", "{{index .State \"x\"}}",
                "{{State}}"):
        with pytest.raises(CgagentError):
            render(bad, data)


def test_inspect_of_a_bridged_workload_matches_ps_lsns_and_the_network(node: Node,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # the direct path, in the test's namespace: an agent (CGAGENT_TEST_AGENT=1) runs in the root
    # namespace and would connect the workload there
    monkeypatch.setenv("CGAGENT_DIRECT", "1")
    node.ok("run", *node.box("-d", "--name", "web", "--net", "bridge", "-p", "8080:80", "--", "sleep", "1000"))
    view = inspect(node.ok, "web")
    ps = json.loads(node.ok("ps", "--json"))
    state, net = view["State"], view["NetworkSettings"]
    assert isinstance(state, dict) and isinstance(net, dict)
    pid = state["Pid"]
    assert state["Status"] == "running" and state["Running"] is True and pid == ps[0]["pid"]
    assert state["StartedAt"].endswith("Z") and state["FinishedAt"] == "0001-01-01T00:00:00Z"
    # the address answers from the host's namespace, and is the workload's eth0
    ip = net["IPAddress"]
    assert ip.startswith("10.89.") and net["Gateway"] and net["MacAddress"]
    busybox = shutil.which("busybox") or "/bin/busybox"
    node.host.sh(busybox, "ping", "-c", "1", "-W", "10", ip)
    assert f"inet {ip}/" in node.host.in_workload(pid, "ip", "-o", "-4", "addr", "show", "eth0").stdout
    assert net["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}
    # namespaces: what stat -L and lsns print for the same pid
    ns = view["Namespaces"]
    assert isinstance(ns, dict) and {"net", "mnt", "pid", "uts", "ipc"} <= ns.keys()
    for typ, ino in ns.items():
        assert ino == int(subprocess.run(["stat", "-L", "-c", "%i", f"/proc/{pid}/ns/{typ}"], capture_output=True,
                                         text=True, check=True).stdout)
    lsns = subprocess.run(["lsns", "-n", "-o", "NS,TYPE", "-p", str(pid)], capture_output=True, text=True,
                          check=True).stdout
    assert {(int(a), b) for a, b in (ln.split() for ln in lsns.splitlines())} <= {(v, k) for k, v in ns.items()}
    # the cgroup path per hierarchy is the one /proc/PID/cgroup names
    with open(f"/proc/{pid}/cgroup") as f:
        proc_cg = {ln.split(":", 2)[1] or "unified": ln.split(":", 2)[2].strip() for ln in f}
    cgroups = view["Cgroups"]
    assert isinstance(cgroups, dict) and cgroups
    for ctrl, path in cgroups.items():
        assert any(path == p for k, p in proc_cg.items() if ctrl in k.split(",") or k == ctrl), (ctrl, proc_cg)
    # --format, docker's common paths
    assert node.ok("inspect", "--format", "{{.State.Pid}} {{.NetworkSettings.IPAddress}}", "web") == f"{pid} {ip}\n"
    assert json.loads(node.ok("inspect", "-f", "{{json .NetworkSettings.Ports}}", "web")) == net["Ports"]
    # port, as docker port prints it
    assert node.ok("port", "web") == "80/tcp -> 0.0.0.0:8080\n"
    assert node.ok("port", "web", "80/tcp") == "0.0.0.0:8080\n"
    res = node.run("port", "web", "81")
    assert res.returncode != 0 and res.stderr.startswith("cgagent: error: workload 'web' does not publish 81/tcp")
    assert res.stderr.count("\n") == 1
    # restart: a new namespace and connection, made from the record (the overlay and -p too)
    # held open, the old namespace keeps its inode: a freed one's number is reused by the next
    old_net = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        assert node.ok("restart", "-t", "5", "web") == "web\n"
        again = inspect(node.ok, "web")
        pid2, ip2 = again["State"]["Pid"], again["NetworkSettings"]["IPAddress"]   # type: ignore[index]
        assert pid2 != pid and again["Namespaces"]["net"] != ns["net"]   # type: ignore[index]
    finally:
        os.close(old_net)
    node.host.sh(busybox, "ping", "-c", "1", "-W", "10", ip2)
    assert node.ok("port", "web") == "80/tcp -> 0.0.0.0:8080\n"
    node.ok("rm", "-f", "web")


def test_inspect_shows_the_limits_the_kernel_holds(cg: Env) -> None:
    ok(cg, "run", "-d", "--name", "lim", "--memory", "64M", "--cpus", "0.5", "--pids-limit", "50", "--",
       "sleep", "1000")
    ok(cg, "update", "lim", "--memory", "96M")
    view = inspect(lambda *a: ok(cg, *a), "lim")
    hc = view["HostConfig"]
    assert isinstance(hc, dict)
    assert (hc["Memory"], hc["NanoCpus"], hc["CpuQuota"], hc["CpuPeriod"], hc["PidsLimit"]) == \
        (96 << 20, 500_000_000, 50_000, 100_000, 50)
    assert view["Config"]["Cmd"] == ["sleep", "1000"]   # type: ignore[index]
    assert view["Cgagent"]["name"] == "lim" and view["Cgagent"]["live_status"] == "running"   # type: ignore[index]
    ok(cg, "rm", "-f", "lim")


def test_top_kill_wait_restart(cg: Env) -> None:
    ok(cg, "run", "-d", "--name", "job", "--", "sh", "-c", "trap 'exit 7' HUP; sleep 1000 & wait")
    pid = inspect(lambda *a: ok(cg, *a), "job")["State"]["Pid"]   # type: ignore[index]
    top = ok(cg, "top", "job").splitlines()
    assert top[0].split() == ["PID", "PPID", "USER", "TIME", "CMD"]
    rows = [ln.split(None, 4) for ln in top[1:]]
    assert rows[0][0] == str(pid) and rows[0][2] == "root" and rows[0][4].startswith("sh -c trap")
    assert any(r[4] == "sleep 1000" and r[1] == str(pid) for r in rows)
    waiter = cg.popen("wait", "job", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ok(cg, "kill", "-s", "HUP", "job")
    out, err = waiter.communicate(timeout=60)
    assert (out, err, waiter.returncode) == ("7\n", "", 0)
    assert ok(cg, "wait", "job") == "7\n"   # exited already: at once
    view = inspect(lambda *a: ok(cg, *a), "job")
    assert view["State"]["Status"] == "exited" and view["State"]["ExitCode"] == 7   # type: ignore[index]
    assert view["State"]["FinishedAt"] != "0001-01-01T00:00:00Z" and view["Namespaces"] == {}  # type: ignore[index]
    # restart of an exited workload: running again, same record, a new pid in a new cgroup
    assert ok(cg, "restart", "job") == "job\n"
    again = inspect(lambda *a: ok(cg, *a), "job")["State"]
    assert again["Status"] == "running" and again["Pid"] not in (0, pid)   # type: ignore[index]
    # restart of a running one: stopped (SIGTERM) and started again
    assert ok(cg, "restart", "-t", "5", "job") == "job\n"
    third = inspect(lambda *a: ok(cg, *a), "job")["State"]
    assert third["Status"] == "running" and third["Pid"] != again["Pid"]   # type: ignore[index]
    assert not os.path.exists(f"/proc/{again['Pid']}")   # type: ignore[index]
    ok(cg, "kill", "job")   # KILL by default
    assert ok(cg, "wait", "job") == "137\n"
    ok(cg, "rm", "job")


def _slow_to_finish(cg: Env, name: str) -> Callable[[], dict[str, object]]:
    """`run -d` of a workload whose supervisor stops itself (SIGSTOP) just before it records the end;
    -> a reader of its record."""
    run = subprocess.run(cg.cmd("run", "-d", "--name", name, "--", "sleep", "1000"), capture_output=True,
                         text=True, timeout=60, env=cg.env(CGAGENT_FAULT="stop:finishing", CGAGENT_DIRECT="1"))
    assert run.returncode == 0, run.stderr
    path = os.path.join(cg.state_dir, "workloads", f"{name}.json")

    def record() -> dict[str, object]:
        with open(path) as f:
            return dict(json.load(f))

    return record


def test_restart_waits_for_a_supervisor_slower_to_finish_than_stop(cg: Env) -> None:
    """A supervisor that finishes after `stop` gave up waiting for it (10 s; a busy systemd's D-Bus
    jobs, seen in the v2 VM under load) made `restart` fail with "started again meanwhile". The
    supervisor here stops itself (CGAGENT_FAULT) just before it records the end, until the test sees
    that `stop` recorded the end instead; restart must then wait for it and start the workload."""
    record = _slow_to_finish(cg, "slow")
    first = record()
    sup = first["supervisor_pid"]
    assert isinstance(sup, int)
    restart = cg.popen("restart", "-t", "5", "slow", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: procs.state(sup) == "T", timeout=60)   # the workload ended; its supervisor stopped
        wait_for(lambda: record()["status"] == "exited", timeout=60)   # stop waited 10 s, then recorded it
        assert restart.poll() is None, restart.communicate()
    finally:
        os.kill(sup, signal.SIGCONT)
    out, err = restart.communicate(timeout=120)
    assert (restart.returncode, out, err) == (0, "slow\n", "")
    again = inspect(lambda *a: ok(cg, *a), "slow")["State"]
    assert again["Status"] == "running" and again["Pid"] != first["pid"]   # type: ignore[index]
    assert not procs.alive(sup, first.get("supervisor_start"))   # type: ignore[arg-type]  # exited: one supervisor per record
    ok(cg, "rm", "-f", "slow")


def test_a_supervisor_finishing_after_rm_f_leaves_the_next_workload_of_that_name_alone(cg: Env) -> None:
    """`rm -f` waits 10 s for the supervisor to record the end, then records it itself and removes the
    record, and a new run may take the name at once. The old supervisor, slower still (a busy
    systemd's jobs; stopped here just before it records the end), then found the new workload's
    record by name: it recorded it exited and removed its cgroup, killing it."""
    record = _slow_to_finish(cg, "twice")
    sup, sup_start = record()["supervisor_pid"], record()["supervisor_start"]
    assert isinstance(sup, int) and isinstance(sup_start, int)
    try:
        ok(cg, "rm", "-f", "twice")
        wait_for(lambda: procs.state(sup) == "T", timeout=60)   # the old supervisor, before its finish()
        ok(cg, "run", "-d", "--name", "twice", "--", "sleep", "1000")
        new = record()
    finally:
        os.kill(sup, signal.SIGCONT)
    assert procs.wait_exit(sup, sup_start, 60)
    assert record() == new and new["status"] == "running"
    assert isinstance(new["pid"], int) and procs.alive(new["pid"], new["pid_start"])   # type: ignore[arg-type]
    assert os.path.isdir(next(iter(new["dirs"].values())))   # type: ignore[attr-defined]
    ok(cg, "rm", "-f", "twice")


def test_rm_f_of_a_rm_workload_leaves_a_new_workload_of_that_name_alone(cg: Env) -> None:
    """`rm -f` of a --rm workload: its supervisor records the end and removes the record, and a new run
    may take the name at once. `rm -f` then looked the workload up again by name, found the new one
    and ended it (recorded it exited, removed its cgroup: killed it) and removed its record. It stops
    itself here (CGAGENT_FAULT) after the old supervisor is gone, while the new run starts."""
    ok(cg, "run", "-d", "--rm", "--name", "again", "--", "sleep", "1000")
    rm = subprocess.Popen(cg.cmd("rm", "-f", "again"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=cg.env(CGAGENT_FAULT="stop:settling", CGAGENT_DIRECT="1"))
    try:
        wait_for(lambda: procs.state(rm.pid) == "T", timeout=60)   # the old one ended and forgotten
        assert not os.path.exists(os.path.join(cg.state_dir, "workloads", "again.json"))
        ok(cg, "run", "-d", "--name", "again", "--", "sleep", "1000")
    finally:
        os.kill(rm.pid, signal.SIGCONT)
    assert rm.communicate(timeout=60) == ("again\n", "") and rm.returncode == 0
    new = inspect(lambda *a: ok(cg, *a), "again")["State"]
    assert new["Status"] == "running" and procs.alive(new["Pid"], None), new   # type: ignore[index]
    # nor is its restart policy turned off by the old one's stop flag
    assert not os.path.exists(os.path.join(cg.state_dir, "workloads", "again.stopping"))
    ok(cg, "rm", "-f", "again")


def test_a_process_being_reaped_is_not_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    """Between its exit and its reaping a process's /proc entry reads Z (not reaped) or X (being
    reaped: its parent ignores SIGCHLD, or is in waitid now). `restart` waits for the last supervisor
    through its pidfd and then asks procs.alive: in the v2 VM it read X and refused with "has not
    exited within 60s" a few seconds after the exit (run 21 of session 19). Both are ended."""
    monkeypatch.setattr(procs, "start_time", lambda pid: 42)
    for letter, running in (("S", True), ("R", True), ("D", True), ("T", True), ("Z", False), ("X", False)):
        monkeypatch.setattr(procs, "state", lambda pid, letter=letter: letter)
        assert procs.alive(7, 42) is running, letter
    monkeypatch.setattr(procs, "state", lambda pid: None)
    assert procs.alive(7, 42) is False


def test_a_pid_taken_over_by_another_process_is_not_waited_for() -> None:
    """A record names its supervisor and main process by pid and start time: the pid may belong to
    another process by the time `stop`, `restart`, `wait` or `logs -f` opens a pidfd on it. The pidfd
    is checked against the start time after the open, and that stranger is not waited for."""
    p = subprocess.Popen(["sleep", "1000"])
    try:
        start = procs.start_time(p.pid)
        assert start is not None
        assert procs.wait_exit(p.pid, start, 0.05) is False   # the recorded process, still running
        assert procs.pidfd(p.pid, start + 1) is None
        assert procs.wait_exit(p.pid, start + 1, 0.05) is True   # another one now holds its pid
        fd = procs.pidfd(p.pid, start)
        assert fd is not None
        os.close(fd)
    finally:
        p.kill()
        p.wait()
    assert procs.wait_exit(p.pid, start, 0.05) is True


def test_a_pid_taken_over_by_another_process_is_not_signalled() -> None:
    """`stop`, `rm -f` and `restart` signal the main process and the supervisor the record names,
    and the network's port proxies theirs: through a pidfd checked against the start time, never
    kill(pid) after a look (in between the pid can be another process's)."""
    p = subprocess.Popen(["sleep", "1000"])
    try:
        start = procs.start_time(p.pid)
        assert start is not None
        assert procs.send_signal(p.pid, start + 1, signal.SIGTERM) is False   # a stranger holds its pid
        assert procs.wait_exit(p.pid, start, 0.05) is False   # and was left alone
        assert procs.send_signal(p.pid, start, signal.SIGTERM) is True
        assert p.wait(timeout=60) == -signal.SIGTERM
    finally:
        p.kill()
        p.wait()
    assert procs.send_signal(p.pid, start, signal.SIGTERM) is False   # ended


def test_bad_input_is_one_line_and_makes_nothing(cg: Env) -> None:
    ok(cg, "run", "-d", "--name", "b", "--", "sleep", "1000")
    ok(cg, "run", "-d", "--rm", "--name", "once", "--", "sleep", "1000")
    before = sorted(os.listdir(os.path.join(cg.state_dir, "workloads")))
    one_line_error(cg.run("kill", "-s", "FOO", "b"), "'FOO' is not a signal")
    one_line_error(cg.run("kill", "-s", "0x9", "b"), "'0x9' is not a signal")
    one_line_error(cg.run("kill", "-s", "99", "b"), "'99' is not a signal")
    for cmd in (["kill", "nope"], ["wait", "nope"], ["top", "nope"], ["port", "nope"], ["restart", "nope"],
                ["inspect", "nope"]):
        one_line_error(cg.run(*cmd), "no workload named 'nope'")
    one_line_error(cg.run("inspect", "-f", "{{.State.Nope}}", "b"), "--format: .State.Nope names no field")
    one_line_error(cg.run("inspect", "-f", "{{.State.Pid", "b"), "--format")
    one_line_error(cg.run("port", "b", "http"), "'http' is not a port")
    one_line_error(cg.run("restart", "-t", "-1", "b"), "--time -1 is negative")
    one_line_error(cg.run("restart", "once"), "workload 'once' was run with --rm")
    assert sorted(os.listdir(os.path.join(cg.state_dir, "workloads"))) == before
    assert inspect(lambda *a: ok(cg, *a), "once")["State"]["Status"] == "running"   # type: ignore[index]
    ok(cg, "stop", "b")
    for cmd in (["kill", "b"], ["top", "b"]):
        one_line_error(cg.run(*cmd), "workload 'b' is not running")
    ok(cg, "rm", "-f", "b", "once")


def test_restart_kill_wait_under_the_systemd_driver(sdns: SystemdNamespace, cli: CLI) -> None:
    """restart makes the scope anew (systemd removed it at the stop), with the limits the record holds."""
    def state(name: str) -> dict[str, object]:
        out = cli("inspect", "-f", "{{json .State}}", name)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)   # type: ignore[no-any-return]

    def active(name: str) -> str:
        return sdns.systemctl("show", "-p", "ActiveState", "--value", f"cgagent-{name}.scope").strip()

    assert cli("run", "-d", "--name", "rs", "--memory", "64M", "--", "sleep", "1000").returncode == 0
    first = state("rs")["Pid"]
    assert cli("restart", "-t", "5", "rs").stdout == "rs\n"
    second = state("rs")
    assert second["Status"] == "running" and second["Pid"] != first and active("rs") == "active"
    assert sdns.systemctl("show", "-p", "MemoryLimit", "--value", "cgagent-rs.scope").strip() == str(64 << 20)
    assert cli("kill", "-s", "TERM", "rs").returncode == 0
    assert cli("wait", "rs").stdout == "143\n"
    assert active("rs") in ("inactive", "")
    assert cli("restart", "rs").stdout == "rs\n"     # exited: started again
    assert state("rs")["Status"] == "running" and active("rs") == "active"
    assert cli("rm", "-f", "rs").returncode == 0
