"""User options of an isolated run -> the IsolationSpec, stored in the workload record as a plain dict
(Record.isolation, by to_record) and read back with from_record.

The record names everything the run will make on disk (container_dir) before anything is made, so
`cgagent rm -f` can clean up after a crash at any point. Mounts live in the workload's own mount
namespace: the kernel removes them when its last process exits.

The record's dict keeps the shape the untyped code wrote (lists for volumes, dicts for devices and
the userns map, absent keys for what a run did not use), so records written before the spec was
typed, and by older versions that lacked some keys, still start, stop and are removed as before:
from_record gives each missing key the value the old reads defaulted to.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cgagent.errors import CgagentError, kind_of
from cgagent.isolation import ISOLATION_KEYS

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
PRIVILEGED_RULES = ("c *:* rwm", "b *:* rwm")
USERNS_BASE, USERNS_SIZE = 100000, 65536   # --userns: root inside is uid/gid 100000 on the host
DEFAULT_ENV_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# the run option each of them comes from, for "needs an IMAGE" messages (the others: --KEY)
ISOLATION_FLAGS = {"volumes": "-v", "devices": "--device", "mounts": "--mount", "add_host": "--add-host"}
VOLUME_OPTS = ("ro", "rw", "dev", "nodev")


@dataclass(frozen=True)
class Volume:
    """-v HOST:CONTAINER[:OPTIONS]. Volumes are nodev unless `dev` is asked: a device node in a host
    directory must not become a way around the device cgroup's list (--device is)."""
    host: str
    target: str
    read_only: bool = False
    dev: bool = False

    def to_record(self) -> list[Any]:
        return [self.host, self.target, self.read_only, self.dev]

    @classmethod
    def from_record(cls, v: object) -> Volume:
        if not isinstance(v, list) or len(v) not in (3, 4) or not all(isinstance(x, str) for x in v[:2]):
            raise _bad("volumes", "an entry is not [host, container, read-only(, dev)]")
        return cls(v[0], v[1], bool(v[2]), bool(v[3]) if len(v) > 3 else False)


@dataclass(frozen=True)
class Tmpfs:
    """--tmpfs PATH[:OPTS]: a tmpfs at `target`; `options` as cgagent.isolation.flags.tmpfs_options
    made them (mount flags and tmpfs data in one comma list, e.g. nosuid,nodev,noexec,size=1m,mode=1777)."""
    target: str
    options: str

    def to_record(self) -> list[str]:
        return [self.target, self.options]

    @classmethod
    def from_record(cls, v: object) -> Tmpfs:
        if not isinstance(v, list) or len(v) != 2 or not all(isinstance(x, str) for x in v):
            raise _bad("tmpfs", "an entry is not [path, options]")
        return cls(v[0], v[1])


@dataclass(frozen=True)
class IdMap:
    """--userns: ids 0..size-1 inside are base.. on the host."""
    base: int
    size: int

    def to_record(self) -> dict[str, int]:
        return {"base": self.base, "size": self.size}


@dataclass(frozen=True)
class Device:
    """--device: a node PID 1 makes in the workload's /dev (cgagent.devrules.device), and its rule."""
    path: str
    type: str    # "c" or "b"
    major: int
    minor: int
    mode: int
    uid: int
    gid: int
    rule: str    # its device cgroup rule, e.g. "c 7:3 rwm"

    def to_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, d: object) -> Device:
        if not isinstance(d, dict):
            raise _bad("devices", "an entry is not a map")
        try:
            return cls(str(d["path"]), str(d["type"]), int(d["major"]), int(d["minor"]), int(d["mode"]),
                       int(d["uid"]), int(d["gid"]), str(d["rule"]))
        except (KeyError, TypeError, ValueError) as e:
            raise _bad("devices", f"an entry lacks or mistypes {e}") from None


