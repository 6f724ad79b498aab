"""-i/-t: `run -it`, `exec -it`, `run -dit` + `attach`, driven through a real pty as a user's terminal
would: the CLI's controlling terminal is the slave of a pty this test holds the master of. Every wait
reads until an expected marker, with a deadline."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Env
from tests.isolated import IMG, Box, ok, ps_json, wait_for

pytest_plugins = ("tests.isolated_fixtures",)  # the box and image_store fixtures


class Term:
    """A process whose controlling terminal (and stdio) is a pty of ours."""

    def __init__(self, argv: list[str], env: dict[str, str], rows: int = 24, cols: int = 80) -> None:
        self.master, self.slave = os.openpty()
        self.resize(rows, cols)
        self.saved = termios.tcgetattr(self.slave)

        def ctty() -> None:   # after the new session (start_new_session): the pty becomes its terminal
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(argv, env=env, stdin=self.slave, stdout=self.slave, stderr=self.slave,
                                     start_new_session=True, preexec_fn=ctty)
        self.out = b""
        self.seen = 0   # expect() looks only at what came after the last match

    def resize(self, rows: int, cols: int) -> None:
        """TIOCSWINSZ: the kernel sends SIGWINCH to the terminal's foreground process group (the CLI)."""
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def expect(self, pattern: bytes, timeout: float = 60) -> re.Match[bytes]:
        end = time.monotonic() + timeout
        while True:
            m = re.compile(pattern).search(self.out, self.seen)
            if m:
                self.seen = m.end()
                return m
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.master], [], [], left)[0]:
                raise AssertionError(f"{pattern!r} not seen; got {self.out[-2000:]!r}")
            self.out += os.read(self.master, 65536)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def restored(self) -> bool:
        return termios.tcgetattr(self.slave) == self.saved

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def terms() -> Iterator[list[Term]]:
    made: list[Term] = []
    yield made
    for t in made:
        t.close()


PROMPT = rb"# "
# the checks typed into the workload's shell: its terminal, its devpts (its own ptys only), no master
# among its fds, the window size after the resize, then an exit code of its own
CHECKS = (b"echo pts-$(ls /dev/pts | tr '\\n' ,); echo masters-$(ls -l /proc/$$/fd | grep -c ptmx); "
          b"tty; stty size; exit 3\r")


def shell_session(t: Term, isolated: bool = True) -> None:
    t.expect(PROMPT)
    t.resize(50, 132)   # SIGWINCH to the CLI, which passes the size on before the next keys
    t.send(CHECKS if isolated else b"tty; stty size; exit 3\r")
    if isolated:
        t.expect(rb"pts-0,ptmx,\r\n")       # its own devpts instance: none of the host's ptys
        t.expect(rb"masters-0\r\n")
        t.expect(rb"/dev/pts/0\r\n")
    else:
        t.expect(rb"/dev/pts/\d+\r\n")
    t.expect(rb"50 132\r\n")
    assert t.wait() == 3
    assert t.restored()


def test_run_it_gives_an_image_shell_its_own_terminal(box: Box, terms: list[Term]) -> None:
    t = Term(box.cg.cmd("run", "-it", "--rm", IMG, "sh"), box.env())
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
    assert again.wait() == 0
    assert again.restored()
    wait_for(lambda: [r["exit_code"] for r in ps_json(box) if r["name"] == "bg"] == [4])
    ok(box.run("rm", "bg"))


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
    os.kill(int(pid), signal.SIGKILL)
    assert t.wait() == 128 + signal.SIGKILL
    assert t.restored()
    ok(box.run("rm", "victim"))


def test_run_it_host_command_gets_a_host_pty(cg: Env, terms: list[Term]) -> None:
    t = Term(cg.cmd("run", "-it", "--rm", "--", "sh"), cg.env(PS1="# "))
    terms.append(t)
    shell_session(t, isolated=False)


def test_tty_usage_errors(box: Box) -> None:
    r = box.run("run", "-it", "--rm", IMG, "true", stdin=subprocess.DEVNULL)
    assert r.returncode == 125 and "the input device is not a TTY" in r.stderr
    r = box.run("run", "-di", IMG, "sh")
    assert r.returncode == 125 and "use -dit" in r.stderr
    r = box.run("run", "-t", "--restart", "always", IMG, "sh")
    assert r.returncode == 125 and "--restart" in r.stderr
    assert not ps_json(box)
