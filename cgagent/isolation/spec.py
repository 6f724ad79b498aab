"""User options of an isolated run -> the plain dict stored in the workload record (Record.isolation).

The record names everything the run will make on disk (container_dir) before anything is made, so
`cgagent rm -f` can clean up after a crash at any point. Mounts live in the workload's own mount
namespace: the kernel removes them when its last process exits.
"""

from __future__ import annotations

import os
from typing import Any

from cgagent.errors import CgagentError

# Docker's default capability set
DEFAULT_CAPS = ("CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID", "SETFCAP",
                "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE")
CAP_NUMBERS = {n: i for i, n in enumerate((
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE"))}
NETS = ("none", "host")
USERNS_BASE, USERNS_SIZE = 100000, 65536   # --userns: root inside is uid/gid 100000 on the host
DEFAULT_ENV_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# options that only make sense with an image or --rootfs
ISOLATION_KEYS = ("rootfs", "read_only", "volumes", "hostname", "net", "publish", "init", "userns", "env", "user",
                  "workdir", "cap_add", "cap_drop", "security_opt", "devices")
VOLUME_OPTS = ("ro", "rw", "dev", "nodev")


def caps(add: list[str], drop: list[str]) -> list[str]:
    def norm(c: str) -> str:
        c = c.upper().removeprefix("CAP_")
        if c != "ALL" and c not in CAP_NUMBERS:
            raise CgagentError(f"unknown capability {c!r}", "use names like NET_ADMIN or CAP_SYS_TIME, or ALL")
        return c

    add_n, drop_n = {norm(c) for c in add}, {norm(c) for c in drop}
    have = set() if "ALL" in drop_n else set(DEFAULT_CAPS)
    if "ALL" in add_n:
        have = set(CAP_NUMBERS)
    have = (have | (add_n - {"ALL"})) - (drop_n - {"ALL"})
    return sorted(have, key=CAP_NUMBERS.__getitem__)


def volumes(specs: list[str]) -> list[list[Any]]:
    """-> [host, container, read-only, dev]. Volumes are nodev unless `dev` is asked: a device node
    in a host directory must not become a way around the device cgroup's list (--device is)."""
    out: list[list[Any]] = []
    for v in specs:
        parts = v.split(":")
        opts = parts[2].split(",") if len(parts) == 3 else []
        if len(parts) not in (2, 3) or any(o not in VOLUME_OPTS for o in opts):
            raise CgagentError(f"-v {v!r} is not HOST:CONTAINER[:OPTIONS]",
                               "e.g. -v /srv/data:/data:ro (options: ro, rw, dev, nodev, comma-separated)")
        host, ctr = parts[0], parts[1]
        if not os.path.isabs(host) or not os.path.isabs(ctr):
            raise CgagentError(f"-v {v!r}: both paths must be absolute", "e.g. -v /srv/data:/data")
        if not os.path.exists(host):
            raise CgagentError(f"-v {v!r}: {host} does not exist", "create it first")
        if os.path.normpath(ctr) == "/":
            raise CgagentError(f"-v {v!r}: cannot mount over the root", "choose a directory inside")
        ro = dev = False
        for o in opts:   # the last of ro/rw and of dev/nodev counts
            if o in ("ro", "rw"):
                ro = o == "ro"
            else:
                dev = o == "dev"
        out.append([os.path.realpath(host), os.path.normpath(ctr), ro, dev])
    return out


def devices(specs: list[str], userns: dict[str, int] | None) -> list[dict[str, Any]]:
    """--device HOST[:CTR][:PERMS] -> the nodes PID 1 makes in the workload's /dev (owned, with
    --userns, by the same ids as seen from inside)."""
    from cgagent.devrules import device

    out = [device(d) for d in specs]
    if userns:
        for d in out:
            for key in ("uid", "gid"):
                if d[key] < userns["size"]:
                    d[key] += userns["base"]
    return out


def seccomp_enabled(opts: list[str]) -> bool:
    on = True
    for o in opts:
        key, _, val = o.partition("=")
        if key == "seccomp" and val == "unconfined":
            on = False
        elif key == "no-new-privileges":
            continue
        else:
            raise CgagentError(f"--security-opt {o!r} is not supported", "use seccomp=unconfined")
    return on


def wanted(opts: dict[str, Any]) -> bool:
    return any(opts.get(k) for k in ISOLATION_KEYS)


def build(image: str | None, cmd: list[str], opts: dict[str, Any], name_hint: str) -> tuple[list[str], dict[str, Any]]:
    """-> (the command to exec inside, the record's isolation dict)."""
    from cgagent.images.store import ImageStore

    rootfs = opts.get("rootfs")
    if image and rootfs:
        raise CgagentError("both an IMAGE and --rootfs were given", "use one of them")
    # Docker's default: isolated workloads get a bridged network. CGAGENT_DEFAULT_NET changes the
    # default for a host (the test suite sets none, so only tests inside their own netns bridge).
    net = opts.get("net") or os.environ.get("CGAGENT_DEFAULT_NET") or "bridge"
    net_fields: dict[str, Any] = {}
    if net not in NETS or opts.get("publish"):   # bridge, a network's name, container:NAME, -p: issue 5
        from cgagent.network.workload import check

        net_fields = check(net, list(opts.get("publish") or []), opts.get("root"))
    store = ImageStore(opts.get("root"))
    config: dict[str, Any] = {}
    spec: dict[str, Any] = {"store": store.root}
    if image:
        img = store.get(image)
        missing = [d for d in img.layers if not store.has_layer(d)]
        if missing:
            raise CgagentError(f"image {image!r} is missing layer {missing[0]}", "re-import it")
        config = img.config
        spec.update(image=img.id, image_ref=image, layers_dir=store.layers,
                    lowers=[store.short_link(d) for d in reversed(img.layers)])  # topmost first
    elif rootfs:
        if not os.path.isdir(rootfs):
            raise CgagentError(f"--rootfs {rootfs} is not a directory", "give the root filesystem's directory")
        spec["rootfs"] = os.path.realpath(rootfs)
    else:
        raise CgagentError("isolation options need an IMAGE or --rootfs", "e.g. cgagent run --hostname x IMG -- sh")
    entry = list(config.get("Entrypoint") or [])
    argv = entry + (cmd if cmd else list(config.get("Cmd") or []))
    if not argv:
        raise CgagentError("no command given and the image has none", "put the command after --")
    env = list(config.get("Env") or [DEFAULT_ENV_PATH])
    hostname = opts.get("hostname") or name_hint[:63]
    env.append(f"HOSTNAME={hostname}")
    for e in opts.get("env") or []:
        if "=" not in e:
            val = os.environ.get(e)
            if val is None:
                continue
            e = f"{e}={val}"
        env.append(e)
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, DEFAULT_ENV_PATH)
    userns_map = {"base": USERNS_BASE, "size": USERNS_SIZE} if opts.get("userns") else None
    spec.update(
        container_dir=os.path.join(store.containers, f"{name_hint}-{os.urandom(4).hex()}"),
        read_only=bool(opts.get("read_only")), volumes=volumes(list(opts.get("volumes") or [])),
        hostname=hostname, net=net, init=bool(opts.get("init")), env=env,
        userns=userns_map, devices=devices(list(opts.get("devices") or []), userns_map),
        user=str(opts.get("user") or config.get("User") or ""), workdir=str(opts.get("workdir") or
                                                                            config.get("WorkingDir") or "/"),
        caps=caps(list(opts.get("cap_add") or []), list(opts.get("cap_drop") or [])),
        seccomp=seccomp_enabled(list(opts.get("security_opt") or [])))
    spec.update(net_fields)
    return argv, spec


def for_run(image: str | None, cmd: list[str], opts: dict[str, Any],
            name: str | None) -> tuple[list[str], str | None, dict[str, Any] | None]:
    """The CLI's entry: -> (command, workload name, Record.isolation or None for a plain host run)."""
    if image is None and not opts.get("rootfs") and cmd and "/" not in cmd[0]:
        from cgagent.launch import which

        if which(cmd[0]) is None:  # `run IMG [CMD...]` without --: an image when no host command has the name
            from cgagent.images.store import ImageStore

            if ImageStore(opts.get("root")).find(cmd[0]) is not None:
                image, cmd = cmd[0], cmd[1:]
    if image is None and not wanted(opts):
        if opts.get("root"):
            raise CgagentError("--root is only used with an IMAGE", "put the image before --: run IMG -- CMD")
        return cmd, name, None
    from cgagent.state import validate_name

    name = validate_name(name) if name else f"w-{os.urandom(4).hex()}"
    argv, spec = build(image, cmd, opts, name)
    return argv, name, spec


def env_dict(spec: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for e in spec.get("env") or []:
        k, _, v = str(e).partition("=")
        out[k] = v
    return out
