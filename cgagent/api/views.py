"""What `ps` and `inspect` show, the same on the direct path and through the API."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Any

from cgagent.host import Host
from cgagent.limits import Resources
from cgagent.runtime import live_status, oom_kills, oom_victim
from cgagent.runtime.pause import is_paused
from cgagent.state import Record, Store


def ps_rows(host: Host, store: Store, all_: bool) -> list[dict[str, Any]]:
    from cgagent import prune

    rows: list[dict[str, Any]] = []
    for left in prune.find(store, host):
        # damaged: a record that does not parse; orphaned: a cgroup of cgagent's with no record
        if left.kind in ("damaged", "orphaned") and (all_ or left.pids):
            rows.append({"name": left.name, "status": left.kind, "pid": None, "cgroup": left.what,
                         "command": f"({left.what}; `cgagent rm -f {left.name}` removes it)",
                         "processes": left.pids})
    for rec in store.all():
        status = live_status(host, rec)
        if status == "exited" and not all_:
            continue
        r = Resources.from_dict(rec.resources)
        running = status == "running"
        if running and is_paused(rec):
            status = "paused"
        rows.append({
            "name": rec.name, "status": status, "pid": rec.pid if running else None,
            # machine units (CPUs, bytes, RFC 3339 UTC) as stats --json and inspect: the table makes them human
            "cpus": r.cpus or None,
            "memory": r.memory,
            "pids_limit": _pids_limit(rec, r) if running else r.pids_limit,
            "oom_kills": oom_kills(store, rec),
            "exit_code": rec.exit_code if status == "exited" else None,
            "created": rfc3339(rec.created),
            "command": " ".join(rec.cmd), "cgroup": rec.cgroup, "driver": rec.driver,
            "image": (rec.isolation or {}).get("image_ref") or (rec.isolation or {}).get("rootfs"),
            "restarts": rec.restarts, "oom_victim": oom_victim(store, rec),
            # labels come with run --label; a record from before it has none
            "labels": dict(getattr(rec, "labels", None) or {}),
        })
    return rows


def _pids_limit(rec: Record, r: Resources) -> int | None:
    """What the kernel enforces (-1 = max), as `stats` shows: under systemd a scope without
    --pids-limit still has TasksMax's default, so the record alone would not tell the truth."""
    from cgagent.cgroups.readers import reader_for

    reader = reader_for(rec.dirs)
    try:
        return reader.limits("pids").pids if reader.has("pids") else r.pids_limit
    except (OSError, ValueError):
        return r.pids_limit


# --- inspect: `docker inspect`'s shape, plus the cgroup paths and namespace inodes docker does not show

ZERO_TIME = "0001-01-01T00:00:00Z"   # Go's zero time.Time, as docker prints a time that never was
NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts")   # the types lsns lists


def rfc3339(t: float | None) -> str:
    if not t:
        return ZERO_TIME
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
    return f"{whole}.{int(t % 1 * 1e9):09d}Z"


def namespace_inodes(pid: int) -> dict[str, int]:
    """The inode of each of the process's namespaces: the NS column of `lsns`, and what
    `stat -L -c %i /proc/PID/ns/TYPE` prints."""
    out = {}
    for ns in NAMESPACES:
        try:
            out[ns] = os.stat(f"/proc/{pid}/ns/{ns}").st_ino
        except OSError:
            continue   # a kernel without that namespace type (time: 5.6+), or the process just exited
    return out


