"""Every command's --help renders (help texts are rich markup: a stray bracket crashes them)."""

from __future__ import annotations

import subprocess
import sys

import typer.main

from cgagent.cli.app import app


def _paths(cmd: object, prefix: list[str]) -> list[list[str]]:
    out = [prefix]
    for name, sub in getattr(cmd, "commands", {}).items():
        out += _paths(sub, [*prefix, name])
    return out


def test_every_command_has_working_help() -> None:
    paths = _paths(typer.main.get_command(app), [])
    assert len(paths) > 10
    for p in paths:
        r = subprocess.run([sys.executable, "-m", "cgagent", *p, "--help"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "Usage" in r.stdout and not r.stderr, (p, r.stderr[-500:])


def _unknown(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cgagent", *argv], capture_output=True, text=True, timeout=60)


def test_a_mistyped_option_gets_a_likely_suggestion_and_never_nonsense() -> None:
    r = _unknown("run", "--memroy", "1g", "busybox")
    assert r.returncode == 125 and "Possible options: --memory)" in r.stderr, r.stderr
    r = _unknown("ps", "--formt", "x")
    assert "Possible options: --format)" in r.stderr, r.stderr
    # click suggested "--cpus, --rootfs" for --tmpfs and "--help, --name" for --label: nothing alike
    r = _unknown("run", "--zzzzzz", "busybox")
    assert r.returncode == 125 and "Possible" not in r.stderr, r.stderr
    r = _unknown("run", "--lable", "a=b", "busybox")
    assert "--name" not in r.stderr and "--help" not in r.stderr.split("(see")[0], r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_suggestions_rank_typos_and_unambiguous_starts() -> None:
    from cgagent.cli.suggest import suggest

    names = ["--cpus", "--cpu-shares", "--memory", "--memory-swap", "--name", "--help", "-m"]
    assert suggest("--cpu", names)[0] == "--cpus"
    assert suggest("--mmeory", names) == ["--memory"]          # a swap of neighbours is one edit
    assert suggest("--mem", names) == ["--memory", "--memory-swap"]
    assert suggest("--label", names) == []
    assert suggest("--", names) == []


def test_version_as_a_flag_and_as_a_command_as_docker_has_both() -> None:
    from cgagent import __version__

    r = _unknown("--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"cgagent version {__version__}\n", "")
    r = _unknown("version")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{__version__}\n", "")
