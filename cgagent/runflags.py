"""Every option of `cgagent run`, defined once, and the one function that turns their raw values
into a validated RunRequest.

Both CLI front doors are generated from OPTIONS: the typer command (cgagent.cli.app, for --help and
unusual forms) and the fast parser (cgagent.cli.fastrun, no typer/pydantic on the path). Anything
else that launches a workload (the agent's API) builds its request with `build()` from a mapping of
option name -> raw value, so a value means the same thing, with the same default, env var, message
and exit code, wherever it comes from. Kept free of typer, pydantic and the CLI: libraries use it.
"""

from __future__ import annotations

import os

from cgagent.errors import CgagentError

TYPE_CHECKING = False   # not typing's own: the thin client's path does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import Any, Literal

    from cgagent.host import Host
    from cgagent.runtime import RunRequest

    # flag: present or not (bool); value: one string (the last one given wins); list: repeatable
    Kind = Literal["flag", "value", "list"]
    # where the value goes: a limit (cgagent.limits.FIELD_PARSERS key), an isolation option
    # (cgagent.isolation.spec.for_run's opts key), a RunRequest field, or used while building
    # (policy search path, device rules, the state dir the policy's memory is recalled from)
    Lands = Literal["limit", "iso", "request", "build"]


class Option:
    """One option of `cgagent run`. A plain class: neither a dataclass (its generated code) nor a
    NamedTuple (typing) costs the thin client's start-up."""

    __slots__ = ("env", "flags", "help", "key", "kind", "lands", "name", "update")

    def __init__(self, name: str, flags: tuple[str, ...], kind: Kind, lands: Lands, key: str, help: str,
                 env: str | None = None, update: bool = False) -> None:
        self.name = name              # the mapping key and typer parameter name
        self.flags = flags            # "--long" first, then aliases
        self.kind = kind
        self.lands = lands
        self.key = key                # field/key in the place it lands
        self.help = help
        self.env = env                # default when not given (empty = not set), as if the option were given
        self.update = update          # `cgagent update` takes it too (the live-changeable limits)

    def __repr__(self) -> str:
        return f"Option({self.name!r})"

    def help_text(self) -> str:
        """Help with its env var, in typer's rich markup (a literal [ needs a backslash)."""
        return f"{self.help} \\[env var: {self.env}]" if self.env else self.help


def _limit(name: str, flags: tuple[str, ...], help_: str) -> Option:
    return Option(name, flags, "value", "limit", name, help_, update=True)


def _io_device(name: str, what: str, example: str) -> Option:
    zero = "" if name == "blkio_weight_device" else "; VALUE 0 removes that device's limit"
    return Option(name, ("--" + name.replace("_", "-"),), "list", "limit", name,
                  f"{what} for one block device, DEVICE:VALUE, e.g. {example} (a whole disk, not a partition; "
                  f"repeatable{zero}).", update=True)


PRESERVE_FDS_HELP = "Pass fds 3..3+N-1 of the caller to the workload (all others are closed at exec)."
DEVICE_HELP = ("Give the workload a host device: HOST[:CTR][:rwm], e.g. /dev/loop3 (node made in its /dev, "
               "allowed in its device cgroup; repeatable).")
DEVICE_RULE_HELP = ("Allow a device class in the device cgroup, as Docker: 'c 1:3 rwm', 'b 7:* r'. "
                    "Isolated runs always have Docker's default list; a host run gets device control "
                    "(deny all but that list and these rules) only with this option. Repeatable.")
DRIVER_HELP = ("cgroupfs or systemd (default: systemd when it is init). systemd: a transient scope "
               "cgagent-NAME.scope; limits are unit properties, so they survive daemon-reload.")
STATE_DIR_HELP = "Where records live (default /run/cgagent)."

