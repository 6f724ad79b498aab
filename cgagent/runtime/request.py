"""What a run asks for, checked before anything is made: the request, its --restart policy, the
cgroup driver, and the root check every operation that writes cgroups makes first."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cgagent.errors import CgagentError
from cgagent.host import Host
from cgagent.limits import Resources

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:   # a plain host run never loads the isolation package
    from cgagent.isolation.spec import IsolationSpec
    from cgagent.procopts import HostProcess

DRIVERS = ("cgroupfs", "systemd")


@dataclass
class RunRequest:
    """One run, validated: the command, its limits, its isolation and how to run it."""

    cmd: list[str]
    resources: Resources
    name: str | None = None
    parent: str = "/cgagent"
    driver: str | None = None
    detach: bool = False
    auto_remove: bool = False
    policy: str | None = None
    isolation: IsolationSpec | None = None    # image/--rootfs runs: cgagent.isolation.spec.build
    restart: str = "no"                        # no | on-failure[:N] | always
    preserve_fds: int = 0                      # fds 3 .. 3+N-1 the workload inherits (--preserve-fds)
    tty: bool = False                          # -t: a pty of its own (cgagent.terminal)
    interactive: bool = False                  # -i: the caller's stdin goes to it
    labels: dict[str, str] = field(default_factory=dict)           # --label, --label-file
    ulimits: tuple[tuple[str, int, int], ...] = ()                 # --ulimit: (name, soft, hard)
    stop_signal: str = ""                      # --stop-signal (or the image's); empty: SIGTERM
    stop_timeout: float | None = None          # --stop-timeout; None: stop's default
    host_process: HostProcess | None = None    # a host command's -e, -w, -u, --init


def parse_restart(text: str) -> tuple[str, int | None]:
    """Docker's --restart: no | on-failure[:N] | always | unless-stopped -> (mode, most restarts or None)."""
    mode, _, num = text.partition(":")
    if mode in ("no", "always", "unless-stopped") and not num:
        return mode, None
    if mode == "on-failure" and (not num or (num.isascii() and num.isdigit() and len(num) <= 9 and int(num) > 0)):
        return mode, int(num) if num else None
    raise CgagentError(f"--restart {text!r} is not a restart policy",
                       "use no, on-failure, on-failure:N, always or unless-stopped")


def require_root(action: str) -> None:
    if os.geteuid() != 0:
        raise CgagentError(f"{action} needs root (it writes to /sys/fs/cgroup)", "run it with sudo or as root")


def select_driver(host: Host, requested: str | None) -> str:
    if requested is not None and requested not in DRIVERS:
        raise CgagentError(f"unknown cgroup driver {requested!r}", "use --cgroup-driver cgroupfs or systemd")
    driver = requested or ("systemd" if host.init_is_systemd else "cgroupfs")
    if driver == "cgroupfs" and host.init_is_systemd and requested == "cgroupfs":
        import sys

        print("cgagent: warning: systemd is init here; two cgroup managers on one tree can fight "
              "(systemd may revert limits on daemon-reload)", file=sys.stderr)
    return driver