@dataclass(frozen=True)
class IsolationSpec:
    """What an isolated run (an IMAGE or --rootfs) is made of."""
    store: str                          # the image store's root: container_dir lives in its containers/
    container_dir: str                  # upper/, work/, merged/ of this run
    hostname: str = ""
    net: str = "none"                   # none | host | bridge | a network's name | container:NAME
    publish: tuple[str, ...] | None = None   # -p (bridge-like nets only)
    ip: str = ""                        # --ip: a static address on its network
    image: str | None = None            # an image run: its id, the name it was asked by, its layers
    image_ref: str | None = None
    layers_dir: str | None = None
    lowers: tuple[str, ...] = ()        # short l/<id> links under layers_dir, topmost first
    rootfs: str | None = None           # a --rootfs run: the host directory
    read_only: bool = False
    volumes: tuple[Volume, ...] = ()
    init: bool = False
    env: tuple[str, ...] = ()
    userns: IdMap | None = None
    devices: tuple[Device, ...] = ()
    user: str = ""
    workdir: str = "/"
    caps: tuple[str, ...] = ()          # the capabilities it keeps (all others are dropped)
    seccomp: bool = True
    tmpfs: tuple[Tmpfs, ...] = ()       # --tmpfs, --mount type=tmpfs
    privileged: bool = False            # --privileged: see cgagent.isolation.flags
    pid: str = ""                       # "" (a pid namespace of its own) | host | container:NAME
    ipc: str = ""                       # "" (private) | host | container:NAME
    dns: tuple[str, ...] = ()           # --dns: nameservers of its resolv.conf
    extra_hosts: tuple[str, ...] = ()   # --add-host NAME:IP lines of its hosts file

    def with_files(self, files: Mapping[str, str]) -> IsolationSpec:
        """The spec with host files bind-mounted over paths inside (cgagent.network's hosts and
        resolv.conf), in place of any volume at the same path."""
        if not files:
            return self
        kept = tuple(v for v in self.volumes if v.target not in files)
        return dataclasses.replace(self, volumes=kept + tuple(Volume(h, t) for t, h in files.items()))

    @property
    def device_rules(self) -> list[str]:
        """The device cgroup rules its --device nodes need (cgagent.devrules.with_rules); every
        device, read, write and mknod, for --privileged (Docker's `a *:* rwm`)."""
        return [d.rule for d in self.devices] + (list(PRIVILEGED_RULES) if self.privileged else [])

    def to_record(self) -> dict[str, Any]:
        """The record's dict, in the shape the untyped code wrote: optional keys only when used."""
        out: dict[str, Any] = {"store": self.store}
        if self.image is not None:
            out.update(image=self.image, image_ref=self.image_ref, layers_dir=self.layers_dir,
                       lowers=list(self.lowers))
        if self.rootfs is not None:
            out["rootfs"] = self.rootfs
        out.update(container_dir=self.container_dir, read_only=self.read_only,
                   volumes=[v.to_record() for v in self.volumes], hostname=self.hostname, net=self.net,
                   init=self.init, env=list(self.env),
                   userns=self.userns.to_record() if self.userns is not None else None,
                   devices=[d.to_record() for d in self.devices], user=self.user, workdir=self.workdir,
                   caps=list(self.caps), seccomp=self.seccomp)
        if self.publish is not None:
            out["publish"] = list(self.publish)
        if self.ip:
            out["ip"] = self.ip
        extra = {"tmpfs": [t.to_record() for t in self.tmpfs], "privileged": self.privileged, "pid": self.pid,
                 "ipc": self.ipc, "dns": list(self.dns), "extra_hosts": list(self.extra_hosts)}
        out.update((k, v) for k, v in extra.items() if v)   # absent when unused: old readers see old records
        return out

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> IsolationSpec:
        """Read a record's dict, old or new; a missing key gets the value the old reads defaulted
        to (`.get(k) or default`). A malformed value is one CgagentError naming it."""
        m = d.get("userns")
        if m and not (isinstance(m, dict) and all(isinstance(m.get(k), int) for k in ("base", "size"))):
            raise _bad("userns", "not a map of base and size")
        publish = d.get("publish")
        return cls(
            store=str(d.get("store") or ""), container_dir=str(d.get("container_dir") or ""),
            hostname=str(d.get("hostname") or ""), net=str(d.get("net") or "none"),
            publish=None if publish is None else _strings(publish, "publish"), ip=str(d.get("ip") or ""),
            image=_opt_str(d, "image"), image_ref=_opt_str(d, "image_ref"), layers_dir=_opt_str(d, "layers_dir"),
            lowers=_strings(d.get("lowers"), "lowers"), rootfs=_opt_str(d, "rootfs"),
            read_only=bool(d.get("read_only")),
            volumes=tuple(Volume.from_record(v) for v in _list(d.get("volumes"), "volumes")),
            init=bool(d.get("init")), env=tuple(str(e) for e in _list(d.get("env"), "env")),
            userns=IdMap(int(m["base"]), int(m["size"])) if m else None,
            devices=tuple(Device.from_record(x) for x in _list(d.get("devices"), "devices")),
            user=str(d.get("user") or ""), workdir=str(d.get("workdir") or "/"),
            caps=_strings(d.get("caps"), "caps"), seccomp=bool(d.get("seccomp", True)),
            tmpfs=tuple(Tmpfs.from_record(t) for t in _list(d.get("tmpfs"), "tmpfs")),
            # only the JSON value true turns it on: nothing else a record may hold means "the host"
            privileged=d.get("privileged") is True, pid=str(d.get("pid") or ""), ipc=str(d.get("ipc") or ""),
            dns=_strings(d.get("dns"), "dns"), extra_hosts=_strings(d.get("extra_hosts"), "extra_hosts"))


