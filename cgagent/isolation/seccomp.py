"""The default seccomp filter, assembled here as classic BPF (no libseccomp).

Default allow; EPERM for the calls Docker's default profile denies to a workload without
CAP_SYS_ADMIN and friends (mounts, namespaces, modules, kexec, bpf, ptrace, keyrings, ...);
clone with namespace flags -> EPERM; clone3 -> ENOSYS so libc falls back to clone, whose flags
a classic filter can see; mknod of block devices -> EPERM, of char devices only for the harmless
standard nodes. A foreign architecture (i386 via int 0x80) kills the process; x32 calls -> ENOSYS.
"""

from __future__ import annotations

import errno
import struct

from cgagent.isolation.syscalls import set_seccomp_filter

AUDIT_ARCH_X86_64 = 0xC000003E
X32_BIT = 0x40000000
RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000

LD_W_ABS = 0x20
JEQ_K = 0x15
JGE_K = 0x35
JSET_K = 0x45
AND_K = 0x54
RET_K = 0x06

OFF_NR, OFF_ARCH = 0, 4


def _arg(i: int) -> int:
    return 16 + 8 * i  # low 32 bits of args[i] (little endian)


# x86_64 numbers
DENIED = {
    "ptrace": 101, "syslog": 103, "uselib": 134, "vhangup": 153, "pivot_root": 155,
    "_sysctl": 156, "acct": 163, "settimeofday": 164, "mount": 165,
    "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169, "iopl": 172,
    "ioperm": 173, "create_module": 174, "init_module": 175, "delete_module": 176, "get_kernel_syms": 177,
    "query_module": 178, "quotactl": 179, "nfsservctl": 180, "lookup_dcookie": 212, "clock_settime": 227,
    "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272,
    "move_pages": 279, "perf_event_open": 298, "fanotify_init": 300, "name_to_handle_at": 303,
    "open_by_handle_at": 304, "clock_adjtime": 305, "setns": 308, "process_vm_readv": 310,
    "process_vm_writev": 311, "kcmp": 312, "finit_module": 313, "kexec_file_load": 320, "bpf": 321,
    "userfaultfd": 323, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "pidfd_getfd": 438, "mount_setattr": 442, "quotactl_fd": 443,
}
SYS_CLONE, SYS_CLONE3, SYS_MKNOD, SYS_MKNODAT = 56, 435, 133, 259
NS_FLAGS = 0x7E020000  # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET (0x80 is clone's exit signal)
S_IFMT, S_IFCHR, S_IFBLK = 0o170000, 0o020000, 0o060000
# char devices a workload may create: whiteout, null, zero, full, random, urandom, tty, console, ptmx
CHAR_OK = ((0, 0), (1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2))


def _encode_dev(major: int, minor: int) -> int:
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


class _Asm:
    """Tiny assembler: instructions with symbolic forward jump targets."""

    def __init__(self) -> None:
        self.ins: list[tuple[int, int | str, int | str, int]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int, jt: int | str = 0, jf: int | str = 0) -> None:
        self.ins.append((code, jt, jf, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.ins)

    def ret(self, k: int) -> None:
        self.op(RET_K, k)

    def assemble(self) -> bytes:
        out = b""
        for i, (code, jt, jf, k) in enumerate(self.ins):
            def rel(t: int | str, i: int = i) -> int:
                off = t if isinstance(t, int) else self.labels[t] - i - 1
                assert 0 <= off < 256, "seccomp jump out of range"
                return off
            out += struct.pack("=HBBI", code, rel(jt), rel(jf), k & 0xFFFFFFFF)
        return out


def build() -> bytes:
    eperm, enosys = RET_ERRNO | errno.EPERM, RET_ERRNO | errno.ENOSYS
    a = _Asm()
    a.op(LD_W_ABS, OFF_ARCH)
    a.op(JEQ_K, AUDIT_ARCH_X86_64, 1, 0)
    a.ret(RET_KILL_PROCESS)
    a.op(LD_W_ABS, OFF_NR)
    a.op(JGE_K, X32_BIT, "enosys", 0)
    a.op(JEQ_K, SYS_CLONE3, "enosys", 0)
    for nr in sorted(n for n in DENIED.values() if n >= 0):
        a.op(JEQ_K, nr, "eperm", 0)
    a.op(JEQ_K, SYS_CLONE, "clone", 0)
    a.op(JEQ_K, SYS_MKNOD, "mknod", 0)
    a.op(JEQ_K, SYS_MKNODAT, "mknodat", 0)
    a.ret(RET_ALLOW)
    a.label("eperm")
    a.ret(eperm)
    a.label("enosys")
    a.ret(enosys)
    a.label("clone")
    a.op(LD_W_ABS, _arg(0))
    a.op(JSET_K, NS_FLAGS, 0, 1)
    a.ret(eperm)
    a.ret(RET_ALLOW)
    for name, mode_arg in (("mknod", 1), ("mknodat", 2)):
        a.label(name)
        a.op(LD_W_ABS, _arg(mode_arg))
        a.op(AND_K, S_IFMT)
        a.op(JEQ_K, S_IFBLK, f"{name}-deny", 0)
        a.op(JEQ_K, S_IFCHR, 1, 0)
        a.ret(RET_ALLOW)
        a.op(LD_W_ABS, _arg(mode_arg + 1))
        for major, minor in CHAR_OK:
            a.op(JEQ_K, _encode_dev(major, minor), f"{name}-ok", 0)
        a.label(f"{name}-deny")
        a.ret(eperm)
        a.label(f"{name}-ok")
        a.ret(RET_ALLOW)
    return a.assemble()


def install() -> None:
    """Install the default filter on the calling thread (needs no_new_privs or CAP_SYS_ADMIN)."""
    set_seccomp_filter(build())
