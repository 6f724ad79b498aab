"""-i/-t: `run -it`, `exec -it`, `run -dit` + `attach`, driven through a real pty as a user's terminal
would: the CLI's controlling terminal is the slave of a pty this test holds the master of. Every wait
reads until an expected marker, with a deadline."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from cgagent import terminal
from cgagent.state import Store
from tests import probes, ptyterm
from tests.conftest import Env
from tests.isolated import IMG, Box, ok, ps_json, wait_for
from tests.ptyterm import PROMPT, Term, shell_session

pytest_plugins = ("tests.isolated_fixtures",)  # the box and image_store fixtures


@pytest.fixture
def terms() -> Iterator[list[Term]]:
    yield from ptyterm.closing()


@pytest.mark.parametrize("opts", [[], ["--init"], ["--userns", "--user", "1000"]], ids=["plain", "init", "userns"])
def test_run_it_gives_an_image_shell_its_own_terminal(box: Box, terms: list[Term], opts: list[str]) -> None:
    t = Term(box.cg.cmd("run", "-it", "--rm", *opts, IMG, "sh"), box.env())
    terms.append(t)
    shell_session(t)


def test_exec_it_opens_a_terminal_inside_a_running_workload(box: Box, terms: list[Term]) -> None:
    ok(box.run("run", "-d", "--name", "target", IMG, "--", "sleep", "1000"))
    wait_for(lambda: any(r["name"] == "target" and r["status"] == "running" for r in ps_json(box)))
    t = Term(box.cg.cmd("exec", "-it", "target", "sh"), box.env())
    terms.append(t)
    shell_session(t)
    ok(box.run("rm", "-f", "target"))


def test_run_dit_then_attach_and_detach_with_ctrl_p_ctrl_q(box: Box, terms: list[Term]) -> None:
    ok(box.run("run", "-dit", "--name", "bg", IMG, "sh"))
    t = Term(box.cg.cmd("attach", "bg"), box.env())
    terms.append(t)
    t.send(b"echo at-$((40+2))\r")
    t.expect(rb"at-42\r\n")
    t.send(b"\x10\x11")                      # Ctrl-P Ctrl-Q: the client goes, the workload stays
    assert t.wait() == 0
    assert t.restored()
    assert [r["status"] for r in ps_json(box) if r["name"] == "bg"] == ["running"]
    again = Term(box.cg.cmd("attach", "bg"), box.env(), rows=30, cols=100)
    terms.append(again)
    again.send(b"stty size; exit 4\r")       # attach sends its size first; `exit` ends the workload
    again.expect(rb"30 100\r\n")
    assert again.wait() == 4                 # the workload's code, as docker attach
    assert again.restored()
    assert [r["exit_code"] for r in ps_json(box) if r["name"] == "bg"] == [4]
    ok(box.run("rm", "bg"))


@pytest.mark.parametrize("how", ["run", "attach"])
def test_a_large_paste_into_a_workload_that_writes_it_back(box: Box, terms: list[Term], how: str) -> None:
    """1 MB typed at once into a workload that writes back what it reads (as cat or an editor does):
    cgagent must read its output while it still owes it input, or both ptys fill up and the terminal
    hangs (it did, ~120 kB in, through `run -it` and through `attach`)."""
    script = "stty -icanon -echo; echo ready; head -c 1000000; echo; echo got-all"
    if how == "run":
        t = Term(box.cg.cmd("run", "-it", "--rm", IMG, "sh", "-c", script), box.env())
    else:
        ok(box.run("run", "-dit", "--name", "paste", IMG, "sh", "-c", f"read go; {script}"))
        t = Term(box.cg.cmd("attach", "paste"), box.env())
        t.send(b"\r")
    terms.append(t)
    t.expect(rb"ready\r\n")
    t.paste(b"x" * 1000000)
    t.expect(rb"got-all\r\n")
    assert t.wait() == 0
    assert t.restored()
    if how == "attach":
        ok(box.run("rm", "paste"))


def test_the_master_stays_out_even_where_fds_are_preserved(box: Box, terms: list[Term]) -> None:
    # --preserve-fds keeps fds 3.. open across exec: the master, opened in the workload's process, is
    # closed there before exec (and close-on-exec besides), or the workload could read its own keyboard
    t = Term(box.cg.cmd("run", "-it", "--rm", "--preserve-fds", "20", IMG, "sh"), box.env())
    terms.append(t)
    shell_session(t)


@pytest.mark.parametrize("how", ["run", "exec"])
def test_a_terminal_workload_holds_only_its_terminal(box: Box, terms: list[Term], how: str,
                                                    tmp_path: object) -> None:
    """With -t the workload's 0-2 are its pty's slave, and nothing else of the caller's (a leaked fd
    7), the CLI's, the supervisor's or the console's (the master, the socket it is passed over) is
    open in it (tests/security/test_fds.py for the other paths)."""
    script = probes.SHELL_FDS_MARKED
    if how == "exec":
        ok(box.run("run", "-d", "--name", "target", IMG, "--", "sleep", "1000"))
        wait_for(lambda: any(r["name"] == "target" and r["status"] == "running" for r in ps_json(box)))
        argv = box.cg.cmd("exec", "-it", "target", "sh", "-c", script)
    else:
        argv = box.cg.cmd("run", "-it", "--rm", IMG, "sh", "-c", script)
    t = Term(["sh", "-c", 'exec "$@" 7<"$0"', str(tmp_path), *argv], box.env())   # the caller leaks fd 7
    terms.append(t)
    assert t.expect(probes.SHELL_FDS_MARKED_RE).group(1).split() == [b"0", b"1", b"2"]
    assert t.wait() == 0
    if how == "exec":
        ok(box.run("rm", "-f", "target"))


def test_terminal_restored_when_the_cli_is_signalled(box: Box, terms: list[Term]) -> None:
    # SIGTERM to the CLI goes on to the workload (its trap answers); the CLI ends with its code
    t = Term(box.cg.cmd("run", "-it", "--rm", IMG, "sh", "-c",
                        "trap 'exit 7' TERM; echo ready; sleep 1000 & wait $!"), box.env())
    terms.append(t)
    t.expect(rb"ready\r\n")
    assert not t.restored()   # raw mode while it runs
    t.proc.send_signal(signal.SIGTERM)
    assert t.wait() == 7
    assert t.restored()


def test_terminal_restored_when_the_workload_is_killed(box: Box, terms: list[Term]) -> None:
    t = Term(box.cg.cmd("run", "-it", "--name", "victim", IMG, "sh"), box.env())
    terms.append(t)
    t.expect(PROMPT)
    pid = next(r["pid"] for r in ps_json(box) if r["name"] == "victim")
    os.kill(int(str(pid)), signal.SIGKILL)
    assert t.wait() == 128 + signal.SIGKILL
    assert t.restored()
    ok(box.run("rm", "victim"))


def test_run_it_host_command_gets_a_host_pty(cg: Env, terms: list[Term]) -> None:
    t = Term(cg.cmd("run", "-it", "--rm", "--", "sh"), cg.env(PS1="# "))
    terms.append(t)
    shell_session(t, isolated=False)


def test_exec_it_into_a_host_workload(cg: Env, terms: list[Term]) -> None:
    r = cg.run("run", "-d", "--name", "hostwl", "--", "sleep", "1000")
    assert r.returncode == 0, r.stderr
    t = Term(cg.cmd("exec", "-it", "hostwl", "sh"), cg.env(PS1="# "))
    terms.append(t)
    shell_session(t, isolated=False)
    assert cg.run("rm", "-f", "hostwl").returncode == 0


def test_tty_usage_errors(box: Box) -> None:
    r = box.run("run", "-it", "--rm", IMG, "true", stdin=subprocess.DEVNULL)
    assert r.returncode == 125 and "the input device is not a TTY" in r.stderr
    r = box.run("run", "-di", IMG, "sh")
    assert r.returncode == 125 and "use -dit" in r.stderr
    r = box.run("run", "-t", "--restart", "always", IMG, "sh")
    assert r.returncode == 125 and "--restart" in r.stderr
    r = box.run("run", "-t", "--rm", IMG, "nosuch")
    assert r.returncode == 127 and "nosuch" in r.stderr, r.stderr
    ok(box.run("run", "-d", "--name", "plain", IMG, "--", "sleep", "1000"))
    r = box.run("attach", "plain")
    assert r.returncode != 0 and "has no terminal" in r.stderr
    ok(box.run("rm", "-f", "plain"))
    assert not ps_json(box)


def test_a_client_that_goes_with_output_unread_leaves_the_workload_running(cg: Env) -> None:
    """A unix socket closed with data still unread in it resets its peer (ECONNRESET). A client that
    detaches while the workload writes does exactly that to the process holding the workload's terminal,
    which ended on it, and the workload with it (seen as a flaky attach test under the systemd driver)."""
    r = cg.run("run", "-dit", "--name", "chatty", "--", "sh")
    assert r.returncode == 0, r.stderr
    path = Store(cg.state_dir).tty_path("chatty")
    first = terminal.connect(path)
    first.sendall(terminal.frame(terminal.DATA, b"echo one-$((0+1))\r"))
    assert select.select([first], [], [], 30)[0], "the shell did not answer"
    first.close()   # its answer unread: the holder's next recv on this connection is a reset
    # One client at a time: until the holder has seen the first one go, it turns a new one away (EOF
    # before any byte). It never tells when, so connect until one is taken; a holder that died on the
    # reset removes its socket, and the connect fails.
    deadline = time.monotonic() + 30
    got = b""
    while b"two-2" not in got:
        assert time.monotonic() < deadline, got
        got = _round_trip(path, b"echo two-$((1+1))\r", b"two-2", deadline)
    assert [rec["status"] for rec in json.loads(cg.run("ps", "-a", "--json").stdout)
            if rec["name"] == "chatty"] == ["running"]
    assert cg.run("rm", "-f", "chatty").returncode == 0


def _round_trip(path: str, keys: bytes, want: bytes, deadline: float) -> bytes:
    """Type `keys` through a new attach connection; -> what came back until `want` (b"" when turned away:
    closed at once, which with our keys unread in it is a reset)."""
    try:
        s = terminal.connect(path)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        raise AssertionError(f"the process holding the workload's terminal is gone ({e})") from None
    with s:
        got = b""
        try:
            s.sendall(terminal.frame(terminal.DATA, keys))
            while want not in got and select.select([s], [], [], max(0.0, deadline - time.monotonic()))[0]:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except (ConnectionResetError, BrokenPipeError):
            return b""
        return got