def from_record(d: Mapping[str, Any] | None) -> IsolationSpec | None:
    """Record.isolation -> its spec; None for a plain host run (an empty dict)."""
    return IsolationSpec.from_record(d) if d else None


def for_teardown(d: Mapping[str, Any]) -> IsolationSpec:
    """What removing a run needs (its overlay dir, its connection), also from a record whose other
    isolation fields are malformed: `rm` must not depend on them, as it never did."""
    try:
        return IsolationSpec.from_record(d)
    except CgagentError:
        return IsolationSpec(store=str(d.get("store") or ""), container_dir=str(d.get("container_dir") or ""),
                             net=str(d.get("net") or "none"))


def _bad(key: str, what: str) -> CgagentError:
    return CgagentError(f"the record's isolation {key}: {what}", "remove the workload with `cgagent rm -f NAME`")


def _list(v: object, key: str) -> list[Any]:
    if not v:
        return []
    if not isinstance(v, list):
        raise _bad(key, f"{kind_of(v)}, not a list")
    return v


def _strings(v: object, key: str) -> tuple[str, ...]:
    items = _list(v, key)
    if not all(isinstance(x, str) for x in items):
        raise _bad(key, "not a list of strings")
    return tuple(items)


def _opt_str(d: Mapping[str, Any], key: str) -> str | None:
    v = d.get(key)
    return None if v is None else str(v)


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


def volume(host: str, ctr: str, ro: bool, dev: bool, what: str) -> Volume:
    """One bind of host path `host` at `ctr` inside (-v, --mount type=bind), checked."""
    if not os.path.isabs(host) or not os.path.isabs(ctr):
        raise CgagentError(f"{what}: both paths must be absolute", "e.g. -v /srv/data:/data")
    if not os.path.exists(host):
        raise CgagentError(f"{what}: {host} does not exist", "create it first")
    if os.path.normpath(ctr) == "/":
        raise CgagentError(f"{what}: cannot mount over the root", "choose a directory inside")
    return Volume(os.path.realpath(host), os.path.normpath(ctr), ro, dev)


def volumes(specs: list[str]) -> tuple[Volume, ...]:
    out: list[Volume] = []
    for v in specs:
        parts = v.split(":")
        opts = parts[2].split(",") if len(parts) == 3 else []
        if len(parts) not in (2, 3) or any(o not in VOLUME_OPTS for o in opts):
            raise CgagentError(f"-v {v!r} is not HOST:CONTAINER[:OPTIONS]",
                               "e.g. -v /srv/data:/data:ro (options: ro, rw, dev, nodev, comma-separated)")
        ro = dev = False
        for o in opts:   # the last of ro/rw and of dev/nodev counts
            if o in ("ro", "rw"):
                ro = o == "ro"
            else:
                dev = o == "dev"
        out.append(volume(parts[0], parts[1], ro, dev, f"-v {v!r}"))
    return tuple(out)