def inspect_view(store: Store, host: Host, name: str) -> dict[str, Any]:
    """One workload as `docker inspect` shows a container, plus Cgroups and Namespaces; the raw
    record (with live_status) stays under "Cgagent"."""
    from cgagent import procs
    from cgagent.isolation.spec import IsolationSpec

    rec = store.load(name)
    status = live_status(host, rec)
    running = status == "running"
    pid = rec.pid if running and procs.alive(rec.pid, rec.pid_start) else None
    spec = IsolationSpec.from_record(rec.isolation) if rec.isolation else None
    kills = oom_kills(store, rec)
    mode, _, most = rec.restart.partition(":")
    return {
        "Id": rec.name, "Name": "/" + rec.name, "Created": rfc3339(rec.created),
        "Path": rec.cmd[0] if rec.cmd else "", "Args": rec.cmd[1:],
        "State": {
            "Status": status, "Running": running, "Paused": status == "paused",
            "Restarting": status == "restarting", "OOMKilled": kills > 0, "Dead": False,
            "Pid": pid or 0, "ExitCode": rec.exit_code if rec.exit_code is not None and not running else 0,
            "StartedAt": rfc3339(rec.started), "FinishedAt": rfc3339(rec.finished if not running else None),
        },
        "RestartCount": rec.restarts,
        "Driver": "overlay2" if spec is not None else "",
        "HostConfig": {
            **_host_limits(rec, running),
            "CgroupParent": os.path.dirname(rec.cgroup), "CgroupDriver": rec.driver,
            "NetworkMode": spec.net if spec is not None else "host",
            "RestartPolicy": {"Name": mode, "MaximumRetryCount": int(most) if most else 0},
            "AutoRemove": rec.auto_remove, "ReadonlyRootfs": bool(spec and spec.read_only),
            "Init": bool(spec.init if spec is not None else rec.process.get("init")),
            "CapAdd": list(spec.caps) if spec is not None else None,
            "PortBindings": _ports(spec, rec.name),
            "Ulimits": [{"Name": n, "Soft": s, "Hard": h} for n, s, h in rec.ulimits],
        },
        "Mounts": [{"Type": "bind", "Source": v.host, "Destination": v.target, "Mode": "ro" if v.read_only else "",
                    "RW": not v.read_only, "Propagation": "rprivate"} for v in (spec.volumes if spec else ())],
        "Config": {
            "Hostname": spec.hostname if spec is not None else "", "User": spec.user if spec is not None else "",
            "Image": (spec.image_ref or spec.rootfs or "") if spec is not None else "",
            "Cmd": rec.cmd, "Env": list(spec.env) if spec is not None else [],
            "WorkingDir": spec.workdir if spec is not None else "",
            "Labels": {**rec.labels, **({"cgagent.policy": rec.policy} if rec.policy else {})},
            "StopSignal": rec.stop_signal or "SIGTERM", "StopTimeout": rec.stop_timeout,
            **_host_process(rec, spec),
        },
        "NetworkSettings": _network(spec, rec.name, pid),
        "Cgroups": _cgroup_paths(host, rec),
        "Namespaces": namespace_inodes(pid) if pid else {},
        "Cgagent": {**asdict(rec), "live_status": status},
    }


def _host_process(rec: Record, spec: Any) -> dict[str, Any]:
    """A host command's -u, -e, -w (an isolated run's are in its spec, shown above)."""
    if spec is not None or not rec.process:
        return {}
    from cgagent.procopts import HostProcess

    hp = HostProcess.from_record(rec.process)
    return {"User": hp.user, "Env": list(hp.env), "WorkingDir": hp.workdir}


def _host_limits(rec: Record, running: bool) -> dict[str, Any]:
    """Docker's HostConfig limit fields (0 = none) as the kernel holds them now; the record's
    values when the cgroup is gone (an exited workload)."""
    from cgagent.cgroups.readers import reader_for
    from cgagent.cgroups.stats import Limits

    lim = Limits()
    if running:
        try:
            lim = reader_for(rec.dirs).limits()
        except (OSError, ValueError):
            lim = Limits()
    r = Resources.from_dict(rec.resources)
    quota = lim.cpu_quota_us if running else (int(r.cpus * 100000) if r.cpus else None)
    period = lim.cpu_period_us if running else (100000 if r.cpus else None)
    if quota is not None and quota < 0:
        quota = None
    memory = lim.memory if running else r.memory
    return {
        "NanoCpus": quota * 1_000_000_000 // period if quota and period else 0,
        "CpuShares": lim.cpu_shares or 0, "CpuWeight": lim.cpu_weight or 0,
        "CpuQuota": quota or 0, "CpuPeriod": period or 0,
        "CpusetCpus": lim.cpuset_cpus or "", "CpusetMems": lim.cpuset_mems or "",
        # docker's 0 = no limit (the kernel's "max", which the readers give as -1 or None)
        "Memory": max(memory or 0, 0), "MemorySwap": max(lim.memory_swap or 0, 0),
        "PidsLimit": (lim.pids if running else r.pids_limit) or 0,
    }