OPTIONS: tuple[Option, ...] = (
    _limit("cpus", ("--cpus",), "CPUs the workload may use, e.g. 0.5 (CFS quota over the period)."),
    _limit("cpu_shares", ("--cpu-shares", "-c"),
           "Relative CPU weight, v1 scale (default 1024); converted to cpu.weight on v2."),
    _limit("cpu_weight", ("--cpu-weight",), "Relative CPU weight, v2 scale 1..10000 (default 100)."),
    _limit("cpu_period", ("--cpu-period",), "CFS period in µs (default 100000)."),
    _limit("memory", ("--memory", "-m"), "Memory limit, e.g. 256M or 1.5G (minimum 6M)."),
    _limit("memory_swap", ("--memory-swap",),
           "Memory plus swap limit, as Docker: must be >= --memory; -1 = unlimited swap."),
    _limit("pids_limit", ("--pids-limit",), "Most processes/threads at once (-1 = unlimited)."),
    _limit("cpuset_cpus", ("--cpuset-cpus",), "CPUs allowed, e.g. 0-1 or 0,2."),
    _limit("cpuset_mems", ("--cpuset-mems",), "Memory nodes allowed, e.g. 0."),
    _limit("blkio_weight", ("--blkio-weight",),
           "Relative disk I/O weight 10..1000 (blkio.weight / blkio.bfq.weight on v1, io.weight on v2)."),
    _io_device("blkio_weight_device", "Relative I/O weight 10..1000", "/dev/sda:200"),
    _io_device("device_read_bps", "Read rate limit in bytes per second (units as --memory)", "/dev/sda:10mb"),
    _io_device("device_write_bps", "Write rate limit in bytes per second", "/dev/sda:10mb"),
    _io_device("device_read_iops", "Read operations per second limit", "/dev/sda:1000"),
    _io_device("device_write_iops", "Write operations per second limit", "/dev/sda:1000"),
    Option("name", ("--name",), "value", "request", "name", "Workload name (default: generated)."),
    Option("detach", ("--detach", "-d"), "flag", "request", "detach", "Run in the background under a supervisor."),
    Option("interactive", ("--interactive", "-i"), "flag", "request", "interactive",
           "Keep stdin open for the workload (with -t: your keys go to its terminal)."),
    Option("tty", ("--tty", "-t"), "flag", "request", "tty",
           "Give it a terminal of its own (a pty; isolated: /dev/pts/0 of its own devpts), e.g. -it for a shell; "
           "-dit keeps it for `cgagent attach`."),
    Option("rm", ("--rm",), "flag", "request", "auto_remove", "Remove the record when the workload exits."),
    Option("cgroup_parent", ("--cgroup-parent",), "value", "request", "parent",
           "Parent cgroup: an absolute path (default /cgagent) or a systemd slice, the same place under either "
           "driver (/a/b = a-b.slice, which lives in a.slice/a-b.slice; /cgagent = cgagent.slice); or "
           "nested[:sub] under cgagent's own cgroup (cgroupfs driver).", env="CGAGENT_CGROUP_PARENT"),
    Option("cgroup_driver", ("--cgroup-driver",), "value", "request", "driver", DRIVER_HELP,
           env="CGAGENT_CGROUP_DRIVER"),
    Option("state_dir", ("--state-dir",), "value", "build", "state_dir", STATE_DIR_HELP, env="CGAGENT_STATE_DIR"),
    Option("rootfs", ("--rootfs",), "value", "iso", "rootfs", "Run in this root directory (isolated)."),
    Option("read_only", ("--read-only",), "flag", "iso", "read_only", "Mount the root filesystem read-only."),
    Option("volume", ("--volume", "-v"), "list", "iso", "volumes",
           "Bind mount HOST:CTR[:OPTS], OPTS ro,dev: read-only; device nodes usable (volumes are nodev by default)."),
    Option("hostname", ("--hostname",), "value", "iso", "hostname", "Hostname inside (default: the name)."),
    # CGAGENT_DEFAULT_NET and CGAGENT_ROOT are not option defaults: set, they would make every host
    # run an isolated one; cgagent.isolation and cgagent.images read them when a run is isolated
    Option("net", ("--net", "--network"), "value", "iso", "net",
           "bridge (default; env CGAGENT_DEFAULT_NET), none (lo only), host, container:NAME, or a network's "
           "name (`cgagent network ls`)."),
    Option("publish", ("--publish", "-p"), "list", "iso", "publish",
           "\\[IP:]HOSTPORT:CTRPORT\\[/tcp|udp] on a bridge network (repeatable); 127.0.0.1: the host only."),
    Option("ip", ("--ip",), "value", "iso", "ip",
           "A static IPv4 address on --net NETWORK (an underlay network without --ip-range needs one)."),
    Option("init", ("--init",), "flag", "iso", "init",
           "Run the command under tini (reaps, forwards signals): PID 1 of an isolated run, a subreaper on the host."),
    Option("userns", ("--userns",), "flag", "iso", "userns",
           "Map root inside to host uid/gid 100000+ (a user namespace; image layers are mounted idmapped)."),
    Option("env", ("--env", "-e"), "list", "iso", "env",
           "Set KEY=VALUE (a bare KEY: the caller's value) in the workload's environment (repeatable)."),
    Option("user", ("--user", "-u"), "value", "iso", "user",
           "USER[:GROUP] or UID[:GID] the command runs as (a host command: a user of the host's /etc/passwd)."),
    Option("workdir", ("--workdir", "-w"), "value", "iso", "workdir", "Working directory of the command."),
    Option("cap_add", ("--cap-add",), "list", "iso", "cap_add", "Add a capability (or ALL)."),
    Option("cap_drop", ("--cap-drop",), "list", "iso", "cap_drop", "Drop a capability (or ALL)."),
    Option("security_opt", ("--security-opt",), "list", "iso", "security_opt",
           "seccomp=unconfined turns the default seccomp filter off."),
    Option("device", ("--device",), "list", "iso", "devices", DEVICE_HELP),
    Option("device_cgroup_rule", ("--device-cgroup-rule",), "list", "build", "device_rules", DEVICE_RULE_HELP),
    Option("root", ("--root",), "value", "iso", "root",
           "Image store root (default $CGAGENT_ROOT or /var/lib/cgagent)."),
    Option("restart", ("--restart",), "value", "request", "restart",
           "no (default), on-failure[:N], always or unless-stopped: the supervisor restarts it, with backoff "
           "(unless-stopped: as always, and a workload `cgagent stop` ended stays stopped)."),
    Option("policy", ("--policy",), "value", "request", "policy",
           "Start from this policy's limits (options given here override them); `cgagent serve` applies its "
           "behaviour."),
    Option("policy_dir", ("--policy-dir",), "list", "build", "policy_dirs",
           "Also look for policies in this directory (repeatable)."),
    Option("preserve_fds", ("--preserve-fds",), "value", "request", "preserve_fds", PRESERVE_FDS_HELP),
    # --- process and lifecycle (cgagent.procopts)
    Option("entrypoint", ("--entrypoint",), "value", "iso", "entrypoint",
           "Override the image's Entrypoint with this program (CMD words are its arguments); \"\" clears it."),
    Option("env_file", ("--env-file",), "list", "build", "env_files",
           "Read KEY=VALUE lines (# comments; a bare KEY: the caller's value) into the environment; -e wins."),
    Option("label", ("--label", "-l"), "list", "request", "labels",
           "Set a label KEY=VALUE on the workload (repeatable): inspect, ps --filter label=, the exporter."),
    Option("label_file", ("--label-file",), "list", "build", "label_files",
           "Read labels from a file of KEY=VALUE lines; --label wins."),
    Option("ulimit", ("--ulimit",), "list", "request", "ulimits",
           "Resource limit NAME=SOFT\\[:HARD] (setrlimit before exec), e.g. nofile=1024:4096; -1 = unlimited."),
    Option("stop_signal", ("--stop-signal",), "value", "request", "stop_signal",
           "Signal `stop` sends first (default SIGTERM, or the image's StopSignal), e.g. SIGINT."),
    Option("stop_timeout", ("--stop-timeout",), "value", "request", "stop_timeout",
           "Seconds `stop` waits after the stop signal before SIGKILL (default 10; stop -t overrides)."),
    # --- flagsiso: isolation options (cgagent.isolation.flags says what each is to the kernel)
    Option("tmpfs", ("--tmpfs",), "list", "iso", "tmpfs",
           "Mount a tmpfs at PATH inside: PATH\\[:OPTS], OPTS size=64m, mode=1777, uid=, gid=, nr_inodes=, ro, "
           "exec, suid, dev (default nosuid,nodev,noexec, mode 1777; repeatable)."),
    Option("mount", ("--mount",), "list", "iso", "mounts",
           "Docker's long form: type=bind,source=HOSTDIR,target=PATH\\[,readonly] or "
           "type=tmpfs,target=PATH\\[,tmpfs-size=64m,tmpfs-mode=1777,readonly] (repeatable; no named volumes)."),
    Option("privileged", ("--privileged",), "flag", "iso", "privileged",
           "Give the workload the host: every capability, no seccomp filter, every device, writable /sys and "
           "/proc. Root inside is root of the machine."),
    Option("pid", ("--pid",), "value", "iso", "pid",
           "Pid namespace: private (default), host (it sees and, as root, can signal the host's processes) "
           "or container:NAME (NAME's processes, NAME's PID 1 as init)."),
    Option("ipc", ("--ipc",), "value", "iso", "ipc",
           "IPC namespace: private (default), host (and the host's /dev/shm) or container:NAME."),
    Option("dns", ("--dns",), "list", "iso", "dns", "A nameserver of its /etc/resolv.conf (repeatable, at most 3)."),
    Option("add_host", ("--add-host",), "list", "iso", "add_host",
           "Add NAME:IP to its /etc/hosts (repeatable)."),
)

