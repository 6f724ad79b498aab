"""The workload's root filesystem: overlay of image layers (or a bind of --rootfs), pivot_root, then
fresh /proc, /dev, read-only /sys and cgroupfs, volumes, Docker's masked and read-only paths.

Host side (`prepare`, `teardown`) makes and removes the per-workload dirs. Child side (`enter`) runs
in the workload's new mount namespace, so every mount dies with the namespace, even after a crash.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from cgagent.beneath import open_beneath
from cgagent.errors import CgagentError
from cgagent.isolation import userns
from cgagent.isolation.devices import host_devices, setup_dev
from cgagent.isolation.security import MASKED_PATHS, READONLY_PATHS
from cgagent.isolation.spec import IsolationSpec, Tmpfs, Volume
from cgagent.isolation.syscalls import (
    MNT_DETACH,
    MOUNT_ATTR_NODEV,
    MOUNT_ATTR_RDONLY,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    mount,
    mount_setattr,
    move_mount,
    open_tree_clone,
    pivot_root,
    umount2,
)

PROC_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC


# --- host side

def prepare(spec: IsolationSpec) -> None:
    cdir = spec.container_dir
    os.makedirs(os.path.dirname(cdir), exist_ok=True)
    os.mkdir(cdir, 0o700)
    for sub in ("upper", "work", "merged"):
        os.mkdir(os.path.join(cdir, sub), 0o755)
    m = spec.userns
    if m:  # the upper dir gives the root directory its owner: root inside, i.e. the range's base
        os.chown(os.path.join(cdir, "upper"), m.base, m.base)


def _mounts_under(path: str) -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == path or mp.startswith(path + "/"):
                out.append(mp)
    return out


def teardown(spec: IsolationSpec) -> None:
    """Remove the workload's upper/work/merged dirs; idempotent, never outside the store."""
    cdir = spec.container_dir
    store = spec.store
    if not cdir or not store:
        return
    if os.path.dirname(os.path.normpath(cdir)) != os.path.join(os.path.normpath(store), "containers"):
        return  # a tampered record: refuse to delete anything else
    for mp in sorted(_mounts_under(cdir), key=len, reverse=True):  # only if someone mounted in our namespace
        with contextlib.suppress(OSError):
            umount2(mp, MNT_DETACH)
    import shutil  # host side only: kept off the launch path's imports

    shutil.rmtree(cdir, ignore_errors=True)


# --- child side (new mount namespace; nothing here may import lazily: after pivot_root the host's
# Python library is out of reach)

