"""The escape battery (issue 4): from inside a default workload, as root, each attempt fails.

Busybox applets and shell redirections make most attempts. For the syscalls busybox cannot make
(ptrace, init_module, keyctl, bpf, setns, clone with namespace flags), the host's python3 is bind
mounted read-only into the workload and calls them through ctypes.
"""

from __future__ import annotations

import os

import pytest

from tests.isolated import IMG, Box

pytest_plugins = ("tests.isolated_fixtures",)  # the box and image_store fixtures

# each: a shell script that must exit non-zero (the attempt failed) inside the workload
ATTEMPTS = {
    "mount_tmpfs": "mkdir -p /mnt && mount -t tmpfs none /mnt",
    "mount_proc_again": "mkdir -p /p2 && mount -t proc proc /p2",
    "remount_proc_sys_rw": "mount -o remount,rw /proc/sys",
    "write_proc_sys_kernel": "echo evil > /proc/sys/kernel/hostname",
    "write_core_pattern": "echo '|/tmp/x' > /proc/sys/kernel/core_pattern",
    "write_sysrq_trigger": "echo h > /proc/sysrq-trigger",
    "read_kcore": 'test "$(cat /proc/kcore 2>/dev/null | head -c 16 | wc -c)" -gt 0',
    "mknod_block_device": "mknod /tmp/sda b 8 0",
    "mknod_mem_device": "mknod /tmp/mem c 1 1",
    "write_cgroupfs_limit": "echo max > /sys/fs/cgroup/pids/pids.max",
    "join_other_cgroup": "echo $$ > /sys/fs/cgroup/memory/cgroup.procs",
    "mkdir_cgroup": "mkdir /sys/fs/cgroup/memory/evil",
    "write_sysfs": "echo 1 > /sys/kernel/mm/transparent_hugepage/enabled || echo x > /sys/kernel/uevent_helper",
    "cve_2022_0492_userns": ("unshare -Urm sh -c 'mkdir -p /tmp/cg && mount -t cgroup -o rdma cgroup /tmp/cg "
                             "&& echo /evil > /tmp/cg/release_agent'"),
    "cve_2022_0492_direct": ("mkdir -p /tmp/cg && mount -t cgroup -o memory cgroup /tmp/cg "
                             "&& echo /evil > /tmp/cg/release_agent"),
    "new_namespaces": "unshare -m -n -p -f true",
    "load_kernel_module": "insmod /etc/passwd",
    "remove_kernel_module": "rmmod loop",
    "set_time": "date -s 2001-01-01 >/dev/null 2>&1; test $(date +%Y) = 2001",
    "swapon": "swapon /etc/passwd",
    "reboot_host": "reboot -f",
    "hostname_change": "hostname evil",   # no CAP_SYS_ADMIN, even in its own UTS namespace
}


@pytest.mark.parametrize("userns", [False, True], ids=["root", "userns"])
@pytest.mark.parametrize("name", sorted(ATTEMPTS))
def test_attempt_fails(box: Box, name: str, userns: bool) -> None:
    r = box.sh(ATTEMPTS[name], *(["--userns"] if userns else []))
    assert r.returncode != 0, f"{name} succeeded inside the workload: {r.stdout} {r.stderr}"


def test_kcore_and_masked_proc_files_are_empty(box: Box) -> None:
    # masked files read as /dev/null, masked directories as empty read-only tmpfs
    out = box.sh("for f in /proc/kcore /proc/keys /proc/timer_list; do "
                 "test -e $f && { wc -c < $f; }; done; ls -A /sys/firmware | wc -l; "
                 "touch /sys/firmware/x 2>/dev/null && echo WROTE; true")
    assert out.returncode == 0, out.stderr
    counts = out.stdout.split()
    assert counts and all(c == "0" for c in counts), out.stdout


def test_host_processes_are_invisible_and_unsignalable(box: Box) -> None:
    me = os.getpid()
    r = box.sh(f"ls /proc/{me} >/dev/null 2>&1 && echo SEEN; kill -0 {me} 2>/dev/null && echo SIGNALLED; "
               "ls /proc | grep -c '^[0-9]'")
    assert r.returncode == 0, r.stderr
    assert "SEEN" not in r.stdout and "SIGNALLED" not in r.stdout
    assert int(r.stdout.split()[-1]) <= 3  # sh, ls, grep: nothing else in the pid namespace


