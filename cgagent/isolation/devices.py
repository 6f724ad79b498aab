"""/dev for the workload: a tmpfs with the standard nodes, its own devpts instance, shm and links."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Sequence

from cgagent.isolation.spec import Device
from cgagent.isolation.syscalls import MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_STRICTATIME, mount

NODES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0))
LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
         ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))


def setup_dev(dev: str = "/dev", extra: Sequence[Device] = ()) -> None:
    """Called inside the new root, after /proc is mounted. `extra`: the --device nodes
    (cgagent.devrules.device), made after the standard ones."""
    os.makedirs(dev, exist_ok=True)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k")
    for name, major, minor in NODES:
        path = f"{dev}/{name}"
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
        os.chmod(path, 0o666)  # the umask must not narrow it
    os.mkdir(f"{dev}/pts", 0o755)
    mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5")
    os.mkdir(f"{dev}/shm", 0o1777)
    mount("shm", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k")
    os.mkdir(f"{dev}/mqueue", 0o755)
    with contextlib.suppress(OSError):  # the IPC namespace's own message queues
        mount("mqueue", f"{dev}/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name, target in LINKS:
        os.symlink(target, f"{dev}/{name}")
    for d in extra:
        make_node(dev, d)


def make_node(dev: str, d: Device) -> None:
    """mknod one --device node under the fresh /dev tmpfs. Directories on the way are made here;
    anything already there (a standard node, the fd/stdin links) is refused, never followed."""
    rel = os.path.relpath(d.path, "/dev")
    parts = rel.split("/")
    if rel.startswith("..") or any(p in ("", ".", "..") for p in parts):
        raise OSError(errno.EINVAL, f"--device {d.path}: not a path under /dev")
    cur = dev
    for part in parts[:-1]:
        cur = f"{cur}/{part}"
        try:
            os.mkdir(cur, 0o755)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(cur).st_mode):
                raise OSError(errno.EEXIST, f"--device {d.path}: {cur} is not a directory") from None
    path = f"{cur}/{parts[-1]}"
    kind = stat.S_IFCHR if d.type == "c" else stat.S_IFBLK
    try:
        os.mknod(path, kind | 0o600, os.makedev(d.major, d.minor))
    except FileExistsError:
        raise OSError(errno.EEXIST, f"--device {d.path} already exists in the workload's /dev") from None
    os.chown(path, d.uid, d.gid)
    os.chmod(path, d.mode & 0o777)   # the host node's permissions; never set-id bits
