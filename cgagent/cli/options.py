"""The limit options of `run`/`update`, shared by the typer commands and the fast `run` path."""

from __future__ import annotations

# option -> field of cgagent.limits.FIELD_PARSERS
LIMITS = {
    "--cpus": "cpus",
    "--cpu-shares": "cpu_shares",
    "-c": "cpu_shares",
    "--cpu-weight": "cpu_weight",
    "--cpu-period": "cpu_period",
    "--memory": "memory",
    "-m": "memory",
    "--memory-swap": "memory_swap",
    "--pids-limit": "pids_limit",
    "--cpuset-cpus": "cpuset_cpus",
    "--cpuset-mems": "cpuset_mems",
}
# other options of `run` that take a value -> RunRequest field / setting
VALUES = {"--name": "name", "--cgroup-parent": "parent", "--cgroup-driver": "driver", "--state-dir": "state_dir",
          "--policy": "policy", "--restart": "restart", "--preserve-fds": "preserve_fds"}
# repeatable options of `run` -> list setting
LISTS = {"--policy-dir": "policy_dirs", "--device-cgroup-rule": "device_rules"}
FLAGS = {"--detach": "detach", "-d": "detach", "--rm": "auto_remove"}
# isolation options (an IMAGE or --rootfs run) -> key of cgagent.isolation.spec.build's opts
ISO_VALUES = {"--rootfs": "rootfs", "--hostname": "hostname", "--net": "net", "--network": "net", "--user": "user",
              "-u": "user", "--workdir": "workdir", "-w": "workdir", "--root": "root"}
ISO_MULTI = {"-p": "publish", "--publish": "publish",
             "-v": "volumes", "--volume": "volumes", "-e": "env", "--env": "env", "--cap-add": "cap_add",
             "--cap-drop": "cap_drop", "--security-opt": "security_opt", "--device": "devices"}
ISO_FLAGS = {"--read-only": "read_only", "--init": "init", "--userns": "userns"}


def split_image(cmd: list[str]) -> tuple[str | None, list[str]]:
    """`IMAGE -- CMD...` -> (IMAGE, CMD); anything else is a host command (no image)."""
    if len(cmd) >= 2 and cmd[1] == "--":
        return cmd[0], cmd[2:]
    return None, cmd

PRESERVE_FDS_HELP = "Pass fds 3..3+N-1 of the caller to the workload (all others are closed at exec)."

HELP = {
    "cpus": "CPUs the workload may use, e.g. 0.5 (CFS quota over the period).",
    "cpu_shares": "Relative CPU weight, v1 scale (default 1024); converted to cpu.weight on v2.",
    "cpu_weight": "Relative CPU weight, v2 scale 1..10000 (default 100).",
    "cpu_period": "CFS period in µs (default 100000).",
    "memory": "Memory limit, e.g. 256M or 1.5G (minimum 6M).",
    "memory_swap": "Memory plus swap limit, as Docker: must be >= --memory; -1 = unlimited swap.",
    "pids_limit": "Most processes/threads at once (-1 = unlimited).",
    "cpuset_cpus": "CPUs allowed, e.g. 0-1 or 0,2.",
    "cpuset_mems": "Memory nodes allowed, e.g. 0.",
    "device": "Give the workload a host device: HOST[:CTR][:rwm], e.g. /dev/loop3 (node made in its /dev, "
              "allowed in its device cgroup; repeatable).",
    "device_cgroup_rule": "Allow a device class in the device cgroup, as Docker: 'c 1:3 rwm', 'b 7:* r'. "
                          "Isolated runs always have Docker's default list; a host run gets device control "
                          "(deny all but that list and these rules) only with this option. Repeatable.",
}