def test_capabilities_are_dockers_default_set(box: Box) -> None:
    from cgagent.isolation.spec import CAP_NUMBERS, DEFAULT_CAPS

    want = sum(1 << CAP_NUMBERS[c] for c in DEFAULT_CAPS)
    r = box.sh("grep -E '^Cap(Eff|Prm|Bnd|Inh|Amb)' /proc/self/status; grep -E '^(NoNewPrivs|Seccomp):' "
               "/proc/self/status")
    f = dict(line.split(":") for line in r.stdout.strip().splitlines())
    assert int(f["CapEff"], 16) == want and int(f["CapPrm"], 16) == want and int(f["CapBnd"], 16) == want
    assert int(f["CapInh"], 16) == 0 and int(f["CapAmb"], 16) == 0
    assert f["NoNewPrivs"].strip() == "1" and f["Seccomp"].strip() == "2"
    r = box.sh("grep -E '^Cap(Eff|Bnd)' /proc/self/status", "--cap-drop", "ALL", "--cap-add", "NET_ADMIN")
    f = dict(line.split(":") for line in r.stdout.strip().splitlines())
    assert int(f["CapEff"], 16) == int(f["CapBnd"], 16) == 1 << CAP_NUMBERS["NET_ADMIN"]


# --- raw syscalls, through the host's python3 mounted read-only

PY_PROBE = r"""
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(nr, *args):
    r = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    return 0 if r >= 0 else ctypes.get_errno()
child = os.fork()
if child == 0:
    import time; time.sleep(30); os._exit(0)
results = {
    "ptrace_attach_child": call(101, 16, child, 0, 0),        # PTRACE_ATTACH our own child
    "ptrace_attach_host": call(101, 16, int(sys.argv[1]), 0, 0),
    "init_module": call(175, 0, 0, 0),
    "finit_module": call(313, 0, 0, 0),
    "delete_module": call(176, 0, 0),
    "keyctl": call(250, 0, 0, 0, 0, 0),
    "add_key": call(248, 0, 0, 0, 0, 0),
    "bpf": call(321, 0, 0, 0),
    "unshare_user": call(272, 0x10000000),
    "unshare_cgroup": call(272, 0x02000000),
    "setns": call(308, 0, 0),
    "clone_newuser": call(56, 0x10000000 | 17, 0, 0, 0, 0),
    "kexec_load": call(246, 0, 0, 0, 0),
    "open_by_handle_at": call(304, 0, 0, 0),
    "perf_event_open": call(298, 0, 0, 0, 0, 0),
    "pivot_root": call(155, 0, 0),
    "mount": call(165, 0, 0, 0, 0, 0),
    "fsopen": call(430, 0, 0),
    "reboot": call(169, 0, 0, 0, 0),
}
os.kill(child, 9)
results["clone3"] = call(435, 0, 0)
for k, v in sorted(results.items()):
    print(k, errno.errorcode.get(v, v))
"""
HOST_PY = ["-v", "/usr:/usr:ro", "-v", "/usr/lib:/lib:ro", "-v", "/lib64:/lib64:ro"]


def _probe(box: Box, *opts: str) -> dict[str, str]:
    r = box.run("run", "--rm", *HOST_PY, *opts, IMG, "--", "/usr/bin/python3", "-I", "-c", PY_PROBE,
                str(os.getpid()))
    assert r.returncode == 0, r.stderr
    return dict(line.split() for line in r.stdout.strip().splitlines())


def test_dangerous_syscalls_fail_with_eperm(box: Box) -> None:
    res = _probe(box)
    assert res.pop("clone3") == "ENOSYS"   # so libc falls back to clone, whose flags the filter sees
    assert res.pop("ptrace_attach_host") in ("EPERM", "ESRCH")
    assert res == dict.fromkeys(res, "EPERM"), res


def test_seccomp_unconfined_turns_the_filter_off(box: Box) -> None:
    res = _probe(box, "--security-opt", "seccomp=unconfined")
    assert res["ptrace_attach_child"] == "0"   # allowed without the filter: it is the filter that blocks
    assert res["clone3"] != "ENOSYS"
    # capabilities still stop the rest
    assert res["init_module"] in ("EPERM", "ENOSYS")  # ENOSYS: this kernel may be built without modules
