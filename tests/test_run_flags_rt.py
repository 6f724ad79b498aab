"""`run`'s process and lifecycle flags on the real kernel (issue 13 item 4): --ulimit seen in
/proc/PID/limits, -u/-w/-e/--init of a host command seen by the command itself, --env-file,
--label in inspect and `ps --filter`, --stop-signal/--stop-timeout as `stop` uses them, the image's
Entrypoint and StopSignal, --restart unless-stopped; and bad values: one line, exit 125, nothing left."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cgagent import events, procs
from tests import images
from tests.conftest import Env
from tests.isolated import Box, ok, wait_for

pytest_plugins = ("tests.isolated_fixtures",)
EP_IMG = "ep:test"
# an image whose config has an Entrypoint and a StopSignal
EP_CONFIG = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
             "Entrypoint": ["echo", "ep"], "Cmd": ["img-cmd"], "StopSignal": "SIGUSR1"}


def inspect(run: Any, name: str) -> dict[str, Any]:
    [view] = json.loads(ok(run("inspect", name)))
    return view  # type: ignore[no-any-return]


def one_line_125(res: subprocess.CompletedProcess[str], needle: str) -> None:
    assert res.returncode == 125 and res.stdout == "", (res.returncode, res.stdout, res.stderr)
    assert res.stderr.startswith("cgagent: error: ") and res.stderr.count("\n") == 1, res.stderr
    assert needle in res.stderr, res.stderr


def nothing_left(cg: Env) -> None:
    d = f"{cg.state_dir}/workloads"
    assert not os.path.isdir(d) or os.listdir(d) == [], os.listdir(d)


def log_has(cg: Env, name: str, text: str) -> bool:
    try:
        return text in Path(f"{cg.state_dir}/logs/{name}.log").read_text()
    except FileNotFoundError:
        return False


def starts(cg: Env, name: str) -> int:
    return sum(1 for _o, e in events.read(cg.state_dir) if e["name"] == name and e["kind"] == "start")


@pytest.fixture(scope="module")
def ep_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, overlay mounts)")
    base = tmp_path_factory.mktemp("epstore")
    images.busybox_layout(str(base / "oci"), config=EP_CONFIG, ref=EP_IMG)
    store = str(base / "store")
    r = subprocess.run(Env("", "").cmd("image", "import", str(base / "oci")), env=dict(os.environ, CGAGENT_ROOT=store),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    yield store


def test_ulimit_is_in_proc_pid_limits_of_a_host_workload(cg: Env) -> None:
    ok(cg.run("run", "-d", "--name", "lim", "--ulimit", "nofile=100:200", "--ulimit", "core=0",
              "--ulimit", "memlock=1024:2048", "--", "sleep", "300"))
    view = inspect(cg.run, "lim")
    limits = Path(f"/proc/{view['State']['Pid']}/limits").read_text()
    assert "Max open files            100                  200" in limits, limits
    assert "Max core file size        0                    0" in limits, limits
    assert "Max locked memory         1024                 2048" in limits, limits
    assert view["HostConfig"]["Ulimits"] == [{"Name": "nofile", "Soft": 100, "Hard": 200},
                                             {"Name": "core", "Soft": 0, "Hard": 0},
                                             {"Name": "memlock", "Soft": 1024, "Hard": 2048}]
    ok(cg.run("rm", "-f", "lim"))


def test_ulimit_reaches_an_isolated_workload(box: Box) -> None:
    out = ok(box.sh("grep 'Max processes' /proc/self/limits", "--ulimit", "nproc=50:60"))
    assert out.split()[2:4] == ["50", "60"], out


def test_host_command_runs_as_user_in_workdir_with_env_under_init(cg: Env, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "vars"
    env_file.write_text("# settings\n\nFROM_FILE=file value\nOVERRIDDEN=file\nFROM_CALLER\nNOT_SET\n")
    monkeypatch.setenv("FROM_CALLER", "caller's")
    monkeypatch.delenv("NOT_SET", raising=False)
    res = ok(cg.run("run", "--rm", "-u", "nobody", "-w", "/tmp", "-e", "OVERRIDDEN=flag", "--env-file", str(env_file),
                    "--init", "--", "sh", "-c",
                    'id -u; id -G; pwd; echo "$FROM_FILE|$OVERRIDDEN|$FROM_CALLER|${NOT_SET-unset}|$HOME";'
                    ' cat /proc/$PPID/comm; grep NoNewPrivs /proc/self/status'))
    import pwd

    nobody = pwd.getpwnam("nobody")
    lines = res.splitlines()
    assert lines[0] == str(nobody.pw_uid)
    assert lines[1].split() == [str(g) for g in sorted(set(os.getgrouplist("nobody", nobody.pw_gid)))]
    assert lines[2] == "/tmp"
    assert lines[3] == f"file value|flag|caller's|unset|{nobody.pw_dir}"
    assert lines[4].startswith("tini")   # the command's parent is tini, a subreaper
    # uid:gid by number, without a passwd entry: that gid alone, as Docker
    assert ok(cg.run("run", "--rm", "-u", "4321:8765", "--", "sh", "-c", "id -u; id -G")).split() == ["4321", "8765"]


def test_a_workdir_the_user_cannot_enter_fails_in_one_line(cg: Env, tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    res = cg.run("run", "-u", "nobody", "-w", str(private), "--", "true")
    one_line_125(res, "Permission denied")
    nothing_left(cg)


@pytest.mark.parametrize(("args", "needle"), [
    (["--ulimit", "nofiles=1"], "--ulimit 'nofiles=1' is not NAME=SOFT[:HARD]"),
    (["--ulimit", "nofile=200:100"], "the soft limit is above the hard one"),
    (["--stop-signal", "SIGNOPE"], "--stop-signal 'SIGNOPE' is not a signal"),
    (["--stop-timeout", "-3"], "--stop-timeout '-3' is not whole seconds"),
    (["--label", "=x"], "--label '=x' is not KEY=VALUE"),
    (["--restart", "unless"], "--restart 'unless' is not a restart policy"),
    (["-u", "no-such-user-here"], "no user 'no-such-user-here' on this host"),
    (["-w", "/no/such/dir"], "-w /no/such/dir: not a directory"),
    (["--entrypoint", "sh"], "isolation options need an IMAGE or --rootfs"),
    (["--env-file", "/no/such/file"], "--env-file /no/such/file: No such file or directory"),
    (["--memory", "64M", "--memory-swap", "32M"], "--memory-swap 32M is smaller than --memory 64M"),
])
def test_bad_values_are_one_line_and_exit_125(cg: Env, args: list[str], needle: str) -> None:
    one_line_125(cg.run("run", *args, "--", "true"), needle)
    nothing_left(cg)


def test_env_file_errors_name_file_and_line(cg: Env, tmp_path: Path) -> None:
    bad = tmp_path / "bad.env"
    bad.write_text("A=1\n# ok\nHAS SPACE=2\n")
    one_line_125(cg.run("run", "--env-file", str(bad), "--", "true"), f"{bad}:3: the key 'HAS SPACE' has a space")
    big = tmp_path / "big.env"
    big.write_bytes(b"A=" + b"x" * (1 << 20) + b"\n")
    one_line_125(cg.run("run", "--env-file", str(big), "--", "true"), "is larger than 1048576 bytes")
    nothing_left(cg)


def test_unknown_option_suggests_the_near_ones(cg: Env) -> None:
    res = cg.run("run", "--labels", "a=b", "--", "true")
    assert res.returncode == 125 and "--label" in res.stderr, res.stderr


def test_labels_in_inspect_and_ps_filter(cg: Env, tmp_path: Path) -> None:
    f = tmp_path / "labels"
    f.write_text("team=a\ntier=db\n")
    ok(cg.run("run", "-d", "--name", "lab", "--label-file", str(f), "--label", "tier=web", "-l", "flag",
              "--", "sleep", "300"))
    ok(cg.run("run", "-d", "--name", "other", "--", "sleep", "300"))
    assert inspect(cg.run, "lab")["Config"]["Labels"] == {"team": "a", "tier": "web", "flag": ""}
    assert ok(cg.run("ps", "-q", "--filter", "label=tier=web")).split() == ["lab"]
    assert ok(cg.run("ps", "-q", "--filter", "label=team")).split() == ["lab"]
    ok(cg.run("rm", "-f", "lab", "other"))


def test_stop_sends_the_stop_signal_and_waits_the_stop_timeout(cg: Env) -> None:
    ok(cg.run("run", "-d", "--name", "sig", "--stop-signal", "USR1", "--", "sh", "-c",
              'trap "exit 7" USR1; echo ready; sleep 300 & wait'))
    wait_for(lambda: log_has(cg, "sig", "ready"))   # the trap is set
    assert inspect(cg.run, "sig")["Config"]["StopSignal"] == "SIGUSR1"
    ok(cg.run("stop", "sig"))
    assert inspect(cg.run, "sig")["State"]["ExitCode"] == 7   # SIGTERM would have ended it: 143
    # --stop-timeout: how long `stop` waits (without -t) before SIGKILL
    ok(cg.run("run", "-d", "--name", "deaf", "--stop-timeout", "1", "--", "sh", "-c",
              'trap "" TERM; echo ready; while :; do sleep 1; done'))
    wait_for(lambda: log_has(cg, "deaf", "ready"))
    assert inspect(cg.run, "deaf")["Config"]["StopTimeout"] == 1
    res = cg.run("stop", "deaf")
    assert res.returncode == 0 and "did not exit within 1s of SIGTERM; killed it (SIGKILL)" in res.stderr, res.stderr
    assert inspect(cg.run, "deaf")["State"]["ExitCode"] == 137
    ok(cg.run("rm", "sig", "deaf"))


def test_restart_unless_stopped_restarts_until_stopped(cg: Env) -> None:
    ok(cg.run("run", "-d", "--name", "us", "--restart", "unless-stopped", "--", "sh", "-c", "exit 0"))
    wait_for(lambda: starts(cg, "us") >= 3)
    rec = json.loads(Path(f"{cg.state_dir}/workloads/us.json").read_text())
    ok(cg.run("stop", "-t", "2", "us"))
    assert procs.wait_exit(rec["supervisor_pid"], rec["supervisor_start"], 20), "the supervisor did not finish"
    n = starts(cg, "us")
    view = inspect(cg.run, "us")
    assert view["State"]["Status"] == "exited" and view["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert starts(cg, "us") == n
    ok(cg.run("rm", "us"))


def test_entrypoint_and_stop_signal_of_the_image(cg: Env, ep_store: str) -> None:
    b = Box(cg, ep_store)
    assert ok(b.run("run", "--rm", EP_IMG)) == "ep img-cmd\n"              # Entrypoint + Cmd
    assert ok(b.run("run", "--rm", EP_IMG, "a", "b")) == "ep a b\n"         # CMD words replace Cmd
    assert ok(b.run("run", "--rm", "--entrypoint", "", EP_IMG, "echo", "x")) == "x\n"   # "" clears it
    assert ok(b.run("run", "--rm", "--entrypoint", "/bin/echo", EP_IMG)) == "\n"   # and drops the image's Cmd
    assert ok(b.run("run", "--rm", "--entrypoint", "/bin/echo", EP_IMG, "hi")) == "hi\n"
    ok(b.run("run", "-d", "--name", "img-sig", "--init", "--entrypoint", "sleep", EP_IMG, "300"))
    ok(b.run("run", "-d", "--name", "own-sig", "--init", "--stop-signal", "2", "--entrypoint", "sleep", EP_IMG,
              "300"))
    assert inspect(b.run, "img-sig")["Config"]["StopSignal"] == "SIGUSR1"   # the image's
    assert inspect(b.run, "own-sig")["Config"]["StopSignal"] == "SIGINT"
    ok(b.run("stop", "img-sig", "own-sig"))
    # tini (PID 1: --init) passes each on to sleep, which it ends: 128 + the signal number
    assert inspect(b.run, "img-sig")["State"]["ExitCode"] == 128 + 10
    assert inspect(b.run, "own-sig")["State"]["ExitCode"] == 128 + 2
    ok(b.run("rm", "img-sig", "own-sig"))
    assert b.containers() == []
