"""The seccomp filter is an allow-list: a syscall its table does not name is refused (EPERM), so a
syscall newer than the table (io_uring_*, open_tree_attr of Linux 6.15, ...) cannot be used even
with the capability it checks for; argument filters and capability-conditional groups as Docker's.

Raw syscalls are made by the host's python3, mounted read-only into the busybox test image."""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import pytest

from cgagent.errors import CgagentError
from cgagent.isolation import seccomp
from cgagent.isolation.syscall_table import BY_MACHINE
from tests.isolated import IMG, Box, ok

pytest_plugins = ("tests.isolated_fixtures",)  # the box and image_store fixtures

HOST_PY = ["-v", "/usr:/usr:ro", "-v", "/usr/lib:/lib:ro", "-v", "/lib64:/lib64:ro"]
EPERM, ENOSYS = "EPERM", "ENOSYS"
# numbers from 424 on are the same on every architecture; 1000 is no syscall at all
OPEN_TREE_ATTR, FILE_GETATTR, NO_SUCH = 467, 468, 1000

PROBE = r"""
import ctypes, errno, json, sys
nr = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
zeros = ctypes.addressof(ctypes.create_string_buffer(512))   # an all-zero io_uring_params / mount_attr
def call(n, *args):
    r = libc.syscall(ctypes.c_long(n), *[ctypes.c_long(a) for a in args])
    return "0" if r >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
path = ctypes.addressof(ctypes.create_string_buffer(b"/proc/sys"))
print(json.dumps({
    "io_uring_setup": call(nr["io_uring_setup"], 8, zeros),
    "open_tree_attr": call(467, -100, path, 0x80001 | 0x8000, zeros, 32),  # CLONE|CLOEXEC, AT_RECURSIVE
    "file_getattr": call(468, -100, path, zeros, 0, 0),
    "no_such_syscall": call(1000),
    "socket_vsock": call(nr["socket"], 40, 1, 0),
    "socket_alg": call(nr["socket"], 38, 5, 0),
    "socket_unix": call(nr["socket"], 1, 1, 0),
    "personality_exec": call(nr["personality"], 0x0400000),   # READ_IMPLIES_EXEC
    "personality_query": call(nr["personality"], 0xFFFFFFFF),
    "unshare_uts": call(nr["unshare"], 0x04000000),
    "getpid": call(nr["getpid"]),
}))
"""


def probe_args(*opts: str) -> list[str]:
    """`run` arguments that print the probe's results (one JSON line) from inside the workload."""
    nr = {k: BY_MACHINE[os.uname().machine][k] for k in ("io_uring_setup", "socket", "personality", "unshare",
                                                           "getpid")}
    return ["run", "--rm", "--net", "none", *HOST_PY, *opts, IMG, "--", "/usr/bin/python3", "-I", "-c", PROBE,
            json.dumps(nr)]


def probe(b: Box, *opts: str) -> dict[str, str]:
    return dict(json.loads(ok(b.run(*probe_args(*opts))).strip().splitlines()[-1]))


NEW_OR_UNKNOWN = ("io_uring_setup", "open_tree_attr", "file_getattr", "no_such_syscall")


def test_calls_the_table_does_not_name_are_refused(box: Box) -> None:
    res = probe(box)
    assert {k: res[k] for k in NEW_OR_UNKNOWN} == dict.fromkeys(NEW_OR_UNKNOWN, EPERM), res
    assert res["socket_vsock"] == res["socket_alg"] == EPERM and res["socket_unix"] == "0", res
    assert res["personality_exec"] == EPERM and res["personality_query"] == "0", res
    assert res["unshare_uts"] == EPERM and res["getpid"] == "0", res


def test_sys_admin_opens_its_group_but_not_unknown_calls(box: Box) -> None:
    res = probe(box, "--cap-add", "SYS_ADMIN")
    assert {k: res[k] for k in NEW_OR_UNKNOWN} == dict.fromkeys(NEW_OR_UNKNOWN, EPERM), res
    assert res["unshare_uts"] == "0", res   # Docker's SYS_ADMIN group: the filter lets it through


def test_unconfined_turns_the_filter_off(box: Box) -> None:
    res = probe(box, "--security-opt", "seccomp=unconfined", "--cap-add", "SYS_ADMIN")
    assert res["no_such_syscall"] == ENOSYS   # the kernel's answer: it was the filter that said EPERM
    assert res["open_tree_attr"] != EPERM and res["socket_unix"] == "0", res


