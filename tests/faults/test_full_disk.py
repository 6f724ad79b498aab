"""The state dir on a full 64 KiB tmpfs, or bind-mounted read-only (issue 10): run, update, stop and
rm say so in one line naming the path (and the space needed), exit non-zero, leave no temp files,
and record nothing by halves: a refused run made nothing; an exit that could not be recorded is
recorded once, when there is room again."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Env


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return r.stdout


def refused(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode != 0, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert all(n in lines[0] for n in needles), lines[0]


def temp_files(root: str) -> list[str]:
    return [os.path.join(d, f) for d, _s, fs in os.walk(root) for f in fs if ".tmp." in f]


def exits(root: str, name: str) -> list[dict[str, object]]:
    try:
        lines = Path(root, "events.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [e for e in map(json.loads, lines) if e["kind"] == "exit" and e["name"] == name]


@pytest.fixture
def small(cg: Env, tmp_path: Path) -> Iterator[Env]:
    """cg with its state dir on a 64 KiB tmpfs of its own."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "cgagent-test-full", str(mnt)], check=True)
    try:
        yield Env(str(mnt / "state"), cg.parent, cg.roots)
    finally:
        # the workloads first (conftest kills what is left in the cgroups), then the mount
        with contextlib.suppress(subprocess.SubprocessError):
            subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(env: Env) -> Path:
    """Fill the filesystem of the state dir to the last byte."""
    filler = Path(env.state_dir, "filler")
    with open(filler, "wb", buffering=0) as f:
        for size in (4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    return filler


def test_full_state_dir(small: Env) -> None:
    env = small
    ok(env.run("run", "-d", "--name", "a", "--", "sleep", "300"))
    ok(env.run("run", "-d", "--name", "b", "--", "sleep", "300"))
    before = sorted(os.listdir(Path(env.state_dir, "workloads")))
    filler = fill(env)
    # a run is refused before anything is made
    for args in (["-d"], []):
        refused(env.run("run", *args, "--name", "c", "--", "sleep", "1"), "no space left", env.state_dir, "needs")
        assert sorted(os.listdir(Path(env.state_dir, "workloads"))) == before
        assert not any(os.path.exists(os.path.join(r, "c")) for r in env.roots)
    # update: the kernel keeps the old limit when the record cannot hold the new one
    refused(env.run("update", "a", "--cpus", "0.5"), "no space left", env.state_dir)
    a = json.loads(Path(env.state_dir, "workloads", "a.json").read_text())
    assert a["resources"].get("cpus") is None
    quotas = [Path(r, "a", "cpu.cfs_quota_us") for r in env.roots]
    assert [q.read_text().strip() for q in quotas if q.exists()] == ["-1"]
    # stop: the workload is stopped; its exit cannot be recorded now: said in one line
    refused(env.run("stop", "-t", "1", "a"), "no space left")
    assert json.loads(ok(env.run("ps", "-a", "--json")))[0]["status"] == "exited"
    assert temp_files(env.state_dir) == []
    # rm of the other: its record goes (removing needs no space)
    r = env.run("rm", "-f", "b")
    assert r.returncode == 0 or "no space left" in r.stderr, r.stderr
    assert not Path(env.state_dir, "workloads", "b.json").exists()
    assert temp_files(env.state_dir) == []
    # room again: the exit of a is recorded once, by the next command that looks
    filler.unlink()
    ok(env.run("stop", "a"))
    assert json.loads(ok(env.run("ps", "-a", "--json")))[0]["status"] == "exited"
    ok(env.run("rm", "a"))
    assert len(exits(env.state_dir, "a")) == 1
    assert temp_files(env.state_dir) == []


def test_read_only_state_dir(cg: Env, tmp_path: Path) -> None:
    ok(cg.run("run", "-d", "--name", "a", "--", "sleep", "300"))
    subprocess.run(["mount", "--bind", cg.state_dir, cg.state_dir], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", cg.state_dir], check=True)
        refused(cg.run("run", "-d", "--name", "c", "--", "sleep", "1"), "read-only", cg.state_dir)
        assert not any(os.path.exists(os.path.join(r, "c")) for r in cg.roots)
        refused(cg.run("update", "a", "--cpus", "0.5"), "read-only")
        refused(cg.run("stop", "-t", "1", "a"), "read-only")
        refused(cg.run("rm", "-f", "a"), "read-only")
        ok(cg.run("ps", "-a"))
    finally:
        subprocess.run(["umount", cg.state_dir], check=True)
    ok(cg.run("rm", "-f", "a"))
    assert len(exits(cg.state_dir, "a")) <= 1 and temp_files(cg.state_dir) == []