def host_cgroup_mounts() -> list[tuple[str, str, str]]:
    """(name under /sys/fs/cgroup, fstype, mount data) of the host's cgroup hierarchies."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mp = left.split()[4]
            fstype, _src, superopts = [*right.split(), "", "", ""][:3]
            if fstype in ("cgroup", "cgroup2") and mp.startswith("/sys/fs/cgroup/") and mp.count("/") == 4:
                data = ",".join(o for o in superopts.split(",") if o not in ("rw", "ro"))
                out.append((mp.rsplit("/", 1)[1], fstype, data))
            elif fstype == "cgroup2" and mp == "/sys/fs/cgroup":   # v2 host: name "" = the unified root
                out.append(("", fstype, ""))
    return out


def mount_root(spec: IsolationSpec, userns_fd: int | None = None) -> str:
    cdir = spec.container_dir
    merged = os.path.join(cdir, "merged")
    if not spec.lowers and not spec.rootfs:   # never a directory named by default: the spec refuses it
        raise CgagentError("the workload has neither image layers nor a --rootfs", "give an IMAGE or --rootfs")
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount may propagate to the host
    if spec.lowers and userns_fd is None:
        os.chdir(str(spec.layers_dir))  # lowerdirs are short l/<id> links relative to it
        data = f"lowerdir={':'.join(spec.lowers)},upperdir={cdir}/upper,workdir={cdir}/work"
        mount("overlay", merged, "overlay", 0, data)
    elif spec.lowers:
        assert userns_fd is not None
        lowers = []   # idmapped copies of the layers, attached (in our namespace only) under lower/
        for i, link in enumerate(spec.lowers):
            target = os.path.join(cdir, "lower", str(i))
            os.makedirs(target, exist_ok=True)
            userns.attach(userns.idmapped_clone(os.path.join(str(spec.layers_dir), link), userns_fd), target)
            lowers.append(f"lower/{i}")
        os.chdir(cdir)
        mount("overlay", merged, "overlay", 0, f"lowerdir={':'.join(lowers)},upperdir=upper,workdir=work")
    elif userns_fd is not None:
        for d in ("proc", "dev", "sys"):  # made now, as host root: inside, host root maps to no one
            os.makedirs(os.path.join(str(spec.rootfs), d), exist_ok=True)
        userns.attach(userns.idmapped_clone(str(spec.rootfs), userns_fd), merged)
    else:
        mount(str(spec.rootfs), merged, None, MS_BIND | MS_REC)
    if spec.rootfs:   # a host directory: its device nodes must not open (only /dev's, below)
        mount_setattr(merged, MOUNT_ATTR_NODEV)
    return merged


def pivot(new_root: str) -> None:
    fd = os.open(new_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    os.fchdir(fd)
    os.close(fd)
    pivot_root(".", ".")   # the old root is now stacked on top of the new one...
    umount2(".", MNT_DETACH)  # ...and detaching it leaves only the new root
    os.chdir("/")


def _bind_ro(path: str, extra: int = 0) -> None:
    mount(path, path, None, MS_BIND | MS_REC)
    mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | extra)


def _mount_sys(cgroups: list[tuple[str, str, str]], writable: bool = False) -> None:
    """/sys and the cgroup filesystem, read-only unless `writable` (--privileged only)."""
    ro = 0 if writable else MS_RDONLY
    os.makedirs("/sys", exist_ok=True)
    mount("sysfs", "/sys", "sysfs", ro | PROC_FLAGS)
    cg = "/sys/fs/cgroup"
    if not os.path.isdir(cg) or _mount_unified(cg, cgroups, ro):
        return
    mount("cgroup", cg, "tmpfs", PROC_FLAGS, "mode=755")
    for name, fstype, data in cgroups:
        os.makedirs(f"{cg}/{name}", 0o755, exist_ok=True)   # a shadowed mount of the same name may be listed too
        with contextlib.suppress(OSError):  # in our cgroup namespace: the hierarchy is rooted at our cgroup
            mount("cgroup", f"{cg}/{name}", fstype, ro | PROC_FLAGS, data or None)
    mount(None, cg, None, MS_REMOUNT | ro | PROC_FLAGS, "mode=755")


def _mount_unified(cg: str, cgroups: list[tuple[str, str, str]], ro: int = MS_RDONLY) -> bool:
    """v2 host: cgroup2 itself, read-only, at /sys/fs/cgroup. Mounted from inside the workload's cgroup
    namespace it is rooted at the workload's own cgroup, so runtimes that size themselves from it (the
    JVM, Go, .NET, Node) read their limits at /sys/fs/cgroup/memory.max, as under Docker and podman."""
    if not any(name == "" for name, _fstype, _data in cgroups):
        return False
    mount("cgroup2", cg, "cgroup2", ro | PROC_FLAGS)
    return True


TMPFS_FLAGS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}


def _mount_tmpfs(t: Tmpfs) -> None:
    """--tmpfs: its option string's flag words are mount flags, the rest tmpfs's data (size=, mode=)."""
    words = t.options.split(",") if t.options else []
    flags = 0
    for w in words:
        flags |= TMPFS_FLAGS.get(w, 0)
    try:
        os.makedirs(t.target, exist_ok=True)
    except FileExistsError:   # a file, or a link to nothing inside the root (a host path, say)
        raise OSError(errno.ENOTDIR, f"--tmpfs {t.target} is not a directory inside the workload's root") from None
    mount("tmpfs", t.target, "tmpfs", flags, ",".join(w for w in words if w not in TMPFS_FLAGS) or None)


def _depth(path: str) -> int:
    return path.rstrip("/").count("/")


def _mount_volumes(vols: list[tuple[int, bool, str, bool]], tmpfss: tuple[Tmpfs, ...] = ()) -> None:
    """Attach the detached bind trees cloned before pivot_root, and mount the tmpfs ones, parents
    before children (-v /a and --tmpfs /a/b: the tmpfs lands on the volume, as Docker sorts them).
    Targets resolve inside the new root (the old one is detached), so a symlink in the image cannot
    point a mount at a host path."""
    mounts: list[tuple[int, bool, str, bool] | Tmpfs] = [*vols, *tmpfss]
    for m in sorted(mounts, key=lambda m: _depth(m.target if isinstance(m, Tmpfs) else m[2])):
        if isinstance(m, Tmpfs):
            _mount_tmpfs(m)
            continue
        fd, is_dir, ctr, ro = m
        if is_dir:
            os.makedirs(ctr, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(ctr), exist_ok=True)
            if not os.path.lexists(ctr):
                os.close(os.open(ctr, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
        move_mount(fd, ctr)
        if ro:   # added to the flags of every mount in it (a bind remount would drop nodev), as
            mount_setattr(ctr, MOUNT_ATTR_RDONLY)   # Docker 25's recursive read-only binds
        os.close(fd)


def _volume_tree(vol: Volume) -> tuple[int, bool]:
    """A detached copy of the volume's tree, nodev unless the volume asked for `dev`, and whether it
    is a directory. The host path was resolved at `run`; every start opens it again with no symlink
    followed: a workload that can write a parent of it (-v /srv/app:/app -v /srv/app/cache:/cache)
    could otherwise make it a link to / for its next start."""
    root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        parts = [p for p in vol.host.split("/") if p]
        src = open_beneath(root, parts, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC) if parts else os.dup(root)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise _swapped(vol) from None
    finally:
        os.close(root)
    try:
        mode = os.fstat(src).st_mode
        if stat.S_ISLNK(mode):   # the last part (O_NOFOLLOW: the link itself is opened)
            raise _swapped(vol)
        return _private_clone(src, vol.dev), stat.S_ISDIR(mode)
    finally:
        os.close(src)


def _swapped(vol: Volume) -> CgagentError:
    return CgagentError(f"volume {vol.host}: the path, or a directory on it, is a symlink now",
                        "the volume was not mounted; give its real path (cgagent rm, then run again)")


def _private_clone(src: str | int, dev: bool) -> int:
    """A detached copy of the tree at `src`, private: it is cloned before mount_root() makes the
    namespace's mounts private, and a peer of the host's mount would let mounts travel either way
    (a later host mount under it into the workload, with the host's flags; with SYS_ADMIN, the
    workload's mounts out to the host)."""
    fd = open_tree_clone(src)
    try:
        mount_setattr(fd, 0 if dev else MOUNT_ATTR_NODEV, propagation=MS_PRIVATE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _mask() -> None:
    for p in MASKED_PATHS:
        with contextlib.suppress(FileNotFoundError):
            if os.path.isdir(p):
                mount("tmpfs", p, "tmpfs", MS_RDONLY)
            elif os.path.exists(p):
                mount("/dev/null", p, None, MS_BIND)
    for p in READONLY_PATHS:
        if os.path.exists(p):
            _bind_ro(p, PROC_FLAGS)


def enter(spec: IsolationSpec, userns_fd: int | None = None) -> None:
    """Build the workload's filesystem view and switch into it."""
    cgroups = host_cgroup_mounts()
    vols = [(*_volume_tree(v), v.target, v.read_only) for v in spec.volumes]
    # --ipc host: the host's /dev/shm (POSIX shared memory) with its IPC namespace, as Docker does
    shm = _private_clone("/dev/shm", True) if spec.ipc == "host" and os.path.isdir("/dev/shm") else None
    host = host_devices() if spec.privileged else ()   # --privileged: the host's device nodes, listed now
    pivot(mount_root(spec, userns_fd))
    os.makedirs("/proc", exist_ok=True)
    mount("proc", "/proc", "proc", PROC_FLAGS)
    _mount_volumes(vols, spec.tmpfs)
    setup_dev("/dev", spec.devices, shm, host)
    _mount_sys(cgroups, writable=spec.privileged)
    if not spec.privileged:   # --privileged: /proc as the host has it, as Docker leaves it
        _mask()
    workdir = spec.workdir or "/"
    os.makedirs(workdir, exist_ok=True)
    if spec.read_only:
        mount_setattr("/", MOUNT_ATTR_RDONLY, recursive=False)   # keeps nodev (a bind remount would not)
    os.chdir(workdir)
