"""Privilege reduction in the workload's process, in the order the kernel needs it:
bounding set -> ambient cleared -> user switch -> capset -> no_new_privs -> seccomp.

Docker's masked and read-only paths are applied by cgagent.isolation.rootfs (they are mounts).
"""

from __future__ import annotations

import errno
import os

from cgagent.isolation import seccomp
from cgagent.isolation.spec import CAP_NUMBERS, IsolationSpec
from cgagent.isolation.syscalls import (
    PR_CAP_AMBIENT,
    PR_CAP_AMBIENT_CLEAR_ALL,
    PR_CAPBSET_DROP,
    PR_SET_NO_NEW_PRIVS,
    capset,
    prctl,
)

MASKED_PATHS = ("/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list", "/proc/timer_stats",
                "/sys/firmware", "/sys/devices/virtual/powercap")
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


def cap_mask(names: list[str]) -> int:
    mask = 0
    for n in names:
        mask |= 1 << CAP_NUMBERS[n]
    return mask


def usable(spec: IsolationSpec) -> list[str]:
    """The capabilities the workload gets: its spec's; for --privileged, every one this process holds
    (a capability we lack cannot be given, and "all" means all of the host's here)."""
    if not spec.privileged:
        return list(spec.caps)
    held = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapPrm:"):
                held = int(line.split()[1], 16)
    return [c for c in spec.caps if held & cap_mask([c])]


def drop_bounding(keep: int) -> None:
    for cap in range(64):
        if keep & (1 << cap):
            continue
        try:
            prctl(PR_CAPBSET_DROP, cap)
        except OSError as e:
            if e.errno == errno.EINVAL:  # past the kernel's last capability
                break
            raise


def lookup_user(user: str) -> tuple[int, int, list[int], str]:
    """`name|uid[:group|gid]` against the workload's /etc/passwd and /etc/group (we are in its root)."""
    name, _, group = user.partition(":")

    def table(path: str) -> list[list[str]]:
        try:
            with open(path) as f:
                return [ln.split(":") for ln in f.read().splitlines() if ln and not ln.startswith("#")]
        except OSError:
            return []

    passwd, groups = table("/etc/passwd"), table("/etc/group")
    home = "/"
    row = next((r for r in passwd if len(r) >= 6 and (r[0] == name or r[2] == name)), None)
    if row is not None:
        uid, gid, home = int(row[2]), int(row[3]), row[5]
    elif name.isdigit():
        uid, gid = int(name), int(name) if not group else 0
    else:
        raise OSError(errno.ENOENT, f"user {name!r} is not in the image's /etc/passwd")
    if group:
        grow = next((r for r in groups if len(r) >= 3 and (r[0] == group or r[2] == group)), None)
        if grow is not None:
            gid = int(grow[2])
        elif group.isdigit():
            gid = int(group)
        else:
            raise OSError(errno.ENOENT, f"group {group!r} is not in the image's /etc/group")
    uname = row[0] if row is not None else ""
    extra = sorted({int(r[2]) for r in groups if len(r) >= 4 and uname and uname in r[3].split(",")} - {gid})
    return uid, gid, [gid, *extra], home


def check_cwd() -> None:
    """The working directory must lie inside the workload's root. A workdir of /proc/self/fd/N names
    an fd the caller leaked, i.e. a directory of the host (CVE-2024-21626); the kernel's getcwd
    cannot name such a directory from our root, and glibc reports ENOENT."""
    try:
        cwd = os.getcwd()
    except FileNotFoundError:
        cwd = ""
    if not cwd.startswith("/"):
        raise OSError(errno.EPERM, "the working directory is outside the workload's root")


def apply(caps: list[str], user: str, use_seccomp: bool, env: dict[str, str], exec_unreadable: bool = False) -> None:
    """`exec_unreadable`: the next exec is of a file we must not be able to read (cgagent.isolation.child's
    init), so the capabilities that read anything stay out of the effective set until then (exec
    restores effective = permitted for root)."""
    keep = cap_mask(caps)
    drop_bounding(keep)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    uid = 0
    if user and user not in ("0", "root", "0:0", "root:root"):
        uid, gid, groups, home = lookup_user(user)
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)  # all uids non-zero: the kernel clears permitted and effective capabilities
        env.setdefault("HOME", home)
    else:
        os.setgroups([0])
        os.setgid(0)   # no-ops on the host; in a user namespace they make us its root (uid 0 there)
        os.setuid(0)
    if uid == 0:
        capset(keep & ~cap_mask(["DAC_OVERRIDE", "DAC_READ_SEARCH"]) if exec_unreadable else keep, keep, 0)
    env.setdefault("HOME", "/root")
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    if use_seccomp:
        seccomp.install(caps)
