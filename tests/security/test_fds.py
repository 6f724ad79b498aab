"""Inherited file descriptors (the CVE-2024-21626 class): a caller that leaks a directory fd must not
hand the workload the host's filesystem, through /proc/self/fd/N or a working directory there.

The leak is made as a careless caller would make it: the shell opens a test-made canary directory as
fd 7 and execs the CLI (`cgagent ... 7<DIR`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests import probes
from tests.isolated import IMG, Box, ok, ps_json, wait_for

pytest_plugins = ("tests.isolated_fixtures",)  # the box and image_store fixtures

ATTACK = ("echo X > /proc/self/fd/7/canary && echo WROTE; "
          "ls /proc/self/fd/7/../.. && echo LISTED; true")


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    d = tmp_path / "canary-dir"
    d.mkdir()
    (d / "canary").write_text("original\n")
    return d


def leaking(b: Box, fd: int, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`cgagent ARGS` run by a shell that leaks `path` as fd `fd`."""
    return subprocess.run(["sh", "-c", f'exec "$@" {fd}<"$0"', str(path), *b.cg.cmd(*args)], env=b.env(),
                          capture_output=True, text=True, timeout=60)


def refused(out: str, canary: Path) -> None:
    assert "WROTE" not in out and "LISTED" not in out, out
    assert (canary / "canary").read_text() == "original\n"


def wait_exited(b: Box, name: str) -> None:
    wait_for(lambda: any(r["name"] == name and r["status"] == "exited" for r in ps_json(b)))


@pytest.mark.parametrize("image", [(), (IMG,)], ids=["host", "isolated"])
def test_run_foreground_does_not_inherit_fds(box: Box, canary: Path, image: tuple[str, ...]) -> None:
    r = leaking(box, 7, canary, "run", "--rm", *image, "--", "sh", "-c", ATTACK)
    assert r.returncode == 0, r.stderr
    refused(r.stdout, canary)


@pytest.mark.parametrize("image", [(), (IMG,)], ids=["host", "isolated"])
def test_run_detached_does_not_inherit_fds(box: Box, canary: Path, image: tuple[str, ...]) -> None:
    r = leaking(box, 7, canary, "run", "-d", "--name", "leak", *image, "--", "sh", "-c", ATTACK)
    assert r.returncode == 0, r.stderr
    try:
        wait_exited(box, "leak")
        refused(ok(box.run("logs", "leak")), canary)
    finally:
        ok(box.run("rm", "-f", "leak"))


@pytest.mark.parametrize("image", [(), (IMG,)], ids=["host", "isolated"])
def test_exec_does_not_inherit_fds(box: Box, canary: Path, image: tuple[str, ...]) -> None:
    ok(box.run("run", "-d", "--name", "target", *image, "--", "sleep", "1000"))
    try:
        wait_for(lambda: any(r["name"] == "target" and r["status"] == "running" for r in ps_json(box)))
        r = leaking(box, 7, canary, "exec", "target", "--", "sh", "-c", ATTACK)
        assert r.returncode == 0, r.stderr
        refused(r.stdout, canary)
    finally:
        ok(box.run("rm", "-f", "target"))


ESCAPE = "echo X > canary && echo WROTE; ls ../.. && echo LISTED; true"


def test_workdir_through_a_leaked_fd_is_refused(box: Box, canary: Path) -> None:
    """runc's exploit: the working directory (an image's WorkingDir or -w) set to /proc/self/fd/7.
    Direct, fd 7 is the caller's leaked directory: entered, then refused as outside the root. Through
    the agent, the process that sets the workload up has no fd 7 at all (none of the agent's either)."""
    r = leaking(box, 7, canary, "run", "--rm", "-w", "/proc/self/fd/7", IMG, "--", "sh", "-c", ESCAPE)
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert ("outside the workload's root" in r.stderr
            or "No such file or directory: '/proc/self/fd/7'" in r.stderr), r.stderr
    refused(r.stdout, canary)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert box.containers() == []


def test_the_start_lock_is_closed_before_the_workloads_setup(box: Box) -> None:
    """The process that starts a workload holds a lock on a file of the state dir (its fd at 100 or
    above: cgagent.runtime.starting) until the record says running. The workload's child closes it
    first, before its setup, which a workdir of /proc/self/fd/N reaches."""
    from cgagent.runtime import starting

    r = box.run("run", "--rm", "-w", f"/proc/self/fd/{starting._FLOOR}", IMG, "--", "true")
    assert r.returncode != 0 and f"No such file or directory: '/proc/self/fd/{starting._FLOOR}'" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and box.containers() == [], r.stderr


