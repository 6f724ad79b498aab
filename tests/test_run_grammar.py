"""`run`'s one grammar (issue 13): `run IMAGE [CMD...]` as Docker, a host command only after `--`; a first
word that names an image is never run from the host's PATH. And Docker's exit codes for `run` and
`exec`: 125 cgagent's own error, 126 cannot invoke, 127 not found, the workload's code otherwise."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import images
from tests.conftest import Env
from tests.isolated import IMG, Box, ok, ps_json, wait_for

pytest_plugins = ("tests.isolated_fixtures",)  # the box and image_store fixtures

HOST_CMD = "busybox"   # an image of this name, and /bin/busybox on the host's PATH


@pytest.fixture(scope="module")
def named_store(image_store: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The module's store, with the test image also imported as `busybox` (the name of a host command)."""
    assert images.BUSYBOX.startswith("/bin/") and os.access(images.BUSYBOX, os.X_OK)
    base = tmp_path_factory.mktemp("named")
    images.busybox_layout(str(base / "oci"))
    r = subprocess.run([*Env("", "").cmd("image", "import", str(base / "oci"), "--name", HOST_CMD)],
                       env=dict(os.environ, CGAGENT_ROOT=image_store), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return image_store


@pytest.fixture
def nonexec(tmp_path: Path) -> str:
    """A file of the test's own that exists but is not executable (as /etc/passwd is)."""
    p = tmp_path / "plain.txt"
    p.write_text("not a program\n")
    p.chmod(0o644)
    return str(p)


def one_error_line(r: subprocess.CompletedProcess[str], code: int) -> str:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cgagent: error: "), r.stderr
    return lines[0]


# --- the grammar


def test_an_image_named_as_a_host_command_runs_in_the_image(box: Box, named_store: str) -> None:
    # the case: /bin/busybox exists on the host, and `busybox hostname` printed the host's name
    host = socket.gethostname()
    assert host != "gram1"
    assert ok(box.run("run", "--rm", "--name", "gram1", HOST_CMD, "hostname")).strip() == "gram1"
    assert ok(box.run("run", "--rm", "--name", "gram2", HOST_CMD, "--", "hostname")).strip() == "gram2"
    # clustered short flags take the typer door: the same grammar there
    assert ok(box.run("run", "-dm", "64M", "--name", "gram3", HOST_CMD, "sleep", "1000")).strip() == "gram3"
    try:
        wait_for(lambda: any(r["name"] == "gram3" and r["status"] == "running" for r in ps_json(box)))
        assert ok(box.run("exec", "gram3", "hostname")).strip() == "gram3"
    finally:
        ok(box.run("rm", "-f", "gram3"))
    # only `--` runs the host's: explicitly
    assert ok(box.run("run", "--rm", "--", HOST_CMD, "hostname")).strip() == host


def test_a_host_command_without_dashes_is_refused_in_one_line_with_both_spellings(box: Box) -> None:
    for door in ([], ["-dm", "64M"]):   # the fast parser, and typer's
        line = one_error_line(box.run("run", "--rm", *door, "echo", "host"), 125)
        assert "'echo' is a command of the host, not an image" in line, line
        assert "`cgagent run -- echo host`" in line and "`cgagent run IMAGE echo host`" in line, line
    line = one_error_line(box.run("run", "--rm", "no-such-image-or-cmd", "x"), 125)
    assert "no image 'no-such-image-or-cmd'" in line and "`cgagent run -- no-such-image-or-cmd x`" in line
    # the documented forms keep working
    assert ok(box.run("run", "--rm", "--", "echo", "host")).strip() == "host"
    assert ok(box.run("run", "--rm", IMG)).strip() == "default-cmd"
    assert ok(box.run("run", "--rm", "--hostname", "nodash", IMG, "hostname")).strip() == "nodash"
    assert box.containers() == [] and ps_json(box) == []


def test_rootfs_takes_its_command_after_dashes(box: Box, tmp_path: Path) -> None:
    line = one_error_line(box.run("run", "--rm", "--rootfs", str(tmp_path), "sh", "-c", "true"), 125)
    assert "`cgagent run --rootfs DIR -- CMD`" in line, line


# --- exit codes


def test_run_exit_codes_on_the_host(box: Box, nonexec: str, tmp_path: Path) -> None:
    assert box.run("run", "--rm", "--", "sh", "-c", "exit 2").returncode == 2       # the workload's own
    assert box.run("run", "--rm", "--", "sh", "-c", "exit 125").returncode == 125
    for argv in (["--no-such-flag", "--", "true"], ["--memory"], ["--memory", "1K", "--", "true"],
                 ["-dm", "1K", "--", "true"], ["--"], []):
        one_error_line(box.run("run", *argv), 125)                                 # usage and bad input
    assert "cannot execute" in one_error_line(box.run("run", "--rm", "--", nonexec), 126)
    assert "cannot execute" in one_error_line(box.run("run", "--rm", "--", str(tmp_path)), 126)
    assert "command not found" in one_error_line(box.run("run", "--rm", "--", "no-such-cmd-xyz"), 127)
    assert "command not found" in one_error_line(box.run("run", "--rm", "--", str(tmp_path / "absent")), 127)
    # detached runs too (through the agent: its API answers with the same codes)
    assert "cannot execute" in one_error_line(box.run("run", "-d", "--", nonexec), 126)
    assert "command not found" in one_error_line(box.run("run", "-d", "--", "no-such-cmd-xyz"), 127)
    one_error_line(box.run("run", "-d", "--memory", "1K", "--", "true"), 125)
    assert ps_json(box) == []   # refused before anything was made


def test_run_exit_codes_in_an_image(box: Box) -> None:
    assert box.run("run", "--rm", IMG, "sh", "-c", "exit 3").returncode == 3
    one_error_line(box.run("run", "--rm", "--memory", "1K", IMG, "true"), 125)
    one_error_line(box.run("run", "--rm", "no-such-image:1"), 125)
    assert "cannot execute" in one_error_line(box.run("run", "--rm", IMG, "/etc/passwd"), 126)
    assert "command not found" in one_error_line(box.run("run", "--rm", IMG, "no-such-cmd"), 127)
    for name, cmd, code in (("d126", "/etc/passwd", 126), ("d127", "no-such-cmd", 127)):
        one_error_line(box.run("run", "-d", "--name", name, IMG, cmd), code)
    one_error_line(box.run("run", "-d", "no-such-image:1"), 125)
    assert box.containers() == [] and ps_json(box) == []


@pytest.fixture
def running(box: Box) -> Iterator[Box]:
    ok(box.run("run", "-d", "--name", "hostw", "--", "sleep", "1000"))
    ok(box.run("run", "-d", "--name", "isow", IMG, "sleep", "1000"))
    try:
        wait_for(lambda: sum(r["status"] == "running" for r in ps_json(box)) == 2)
        yield box
    finally:
        ok(box.run("rm", "-f", "hostw", "isow"))


@pytest.mark.parametrize("name", ["hostw", "isow"])
def test_exec_exit_codes(running: Box, nonexec: str, name: str) -> None:
    b = running
    assert b.run("exec", name, "--", "sh", "-c", "exit 4").returncode == 4
    assert b.run("exec", name, "sh", "-c", "exit 2").returncode == 2
    for argv in (["--no-such-flag", name, "--", "true"], [name], ["--preserve-fds", "x", name, "true"],
                 ["no-such-workload", "--", "true"]):
        one_error_line(b.run("exec", *argv), 125)
    target = nonexec if name == "hostw" else "/etc/passwd"
    assert "cannot execute" in one_error_line(b.run("exec", name, "--", target), 126)
    assert "command not found" in one_error_line(b.run("exec", name, "--", "no-such-cmd"), 127)
