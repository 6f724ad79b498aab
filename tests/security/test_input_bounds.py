"""Issue 15 item 8: numbers and YAML are bounded before anything uses them.

Every case goes through the real CLI in a subprocess (both front doors of `run`: the fast path and the
typer app) and must end with a non-zero exit, one line on stderr, no traceback and nothing left behind
(the `cg` fixture fails the test if a cgroup is left; the state dir must hold no workload record).
A subprocess timeout catches a hang (billion laughs) or an expansion (a 10**11-CPU list) as a failure.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from cgagent.units import MAX_BYTES
from tests.conftest import Env
from tests.exporter_helpers import agent
from tests.test_policies import typer_run

LAUGHS = "name: lol\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9 if p else ['lol'] * 9)}]\n"
    for p, n in zip(["", *"abcdefgh"], "abcdefghi", strict=True))
RECURSIVE = "name: loop\nlimits: &a {memory: [*a]}\n"
DEEP = "name: deep\ndescription: " + "[" * 200 + "]" * 200 + "\n"


def _one_line_refusal(r: subprocess.CompletedProcess[str], *expect: str) -> None:
    assert r.returncode != 0, r
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for e in expect:
        assert e in lines[0], r.stderr


def _nothing_left(cg: Env) -> None:
    wl = os.path.join(cg.state_dir, "workloads")
    assert not os.path.isdir(wl) or os.listdir(wl) == [], os.listdir(wl)


@pytest.mark.parametrize("args, expect", [
    (("--memory", "99999999999999999999999999G"),
     f"--memory 99999999999999999999999999G is above the maximum of {MAX_BYTES}"),
    (("--memory", "8589934592G"), "is above the maximum"),      # 2**63 exactly: the first value that wraps
    (("--memory", "1G", "--memory-swap", "99999999999P"), "--memory-swap 99999999999P is above the maximum"),
    (("--memory", "9" * 5000), "--memory 99999999999999999999... is too long to be a size"),
    (("--cpuset-cpus", "0-99999999999"), "above the largest possible number 8191"),
    (("--cpuset-mems", "99999999999"), "above the largest possible number 8191"),
    (("--cpuset-cpus", ",".join(["0-8191"] * 5000)), "too long for a CPU list"),
    (("--pids-limit", "99999999999"), "give a count from 1 to 4194304"),
    (("--cpus", "nan"), "not a finite number"),
    (("--cpus", "inf"), "not a finite number"),
    (("--cpus", "0.001"), "below the kernel's minimum quota"),
    (("--cpu-shares", "٢٠٤٨"), "is not a whole number"),             # int() would take Arabic digits
    (("--restart", "on-failure:" + "9" * 5000), "is not a restart policy"),
], ids=lambda v: str(v)[:40])
def test_cli_number_out_of_bounds_is_one_line(cg: Env, args: tuple[str, ...], expect: str) -> None:
    for run in (cg.run, lambda *a: typer_run(cg, *a)):
        r = run("run", "--name", "never", *args, "--", "true")
        _one_line_refusal(r, expect)
    _nothing_left(cg)


@pytest.mark.parametrize("body, field, expect", [
    ("limits:\n  memory: .nan\n", "limits.memory", "not a finite number"),
    ("limits:\n  memory: .inf\n", "limits.memory", "not a finite number"),
    ("limits:\n  memory: {a: 1}\n", "limits.memory", "must be a size, not an object"),
    ("limits:\n  memory: [1]\n", "limits.memory", "must be a size, not a list"),
    ("limits:\n  memory: true\n", "limits.memory", "must be a size, not a boolean"),
    ("limits:\n  memory: -5\n", "limits.memory", "is negative"),
    ("limits:\n  memory: 99999999999999999999999999G\n", "limits.memory", "is above the maximum"),
    ("limits:\n  memory: 99999999999999999999999999\n", "limits.memory", "is above the maximum"),
    ("limits:\n  memory: 1.0e+300\n", "limits.memory", "is above the maximum"),
    ("limits:\n  cpus: .nan\n", "limits.cpus", "not a finite number"),
    ("limits:\n  cpus: yes\n", "limits.cpus", "must be a number, not a boolean"),
    ("limits:\n  cpu_shares: {a: 1}\n", "limits.cpu_shares", "must be a whole number, not an object"),
    ("limits:\n  cpu_period: .inf\n", "limits.cpu_period", "not a finite number"),
    ("limits:\n  pids_limit: -7\n", "limits.pids_limit", "is invalid"),
    ("limits:\n  pids_limit: false\n", "limits.pids_limit", "not a boolean"),
    ("limits:\n  cpuset_cpus: 0-99999999999\n", "limits.cpuset_cpus", "above the largest possible number"),
    ("limits:\n  memory: 1G\noom: {action: restart-with-more-memory, step: .nan, ceiling: 2G}\n",
     "oom.step", "not a finite number"),
    ("restart: on-failure:99999999999999999999\n", "restart", "at most 999999999"),
], ids=lambda v: str(v)[:40])
def test_policy_value_out_of_bounds_is_one_problem(cg: Env, tmp_path: object, body: str, field: str,
                                                   expect: str) -> None:
    path = os.path.join(str(tmp_path), "p.yaml")
    with open(path, "w") as f:
        f.write("name: p\n" + body)
    r = cg.run("policy", "check", path, timeout=30)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    problem, summary = r.stderr.strip().splitlines()   # the file's one problem, then the one-line verdict
    assert problem.startswith(f"{path}:") and f": {field}: " in problem and expect in problem, problem
    assert summary.startswith("cgagent: error: 1 problem in policy file"), summary


@pytest.mark.parametrize("text, expect", [
    (LAUGHS, "expands to more than 100000 values"),
    (RECURSIVE, "an alias refers to the anchor it is inside of"),
    (DEEP, "nested more than 64 levels deep"),
], ids=["billion-laughs", "recursive-alias", "deep"])
def test_hostile_yaml_in_a_policy_dir_fails_fast(cg: Env, tmp_path: object, text: str, expect: str) -> None:
    d = os.path.join(str(tmp_path), "policies")
    os.makedirs(d)
    name = text.split("\n", 1)[0].removeprefix("name: ")
    path = os.path.join(d, f"{name}.yaml")   # a file that cannot be read is known by its file name
    with open(path, "w") as f:
        f.write(text)

    r = cg.run("policy", "check", path, timeout=30)
    assert r.returncode == 2 and "Traceback" not in r.stderr and expect in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 2, r.stderr   # the problem, then the verdict

    for run in (cg.run, lambda *a: typer_run(cg, *a)):
        r = run("run", "--name", "never", "--policy", name, "--policy-dir", d, "--", "true")
        assert r.returncode == 125 and "Traceback" not in r.stderr and expect in r.stderr, r.stderr
    _nothing_left(cg)

    # the agent reports the file and serves anyway (the controller ignores an invalid policy file)
    with agent(cg, "--policy-dir", d) as a:
        assert "# TYPE" in a.text()


def test_hostile_yaml_web_config_is_one_line(cg: Env, tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "web.yml")
    with open(path, "w") as f:
        f.write(LAUGHS.replace("name: lol\n", "basic_auth_users: {}\n"))
    r = cg.run("serve", "--listen", "127.0.0.1:0", "--web.config.file", path, timeout=30)
    _one_line_refusal(r, path, "expands to more than 100000 values")


def test_a_device_node_as_a_policy_file_is_never_opened(cg: Env, tmp_path: object) -> None:
    """Opening a device has effects of its own (/dev/watchdog arms the watchdog): a policy file is
    opened only once it is known to be regular. The node has /dev/null's numbers; inotify sees
    every open of it."""
    import stat

    from cgagent.inotify import IN_OPEN, Inotify

    path = os.path.join(str(tmp_path), "node.yaml")
    os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(1, 3))
    ino = Inotify()
    try:
        ino.add(path, IN_OPEN)
        r = cg.run("policy", "check", path, timeout=30)
        assert r.returncode == 2 and f"{path}:0: (file): refused: not a regular file" in r.stderr, r.stderr
        assert [m for _, m, _ in ino.read() if m & IN_OPEN] == []
    finally:
        os.close(ino.fd)


@pytest.mark.parametrize("kind, expect", [("fifo", "refused: not a regular file"),
                                          ("zero", "refused: not a regular file"),
                                          ("big", "refused: larger than 1024 KiB")])
def test_policy_file_that_never_ends_is_refused(cg: Env, tmp_path: object, kind: str, expect: str) -> None:
    d = os.path.join(str(tmp_path), "policies")
    os.makedirs(d)
    path = os.path.join(d, "endless.yaml")
    if kind == "fifo":
        os.mkfifo(path)          # opening it for reading would wait for a writer forever
    elif kind == "zero":
        os.symlink("/dev/zero", path)
    else:
        with open(path, "w") as f:
            f.write("name: endless\ndescription: '" + "x" * (2 << 20) + "'\n")
    r = cg.run("policy", "check", path, timeout=30)
    assert r.returncode == 2 and "Traceback" not in r.stderr and f"{path}:0: (file): {expect}" in r.stderr, r.stderr
    r = cg.run("run", "--name", "never", "--policy", "endless", "--policy-dir", d, "--", "true", timeout=30)
    assert r.returncode == 125 and "Traceback" not in r.stderr and expect in r.stderr, r.stderr
    _nothing_left(cg)
