"""A real systemd (the host's /lib/systemd/systemd) as PID 1 of new pid/mnt/uts/ipc/net/cgroup
namespaces: a systemd host for the systemd driver's tests on a machine whose init is not systemd.

Inside: the host root read-only, private /dev /run /tmp, /etc/systemd/system hidden behind a tmpfs
(no host units start), cgroupfs mounted from inside the cgroup namespace (every hierarchy is rooted
at this instance's own cgroup, nested under the caller's), systemd logging to a fifo we drain into
`log`. systemd tells us it is up with READY=1 on $NOTIFY_SOCKET (it does so in containers), and
leaves with Manager.Exit() (`systemctl exit`).

The CLI under test runs inside systemd's pid+mount+cgroup namespaces (nsenter), so its workloads are
visible to systemd and it reaches /run/systemd/private directly, as on a real systemd host.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

SYSTEMD = "/lib/systemd/systemd"
PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIERARCHIES = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd", "unified")

# PID 1 of the new namespaces until it execs systemd. $1 = instance name, $2 = the kmsg fifo.
INNER = r"""
set -eu
NAME=$1 FIFO=$2
mount -o remount,bind,ro /
mount -t tmpfs -o mode=755,nosuid,size=1m sdns-dev /dev
for n in "null 1 3" "zero 1 5" "full 1 7" "random 1 8" "urandom 1 9" "tty 5 0"; do
  set -- $n; mknod -m 666 /dev/$1 c $2 $3; done
