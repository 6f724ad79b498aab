"""A real terminal for tests of -t: the process under test gets a pty of ours as its controlling
terminal and stdio, we hold the master (the keyboard and screen) and the slave (to compare its
settings before and after). Every wait reads until an expected marker, with a deadline. Used by
tests/test_tty.py, tests/test_systemd_ns.py and the v2 VM's guest tests."""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import termios
import time
from collections.abc import Callable, Iterator

PROMPT = rb"[#$] "   # root's or a user's shell
# typed into the workload's shell: its terminal, its devpts (its own ptys only), no master among its
# fds, the window size after the resize, then an exit code of its own
CHECKS = (b"echo pts-$(ls /dev/pts | tr '\\n' ,); echo masters-$(ls -l /proc/$$/fd | grep -c ptmx); "
          b"tty; stty size; exit 3\r")


class Term:
    """A process whose controlling terminal (and stdio) is a pty of ours."""

    def __init__(self, argv: list[str], env: dict[str, str], rows: int = 24, cols: int = 80,
                 prepare: Callable[[], None] | None = None) -> None:
        self.master, self.slave = os.openpty()
        self.resize(rows, cols)
        self.saved = termios.tcgetattr(self.slave)

        def ctty() -> None:   # after the new session (start_new_session): the pty becomes its terminal
            if prepare is not None:
                prepare()
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

    def paste(self, data: bytes, timeout: float = 60) -> None:
        """Type `data` as a paste does, reading the screen meanwhile (the echo comes back while we
        type: a writer that stopped reading would block the terminal, as a real one never does)."""
        end = time.monotonic() + timeout
        view = memoryview(data)
        flags = fcntl.fcntl(self.master, fcntl.F_GETFL)
        fcntl.fcntl(self.master, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        try:
            while view:
                left = end - time.monotonic()
                r, w, _ = select.select([self.master], [self.master], [], max(left, 0))
                if left <= 0 or not (r or w):
                    raise AssertionError(f"the paste stalled with {len(view)} of {len(data)} bytes untyped")
                if r:
                    try:
                        self.out += os.read(self.master, 65536)
                    except BlockingIOError:
                        pass
                if w:
                    try:
                        view = view[os.write(self.master, view[:4096]):]
                    except BlockingIOError:
                        pass
        finally:
            fcntl.fcntl(self.master, fcntl.F_SETFL, flags)

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


def closing() -> Iterator[list[Term]]:
    """For a test module's `terms` fixture: the Terms a test appends are closed after it."""
    made: list[Term] = []
    yield made
    for t in made:
        t.close()


def shell_session(t: Term, isolated: bool = True) -> None:
    """At the shell's prompt: resize, type the checks, see them and exit code 3, settings restored."""
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


def attach_session(argv: list[str], env: dict[str, str], terms: list[Term],
                   prepare: Callable[[], None] | None = None) -> None:
    """`attach` (argv) to a `run -dit` shell from a terminal of another size: the shell sees ours and
    answers, then Ctrl-P Ctrl-Q detaches: the CLI exits 0 with our settings restored. Whether the
    workload runs on is the caller's to check. The Term goes into `terms` (closed after the test)."""
    a = Term(argv, env, rows=30, cols=100, prepare=prepare)
    terms.append(a)
    a.send(b"stty size; echo at-$((40+2))\r")   # the sum: the echo of the typed line cannot match
    a.expect(rb"30 100\r\n")
    a.expect(rb"at-42\r\n")
    a.send(b"\x10\x11")
    assert a.wait() == 0 and a.restored()
