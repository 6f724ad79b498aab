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
