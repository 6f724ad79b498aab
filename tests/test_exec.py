"""`cgagent exec NAME -- CMD` joins a running workload's namespaces, cgroup, root and privileges."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.isolated import IMG, Box, ok, ps_json, wait_for

pytest_plugins = ("tests.isolated_fixtures",)  # the box and image_store fixtures


def start(b: Box, name: str, *opts: str) -> None:
    ok(b.run("run", "-d", "--name", name, *opts, IMG, "--", "sh", "-c", "echo inside > /tmp/mark; sleep 1000"))
    wait_for(lambda: any(r["name"] == name and r["status"] == "running" for r in ps_json(b)))


def test_exec_joins_namespaces_root_and_privileges(box: Box) -> None:
    start(box, "target", "--hostname", "target-box")
    try:
        out = ok(box.run("exec", "target", "--", "sh", "-c",
                         "hostname; cat /tmp/mark; ps -o pid,comm; ls /sys/class/net; grep -E '^(CapEff|Seccomp)' "
                         "/proc/self/status; cat /proc/self/cgroup"))
        lines = out.splitlines()
        assert lines[0] == "target-box" and lines[1] == "inside"   # its UTS namespace and its root
        procs = [ln.split() for ln in lines[3:] if ln.split()[0].isdigit()]
        assert procs[0] == ["1", "sleep"]                           # its pid namespace
        assert "lo" in lines and "eth0" not in lines                # its network namespace
        assert any(ln.startswith("Seccomp:") and ln.split()[1] == "2" for ln in lines)
        cg = [ln for ln in lines if ln.count(":") == 2 and ln.split(":")[1] in ("memory", "pids")]
        assert cg and all(ln.endswith(":/") for ln in cg)           # its cgroup namespace root = its cgroup
        # the exec'd process is in the workload's cgroup on the host
        rec = json.load(open(f"{box.cg.state_dir}/workloads/target.json"))
        procs_file = f"{rec['dirs']['pids']}/cgroup.procs"
        p = box.popen("exec", "target", "--", "sleep", "30", stdout=subprocess.DEVNULL)
        try:
            # the workload's relay and PID 1, exec's relay and sleep
            wait_for(lambda: len(open(procs_file).read().split()) >= 4)
        finally:
            p.kill()
            p.wait()
        assert box.run("exec", "target", "--", "sh", "-c", "exit 5").returncode == 5
        r = box.run("exec", "target", "--", "no-such")
        assert r.returncode == 127 and "command not found" in r.stderr
        assert ok(box.run("exec", "-u", "nobody", "-w", "/tmp", "target", "--", "sh", "-c", "id -u; pwd")).split() \
            == ["65534", "/tmp"]
    finally:
        ok(box.run("rm", "-f", "target"))


def test_exec_into_a_host_workload_joins_its_cgroup(box: Box) -> None:
    ok(box.run("run", "-d", "--name", "hostw", "--", "sleep", "1000"))
    try:
        out = ok(box.run("exec", "hostw", "--", sys.executable, "-c", "print(open('/proc/self/cgroup').read())"))
        assert "hostw" in out
    finally:
        ok(box.run("rm", "-f", "hostw"))


def test_exec_refuses_a_stopped_workload(box: Box) -> None:
    r = box.run("exec", "nothing-here", "--", "true")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "no workload" in r.stderr
