"""A workload started without -t keeps the caller's terminal as its stdio, never as its controlling
terminal: it runs in a session of its own (as runc's init does), so TIOCSTI cannot type a command
into the caller's shell (bubblewrap's CVE-2017-5226). The CLI runs on a pty of the test's, as in a
login shell; the workload is the host's python (read-only volumes) trying the ioctl on its stdin."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import ptyterm
from tests.isolated import IMG, Box, ok, ps_json, wait_for
from tests.ptyterm import Term

pytest_plugins = ("tests.isolated_fixtures",)  # the box and image_store fixtures

HOST_PY = ["-v", "/usr:/usr:ro", "-v", "/usr/lib:/lib:ro", "-v", "/lib64:/lib64:ro"]
INJECT = ("import fcntl, termios\n"
          "try:\n"
          "    fcntl.ioctl(0, termios.TIOCSTI, b'#')\n"
          "    print('INJECTED')\n"
          "except OSError as e:\n"
          "    print('REFUSED', e.errno)\n")


@pytest.fixture
def terms() -> Iterator[list[Term]]:
    yield from ptyterm.closing()


def _refused(t: Term) -> None:
    m = t.expect(rb"INJECTED|REFUSED \d+")
    assert m.group(0) == b"REFUSED 1", t.out   # EPERM: not its controlling terminal
    assert t.wait() == 0


def test_run_without_a_tty_cannot_type_into_the_callers_terminal(box: Box, terms: list[Term]) -> None:
    t = Term(box.cg.cmd("run", "--rm", *HOST_PY, IMG, "--", "/usr/bin/python3", "-I", "-c", INJECT), box.env())
    terms.append(t)
    _refused(t)


def test_exec_without_a_tty_cannot_type_into_the_callers_terminal(box: Box, terms: list[Term]) -> None:
    ok(box.run("run", "-d", "--name", "target", *HOST_PY, IMG, "--", "sleep", "1000"))
    try:
        wait_for(lambda: any(r["name"] == "target" and r["status"] == "running" for r in ps_json(box)))
        t = Term(box.cg.cmd("exec", "target", "--", "/usr/bin/python3", "-I", "-c", INJECT), box.env())
        terms.append(t)
        _refused(t)
    finally:
        ok(box.run("rm", "-f", "target"))
