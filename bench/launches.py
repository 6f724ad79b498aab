"""Every launch, with and without the agent (issue 14), in one interleaved run beside `python3 -c pass`,
`runc run` and `bwrap`:
  run                  `cgagent run --rm LIMITS -- /bin/true`
  run --net none       the same isolated: `--rootfs BUSYBOX --net none`
  run --net bridge     the same with `--net bridge` (veth, address, route, hosts files, teardown)
each direct (CGAGENT_DIRECT=1) and through an agent (`cgagent serve` on the bench's own state dir).

Everything runs in a network namespace made here (never the machine's own network: the bridge, its
NAT table and the veths live and die there): this process enters it, so its children (the agent,
the CLI, runc, bwrap) are born in it and no nsenter is timed. Bytecode is compiled first into a
private prefix (this machine sets PYTHONDONTWRITEBYTECODE), so the numbers are an installed package's.
BENCH_BASELINE=/path/to/another/checkout adds that tree's direct `run` to the same interleaving
(say, the branch before a change: "without the agent, no slower than today").

Targets: with the agent, its own cost (cgagent - python3 -c pass) <= runc's whole time; --net bridge
<= --net none + 20 ms. Where systemd is PID 1, cgagent's default driver makes a transient scope per
workload: beside runc's whole time the report gives `runc --systemd-cgroup`'s (the same work, as
Docker runs runc on such a host), and a plain run through the agent with the cgroupfs driver
(`run (agent, cgroupfs driver)`, like for like with runc's default driver)."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable

from bench.common import (
    CGAGENT,
    DRIVER_SYSTEMD,
    PYTHON,
    RUNC,
    RUNC_SYSTEMD,
    SETTLE,
    busybox_rootfs,
    measure,
    parent_env,
    summary,
    time_cmd,
)
from bench.launch import runc_bundle, true_run

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "30"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BWRAP = "bwrap --unshare-all (busybox)"
MODES = ("direct", "agent")
KINDS = ("run", "run --net none", "run --net bridge")
CGROUPFS = "run (agent, cgroupfs driver)"   # on a systemd host, beside its default systemd driver


def _path(tree: str) -> str:
    """`tree` first, then what PYTHONPATH held (the v2 VM's dependencies live there)."""
    return os.pathsep.join(p for p in (tree, os.environ.get("PYTHONPATH", "")) if p)


def start_agent(cli: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """`cgagent serve` with `env`, once its API listens."""
    p = subprocess.Popen([*cli, "serve", "--listen", "127.0.0.1:0"], env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert p.stdout is not None
    for line in p.stdout:   # it prints its API line once the socket listens
        if "API:" in line:
            return p
    p.wait()
    raise RuntimeError("cgagent serve exited before serving its API")


def _mount_of(path: str) -> tuple[str, str]:
    """(filesystem type, source) of the mount `path` is on (the longest mount point above it)."""
    best, kind, source = "", "", ""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            dash = fields.index("-")   # the optional fields before it vary in number
            point, fs, src = fields[4], fields[dash + 1], fields[dash + 2]
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best, kind, source = point, fs, src
    return kind, source


def _fstype(path: str) -> str:
    return _mount_of(path)[0]


def _store_fs(path: str) -> str:
    """The store root's filesystem, in one line. Each launch creates and deletes files there (overlay
    dirs, network records): on ext4 without a journal the kernel skips inodes freed in the last
    seconds (ext4's recently_deleted(), checked only when there is no journal), so each new one costs
    more at a launch rate. A usual /var/lib is ext4 with a journal."""
    kind, source = _mount_of(path)
    if kind != "ext4":
        return f"store root on {kind}"
    try:
        with open(f"/sys/fs/ext4/{os.path.basename(source)}/journal_task") as f:
            journal = f.read().strip() != "<none>"
    except OSError:
        return "store root on ext4"
    return "store root on ext4 " + ("with a journal" if journal else
                                    "WITHOUT a journal (new inodes cost more here than on a usual /var/lib)")


def _state_on_tmpfs(run: str) -> str:
    """The state dirs on tmpfs, as /run is on a usual host (systemd and Debian's initscripts mount it
    so): where this host's /run is on disk, a tmpfs of the bench's own in a mount namespace of its
    own (so nothing outlives the bench), for cgagent and runc alike. Every state save's fsync is
    free there, as on a user's host. -> the line that says which."""
    from cgagent.isolation.syscalls import CLONE_NEWNS, MS_REC, MS_SLAVE, mount, unshare

    os.makedirs(run, mode=0o700)
    kind = _fstype(os.path.dirname(run))
    if kind == "tmpfs":
        return "state dirs on /run (tmpfs)"
    unshare(CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_SLAVE)   # nothing mounted from here on reaches the host
    mount("tmpfs", run, "tmpfs", 0, "mode=0700")
    return f"state dirs on a tmpfs of the bench's own (this host's /run is {kind}; a usual host's is tmpfs)"


def _compile(tree: str, prefix: str) -> None:
    env = dict(os.environ, PYTHONPYCACHEPREFIX=prefix)
    dirs = [d for d in ("cgagent", "exporters", "policies") if os.path.isdir(f"{tree}/{d}")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *dirs], cwd=tree, env=env, check=True)


def _timer(argv: list[str], env: dict[str, str]) -> Callable[[], float]:
    return lambda: time_cmd(argv, env=env)


def _cases(tmp: str, sub: str, env: dict[str, str]) -> dict[str, Callable[[], float]]:
    cli = CGAGENT
    iso = ["--rootfs", f"{tmp}/rootfs"]
    argv = {"run": true_run(cli),
            "run --net none": true_run(cli, *iso, "--net", "none"),
            "run --net bridge": true_run(cli, *iso, "--net", "bridge")}
    direct = dict(env, CGAGENT_DIRECT="1")
    cases: dict[str, Callable[[], float]] = {PYTHON: lambda: time_cmd([sys.executable, "-c", "pass"])}
    for kind in KINDS:
        for mode in MODES:
            cases[f"{kind} ({mode})"] = _timer(argv[kind], direct if mode == "direct" else env)
    if DRIVER_SYSTEMD:   # like for like with runc's default (cgroupfs) driver: no transient unit
        cases[CGROUPFS] = _timer(true_run(cli, "--cgroup-driver", "cgroupfs", "--cgroup-parent", f"/{sub}"), env)
    base = os.environ.get("BENCH_BASELINE")
    if base:
        _compile(base, env["PYTHONPYCACHEPREFIX"])
        benv = dict(direct, PYTHONPATH=_path(base))
        cases[f"run (direct, {base})"] = lambda: time_cmd(argv["run"], env=benv, cwd=base)
    if shutil.which("runc"):
        runc_bundle(f"{tmp}/bundle", f"/{sub}")
        n = iter(range(10**6))
        cases[RUNC] = lambda: time_cmd(
            ["runc", "--root", f"{tmp}/runc-state", "run", "--bundle", f"{tmp}/bundle", f"bench-all-{next(n)}"])
        if DRIVER_SYSTEMD:   # as Docker runs it on a systemd host: a transient scope per container too
            runc_bundle(f"{tmp}/bundle-sd", "", cgroups_path=f"system.slice:{sub}:runc")
            cases[RUNC_SYSTEMD] = lambda: time_cmd(
                ["runc", "--systemd-cgroup", "--root", f"{tmp}/runc-state", "run", "--bundle", f"{tmp}/bundle-sd",
                 f"bench-sd-{next(n)}"])
    if shutil.which("bwrap"):
        cases[BWRAP] = lambda: time_cmd(["bwrap", "--unshare-all", "--ro-bind", f"{tmp}/rootfs", "/",
                                         "--proc", "/proc", "--dev", "/dev", "/bin/true"])
    return cases


def _report(res: dict[str, list[float]]) -> None:
    cg = "v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "v1"
    print(f"{ROUNDS} rounds, interleaved, {SETTLE:g} s idle before each case (BENCH_SETTLE); "
          f"kernel {os.uname().release}; cgroup {cg}, "
          f"{'systemd' if DRIVER_SYSTEMD else 'cgroupfs'} driver; load {os.getloadavg()[0]:.1f}")
    for k, v in res.items():
        print(f"  {k:36} {summary(v)}")
    med = {k: statistics.median(v) for k, v in res.items()}
    runc, runc_sd = med.get(RUNC), med.get(RUNC_SYSTEMD)
    print(f"  own cost = cgagent - {PYTHON} ({1e3 * med[PYTHON]:.1f} ms); runc's whole time "
          + (f"{1e3 * runc:.1f} ms" if runc else "(runc not installed)")
          + (f", with its systemd driver {1e3 * runc_sd:.1f} ms" if runc_sd else ""))
    # (row, through the agent): the target is the agent's; a direct run is held to "no slower than before"
    rows = [(f"{kind} ({mode})", mode == "agent") for kind in KINDS for mode in MODES]
    rows += [(CGROUPFS, True)] if CGROUPFS in med else []
    for row, agent in rows:
        own = med[row] - med[PYTHON]
        verdict = ""
        if runc is not None and agent:
            verdict = "  meets own <= runc" if own <= runc else "  misses own <= runc"
            if runc_sd is not None and row != CGROUPFS:   # the same driver: a transient scope each
                verdict += "; like for like (runc --systemd-cgroup): " + ("meets" if own <= runc_sd else "misses")
        print(f"    {row:34} own {1e3 * own:6.1f} ms"
              + (f"  = {own / runc:4.2f}x runc" if runc else "")
              + (f", {own / runc_sd:4.2f}x runc --systemd-cgroup" if runc_sd else "") + verdict)
    for mode in MODES:
        price = med[f"run --net bridge ({mode})"] - med[f"run --net none ({mode})"]
        print(f"  bridge - none ({mode}) {1e3 * price:6.1f} ms  target <= 20 ms: "
              + ("meets" if price <= 0.020 else "misses"))


def main() -> None:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nft"):
        print("launches bench skipped: needs root, ip (iproute2) and nft (nftables)")
        return
    from cgagent.isolation.syscalls import CLONE_NEWNET, CLONE_NEWNS, setns

    ns = f"cgbench-{uuid.uuid4().hex[:8]}"
    sub = f"cgagent-bench-all-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    tmp = tempfile.mkdtemp(prefix="cgagent-bench-all-", dir="/run" if os.path.isdir("/run") else None)
    run = f"{tmp}/run"   # cgagent's state dir and runc's, as /run/cgagent and /run/runc are by default
    env = dict(os.environ, CGAGENT_STATE_DIR=f"{run}/cgagent", CGAGENT_ROOT=f"{tmp}/store",
               PYTHONPATH=_path(ROOT), PYTHONPYCACHEPREFIX=f"{tmp}/pycache", **parent_env(sub))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("CGAGENT_DIRECT", None)
    busybox_rootfs(f"{tmp}/rootfs")
    _compile(ROOT, env["PYTHONPYCACHEPREFIX"])
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    home_mnt = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    agent = None
    try:
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
        setns(fd, CLONE_NEWNET)   # this process only has one thread: all of it is in the namespace now
        os.close(fd)
        on_tmpfs = _state_on_tmpfs(run)
        store_fs = _store_fs(tmp)
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        agent = start_agent([sys.executable, "-m", "cgagent"], env)
        cases = _cases(tmp, sub, env)
        res = measure(cases, ROUNDS, sub, f"{run}/runc")   # warm (bridge, nft table), interleave
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=60)
        setns(home, CLONE_NEWNET)
        os.close(home)
        setns(home_mnt, CLONE_NEWNS)   # the private mount namespace (if any) dies with its last process
        os.close(home_mnt)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"in network namespace {ns} (deleted)")
    print(on_tmpfs)
    print(store_fs)
    _report(res)


if __name__ == "__main__":
    main()
