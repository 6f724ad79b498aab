"""The default seccomp filter: an allow-list, assembled here as classic BPF (no libseccomp).

Modelled on the default profile Docker and podman ship: every syscall the table below does not name
fails with EPERM, so a syscall newer than the table (io_uring_*, open_tree_attr, ...) is refused until
someone decides it is safe. Groups of calls open up with the capability that makes them meaningful
(mount & co. with SYS_ADMIN, ptrace with SYS_PTRACE, ...). Argument filters, as Docker's: clone
with namespace flags -> EPERM without SYS_ADMIN; clone3 -> ENOSYS so libc falls back to clone,
whose flags a classic filter can see; socket of AF_ALG/AF_VSOCK -> EPERM; personality only with the
harmless values. Stricter than Docker: ptrace and process_vm_* need SYS_PTRACE (Docker allows them
from Linux 4.8 on), mknod of block devices is refused and of char devices allowed only for the
standard nodes. A foreign ABI (i386 via int 0x80, arm32 compat) kills the process.
"""

from __future__ import annotations

import errno
import functools
import os
import struct
from collections.abc import Iterable

from cgagent.errors import CgagentError
from cgagent.isolation.syscall_table import BY_MACHINE
from cgagent.isolation.syscalls import set_seccomp_filter

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_EPERM = RET_ERRNO | errno.EPERM
RET_ENOSYS = RET_ERRNO | errno.ENOSYS

LD_W_ABS = 0x20
JA = 0x05
JEQ_K = 0x15
JGT_K = 0x25
JGE_K = 0x35
JSET_K = 0x45
AND_K = 0x54
RET_K = 0x06

OFF_NR, OFF_ARCH = 0, 4

# what every workload may call (Docker's base list, less what needs a capability or an argument check)
ALLOWED = """
    accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown clock_adjtime
    clock_getres clock_gettime clock_nanosleep close close_range connect copy_file_range creat dup dup2 dup3
    epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old
    eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64 fallocate fanotify_mark
    fchdir fchmod fchmodat fchmodat2 fchown fchownat fcntl fdatasync fgetxattr flistxattr flock fork
    fremovexattr fsetxattr fstat fstatfs fsync ftruncate futex futex_requeue futex_wait futex_waitv futex_wake
    futimesat get_robust_list get_thread_area getcpu getcwd getdents getdents64 getegid geteuid getgid
    getgroups getitimer getpeername getpgid getpgrp getpid getppid getpriority getrandom getresgid getresuid
    getrlimit getrusage getsid getsockname getsockopt gettid gettimeofday getuid getxattr getxattrat
    inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel io_destroy io_getevents
    io_pgetevents io_setup io_submit ioctl ioprio_get ioprio_set kill landlock_add_rule landlock_create_ruleset
    landlock_restrict_self lchown lgetxattr link linkat listen listmount listxattr listxattrat llistxattr
    lremovexattr lseek lsetxattr lstat madvise map_shadow_stack membarrier memfd_create memfd_secret mincore
    mkdir mkdirat mlock mlock2 mlockall mmap mprotect mq_getsetattr mq_notify mq_open
    mq_timedreceive mq_timedsend mq_unlink mremap mseal msgctl msgget msgrcv msgsnd msync munlock munlockall
    munmap name_to_handle_at nanosleep newfstatat open openat openat2 pause pidfd_open pidfd_send_signal pipe
    pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll prctl pread64 preadv preadv2 prlimit64 process_mrelease
    pselect6 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv recvfrom recvmmsg recvmsg
    remap_file_pages removexattr removexattrat rename renameat renameat2 restart_syscall rmdir rseq
    rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait
    rt_tgsigqueueinfo sched_get_priority_max sched_get_priority_min sched_getaffinity sched_getattr
    sched_getparam sched_getscheduler sched_rr_get_interval sched_setaffinity sched_setattr sched_setparam
    sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop sendfile sendmmsg sendmsg
    sendto set_robust_list set_thread_area set_tid_address setfsgid setfsuid setgid setgroups setitimer setpgid
    setpriority setregid setresgid setresuid setreuid setrlimit setsid setsockopt setuid setxattr setxattrat
    shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 socketpair splice stat statfs statmount
    statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete
    timer_getoverrun timer_gettime timer_settime timerfd_create timerfd_gettime timerfd_settime times tkill
    truncate umask uname unlink unlinkat uretprobe utime utimensat utimes vfork vmsplice wait4 waitid write
    writev
"""