def _ports(spec: Any, owner: str) -> dict[str, list[dict[str, str]]]:
    """Published ports as docker keys them: "80/tcp" -> [{HostIp, HostPort}]."""
    if spec is None or not spec.publish:
        return {}
    from cgagent.network import attach

    att = attach.load(owner, spec.store or None)
    tuples = att.port_tuples() if att is not None else attach.parse_ports(list(spec.publish))
    out: dict[str, list[dict[str, str]]] = {}
    for proto, hport, cport, hip in tuples:
        out.setdefault(f"{cport}/{proto}", []).append({"HostIp": hip, "HostPort": str(hport)})
    return out


def _network(spec: Any, owner: str, pid: int | None) -> dict[str, Any]:
    att = None
    if spec is not None and spec.net not in ("none", "host") and not spec.net.startswith("container:"):
        from cgagent.network import attach

        att = attach.load(owner, spec.store or None)
    ip = att.address if att is not None and att.address else ""
    fields = {"IPAddress": ip, "IPPrefixLen": att.prefixlen if att is not None and ip else 0,
              "Gateway": att.gateway or "" if att is not None else "", "MacAddress": att.mac or "" if att else ""}
    return {**fields, "Ports": _ports(spec, owner), "SandboxKey": f"/proc/{pid}/ns/net" if pid else "",
            "Networks": {att.network: dict(fields)} if att is not None else {}}


def _cgroup_paths(host: Host, rec: Record) -> dict[str, str]:
    """Hierarchy -> the workload's path in it, as /proc/PID/cgroup names it ("unified" for v2)."""
    out = {}
    for ctrl, d in rec.dirs.items():
        mount = host.v2_mount if ctrl == "" else host.v1_mounts.get(ctrl)
        out[ctrl or "unified"] = "/" + os.path.relpath(d, mount) if mount else d
    return dict(sorted(out.items()))


def top_rows(store: Store, host: Host, name: str) -> list[dict[str, Any]]:
    """The processes in the workload's cgroup, as `docker top` lists them: PID, PPID, USER, TIME
    (CPU time, [DD-]HH:MM:SS) and CMD (argv, or [comm] for a kernel-made name)."""
    import pwd

    from cgagent.errors import CgagentError
    from cgagent.runtime import manager

    rec = store.load(name)
    if live_status(host, rec) not in ("running", "paused"):
        raise CgagentError(f"workload {name!r} is not running", "only a running workload has processes to list")
    tick = os.sysconf("SC_CLK_TCK")
    rows = []
    for pid in sorted(manager(host, rec).procs()):
        try:
            with open(f"/proc/{pid}/stat") as f:
                comm, rest = f.read().rsplit(")", 1)
            fields = rest.split()
            with open(f"/proc/{pid}/cmdline", "rb") as fb:
                argv = fb.read(4096).rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            continue   # exited meanwhile
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = str(uid)
        secs = (int(fields[11]) + int(fields[12])) // tick   # utime + stime
        days, secs = divmod(secs, 86400)
        clock = f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"
        rows.append({"PID": pid, "PPID": int(fields[1]), "USER": user,
                     "TIME": f"{days}-{clock}" if days else clock,
                     "CMD": argv or f"[{comm.split('(', 1)[1]}]"})
    return rows


def port_lines(store: Store, name: str, private: str | None = None) -> list[str]:
    """`docker port NAME [PRIVATE[/PROTO]]`: "80/tcp -> 0.0.0.0:8080" per published port, or only
    the host ends ("0.0.0.0:8080") of PRIVATE."""
    from cgagent.errors import CgagentError
    from cgagent.isolation.spec import IsolationSpec

    rec = store.load(name)
    spec = IsolationSpec.from_record(rec.isolation) if rec.isolation else None
    ports = _ports(spec, rec.name)
    if private is None:
        return [f"{k} -> {b['HostIp']}:{b['HostPort']}" for k, bs in sorted(ports.items()) for b in bs]
    num, _, proto = private.partition("/")
    key = f"{num}/{proto or 'tcp'}"
    if not (num.isascii() and num.isdigit() and 0 < int(num) < 65536) or proto not in ("", "tcp", "udp"):
        raise CgagentError(f"{private!r} is not a port", "give PORT or PORT/tcp or PORT/udp, e.g. 80/tcp")
    if key not in ports:
        raise CgagentError(f"workload {name!r} does not publish {key}", f"see `cgagent port {name}`")
    return [f"{b['HostIp']}:{b['HostPort']}" for b in ports[key]]