def test_ordinary_workloads_run(box: Box) -> None:
    out = ok(box.sh("ls / | grep -c . ; ps -o pid,comm | grep -c ps; echo hi | sed s/hi/ho/; date +%Y >/dev/null "
                    "&& id -u && (sleep 0 & wait) && echo done"))
    assert out.split()[1:] == ["1", "ho", "0", "done"], out
    script = ("import threading, subprocess, socket, os; t = threading.Thread(target=print, args=('thread',)); "
              "t.start(); t.join(); print(subprocess.run(['/bin/busybox', 'echo', 'child'], capture_output=True, "
              "text=True).stdout.strip()); a, b = socket.socketpair(); a.send(b'x'); print(b.recv(1).decode()); "
              "print(os.cpu_count() > 0)")
    out = ok(box.run("run", "--rm", "--net", "none", *HOST_PY, IMG, "--", "/usr/bin/python3", "-I", "-c", script))
    assert out.split() == ["thread", "child", "x", "True"], out


# --- the filter program itself, for both architectures (aarch64 has no machine here to run on)

def run_bpf(prog: bytes, nr: int, arch: int, args: tuple[int, ...] = ()) -> int:
    """A classic-BPF interpreter for the instructions seccomp.build emits, over a struct seccomp_data."""
    data = struct.pack("=IIQ6Q", nr, arch, 0, *(list(args) + [0] * 6)[:6])
    ins = [struct.unpack("=HBBI", prog[i:i + 8]) for i in range(0, len(prog), 8)]
    acc, pc = 0, 0
    for _ in range(len(ins)):   # forward jumps only: at most one pass
        code, jt, jf, k = ins[pc]
        pc += 1
        if code == seccomp.RET_K:
            return int(k)
        if code == seccomp.LD_W_ABS:
            acc = struct.unpack_from("=I", data, k)[0]
        elif code == seccomp.AND_K:
            acc &= k
        elif code == seccomp.JA:
            pc += k
        else:
            hit = {seccomp.JEQ_K: acc == k, seccomp.JGT_K: acc > k, seccomp.JGE_K: acc >= k,
                   seccomp.JSET_K: bool(acc & k)}[code]
            pc += jt if hit else jf
    raise AssertionError("the program ran off its end")


@pytest.mark.parametrize("arch", sorted(BY_MACHINE))
def test_program_decisions(arch: str) -> None:
    nr, audit = BY_MACHINE[arch], seccomp.AUDIT_ARCH[arch]
    allow, eperm, enosys = seccomp.RET_ALLOW, seccomp.RET_EPERM, seccomp.RET_ENOSYS

    def decide(name_or_nr: str | int, caps: tuple[str, ...] = (), args: tuple[int, ...] = (), a: int = audit) -> int:
        n = nr[name_or_nr] if isinstance(name_or_nr, str) else name_or_nr
        return run_bpf(seccomp.build(arch, list(caps)), n, a, args)

    for name in ("read", "write", "openat", "execve", "mmap", "futex", "exit_group", "rt_sigreturn", "wait4"):
        assert decide(name) == allow, name
    for n in [nr["io_uring_setup"], nr["io_uring_enter"], OPEN_TREE_ATTR, FILE_GETATTR, NO_SUCH, 0x40000000 + 1,
              max(nr.values()) + 1, 0xFFFFFFFF]:
        assert decide(n) == eperm and decide(n, ("SYS_ADMIN",)) == eperm, n
    assert decide("clone", args=(0x11,)) == allow and decide("clone", args=(0x10000011,)) == eperm
    assert decide("clone", ("SYS_ADMIN",), (0x10000011,)) == allow
    assert decide("clone3") == enosys and decide("clone3", ("SYS_ADMIN",)) == allow
    assert decide("mount") == eperm and decide("mount", ("SYS_ADMIN",)) == allow
    assert decide("ptrace") == eperm and decide("ptrace", ("SYS_PTRACE",)) == allow
    assert decide("init_module") == eperm and decide("init_module", ("SYS_MODULE",)) == allow
    assert decide("clock_settime") == eperm and decide("clock_settime", ("SYS_TIME",)) == allow
    assert decide("socket", args=(40,)) == eperm and decide("socket", args=(2,)) == allow
    assert decide("personality", args=(0x400000,)) == eperm and decide("personality", args=(8,)) == allow
    assert decide("mknodat", args=(0, 0, 0o060600, 0x801)) == eperm                 # a block device
    assert decide("mknodat", args=(0, 0, 0o020600, 0x103)) == allow                 # /dev/null
    assert decide("read", a=0x40000003) == seccomp.RET_KILL_PROCESS                  # i386 on x86_64
    assert decide("read", a=0x40000028) == seccomp.RET_KILL_PROCESS                  # arm32 on aarch64


def test_unknown_architecture_is_refused_in_one_line(monkeypatch: Any) -> None:
    real = os.uname()
    fake = type(real)((real.sysname, real.nodename, real.release, real.version, "riscv64"))
    monkeypatch.setattr(os, "uname", lambda: fake)
    with pytest.raises(CgagentError) as e:
        seccomp.machine()
    assert "riscv64" in str(e.value) and "\n" not in str(e.value)