# capability -> the calls it opens up (Docker's groups)
BY_CAP = {
    "SYS_ADMIN": ("bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie lsm_get_self_attr "
                  "lsm_list_modules lsm_set_self_attr mount mount_setattr move_mount open_tree perf_event_open "
                  "quotactl quotactl_fd setdomainname sethostname setns syslog umount2 unshare"),
    "SYS_PTRACE": "kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace",
    "SYS_MODULE": "delete_module init_module finit_module",
    "SYS_TIME": "settimeofday clock_settime",
    "SYS_NICE": "get_mempolicy mbind set_mempolicy set_mempolicy_home_node",
    "SYS_RAWIO": "iopl ioperm",
    "SYS_BOOT": "reboot",
    "SYS_CHROOT": "chroot",
    "SYS_PACCT": "acct",
    "SYS_TTY_CONFIG": "vhangup",
    "SYSLOG": "syslog",
    "BPF": "bpf",
    "PERFMON": "perf_event_open",
    "DAC_READ_SEARCH": "open_by_handle_at",
}
ARCH_ONLY = {"x86_64": ("arch_prctl", "modify_ldt"), "aarch64": ()}

NS_FLAGS = 0x7E020000  # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET (0x80 is clone's exit signal)
DENIED_FAMILIES = (38, 40)  # AF_ALG, AF_VSOCK
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)  # PER_LINUX, UNAME26, ADDR_NO_RANDOMIZE, query
S_IFMT, S_IFCHR, S_IFBLK = 0o170000, 0o020000, 0o060000
# char devices a workload may create: whiteout, null, zero, full, random, urandom, tty, console, ptmx
CHAR_OK = ((0, 0), (1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2))


def _arg(i: int) -> int:
    return 16 + 8 * i  # low 32 bits of args[i] (little endian): what the kernel reads of an int argument


def _encode_dev(major: int, minor: int) -> int:
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def machine() -> str:
    """This machine's architecture, if the filter has a table for it."""
    m = os.uname().machine
    if m not in BY_MACHINE:
        raise CgagentError(f"isolated workloads are not supported on {m}: the seccomp filter knows only "
                           f"{' and '.join(BY_MACHINE)}", "run the command without an IMAGE or --rootfs")
    return m


class _Asm:
    """Tiny assembler: instructions with symbolic forward jump targets."""

    def __init__(self) -> None:
        self.ins: list[tuple[int, int | str, int | str, int | str]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int, jt: int | str = 0, jf: int | str = 0) -> None:
        self.ins.append((code, jt, jf, k))

    def ja(self, target: str) -> None:
        """An unconditional jump: 32-bit offset, where a conditional one has only 8 bits."""
        self.ins.append((JA, 0, 0, target))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.ins)

    def ret(self, k: int) -> None:
        self.op(RET_K, k)

    def assemble(self) -> bytes:
        words: list[int] = []
        for i, (code, jt, jf, k) in enumerate(self.ins):
            if isinstance(jt, str):
                jt = self.labels[jt] - i - 1
            if isinstance(jf, str):
                jf = self.labels[jf] - i - 1
            if isinstance(k, str):
                k = self.labels[k] - i - 1
            assert 0 <= jt < 256 and 0 <= jf < 256 and k >= 0, "seccomp jump out of range"
            words += (code, jt, jf, k & 0xFFFFFFFF)
        return struct.pack("=" + "HBBI" * len(self.ins), *words)


