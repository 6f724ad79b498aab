"""Docker's isolation options beyond the basics, from their text to IsolationSpec fields:
--tmpfs, --mount, --privileged, --pid, --ipc, --dns, --add-host.

What each one means to the kernel:
- --tmpfs PATH[:OPTS]: mount(2) of a tmpfs at PATH inside the workload's root, after pivot_root (so a
  symlink in the image resolves inside that root), with Docker's defaults nosuid,nodev,noexec and
  mode 1777; size= and nr_inodes= bound it (its pages are charged to the workload's memory cgroup).
- --mount type=bind|tmpfs,...: the long form of -v and --tmpfs, turned into the same entries.
- --privileged: every capability, no seccomp filter, every device allowed in the device cgroup, /sys
  and the cgroup filesystem writable, no masked or read-only /proc paths. Root inside is root of the
  host: it can load kernel modules, mount the host's disks, write to /proc/sysrq-trigger. Only the
  flag itself turns it on (spec.IsolationSpec.from_record reads nothing else as "on").
- --pid host: no pid namespace: the workload sees (and, as root with CAP_KILL, can signal) the
  host's processes; it keeps its own mount, UTS, IPC, cgroup and network namespaces.
- --pid container:NAME: NAME's pid namespace (setns before the fork): it sees NAME's processes and
  NAME's PID 1 is its init; it ends when NAME does, as the kernel ends a namespace with its PID 1.
- --ipc host|private|container:NAME: no IPC namespace / one of its own (the default) / NAME's.
- --dns, --add-host: the nameservers of its /etc/resolv.conf and extra lines of its /etc/hosts.

All of it is validated here, before anything is made; every list is bounded. The results are plain
tuples, which cgagent.isolation.spec (the one caller) puts in its dataclasses.
"""

from __future__ import annotations

import ipaddress
import os
import re

from cgagent.errors import CgagentError

TmpfsT = tuple[str, str]          # (target, options): spec.Tmpfs
BindT = tuple[str, str, bool, str]   # (host path, target, read-only, the option's text for messages)

MAX_TMPFS = 64
MAX_DNS = 3            # glibc's MAXNS: more nameserver lines are ignored by the resolver
MAX_HOSTS = 256
MAX_PATH = 4096
# mount flags a tmpfs option may name -> (flag word kept, the word it replaces)
TMPFS_FLAGS = {"ro": "ro", "rw": "ro", "exec": "noexec", "noexec": "noexec", "suid": "nosuid",
               "nosuid": "nosuid", "dev": "nodev", "nodev": "nodev"}
TMPFS_DEFAULT = ("nosuid", "nodev", "noexec")
_SIZE = re.compile(r"^(\d{1,15}[kKmMgG]?|\d{1,3}%)$")
_MODE = re.compile(r"^[0-7]{1,4}$")
_ID = re.compile(r"^\d{1,10}$")
TMPFS_DATA = {"size": _SIZE, "nr_inodes": re.compile(r"^\d{1,15}[kKmMgG]?$"), "mode": _MODE, "uid": _ID, "gid": _ID}
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,252})$")


def _target(path: str, what: str) -> str:
    """An absolute, normalised path inside the workload, never its root itself."""
    if not path.startswith("/") or len(path) > MAX_PATH or "\0" in path:
        raise CgagentError(f"{what}: the path {path!r} is not absolute", "give a path inside, e.g. /run")
    norm = os.path.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if norm == "/":
        raise CgagentError(f"{what}: cannot mount over the root", "choose a directory inside, e.g. /run")
    return norm


def tmpfs_options(opts: list[str], userns_base: int | None, what: str) -> str:
    """OPTS (comma words) -> the canonical option string of a Tmpfs: the flag words, then tmpfs data.
    Docker's defaults: nosuid, nodev, noexec, mode 1777; with --userns owned by root inside."""
    flags = {w: w for w in TMPFS_DEFAULT}   # kept word per family (ro, noexec, nosuid, nodev)
    data: dict[str, str] = {"mode": "1777"}
    if userns_base is not None:
        data.update(uid=str(userns_base), gid=str(userns_base))
    for o in opts:
        key, eq, val = o.partition("=")
        if not eq and key in TMPFS_FLAGS:
            family = TMPFS_FLAGS[key]
            flags.pop(family, None)
            if key in ("ro", "noexec", "nosuid", "nodev"):
                flags[family] = key
            continue
        pat = TMPFS_DATA.get(key)
        if not eq or pat is None or not pat.fullmatch(val):
            raise CgagentError(f"{what}: option {o!r} is not supported",
                               "use ro, rw, exec, noexec, suid, nosuid, dev, nodev, size=64m, mode=1777, uid=N, "
                               "gid=N or nr_inodes=N")
        data[key] = val.lower() if key in ("size", "nr_inodes") else val
    return ",".join([*flags.values(), *(f"{k}={v}" for k, v in data.items())])


def tmpfs(specs: list[str], userns_base: int | None) -> tuple[TmpfsT, ...]:
    """--tmpfs PATH[:OPTS] (repeatable)."""
    out: list[TmpfsT] = []
    for spec in specs:
        path, _, opts = spec.partition(":")
        what = f"--tmpfs {spec[:80]!r}"
        out.append((_target(path, what), tmpfs_options(opts.split(",") if opts else [], userns_base, what)))
    return out_bounded(out, "--tmpfs")


