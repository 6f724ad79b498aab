"""Devices the device-control tests make for themselves: a loop device over a file holding a canary
(never a real disk), and a busybox root directory. Plain Python: the VM guest imports it too."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator

CANARY = b"CGAGENT-DEVICE-CANARY-7f3a"
EPERM, EACCES = "Operation not permitted", "Permission denied"
APPLETS = ("sh", "cat", "dd", "mknod", "head", "wc", "echo", "ls", "sleep", "test")


@contextlib.contextmanager
def loop_device(directory: str, size: int = 1024 * 1024) -> Iterator[tuple[str, int, int]]:
    """A loop device over a `size`-byte file in `directory` that starts with CANARY -> (path, major,
    minor). Always detached on the way out."""
    if shutil.which("losetup") is None:
        raise RuntimeError("losetup (util-linux) is needed to make the test's own block device")
    backing = os.path.join(directory, "disk.img")
    with open(backing, "wb") as f:
        f.write(CANARY)
        f.truncate(size)
    r = subprocess.run(["losetup", "-f", "--show", backing], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    dev = r.stdout.strip()
    try:
        rdev = os.stat(dev).st_rdev
        yield dev, os.major(rdev), os.minor(rdev)
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=60)


def busybox_root(root: str, busybox: str = "/bin/busybox") -> str:
    """A root directory with busybox, /tmp and an empty /data (for device nodes)."""
    for d in ("bin", "tmp", "data"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy(busybox, os.path.join(root, "bin", "busybox"))
    for a in APPLETS:
        os.symlink("busybox", os.path.join(root, "bin", a))
    return root


def read_cmd(path: str) -> str:
    """Shell: read the first 64 bytes of `path`; the data and dd's messages both go to stdout."""
    return f"dd if={path} bs=64 count=1 2>&1"


def refused(out: str, reason: str) -> None:
    assert CANARY.decode() not in out, f"the workload read the device: {out!r}"
    assert reason in out, out
