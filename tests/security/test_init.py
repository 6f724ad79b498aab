"""--init: PID 1 is tini (Docker's docker-init), exec'd with the workload's environment only, not a
copy of the host's CLI process; the workload cannot read or write its memory."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
from pathlib import Path

import pytest

from cgagent.isolation.namespaces import init_pid
from tests.isolated import IMG, Box, ok, ps_json, wait_for

pytest_plugins = ("tests.isolated_fixtures",)  # the box and image_store fixtures

TINI = "/usr/bin/tini-static"
SECRET = "SECRET_CANARY"


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(e.decode().partition("=")[::2] for e in raw.split(b"\0") if e)


def pids_in(b: Box, name: str) -> list[int]:
    rec = json.loads(Path(f"{b.cg.state_dir}/workloads/{name}.json").read_text())
    d = rec["dirs"].get("pids") or rec["dirs"].get("") or next(iter(rec["dirs"].values()))
    return [int(p) for p in Path(f"{d}/cgroup.procs").read_text().split()]


def start(b: Box, name: str, *opts: str) -> None:
    env = dict(b.env(), **{SECRET: "from-the-caller"})
    r = subprocess.run(b.cg.cmd("run", "-d", "--init", "--name", name, "-e", "GIVEN=yes", *opts, IMG, "--",
                                "sleep", "1000"), env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: any(r["name"] == name and r["status"] == "running" for r in ps_json(b)))
    wait_for(lambda: len(pids_in(b, name)) >= 3)   # relay, tini, sleep


@pytest.mark.parametrize("user", [(), ("-u", "nobody"), ("--userns",)], ids=["root", "nobody", "userns"])
def test_pid1_is_tini_with_the_workload_environment_only(box: Box, user: tuple[str, ...]) -> None:
    start(box, "initw", *user)
    try:
        pid1 = init_pid(pids_in(box, "initw"))
        assert pid1 is not None
        with open(f"/proc/{pid1}/exe", "rb") as exe, open(TINI, "rb") as tini:
            assert hashlib.sha256(exe.read()).digest() == hashlib.sha256(tini.read()).digest()
        [cmd] = [p for p in pids_in(box, "initw") if Path(f"/proc/{p}/comm").read_text() == "sleep\n"]
        env = environ(pid1)
        assert env == environ(cmd), "PID 1 and the command have one environment, the workload's"
        assert env.get("GIVEN") == "yes" and SECRET not in env and "CGAGENT_STATE_DIR" not in env, env
        # inside, even root with Docker's capabilities cannot reach PID 1's memory or environment
        probe = ("(exec 3<>/proc/1/mem) && echo MEM-RW; (exec 4</proc/1/mem) && echo MEM-R; "
                 "cat /proc/1/environ && echo ENVIRON; readlink /proc/1/exe && echo EXE; true")
        out = ok(box.run("exec", "initw", "--", "sh", "-c", probe))
        assert not {"MEM-RW", "MEM-R", "ENVIRON", "EXE"} & set(out.split()), out
        assert "comm" not in out and ok(box.run("exec", "initw", "--", "cat", "/proc/1/comm")) == "init\n"
        # and cannot replace it
        r = box.run("exec", "initw", "--", "sh", "-c", "echo x > /dev/init || rm /dev/init || exit 9")
        assert r.returncode == 9, (r.stdout, r.stderr)
    finally:
        ok(box.run("rm", "-f", "initw"))


def test_orphans_are_reaped(box: Box) -> None:
    # an orphan (its parent exits) is re-parented to PID 1; killed, it must not stay a zombie
    script = ('sh -c "sleep 1000 >/dev/null & echo \\$!" > /tmp/pid; p=$(cat /tmp/pid); kill -9 $p; i=0; '
              'while [ -e /proc/$p ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; '
              '[ -e /proc/$p ] && echo ZOMBIE || echo REAPED')
    assert ok(box.sh(script, "--init")).split() == ["REAPED"]


def test_exit_status_passes_through(box: Box) -> None:
    assert box.sh("exit 7", "--init").returncode == 7
    assert box.sh("kill -9 $$", "--init").returncode == 128 + 9
    r = box.run("run", "--rm", "--init", IMG, "--", "no-such-command")
    assert r.returncode == 127 and "command not found" in r.stderr, (r.returncode, r.stderr)


def test_signals_reach_the_command(box: Box) -> None:
    p = box.popen("run", "--rm", "--init", IMG, "--", "sh", "-c",
                  "trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done", stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        p.send_signal(signal.SIGTERM)   # CLI -> relay -> tini -> sh
        assert p.wait(timeout=30) == 42
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_missing_tini_is_one_line(box: Box) -> None:
    # hide tini in a private mount namespace of this one command only
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
           f'mount --bind /dev/null {TINI} && exec "$@"', "sh", *box.cg.cmd("run", "--rm", "--init", IMG, "--", "true")]
    r = subprocess.run(cmd, env=box.env(), capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "tini" in r.stderr and "apt-get install tini" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert ps_json(box) == [] and box.containers() == []
