"""A real podman container (test-owned storage, cgroup parent and libpod tmp dir, removed after) is
exported by `--watch-cgroup <its parent>` under its podman name and image; the parent, and conmon's
cgroup next to it, carry container="" (issue 11's acceptance)."""

from __future__ import annotations

import glob
import os
import select
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cgagent import host as hostmod
from exporters.registry import Exporter, Options
from tests.images import rootfs_tarball
from tests.test_exporter_values import scrape

PODMAN = shutil.which("podman")
IMAGE = "localhost/cgagent-discover:1"
SHARED = ("/var/lib/containers", "/run/libpod", "/run/containers")   # podman's defaults: must stay untouched

pytestmark = pytest.mark.skipif(PODMAN is None or os.geteuid() != 0,
                                reason="needs root and podman (Debian package podman)")


class Podman:
    def __init__(self, base: Path, short: Path, parent: str) -> None:
        self.root = base / "storage"
        self.parent = parent
        self.run = short / "run"        # podman refuses a run root of 50 characters or more
        self.argv = [str(PODMAN), "--root", str(self.root), "--runroot", str(self.run), "--tmpdir",
                     str(short / "tmp"), "--cgroup-manager", "cgroupfs", "--storage-driver", "vfs",
                     "--runtime", "runc", "--events-backend", "none"]

    def __call__(self, *args: str) -> str:
        r = subprocess.run([*self.argv, *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"podman {' '.join(args)}: {r.stderr}"
        return r.stdout.strip()


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Podman]:
    before = {p for p in SHARED if os.path.exists(p)}
    parent = f"/cgagent-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    short = Path(tempfile.mkdtemp(prefix="cgdisc-"))
    p = Podman(tmp_path, short, parent)
    try:
        yield p
    finally:
        conmons = []
        for pidfile in glob.glob(str(p.run / "vfs-containers" / "*" / "userdata" / "conmon.pid")):
            try:
                conmons.append(os.pidfd_open(int(Path(pidfile).read_text())))
            except (OSError, ValueError):
                pass   # already gone
        subprocess.run([*p.argv, "rm", "-af", "-t", "0"], capture_output=True, timeout=120)
        subprocess.run([*p.argv, "rmi", "-af"], capture_output=True, timeout=120)
        for fd in conmons:   # conmon leaves when its container is removed: its pidfd turns readable
            select.select([fd], [], [], 60)
            os.close(fd)
        left = []
        for d in sorted(glob.glob(f"/sys/fs/cgroup/*{parent}") + glob.glob(f"/sys/fs/cgroup/*{parent}/**/"),
                        key=len, reverse=True):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError:
                left.append(d)
        # what podman made outside the test's directories despite the flags (c/image's blob-info cache)
        for path in {*SHARED, str(short)} - before:
            shutil.rmtree(path, ignore_errors=True)
        assert not left, f"cgroups left behind: {left}"


def test_podman_container_is_named_with_its_image_and_its_parent_is_not_a_container(
        podman: Podman, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tar = tmp_path / "bb.tar"
    rootfs_tarball(str(tar))
    podman("import", str(tar), IMAGE)
    cid = podman("run", "-d", "--name", "cgagent-disc-web", "--network", "none", "--ulimit", "nofile=1024:1024",
                 "--ulimit", "nproc=1024:1024", "--cgroup-parent", podman.parent, IMAGE, "sleep", "1000")
    monkeypatch.setenv("CGAGENT_PODMAN_ROOT", str(podman.root))
    exp = Exporter(Options(host=hostmod.detect(), watch=[podman.parent], process_metrics=False))
    try:
        got = scrape(exp)
    finally:
        exp.close()
    usage = {dict(ls)["id"]: dict(ls) for n, ls in got if n == "container_memory_usage_bytes"}
    ctr = usage[f"{podman.parent}/libpod-{cid}"]
    assert (ctr["name"], ctr["image"], ctr["container"]) == ("cgagent-disc-web", IMAGE, "cgagent-disc-web")
    assert usage[podman.parent]["container"] == "" and usage[f"{podman.parent}/conmon"]["container"] == ""
    # sum(...{container!=""}) counts the container once, not once more through its parent
    assert [i for i, ls in usage.items() if ls["container"]] == [f"{podman.parent}/libpod-{cid}"]