BY_NAME = {o.name: o for o in OPTIONS}
BY_FLAG = {f: o for o in OPTIONS for f in o.flags}
# a request from a mapping (the API) is bounded; the length is the kernel's MAX_ARG_STRLEN, so no
# value a command line can carry is refused
MAX_VALUES = 4096
MAX_VALUE_LEN = 128 * 1024


def split_image(words: list[str]) -> tuple[str | None, list[str]]:
    """The words after run's options (with the `--` that ended them, if one did) -> (IMAGE or None,
    the command). The one grammar of every front door, Docker's: the first word is an IMAGE, the rest
    its command (`IMAGE -- CMD...` as well); only `-- CMD...` names a command of the host (or of
    --rootfs). A bare word is never looked up on the host's PATH: it is an image, or an error."""
    if words[:1] == ["--"]:
        return None, words[1:]
    if not words:
        return None, []
    return words[0], words[2:] if words[1:2] == ["--"] else words[1:]


def given(values: Mapping[str, Any]) -> Iterator[tuple[Option, Any]]:
    """(option, value) for each option given: a flag set, a value (even empty), a non-empty list.
    Refuses unknown names and values of the wrong shape (a mapping may come from JSON)."""
    for name, v in values.items():
        opt = BY_NAME.get(name)
        if opt is None:
            raise CgagentError(f"unknown run option {name!r}", "see `cgagent run --help` for the options")
        if v is None or v is False or (isinstance(v, list | tuple) and not v):
            continue
        if opt.kind == "flag":
            ok = v is True
        elif opt.kind == "value":
            ok = isinstance(v, str) and len(v) <= MAX_VALUE_LEN
        else:
            ok = (isinstance(v, list | tuple) and len(v) <= MAX_VALUES
                  and all(isinstance(x, str) and len(x) <= MAX_VALUE_LEN for x in v))
        if not ok:
            shape = {"flag": "true or false", "value": f"a string of at most {MAX_VALUE_LEN} characters",
                     "list": f"a list of at most {MAX_VALUES} such strings"}[opt.kind]
            raise CgagentError(f"{opt.flags[0]} has a value of the wrong type", f"give {shape}")
        yield opt, list(v) if opt.kind == "list" else v