def devices(specs: list[str], userns: IdMap | None) -> tuple[Device, ...]:
    """--device HOST[:CTR][:PERMS] -> the nodes PID 1 makes in the workload's /dev (owned, with
    --userns, by the same ids as seen from inside)."""
    from cgagent.devrules import device

    out = [Device.from_record(device(d)) for d in specs]
    if userns:
        def shift(i: int) -> int:
            return i + userns.base if i < userns.size else i

        out = [dataclasses.replace(d, uid=shift(d.uid), gid=shift(d.gid)) for d in out]
    return tuple(out)


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


def build(image: str | None, cmd: list[str], opts: dict[str, Any], name_hint: str) -> tuple[list[str], IsolationSpec]:
    """-> (the command to exec inside, the run's spec)."""
    from cgagent.images.store import ImageStore

    rootfs = opts.get("rootfs")
    if image and rootfs:
        raise CgagentError(f"both an IMAGE ({image!r}) and --rootfs were given",
                           "use one of them: `cgagent run --rootfs DIR -- CMD` runs CMD in DIR")
    store = ImageStore(opts.get("root"))
    img = store.find(image) if image else None
    if image and img is None:   # first: a mistaken first word is told as such, whatever else is wrong
        raise _not_an_image(image, cmd, store)
    # Docker's default: isolated workloads get a bridged network. CGAGENT_DEFAULT_NET changes the
    # default for a host (the test suite sets none, so only tests inside their own netns bridge).
    net = opts.get("net") or os.environ.get("CGAGENT_DEFAULT_NET") or "bridge"
    publish: tuple[str, ...] | None = None
    ip = str(opts.get("ip") or "")
    if net not in NETS or opts.get("publish") or ip:   # bridge, a network's name, container:NAME, -p: issue 5
        from cgagent.network.workload import check

        publish = check(net, list(opts.get("publish") or []), opts.get("root"), ip=ip or None)
    config: dict[str, Any] = {}
    source: dict[str, Any] = {}   # the image's fields, or --rootfs's
    if img is not None:
        if not img.layers:   # imported by a version that took such images: there is no root to mount
            raise CgagentError(f"image {image!r} has no layers", f"remove it (`cgagent image rm {image}`)")
        missing = [d for d in img.layers if not store.has_layer(d)]
        if missing:
            raise CgagentError(f"image {image!r} is missing layer {missing[0]}", "re-import it")
        config = img.config
        source = {"image": img.id, "image_ref": image, "layers_dir": store.layers,
                  "lowers": tuple(store.short_link(d) for d in reversed(img.layers))}  # topmost first
    elif rootfs:
        if not os.path.isdir(rootfs):
            raise CgagentError(f"--rootfs {rootfs} is not a directory", "give the root filesystem's directory")
        source = {"rootfs": os.path.realpath(rootfs)}
    else:
        key = next((k for k in ISOLATION_KEYS if opts.get(k)), "hostname")
        flag = ISOLATION_FLAGS.get(key, "--" + key.replace("_", "-"))
        raise CgagentError(f"{flag}: isolation options need an IMAGE or --rootfs",
                           f"give an image: cgagent run {flag} ... IMAGE CMD (or --rootfs DIR -- CMD); "
                           "a host command runs without isolation")
    entry = list(config.get("Entrypoint") or [])
    image_cmd = list(config.get("Cmd") or [])
    if opts.get("entrypoint") is not None:   # Docker's: a new entrypoint drops the image's Cmd too
        entry = [opts["entrypoint"]] if opts["entrypoint"] else []
        image_cmd = image_cmd if not entry else []
    argv = entry + (cmd if cmd else image_cmd)
    if not argv:
        raise CgagentError("no command given and the image has none", "give it after the image: cgagent run IMAGE CMD")
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
    userns_map = IdMap(USERNS_BASE, USERNS_SIZE) if opts.get("userns") else None
    from cgagent.isolation import flags

    base = userns_map.base if userns_map is not None else None
    binds, mount_tmpfs = flags.mounts(list(opts.get("mounts") or []), base)
    privileged = opts.get("privileged") is True
    if privileged and userns_map is not None:
        raise CgagentError("--privileged and --userns exclude each other",
                           "drop one: --privileged gives the workload the host, --userns takes root away")
    dns, hosts = flags.dns(list(opts.get("dns") or [])), flags.add_hosts(list(opts.get("add_host") or []))
    if (dns or hosts) and net.startswith("container:"):
        raise CgagentError(f"--dns and --add-host do not go with --net {net} (its files are {net[10:]}'s)",
                           f"give them to {net[10:]} instead")
    use_seccomp = seccomp_enabled(list(opts.get("security_opt") or []))   # checked even when privileged
    spec = IsolationSpec(
        store=store.root, container_dir=os.path.join(store.containers, f"{name_hint}-{os.urandom(4).hex()}"),
        read_only=bool(opts.get("read_only")), volumes=volumes(list(opts.get("volumes") or [])) + tuple(
            volume(host, target, ro, False, what) for host, target, ro, what in binds),
        hostname=hostname, net=net, publish=publish, ip=ip, init=bool(opts.get("init")), env=tuple(env),
        userns=userns_map, devices=devices(list(opts.get("devices") or []), userns_map),
        user=str(opts.get("user") or config.get("User") or ""), workdir=str(opts.get("workdir") or
                                                                            config.get("WorkingDir") or "/"),
        caps=tuple(caps(["ALL"] * privileged + list(opts.get("cap_add") or []), list(opts.get("cap_drop") or []))),
        seccomp=use_seccomp and not privileged,
        tmpfs=tuple(Tmpfs(*t) for t in flags.tmpfs(list(opts.get("tmpfs") or []), base) + mount_tmpfs),
        privileged=privileged,
        pid=flags.pid_mode(opts.get("pid")), ipc=flags.ipc_mode(opts.get("ipc")), dns=dns, extra_hosts=hosts,
        **source)
    return argv, spec


