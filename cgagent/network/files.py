"""/etc/hosts and /etc/resolv.conf for workloads, as files the isolation layer bind-mounts.

Rewritten in place (never renamed over): a bind mount pins the inode, so a workload sees the names
of workloads that join its network later.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

MAX_HOSTS_FILE = 1 << 20   # a host file read to copy it is read this far at most
FALLBACK_DNS = ("8.8.8.8", "8.8.4.4")   # Docker's fallback when the host only has a loopback resolver


def write_in_place(path: str, text: str, mode: int = 0o644) -> None:
    """`text` as the whole of `path`, in the same inode (created with `mode`); a symlink there is refused."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        data = text.encode()
        os.ftruncate(fd, 0)
        os.write(fd, data)
    finally:
        os.close(fd)


def hosts(own: tuple[str, list[str]] | None, others: list[tuple[str, list[str]]],
          extra: Sequence[str] = ()) -> str:
    """`extra`: --add-host's "IP\tNAME" lines (cgagent.isolation.flags.add_hosts), last as Docker has them."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if own:
        lines.append(f"{own[0]}\t{' '.join(own[1])}")
    lines += [f"{ip}\t{' '.join(names)}" for ip, names in others]
    return "\n".join([*lines, *extra]) + "\n"


def host_hosts(extra: Sequence[str], host_file: str = "/etc/hosts") -> str:
    """--net host: the host's hosts file (its names are the workload's), plus --add-host's lines."""
    try:
        with open(host_file) as f:
            text = f.read(MAX_HOSTS_FILE)
    except OSError:
        return hosts(None, [], extra)
    return text + ("" if not text or text.endswith("\n") else "\n") + "".join(f"{e}\n" for e in extra)


def resolv_conf(host_file: str = "/etc/resolv.conf", dns: Sequence[str] = ()) -> str:
    """The host's resolver config without loopback nameservers (unreachable from a workload);
    `dns` (--dns) replaces its nameservers, its search and options lines stay (as Docker does)."""
    if dns:
        keep = [ln for ln in _lines(host_file) if ln.split()[:1] != ["nameserver"]]
        return "\n".join([*keep, *(f"nameserver {s}" for s in dns)]) + "\n"
    keep, servers = [], 0
    for line in _lines(host_file):
        parts = line.split()
        if parts[:1] == ["nameserver"] and len(parts) > 1:
            if parts[1].startswith("127.") or parts[1] == "::1":
                continue
            servers += 1
        keep.append(line)
    if not servers:
        keep += [f"nameserver {s}" for s in FALLBACK_DNS]
    return "\n".join(keep) + "\n"


def _lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read(MAX_HOSTS_FILE).splitlines()
    except OSError:
        return []


def for_workload(etc: str, net: str, dns: Sequence[str], extra_hosts: Sequence[str]) -> dict[str, str]:
    """--dns/--add-host on a workload without a connection of its own (--net none or host): its
    resolv.conf and hosts written under `etc` (in its container dir) -> path inside -> file."""
    out: dict[str, str] = {}
    if dns:
        out["/etc/resolv.conf"] = os.path.join(etc, "resolv.conf")
        write_in_place(out["/etc/resolv.conf"], resolv_conf(dns=dns))
    if extra_hosts:
        out["/etc/hosts"] = os.path.join(etc, "hosts")
        write_in_place(out["/etc/hosts"], host_hosts(extra_hosts) if net == "host" else hosts(None, [], extra_hosts))
    return out