def with_env(values: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The given values plus each env var default of an option not given (an empty variable is unset)."""
    env = os.environ if environ is None else environ
    out = {o.name: v for o, v in given(values)}
    for o in OPTIONS:
        if o.env and o.name not in out and env.get(o.env):
            out[o.name] = env[o.env]
    return out


def limit_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The limit options given -> typed limit values (cgagent.limits.plan's input; no host checks yet)."""
    from cgagent.limits import parse_fields

    return parse_fields({o.key: v for o, v in given(values) if o.lands == "limit"})


def _check_tty(req: Mapping[str, Any], restart: str) -> None:
    if req.get("detach") and req.get("interactive") and not req.get("tty"):
        raise CgagentError("-d -i without -t: `cgagent attach` needs a terminal to attach to",
                           "use -dit (or drop -i)")
    if req.get("tty") and restart != "no":
        raise CgagentError("-t with --restart is not supported: a restarted workload would need a new terminal",
                           "drop --restart, or -t")


def build(values: Mapping[str, Any], cmd: list[str], host: Host, image: str | None = None,
          environ: Mapping[str, str] | None = None) -> RunRequest:
    """Option name -> raw value (as typed on the command line; flags True, repeatable options lists),
    the command, and IMAGE (or None) -> the validated RunRequest. Env var defaults come from `environ`
    (default os.environ). Raises CgagentError, one line naming the option, on bad input."""
    from cgagent.launch import preserve_fds
    from cgagent.limits import plan

    if not isinstance(cmd, list | tuple) or not all(isinstance(a, str) for a in cmd):
        raise CgagentError("the command is not a list of strings", "give the command and its arguments as strings")
    if image is not None and not isinstance(image, str):
        raise CgagentError("the image is not a string", "give an image name such as busybox:latest")
    v = with_env(values, environ)
    placed: dict[str, dict[str, Any]] = {"limit": {}, "iso": {}, "request": {}, "build": {}}
    for o, val in given(v):
        placed[o.lands][o.key] = val
    req, extra = placed["request"], placed["build"]
    limits = limit_values(v)
    restart = req.get("restart")
    if req.get("policy") is not None:
        from policies.runopts import resolve  # pydantic: only when a policy is asked for

        limits, policy_restart = resolve(req["policy"], extra.get("policy_dirs"), limits, extra.get("state_dir"),
                                         req.get("name"))
        if not restart and not req.get("auto_remove"):
            restart = policy_restart   # the policy's, unless --restart (or --rm, which excludes it) is given
    resources = plan(limits, host)
    from cgagent import procopts

    iso = placed["iso"]
    files = [e for f in extra.get("env_files") or [] for e in procopts.read_kv_file(f, "--env-file")]
    if files:
        iso["env"] = files + list(iso.get("env") or [])   # Docker's order: -e overrides the files
    labels = procopts.parse_labels([kv for f in extra.get("label_files") or []
                                    for kv in procopts.read_kv_file(f, "--label-file")]
                                   + list(req.get("labels") or []))
    ulimits = procopts.parse_ulimits(list(req.get("ulimits") or []))
    stop_timeout = None if req.get("stop_timeout") is None else procopts.parse_stop_timeout(req["stop_timeout"])
    from cgagent.isolation import ISOLATION_KEYS

    if image is None and not iso.get("root") and not any(iso.get(k) for k in ISOLATION_KEYS):
        cmd, name, isolation = list(cmd), req.get("name"), None   # a host run: no spec to import
    else:
        from cgagent.isolation.spec import for_run

        cmd, name, isolation = for_run(image, list(cmd), iso, req.get("name"))
    stop_signal = req.get("stop_signal")
    if stop_signal is None and isolation is not None and isolation.image is not None:
        stop_signal = _image_stop_signal(isolation.store, isolation.image, image)
    host_process = procopts.host_process(iso) if isolation is None else None
    from cgagent.devrules import with_rules
    from cgagent.runtime import RunRequest, parse_restart
    from cgagent.state import validate_name

    parse_restart(restart or "no")   # refused here, before anything is made, as a bad limit is
    _check_tty(req, restart or "no")
    if name:
        validate_name(name)
    return RunRequest(cmd=cmd, resources=with_rules(resources, isolation, extra.get("device_rules")), name=name,
                      isolation=isolation, policy=req.get("policy"), parent=req.get("parent") or "/cgagent",
                      driver=req.get("driver") or None, detach=bool(req.get("detach")),
                      auto_remove=bool(req.get("auto_remove")), restart=restart or "no",
                      preserve_fds=preserve_fds(req.get("preserve_fds")), labels=labels,
                      ulimits=ulimits, stop_signal=procopts.parse_signal(stop_signal) if stop_signal else "",
                      stop_timeout=stop_timeout, host_process=host_process, tty=bool(req.get("tty")),
                      interactive=bool(req.get("interactive")))


def _image_stop_signal(root: str, image_id: str, ref: str | None) -> str | None:
    """The image's StopSignal, when its config has one (Docker honours it unless --stop-signal)."""
    from cgagent import procopts
    from cgagent.images.store import ImageStore

    img = ImageStore(root).find(image_id)
    sig = img.config.get("StopSignal") if img is not None else None
    if sig is None or sig == "":
        return None
    try:
        return procopts.parse_signal(str(sig))
    except CgagentError:
        raise CgagentError(f"image {ref!r} has the StopSignal {str(sig)[:40]!r}, which is not a signal",
                           "give one with --stop-signal, e.g. --stop-signal SIGTERM") from None
