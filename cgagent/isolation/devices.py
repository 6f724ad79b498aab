"""/dev for the workload: a tmpfs with the standard nodes, its own devpts instance, shm and links."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Sequence

from cgagent.isolation.spec import Device
from cgagent.isolation.syscalls import MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_STRICTATIME, mount, move_mount

NODES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0))
LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
         ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))


MAX_HOST_DEVICES = 4096
SKIP = ("pts", "shm", "mqueue")   # the workload's own instances


def host_devices(dev: str = "/dev") -> tuple[Device, ...]:
    """--privileged: the host's device nodes (not followed through symlinks), as Docker gives them."""
    out: list[Device] = []
    todo = [dev]
    while todo and len(out) < MAX_HOST_DEVICES:
        d = todo.pop()
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            rel = os.path.relpath(e.path, dev)
            if rel in SKIP:
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                todo.append(e.path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                out.append(Device(f"/dev/{rel}", "c" if stat.S_ISCHR(st.st_mode) else "b", os.major(st.st_rdev),
                                  os.minor(st.st_rdev), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, ""))
    return tuple(out[:MAX_HOST_DEVICES])


def setup_dev(dev: str = "/dev", extra: Sequence[Device] = (), shm: int | None = None,
              host: Sequence[Device] = ()) -> None:
    """Called inside the new root, after /proc is mounted. `extra`: the --device nodes
    (cgagent.devrules.device), made after the standard ones. `shm`: a detached tree to attach at
    /dev/shm in place of a fresh tmpfs (--ipc host). `host`: nodes made where nothing is yet
    (--privileged)."""
    os.makedirs(dev, exist_ok=True)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k")
    for name, major, minor in NODES:
        path = f"{dev}/{name}"
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
        os.chmod(path, 0o666)  # the umask must not narrow it
    os.mkdir(f"{dev}/pts", 0o755)
    mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5")
    os.mkdir(f"{dev}/shm", 0o1777)
    if shm is not None:
        move_mount(shm, f"{dev}/shm")
        os.close(shm)
    else:
        mount("shm", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k")
    os.mkdir(f"{dev}/mqueue", 0o755)
    with contextlib.suppress(OSError):  # the IPC namespace's own message queues
        mount("mqueue", f"{dev}/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name, target in LINKS:
        os.symlink(target, f"{dev}/{name}")
    for d in extra:
        make_node(dev, d)
    for d in host:
        if not os.path.lexists(d.path.replace("/dev", dev, 1)):
            with contextlib.suppress(OSError):   # a name the standard /dev has as a directory or link
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