def for_run(image: str | None, cmd: list[str], opts: dict[str, Any],
            name: str | None) -> tuple[list[str], str | None, IsolationSpec | None]:
    """The CLI's entry: -> (command, workload name, the spec or None for a plain host run). `image`
    and `cmd` as cgagent.runflags.split_image made them of the words after the options."""
    if image is None and not wanted(opts):
        if opts.get("root"):
            raise CgagentError("--root is only used with an IMAGE",
                               "give the image first: cgagent run --root DIR IMAGE CMD")
        return cmd, name, None
    from cgagent.state import validate_name

    name = validate_name(name) if name else f"w-{os.urandom(4).hex()}"
    argv, spec = build(image, cmd, opts, name)
    return argv, name, spec


def _not_an_image(image: str, cmd: list[str], store: Any) -> CgagentError:
    """An IMAGE that names no imported image, in one line with the spelling that runs the word on the
    host: a first word is an image (Docker's grammar), never looked up on the host's PATH."""
    from cgagent.launch import which

    words = "".join(c if c.isprintable() else "?" for c in " ".join([image, *cmd])[:61])
    words = words if len(words) <= 60 else words[:57] + "..."
    if which(image) is not None:
        return CgagentError(f"{image!r} is a command of the host, not an image",
                            f"run it on the host with `cgagent run -- {words}`, or in an image with "
                            f"`cgagent run IMAGE {words}`")
    return CgagentError(f"no image {image!r} in {store.root}",
                        f"import it with `cgagent image import PATH --name {image}` (see `cgagent images`); "
                        f"a command of the host goes after --: `cgagent run -- {words}`")


def env_dict(spec: IsolationSpec) -> dict[str, str]:
    out: dict[str, str] = {}
    for e in spec.env:
        k, _, v = e.partition("=")
        out[k] = v
    return out