mkdir /dev/pts /dev/shm; ln -s pts/ptmx /dev/ptmx; ln -s /proc/self/fd /dev/fd
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts /dev/pts
for i in 0:stdin 1:stdout 2:stderr; do ln -s /proc/self/fd/${i%%:*} /dev/${i#*:}; done
: >/dev/kmsg; mount --bind "$FIFO" /dev/kmsg
# The project (its .venv runs the CLI inside) may live below /tmp or /run, which get private
# tmpfs mounts next: park a bind mount of it on /dev and move it back over the tmpfs.
case "${KEEP:-}" in /tmp/*|/run/*) mkdir /dev/sdns-keep; mount --bind "$KEEP" /dev/sdns-keep ;; *) KEEP= ;; esac
mount -t tmpfs -o mode=755,nosuid,nodev sdns-run /run
mount -t tmpfs -o mode=1777,nosuid,nodev sdns-tmp /tmp
[ -z "$KEEP" ] || { mkdir -p "$KEEP"; mount --move /dev/sdns-keep "$KEEP"; rmdir /dev/sdns-keep
                    mount -o remount,bind,ro "$KEEP"; }
mount -t tmpfs -o mode=755 sdns-units /etc/systemd/system
printf '[Unit]\nDescription=cgagent test systemd\nDefaultDependencies=no\nAllowIsolate=yes\n%s\n' \
  "${DBUS:+Wants=dbus.service}" >/etc/systemd/system/cgagent-test.target
# DBUS=1: a system bus too. Own dbus units *without* default dependencies (Debian's pull in
# sysinit.target: journald, tmpfiles, ...); systemd joins the bus once dbus-daemon is up.
[ -z "${DBUS:-}" ] || { printf '%s\n' '[Unit]' DefaultDependencies=no '[Socket]' \
    ListenStream=/run/dbus/system_bus_socket >/etc/systemd/system/dbus.socket
  daemon='/usr/bin/dbus-daemon --system --address=systemd: --nofork --nopidfile'
  printf '%s\n' '[Unit]' DefaultDependencies=no Requires=dbus.socket After=dbus.socket '[Service]' \
    Type=notify StandardOutput=file:/dev/kmsg StandardError=inherit \
    "ExecStart=$daemon --systemd-activation --syslog-only" >/etc/systemd/system/dbus.service; }
mount --bind /proc/sys /proc/sys; mount -o remount,bind,ro /proc/sys
[ ! -e /proc/sysrq-trigger ] || { mount --bind /proc/sysrq-trigger /proc/sysrq-trigger
                                  mount -o remount,bind,ro /proc/sysrq-trigger; }
mount -o remount,bind,ro /sys
mount -t tmpfs -o mode=755,nosuid,nodev,noexec sdns-cgroup /sys/fs/cgroup
for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
  mkdir /sys/fs/cgroup/$c; mount -t cgroup -o nosuid,nodev,noexec,$c cgroup /sys/fs/cgroup/$c; done
mkdir /sys/fs/cgroup/systemd
mount -t cgroup -o nosuid,nodev,noexec,none,name=systemd cgroup /sys/fs/cgroup/systemd
mkdir /sys/fs/cgroup/unified; mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup/unified
mkdir /run/sdns-empty
exec env -i container=$NAME PATH=/usr/sbin:/usr/bin:/sbin:/bin NOTIFY_SOCKET=$NOTIFY \
  SYSTEMD_GENERATOR_PATH=/run/sdns-empty SYSTEMD_ENVIRONMENT_GENERATOR_PATH=/run/sdns-empty \
  /lib/systemd/systemd --system --unit=cgagent-test.target --log-target=kmsg --log-level=info --show-status=no
"""


def _own_cgroups() -> dict[str, str]:
    """hierarchy -> this process's cgroup in it (the new instance nests below)."""
    out: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _id, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in ctrls.split(",") if ctrls else ["unified"]:
                out[c.removeprefix("name=")] = path
    return out


def _mounts(*needles: str) -> list[str]:
    """Host mounts that mention one of `needles` (other programs may mount things meanwhile)."""
    with open("/proc/self/mountinfo") as f:
        return sorted(line.strip() for line in f if any(n in line for n in needles))


class SystemdNamespace:
    """start() it, use it, stop() it (stop() returns the leaks it found; [] = clean)."""

    def __init__(self, workdir: str, dbus: bool = False) -> None:
        """dbus: also run dbus-daemon, so the system bus (/run/dbus/system_bus_socket) is there."""
        self.dbus = dbus
        self.name = f"cgagent-sdns-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.workdir = os.path.join(workdir, self.name)
        self.log = os.path.join(self.workdir, "log")
        own = _own_cgroups()
        self.cgroups = {h: os.path.normpath(f"/sys/fs/cgroup/{h}/{own.get(h, '/')}/{self.name}")
                        for h in HIERARCHIES if os.path.isdir(f"/sys/fs/cgroup/{h}")}
        self.pid1 = 0                      # systemd, as the host sees it
        self.startup_s = 0.0
        self._unshare: subprocess.Popen[bytes] | None = None
        self._logger: subprocess.Popen[bytes] | None = None
        self._mounts_before: list[str] = []

    # --- lifecycle

    def start(self, timeout: float = 60.0) -> None:
        if os.geteuid() != 0 or not os.access(SYSTEMD, os.X_OK) or not shutil.which("nsenter"):
            raise RuntimeError(f"needs root, {SYSTEMD} and nsenter")
        t0 = time.monotonic()
        self._mounts_before = _mounts(*self._needles())
        os.makedirs(self.workdir)
        fifo = os.path.join(self.workdir, "kmsg.fifo")
        os.mkfifo(fifo)
        with open(self.log, "wb") as log:
            # O_RDWR on our side: the reader never sees EOF when systemd reopens /dev/kmsg
            self._logger = subprocess.Popen(["sh", "-c", 'exec cat <>"$0"', fifo], stdout=log,
                                            stderr=subprocess.DEVNULL)
        for h, d in self.cgroups.items():
            os.makedirs(d)
            if h == "cpuset":   # v1 cpuset starts empty: copy the parent's
                for f in ("cpuset.cpus", "cpuset.mems"):
                    with open(f"{os.path.dirname(d)}/{f}") as src, open(f"{d}/{f}", "w") as dst:
                        dst.write(src.read())
        notify_path = os.path.join(self.workdir, "notify")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        try:
            join = "".join(f'echo $$ >"{d}/cgroup.procs"; ' for d in self.cgroups.values())
            with open(self.log, "ab") as log:
                self._unshare = subprocess.Popen(
                    ["bash", "-c", join + 'exec unshare --pid --fork --kill-child --mount --propagation private '
                     '--uts --ipc --net --cgroup --mount-proc bash -c "$0" inner "$@"', INNER, self.name, fifo],
                    env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NOTIFY": notify_path, "KEEP": PROJECT,
                         **({"DBUS": "1"} if self.dbus else {})},
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
            notify.settimeout(timeout)
            while True:   # READY=1 arrives once systemd has reached its target
                try:
                    msg = notify.recv(4096)
                except TimeoutError:
                    raise RuntimeError(f"systemd did not report READY=1 in {timeout:g}s; see {self.log}") from None
                if b"READY=1" in msg.split(b"\n"):
                    break
        finally:
            notify.close()
            os.unlink(notify_path)
        with open(f"/proc/{self._unshare.pid}/task/{self._unshare.pid}/children") as kids:
            self.pid1 = int(kids.read().split()[0])
        if self.dbus:
            self._wait_on_bus(time.monotonic() + timeout)
        self.startup_s = time.monotonic() - t0

    def _wait_on_bus(self, deadline: float) -> None:
        # systemd takes its bus name a moment after dbus-daemon is up; we only see that by asking
        while True:
            r = self.run(["busctl", "--system", "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                          "org.freedesktop.DBus", "NameHasOwner", "s", "org.freedesktop.systemd1"])
            if r.stdout.strip() == "b true":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"systemd did not join the system bus: {r.stderr.strip()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 30.0) -> list[str]:
        """Graceful Exit(); SIGKILL of the whole pid namespace only when that fails. -> leaks."""
        leaks: list[str] = []
        graceful = False
        if self._unshare is not None and self._unshare.poll() is None:
            self.systemctl("exit", check=False)
            try:
                self._unshare.wait(timeout)
                graceful = True
            except subprocess.TimeoutExpired:
                leaks.append("systemd did not exit on Manager.Exit(); killed")
                os.killpg(self._unshare.pid, signal.SIGKILL)   # --kill-child: the pid ns dies with it
                self._unshare.wait()
        for d in self.cgroups.values():
            left = _procs_below(d)
            if left:
                leaks.append(f"processes left in {d}: {left}")
                for p in left:
                    with contextlib.suppress(OSError):
                        os.kill(p, signal.SIGKILL)
        for d in self.cgroups.values():
            _rmdir_tree(d, deadline=time.monotonic() + 5)
            if os.path.isdir(d):
                leaks.append(f"cgroup left: {d}")
        if self._logger is not None:
            self._logger.terminate()
            self._logger.wait()
        if _mounts(*self._needles()) != self._mounts_before:
            leaks.append(f"host mounts changed: {_mounts(*self._needles())}")
        if graceful and "Exiting container." not in self.read_log():
            leaks.append("systemd did not log 'Exiting container.'")
        if not leaks:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return leaks

    def _needles(self) -> tuple[str, ...]:
        # everything the instance mounts is named sdns-* or lives under its workdir or cgroups
        return ("sdns-", self.name, self.workdir)

    def read_log(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()

    # --- running things inside

    def _enter(self) -> list[str]:
        return ["nsenter", "-t", str(self.pid1), "-p", "-m", "-C", "--"]

    def _join(self) -> None:
        # before nsenter: be in the instance's root cgroups, so that children are inside its cgroup ns
        for d in self.cgroups.values():
            with open(f"{d}/cgroup.procs", "w") as f:
                f.write(str(os.getpid()))

    def popen(self, argv: list[str], env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(self._enter() + argv, env=env, preexec_fn=self._join, text=True, **kw)

    def run(self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 60,
            check: bool = False, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._enter() + argv, env=env, preexec_fn=self._join, capture_output=True,
                              text=True, timeout=timeout, check=check, **kw)

    def systemctl(self, *args: str, check: bool = True) -> str:
        r = self.run(["systemctl", "--no-pager", *args])
        if check and r.returncode != 0:
            raise RuntimeError(f"systemctl {' '.join(args)}: rc {r.returncode}: {r.stderr.strip()}")
        return r.stdout

    def unit_property(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "-P", prop, unit).strip()

    def path(self, inner: str) -> str:
        """A path inside the instance's mount namespace, as the host sees it."""
        return f"/proc/{self.pid1}/root{inner}"

    def http_get(self, url: str) -> str | None:
        """GET `url` from inside the instance's network namespace (None: nothing answers yet)."""
        code = (f"import urllib.request\ntry:\n print(urllib.request.urlopen({url!r}, timeout=5).read().decode(),"
                " end='')\nexcept OSError:\n raise SystemExit(3)")
        r = subprocess.run(["nsenter", "-t", str(self.pid1), "-n", "--", sys.executable, "-c", code],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode in (0, 3), r.stderr
        return r.stdout if r.returncode == 0 else None

    def read(self, inner: str) -> str:
        with open(self.path(inner)) as f:
            return f.read().strip()


class CLI:
    """`python -m cgagent` inside the instance, with its own state dir on the instance's /run."""

    def __init__(self, ns: SystemdNamespace, **env: str) -> None:
        self.ns = ns
        # /run, not /tmp: a unit with default dependencies pulls in sysinit.target, whose
        # systemd-tmpfiles-setup empties /tmp
        self.state_dir = f"/run/cgagent-state-{uuid.uuid4().hex[:8]}"
        self.env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CGAGENT_STATE_DIR": self.state_dir,
                    "PYTHONDONTWRITEBYTECODE": "1", **env}

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cgagent", *args]

    def __call__(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        return self.ns.run(self.argv(*args), env={**self.env, **env}, timeout=timeout)

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen[str]:
        return self.ns.popen(self.argv(*args), env=self.env, **kw)

    def record(self, name: str) -> dict[str, Any]:
        import json

        return dict(json.loads(self.ns.read(f"{self.state_dir}/workloads/{name}.json")))

    def has_record(self, name: str) -> bool:
        return os.path.exists(self.ns.path(f"{self.state_dir}/workloads/{name}.json"))


def _procs_below(top: str) -> list[int]:
    out: list[int] = []
    for d, _dirs, _files in os.walk(top):
        with contextlib.suppress(OSError), open(os.path.join(d, "cgroup.procs")) as f:
            out += [int(p) for p in f.read().split()]
    return out


def _rmdir_tree(top: str, deadline: float) -> None:
    # a cgroup whose last task just died can be busy for a moment (EBUSY): retry until the deadline
    while os.path.isdir(top):
        for d, _dirs, _files in os.walk(top, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(d)
        if not os.path.isdir(top) or time.monotonic() > deadline:
            return
        time.sleep(0.01)


@contextlib.contextmanager
def running(top: str, dbus: bool = False) -> Iterator[SystemdNamespace]:
    """A started instance under `top` (not /tmp: the instance mounts its own /tmp over it); stopped,
    `top` removed and checked for leaks on the way out, even when the body failed."""
    ns = SystemdNamespace(top, dbus=dbus)
    try:
        ns.start()
        yield ns
    finally:
        leaks = ns.stop()
        with contextlib.suppress(OSError):
            os.rmdir(top)
        assert not leaks, leaks