def out_bounded(items: list[TmpfsT], what: str) -> tuple[TmpfsT, ...]:
    if len(items) > MAX_TMPFS:
        raise CgagentError(f"{len(items)} {what} mounts are too many", f"give at most {MAX_TMPFS}")
    return tuple(items)


def mounts(specs: list[str], userns_base: int | None) -> tuple[tuple[BindT, ...], tuple[TmpfsT, ...]]:
    """--mount type=bind|tmpfs,source=...,target=...,readonly,... -> (the binds, the tmpfs mounts)."""
    binds: list[BindT] = []
    tmpfss: list[TmpfsT] = []
    for spec in specs:
        what = f"--mount {spec[:80]!r}"
        fields: dict[str, str] = {}
        for word in spec.split(","):
            key, eq, val = word.partition("=")
            key = {"src": "source", "destination": "target", "dst": "target", "ro": "readonly"}.get(key, key)
            if key == "readonly":
                if val.lower() not in ("", "1", "true", "0", "false"):
                    raise CgagentError(f"{what}: readonly={val!r}", "write readonly, or readonly=true|false")
                val = "" if val.lower() in ("0", "false") else "1"
            elif not eq or not val:
                raise CgagentError(f"{what}: {word!r} is not KEY=VALUE",
                                   "e.g. --mount type=bind,source=/srv/data,target=/data,readonly")
            if key in fields:
                raise CgagentError(f"{what}: {key} is given twice", "give each key once")
            fields[key] = val
        kind = fields.pop("type", "volume")
        ro = bool(fields.pop("readonly", ""))
        target = fields.pop("target", "")
        if kind not in ("bind", "tmpfs"):
            raise CgagentError(f"{what}: type={kind} is not supported (no named volumes)",
                               "use type=bind,source=HOSTDIR,target=PATH or type=tmpfs,target=PATH")
        if not target:
            raise CgagentError(f"{what}: no target", "add target=PATH (the path inside)")
        allowed = ("source",) if kind == "bind" else ("tmpfs-size", "tmpfs-mode")
        extra = [k for k in fields if k not in allowed]
        if extra:
            raise CgagentError(f"{what}: {extra[0]} is not supported with type={kind}",
                               "bind takes source, target, readonly; tmpfs takes target, tmpfs-size, "
                               "tmpfs-mode, readonly")
        if kind == "bind":
            if "source" not in fields:
                raise CgagentError(f"{what}: no source", "add source=HOSTDIR (an absolute path of the host)")
            binds.append((fields["source"], target, ro, what))
            continue
        opts = (["ro"] if ro else []) + [f"{k[6:]}={v}" for k, v in fields.items()]   # tmpfs-size -> size
        tmpfss.append((_target(target, what), tmpfs_options(opts, userns_base, what)))
    return tuple(binds), out_bounded(tmpfss, "--mount type=tmpfs")


def _container(value: str) -> str | None:
    """`container:NAME` with a valid NAME -> itself; anything else -> None."""
    kind, _, name = value.partition(":")
    if kind == "container" and name:
        from cgagent.state import validate_name

        validate_name(name)
        return f"container:{name}"
    return None


def pid_mode(value: str | None) -> str:
    if not value or value == "private":
        return ""
    if value == "host":
        return "host"
    if (joined := _container(value)) is not None:
        return joined
    raise CgagentError(f"--pid {value!r} is not supported",
                       "use private (the default), host or container:NAME")


def ipc_mode(value: str | None) -> str:
    if not value or value in ("private", "shareable"):
        return ""
    if value == "host":
        return "host"
    if (joined := _container(value)) is not None:
        return joined
    raise CgagentError(f"--ipc {value!r} is not supported", "use private (the default), host or container:NAME")


def _ip(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise CgagentError(f"{what}: {text[:64]!r} is not an IP address",
                           "give an IPv4 or IPv6 address, e.g. 192.0.2.53") from None


def dns(servers: list[str]) -> tuple[str, ...]:
    if len(servers) > MAX_DNS:
        raise CgagentError(f"{len(servers)} --dns servers are too many",
                           f"give at most {MAX_DNS} (the resolver reads no more)")
    return tuple(_ip(s, "--dns") for s in servers)


def add_hosts(specs: list[str]) -> tuple[str, ...]:
    """--add-host NAME:IP (IPv6 as NAME:[::1] or NAME:::1) -> "IP NAME" lines of the hosts file."""
    if len(specs) > MAX_HOSTS:
        raise CgagentError(f"{len(specs)} --add-host entries are too many", f"give at most {MAX_HOSTS}")
    out = []
    for s in specs:
        name, sep, ip = s.partition(":")
        if not sep or not _HOSTNAME.fullmatch(name):
            raise CgagentError(f"--add-host {s[:80]!r} is not NAME:IP", "e.g. --add-host db:192.0.2.10")
        if ip.startswith("[") and ip.endswith("]"):
            ip = ip[1:-1]
        out.append(f"{_ip(ip, f'--add-host {s[:80]!r}')}\t{name}")
    return tuple(out)