def test_exec_workdir_through_a_leaked_fd_is_refused(box: Box, canary: Path) -> None:
    ok(box.run("run", "-d", "--name", "target", IMG, "--", "sleep", "1000"))
    try:
        wait_for(lambda: any(r["name"] == "target" and r["status"] == "running" for r in ps_json(box)))
        r = leaking(box, 7, canary, "exec", "-w", "/proc/self/fd/7", "target", "--", "sh", "-c", ESCAPE)
        assert r.returncode != 0 and "outside the workload's root" in r.stderr, (r.stdout, r.stderr)
        refused(r.stdout, canary)
    finally:
        ok(box.run("rm", "-f", "target"))


@pytest.mark.parametrize("image", [(), (IMG,)], ids=["host", "isolated"])
def test_preserve_fds_passes_exactly_the_given_fds(box: Box, tmp_path: Path, image: tuple[str, ...]) -> None:
    given = tmp_path / "given.txt"
    given.write_text("passed on\n")
    script = "cat <&3; test -e /proc/self/fd/4 && echo FD4; true"
    r = leaking(box, 3, given, "run", "--rm", "--preserve-fds", "1", *image, "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["passed on"], r.stdout
    # without the flag, fd 3 is closed like any other
    r = leaking(box, 3, given, "run", "--rm", *image, "--", "sh", "-c", "cat <&3 && echo READ; true")
    assert r.returncode == 0 and "READ" not in r.stdout, (r.stdout, r.stderr)


def test_preserve_fds_on_exec(box: Box, tmp_path: Path) -> None:
    given = tmp_path / "given.txt"
    given.write_text("passed on\n")
    ok(box.run("run", "-d", "--name", "target", IMG, "--", "sleep", "1000"))
    try:
        wait_for(lambda: any(r["name"] == "target" and r["status"] == "running" for r in ps_json(box)))
        r = leaking(box, 3, given, "exec", "--preserve-fds", "1", "target", "--", "sh", "-c", "cat <&3")
        assert r.returncode == 0 and r.stdout == "passed on\n", (r.stdout, r.stderr)
    finally:
        ok(box.run("rm", "-f", "target"))


@pytest.mark.parametrize("value", ["-1", "x", "100000"])
def test_preserve_fds_bad_value_is_one_line(box: Box, value: str) -> None:
    r = box.run("run", "--rm", "--preserve-fds", value, "--", "true")
    assert r.returncode != 0 and "--preserve-fds" in r.stderr and "Traceback" not in r.stderr, r.stderr


def _fds_of_a_workload(b: Box, canary: Path, how: str, image: tuple[str, ...]) -> str:
    """What the workload's shell holds (its own /proc/PID/fd, listed by a child) when the caller leaks
    fd 7, the way `how` starts it."""
    script = probes.SHELL_FDS
    if how == "foreground":
        return ok(leaking(b, 7, canary, "run", "--rm", *image, "--", "sh", "-c", script))
    if how == "detached":
        ok(leaking(b, 7, canary, "run", "-d", "--name", "fds", *image, "--", "sh", "-c", script))
        try:
            wait_exited(b, "fds")
            return ok(b.run("logs", "fds"))
        finally:
            ok(b.run("rm", "-f", "fds"))
    ok(b.run("run", "-d", "--name", "target", *image, "--", "sleep", "1000"))
    try:
        wait_for(lambda: any(r["name"] == "target" and r["status"] == "running" for r in ps_json(b)))
        return ok(leaking(b, 7, canary, "exec", "target", "--", "sh", "-c", script))
    finally:
        ok(b.run("rm", "-f", "target"))


@pytest.mark.parametrize("image", [(), (IMG,)], ids=["host", "isolated"])
@pytest.mark.parametrize("how", ["foreground", "detached", "exec"])
def test_a_workload_holds_only_its_stdio(box: Box, canary: Path, how: str, image: tuple[str, ...]) -> None:
    """Not only the caller's leaked fd: nothing of the CLI's, the supervisor's or (CGAGENT_TEST_AGENT=1,
    tests/test_agent_mode.py) the agent runner's (pipes, sockets, the record's lock, a pidfd) reaches
    the workload. A parked zygote's path has its own test (test_agent.py), which makes the pool first."""
    out = _fds_of_a_workload(box, canary, how, image)
    assert out.split() == ["0", "1", "2"], out
