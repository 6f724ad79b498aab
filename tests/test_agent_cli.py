"""The CLI as a thin client of a running agent: the same output and exit codes as the direct path
(CGAGENT_DIRECT=1), and the thin path imports neither typer nor pydantic nor pyroute2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator

import pytest

from cgagent.api.client import Client
from tests.conftest import Env
from tests.exporter_helpers import Agent, agent

pytestmark = [pytest.mark.root]


@pytest.fixture
def ag(cg: Env) -> Iterator[Agent]:
    with agent(cg) as a:
        yield a


def cli(cg: Env, *args: str, cwd: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cg.cmd(*args), env=cg.env(**env), capture_output=True, text=True, timeout=60, cwd=cwd)


def both(cg: Env, *args: str) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """The command through the agent, then directly."""
    via = cli(cg, *args, PYTHONPROFILEIMPORTTIME="1")
    direct = cli(cg, *args, CGAGENT_DIRECT="1")
    return via, direct


def imported(p: subprocess.CompletedProcess[str]) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}


def output(p: subprocess.CompletedProcess[str]) -> tuple[str, str, int]:
    err = "\n".join(line for line in p.stderr.splitlines() if not line.startswith("import time:"))
    return p.stdout, err, p.returncode


def same(cg: Env, *args: str) -> subprocess.CompletedProcess[str]:
    via, direct = both(cg, *args)
    assert output(via) == output(direct), args
    mods = imported(via)
    assert "cgagent.api.client" in mods and not mods & {"typer", "pydantic", "pyroute2"}, args
    return via


def test_commands_through_the_agent_match_the_direct_path(cg: Env, ag: Agent) -> None:
    run = ["run", "-d", "--memory", "64M", "--", "sh", "-c", "echo hi; exec sleep 1000"]
    via = cli(cg, *run[:2], "--name", "a1", *run[2:], PYTHONPROFILEIMPORTTIME="1")
    assert output(via) == ("a1\n", "", 0)
    assert "cgagent.runtime" not in imported(via)   # the agent ran it
    assert output(cli(cg, *run[:2], "--name", "d1", *run[2:], CGAGENT_DIRECT="1")) == ("d1\n", "", 0)
    for args in (["ps"], ["ps", "--json"], ["ps", "-a"], ["inspect", "a1", "d1"], ["logs", "a1"],
                 ["events"], ["events", "--json", "a1"],
                 # failures: the same line and exit code
                 ["inspect", "nope"], ["logs", "nope"], ["stop", "nope"], ["rm", "a1"], ["rm", "nope", "-f"],
                 ["update", "nope", "--cpus", "1"], ["update", "a1", "--memory", "lots"],
                 ["run", "-d", "--name", "a1", "--", "sleep", "1"]):
        same(cg, *args)
    via, direct = both(cg, "update", "a1", "--cpus", "0.5")
    assert output(via)[1:] == output(direct)[1:] == ("", 0)
    assert via.stdout == direct.stdout == 'a1: {"cpu_quota": 50000, "memory": 67108864}\n'
    via, direct = cli(cg, "stop", "-t", "5", "a1"), cli(cg, "stop", "-t", "5", "d1", CGAGENT_DIRECT="1")
    assert (via.stdout, via.returncode) == ("a1\n", 0) and (direct.stdout, direct.returncode) == ("d1\n", 0)
    recs = json.loads(same(cg, "inspect", "a1", "d1").stdout)
    assert [r["State"]["ExitCode"] for r in recs] == [143, 143]
    same(cg, "events", "--json")
    assert output(cg.run("rm", "a1", "d1")) == ("a1\nd1\n", "", 0)
    same(cg, "ps", "-a")


def test_without_an_agent_the_cli_is_direct(cg: Env) -> None:
    p = cli(cg, "ps", PYTHONPROFILEIMPORTTIME="1")
    assert p.returncode == 0 and "typer" in imported(p)


def test_a_socket_nobody_listens_on_means_direct(cg: Env) -> None:
    """An agent killed leaves its socket file: a run (which does not probe first) and a read go direct."""
    import socket

    os.makedirs(cg.state_dir, mode=0o700)
    s = socket.socket(socket.AF_UNIX)
    s.bind(f"{cg.state_dir}/agent.sock")
    s.close()   # bound, never listened on: connect is refused
    r = cli(cg, "run", "--rm", "--", "sh", "-c", "echo hi; exit 3", PYTHONPROFILEIMPORTTIME="1")
    assert (r.returncode, r.stdout) == (3, "hi\n") and "cgagent.runtime" in imported(r)   # it ran directly
    p = cli(cg, "ps", PYTHONPROFILEIMPORTTIME="1")
    assert p.returncode == 0 and "typer" in imported(p)


def test_direct_is_forced_with_cgagent_direct(cg: Env, ag: Agent) -> None:
    p = cli(cg, "ps", PYTHONPROFILEIMPORTTIME="1", CGAGENT_DIRECT="1")
    assert p.returncode == 0 and "typer" in imported(p)


def test_relative_paths_are_the_callers(cg: Env, ag: Agent, tmp_path: object) -> None:
    # a relative command path means the caller's directory, through the agent too
    script = os.path.join(str(tmp_path), "hello.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\nexec sleep 1000\n")
    os.chmod(script, 0o755)
    p = cli(cg, "run", "-d", "--name", "rel", "--", "./hello.sh", cwd=str(tmp_path), PYTHONPROFILEIMPORTTIME="1")
    assert output(p) == ("rel\n", "", 0) and "cgagent.runtime" not in imported(p)
    assert output(cg.run("rm", "-f", "rel")) == ("rel\n", "", 0)


def test_a_confined_agent_leaves_launching_to_the_direct_path(cg: Env) -> None:
    """An agent with no_new_privs (as the shipped systemd unit's hardening) would pass its sandbox on
    to workloads: run, stop and rm go direct, reads still through it."""
    proc = subprocess.Popen(["setpriv", "--no-new-privs", *cg.cmd("serve", "--listen", "127.0.0.1:0")],
                            env=cg.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and "/metrics" in proc.stdout.readline()
        p = cli(cg, "run", "-d", "--name", "c1", "--", "sleep", "1000", PYTHONPROFILEIMPORTTIME="1")
        assert output(p) == ("c1\n", "", 0) and "cgagent.runtime" in imported(p)
        with open(f"/proc/{json.loads(same(cg, 'inspect', 'c1').stdout)[0]['State']['Pid']}/status") as f:
            assert "NoNewPrivs:\t0" in f.read()   # not the agent's child
        p = cli(cg, "stop", "-t", "5", "c1", PYTHONPROFILEIMPORTTIME="1")
        assert output(p) == ("c1\n", "", 0) and "typer" in imported(p)
        assert output(cli(cg, "rm", "c1")) == ("c1\n", "", 0)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_confinement_reads_the_capabilities(tmp_path: object) -> None:
    from cgagent.api.server import confinement

    status = os.path.join(str(tmp_path), "status")
    for eff, nnp, want in (("000001ffffffffff", "0", None), ("0000000000000020", "0", "it runs without CAP_SYS_ADMIN"),
                           ("000001ffffffffff", "1", "it runs with no_new_privs")):
        with open(status, "w") as f:
            f.write(f"Name:\tx\nCapEff:\t{eff}\nNoNewPrivs:\t{nnp}\n")
        got = confinement(status)
        assert got == want if want is None or "no_new" in want else (got or "").startswith(want)


def test_foreground_runs_through_the_agent(cg: Env, ag: Agent) -> None:
    """stdin, stdout and stderr are the caller's own (SCM_RIGHTS), the exit code comes back, errors
    are the direct path's line and code; the client imports only what a launch needs."""
    for args, stdin in ((["run", "--rm", "--", "sh", "-c", "echo out; echo err >&2; exit 3"], None),
                        (["run", "--rm", "--memory", "64M", "--", "cat"], "from the caller's stdin\n"),
                        (["run", "--rm", "--", "no-such-command"], None),
                        (["run", "--rm", "--memory", "lots", "--", "true"], None)):
        via = subprocess.run(cg.cmd(*args), env=cg.env(PYTHONPROFILEIMPORTTIME="1"), input=stdin,
                             capture_output=True, text=True, timeout=60)
        direct = subprocess.run(cg.cmd(*args), env=cg.env(CGAGENT_DIRECT="1"), input=stdin,
                                capture_output=True, text=True, timeout=60)
        assert output(via) == output(direct), args
        mods = imported(via)
        assert "cgagent.runtime" not in mods and "cgagent.api.runclient" in mods
        if output(via)[2] != 125:   # accepted: what a launch through the agent does not pay for (runclient's doc)
            assert not mods & {"typing", "socket", "signal", "json", "re", "enum", "array", "http.client",
                               "cgagent.api.attach", "cgagent.launch"}, (args, sorted(mods))
    assert output(direct)[2] == 125 and output(via)[0] == ""


HOSTILE = ["", "plain", "quote \" and backslash \\ and \\u0041", "".join(map(chr, range(0x20))) + "\x7f",
           "é ☃ \U0001f600", "\udcff\udc80 (undecodable bytes, surrogateescape'd)", "/tmp/a b\n"]


def test_the_run_request_encoder_is_json() -> None:
    """runclient.encode replaces json.dumps on a launch's path: json.loads reads back what it wrote,
    on every shape a request has and on hostile strings (an environment may hold anything)."""
    from cgagent.api.runclient import encode

    req = {"cmd": ["--", *HOSTILE], "environ": {s or "e": s for s in HOSTILE}, "cwd": HOSTILE[2], "rm": True,
           "detach": False, "name": None, "n": 3, "nested": {"a": [[], {}, [True, None]]}}
    for obj in (req, *HOSTILE, [], {}, 0, -5):
        assert json.loads(encode(obj)) == json.loads(json.dumps(obj)) == obj
    pair = "\ud83d\ude00"   # a surrogate pair as two code points: read back as one, as json.dumps's is
    assert json.loads(encode(pair)) == json.loads(json.dumps(pair)) == "\U0001f600"
    for bad in (1.5, b"x", {1: "a"}, {"a": object()}):
        with pytest.raises(TypeError):
            encode(bad)


def test_undecodable_environment_bytes_reach_the_workload_as_given(cg: Env, ag: Agent) -> None:
    env = {**cg.env(), "RAW": b"\xff\xfe ok \x80"}
    fg = cg.cmd("run", "--rm", "--", "sh", "-c", 'printf %s "$RAW"')
    via = subprocess.run(fg, env=env, capture_output=True, timeout=60)   # type: ignore[arg-type]
    direct = subprocess.run(fg, env={**env, "CGAGENT_DIRECT": "1"}, capture_output=True, timeout=60)  # type: ignore[arg-type]
    assert via.stdout == direct.stdout == b"\xff\xfe ok \x80" and via.returncode == 0, via.stderr


@pytest.mark.parametrize("direct", [False, True])
def test_signals_reach_a_foreground_workload(cg: Env, ag: Agent, direct: bool) -> None:
    script = "trap 'kill $!; echo got TERM; exit 7' TERM; echo ready; sleep 1000 & wait"
    p = subprocess.Popen(cg.cmd("run", "--rm", "--name", "sig", "--", "sh", "-c", script), stdout=subprocess.PIPE,
                         env=cg.env(**({"CGAGENT_DIRECT": "1"} if direct else {})), text=True)
    assert p.stdout is not None
    assert p.stdout.readline() == "ready\n"
    p.send_signal(signal.SIGTERM)   # to the CLI: through the agent, forwarded over the socket
    assert p.stdout.read() == "got TERM\n"
    assert p.wait(60) == 7
    assert output(cli(cg, "ps", "-a")) == output(cli(cg, "ps", "-a", CGAGENT_DIRECT="1"))


def test_warnings_printed_by_the_operation_reach_the_caller(cg: Env, ag: Agent) -> None:
    """`stop` of a workload that ignores SIGTERM says so on stderr: through the agent too."""
    for name, env in (("ta", {}), ("td", {"CGAGENT_DIRECT": "1"})):
        assert output(cli(cg, "run", "-d", "--name", name, "--", "env", "--ignore-signal=TERM", "sleep", "1000",
                          **env)) == (f"{name}\n", "", 0)
    via, direct = cli(cg, "stop", "-t", "0.5", "ta"), cli(cg, "stop", "-t", "0.5", "td", CGAGENT_DIRECT="1")
    assert output(via) == ("ta\n", "cgagent: ta did not exit within 0.5s of SIGTERM; killed it (SIGKILL)", 0)
    assert output(direct) == ("td\n", "cgagent: td did not exit within 0.5s of SIGTERM; killed it (SIGKILL)", 0)
    assert output(cli(cg, "rm", "ta", "td")) == ("ta\ntd\n", "", 0)


def test_host_workloads_get_the_callers_environment_and_directory(cg: Env, ag: Agent, tmp_path: object) -> None:
    script = 'echo "$CALLER_VAR $(pwd)"'
    fg = ["run", "--rm", "--", "sh", "-c", script]
    via, direct = (subprocess.run(cg.cmd(*fg), env=cg.env(CALLER_VAR="mine", **extra), cwd=str(tmp_path),
                                  capture_output=True, text=True, timeout=60)
                   for extra in ({"PYTHONPROFILEIMPORTTIME": "1"}, {"CGAGENT_DIRECT": "1"}))
    assert output(via) == output(direct) == (f"mine {tmp_path}\n", "", 0)
    assert "cgagent.api.runclient" in imported(via)   # through the agent
    p = subprocess.run(cg.cmd("run", "-d", "--name", "envd", "--", "sh", "-c", script + "; exec sleep 1000"),
                       env=cg.env(CALLER_VAR="mine"), cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert output(p) == ("envd\n", "", 0)
    chunks = b""
    for chunk in ag_client(cg).call("GET", "/v1/workloads/envd/logs", query={"follow": True}).chunks():
        chunks += chunk
        if chunks.endswith(b"\n"):
            break
    assert chunks.decode() == f"mine {tmp_path}\n"
    assert output(cli(cg, "rm", "-f", "envd")) == ("envd\n", "", 0)


def ag_client(cg: Env) -> Client:
    return Client(f"{cg.state_dir}/agent.sock", timeout=60)