def _actions(arch: str, caps: set[str]) -> dict[int, int | str]:
    """syscall number -> RET value or the label of its argument filter; every other number: EPERM."""
    nr = BY_MACHINE[arch]
    names = set(ALLOWED.split()) | set(ARCH_ONLY[arch])
    for cap, calls in BY_CAP.items():
        if cap in caps:
            names |= set(calls.split())
    out: dict[int, int | str] = {nr[n]: RET_ALLOW for n in names if n in nr}
    if "SYS_ADMIN" not in caps:
        out[nr["clone"]] = "clone"
        out[nr["clone3"]] = RET_ENOSYS
    out[nr["socket"]] = "socket"
    out[nr["personality"]] = "personality"
    for name in ("mknod", "mknodat"):
        if name in nr:   # aarch64 has mknodat only
            out[nr[name]] = name
    return out


def _tree(a: _Asm, ranges: list[tuple[int, int, int | str]], n: list[int]) -> None:
    """A binary search over the sorted ranges of equal action (a few compares per syscall, not hundreds)."""
    if len(ranges) == 1:
        lo, hi, act = ranges[0]
        if lo == hi:
            a.op(JEQ_K, lo, 0, 1)
        else:
            a.op(JGE_K, lo, 0, 2)
            a.op(JGT_K, hi, 1, 0)
        if isinstance(act, str):
            a.ja(act)
        else:
            a.ret(act)
        a.ret(RET_EPERM)
        return
    mid = len(ranges) // 2
    n[0] += 1
    right = f"r{n[0]}"
    a.op(JGE_K, ranges[mid][0], 0, 1)
    a.ja(right)
    _tree(a, ranges[:mid], n)
    a.label(right)
    _tree(a, ranges[mid:], n)


def _first_arg_in(a: _Asm, name: str, values: Iterable[int], hit: int, miss: int) -> None:
    """The block at label `name`: `hit` when the call's first argument is one of `values`, else `miss`."""
    a.label(name)
    a.op(LD_W_ABS, _arg(0))
    for v in values:
        a.op(JEQ_K, v, f"{name}-hit", 0)
    a.ret(miss)
    a.label(f"{name}-hit")
    a.ret(hit)


def build(arch: str, caps: list[str]) -> bytes:
    acts = _actions(arch, set(caps))
    ranges: list[tuple[int, int, int | str]] = []
    for nr in sorted(acts):
        if ranges and ranges[-1][1] == nr - 1 and ranges[-1][2] == acts[nr]:
            ranges[-1] = (ranges[-1][0], nr, acts[nr])
        else:
            ranges.append((nr, nr, acts[nr]))
    a = _Asm()
    a.op(LD_W_ABS, OFF_ARCH)
    a.op(JEQ_K, AUDIT_ARCH[arch], 1, 0)
    a.ret(RET_KILL_PROCESS)
    a.op(LD_W_ABS, OFF_NR)
    _tree(a, ranges, [0])
    a.label("clone")
    a.op(LD_W_ABS, _arg(0))
    a.op(JSET_K, NS_FLAGS, 0, 1)
    a.ret(RET_EPERM)
    a.ret(RET_ALLOW)
    _first_arg_in(a, "socket", DENIED_FAMILIES, RET_EPERM, RET_ALLOW)
    _first_arg_in(a, "personality", PERSONALITIES, RET_ALLOW, RET_EPERM)
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
        a.ret(RET_EPERM)
        a.label(f"{name}-ok")
        a.ret(RET_ALLOW)
    return a.assemble()


@functools.lru_cache(maxsize=4)
def _program(arch: str, caps: frozenset[str]) -> bytes:
    return build(arch, sorted(caps))


def prepare(caps: Iterable[str]) -> None:
    """Build the filter for `caps` now, for install() to find made (~0.5 ms): a PID 1 forked ahead of
    its job (cgagent.zygote) builds the default capabilities' while it waits."""
    _program(machine(), frozenset(caps))


def install(caps: list[str]) -> None:
    """Install the default filter for a workload with `caps` on the calling thread (needs
    no_new_privs or CAP_SYS_ADMIN)."""
    set_seccomp_filter(_program(machine(), frozenset(caps)))
