"""/etc/hosts and /etc/resolv.conf for workloads, as files the isolation layer bind-mounts.

Rewritten in place (never renamed over): a bind mount pins the inode, so a workload sees the names
of workloads that join its network later.
"""

from __future__ import annotations

import os

FALLBACK_DNS = ("8.8.8.8", "8.8.4.4")   # Docker's fallback when the host only has a loopback resolver


def write_in_place(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        data = text.encode()
        os.ftruncate(fd, 0)
        os.write(fd, data)
    finally:
        os.close(fd)


def hosts(own: tuple[str, list[str]] | None, others: list[tuple[str, list[str]]]) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if own:
        lines.append(f"{own[0]}\t{' '.join(own[1])}")
    lines += [f"{ip}\t{' '.join(names)}" for ip, names in others]
    return "\n".join(lines) + "\n"


def resolv_conf(host_file: str = "/etc/resolv.conf") -> str:
    """The host's resolver config without loopback nameservers (unreachable from a workload)."""
    keep, servers = [], 0
    try:
        with open(host_file) as f:
            src = f.read().splitlines()
    except OSError:
        src = []
    for line in src:
        parts = line.split()
        if parts[:1] == ["nameserver"] and len(parts) > 1:
            if parts[1].startswith("127.") or parts[1] == "::1":
                continue
            servers += 1
        keep.append(line)
    if not servers:
        keep += [f"nameserver {s}" for s in FALLBACK_DNS]
    return "\n".join(keep) + "\n"
