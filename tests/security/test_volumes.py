"""Volumes (-v) hold nothing but the host path they name, as it was when given, with the flags asked
for: not a path a workload re-pointed for its next start, not a later mount of the host's, not a
writable submount under a read-only bind. Every mount here is made by the test on its own tmp dirs
and removed by it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.isolated import IMG, Box, ok, ps_json, wait_for

pytest_plugins = ("tests.isolated_fixtures",)  # the box and image_store fixtures


def _mount(*args: str | Path) -> None:
    subprocess.run(["mount", *map(str, args)], check=True, capture_output=True, timeout=30)


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-R", str(path)], check=True, capture_output=True, timeout=30)


@pytest.fixture
def vol(tmp_path: Path) -> Path:
    d = tmp_path / "vol"
    (d / "sub").mkdir(parents=True)
    return d


@pytest.fixture
def submount(vol: Path) -> Iterator[Path]:
    """`vol/sub`: a tmpfs of its own."""
    _mount("-t", "tmpfs", "-o", "size=1m", "cgagent-test-sub", vol / "sub")
    try:
        yield vol / "sub"
    finally:
        _umount(vol / "sub")


@pytest.fixture
def shared(vol: Path) -> Iterator[Path]:
    """`vol` as a shared mount (what every mount of a systemd host is): its clones would be its peers."""
    _mount("--bind", vol, vol)
    try:
        _mount("--make-shared", vol)
        yield vol
    finally:
        _umount(vol)


def _running(box: Box, name: str) -> None:
    wait_for(lambda: any(r["name"] == name and r["status"] == "running" for r in ps_json(box)))


def test_a_read_only_volume_is_read_only_in_its_submounts_too(box: Box, vol: Path, submount: Path) -> None:
    """-v /srv:/srv:ro where /srv/data is a filesystem of its own: /srv/data is read-only too (Docker
    25's recursive read-only binds). A flag on the top mount alone left it writable."""
    r = box.sh("echo x > /vol/sub/f && echo WROTE", "-v", f"{vol}:/vol:ro")
    assert "WROTE" not in r.stdout and "Read-only file system" in r.stderr, (r.stdout, r.stderr)
    assert not (submount / "f").exists()


def test_a_host_mount_made_under_a_volume_later_stays_out_of_the_workload(box: Box, shared: Path) -> None:
    """The volume's copy is private: a peer of a shared host mount would receive the mounts made
    under it after the start (an automount, a USB disk), with their own flags, and pass the
    workload's own mounts back out."""
    ok(box.run("run", "-d", "--name", "prop", "-v", f"{shared}:/vol:ro", IMG, "--", "sleep", "1000"))
    try:
        _running(box, "prop")
        _mount("-t", "tmpfs", "-o", "size=1m", "cgagent-test-late", shared / "sub")
        (shared / "sub" / "late").write_text("from a later host mount\n")
        r = box.run("exec", "prop", "--", "sh", "-c",
                    "cat /vol/sub/late; grep -c cgagent-test-late /proc/self/mountinfo")
        assert "from a later host mount" not in r.stdout and r.stdout.strip().endswith("0"), (r.stdout, r.stderr)
    finally:
        ok(box.run("rm", "-f", "prop"))


def test_a_volume_path_the_workload_made_a_symlink_is_refused_at_its_restart(box: Box, tmp_path: Path) -> None:
    """-v /srv/app:/app -v /srv/app/cache:/cache: the workload replaces /app/cache (the host's
    /srv/app/cache) by a link to a host directory and fails; its restart must not bind what the link
    names at /cache. The host path is opened again at every start with no symlink followed."""
    app, canary = tmp_path / "app", tmp_path / "canary"
    (app / "cache").mkdir(parents=True)
    canary.mkdir()
    (canary / "secret").write_text("host only\n")
    script = (f"if [ -L /app/cache ]; then cat /cache/secret > /app/leak; exit 0; fi; "
              f"rm -rf /app/cache && ln -s {canary} /app/cache; exit 1")
    ok(box.run("run", "-d", "--name", "swap", "--restart", "on-failure:2", "-v", f"{app}:/app",
               "-v", f"{app}/cache:/cache", IMG, "--", "sh", "-c", script))
    try:
        wait_for(lambda: (app / "cache").is_symlink())
        wait_for(lambda: any(r["name"] == "swap" and r["status"] == "exited" for r in ps_json(box)), timeout=60)
        assert not (app / "leak").exists()
        logs = box.run("logs", "swap")
        [line] = logs.stdout.splitlines()   # one line, no traceback
        assert "the restart of swap failed: " in line and "is a symlink now" in line, logs.stdout
        [row] = [r for r in ps_json(box) if r["name"] == "swap"]
        assert row["exit_code"] == 125, row
    finally:
        ok(box.run("rm", "-f", "swap"))
    assert (canary / "secret").read_text() == "host only\n"
