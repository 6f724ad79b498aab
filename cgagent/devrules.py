"""Device access rules: Docker's default allow-list, `--device` and `--device-cgroup-rule`.

A rule is kept as Docker and the v1 kernel write it, `TYPE MAJOR:MINOR ACCESS` ("c 1:3 rwm",
"c 136:* rwm"); `Resources.devices` holds the list, every driver turns it into its own form (v1
devices.allow lines, a v2 BPF device program, systemd DeviceAllow= entries). Everything not listed
is denied. Only allow rules exist: the list is a union, so its order does not matter.

Isolated workloads (an IMAGE or --rootfs) always get the default list; host workloads only when a
--device-cgroup-rule asks for device control (they use the host's /dev, as systemd-run does).
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from dataclasses import dataclass

from cgagent.errors import CgagentError
from cgagent.limits import Resources

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from typing import Any, Protocol

WILDCARD = -1
# Docker's default: mknod of anything (opening it is what the list decides), the pseudo devices,
# /dev/tty, /dev/console, /dev/ptmx and the devpts terminals.
DEFAULT = ("c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
           "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm")
_RULE = re.compile(r"^([abc]) (\*|\d{1,7}):(\*|\d{1,7}) ([rwm]{1,3})$")
_MAX_MAJOR, _MAX_MINOR = (1 << 12) - 1, (1 << 20) - 1   # the kernel's MAJOR/MINOR bits
MAX_RULES = 256


@dataclass(frozen=True)
class Rule:
    """One device cgroup rule: type, major, minor (WILDCARD for *), access."""

    kind: str    # "c" or "b" ("a" is expanded into both when parsed)
    major: int   # WILDCARD for *
    minor: int
    access: str  # a subset of "rwm", in that order

    def __str__(self) -> str:
        def num(n: int) -> str:
            return "*" if n == WILDCARD else str(n)
        return f"{self.kind} {num(self.major)}:{num(self.minor)} {self.access}"


def _access(text: str, what: str) -> str:
    if not text or any(c not in "rwm" for c in text) or len(set(text)) != len(text):
        raise CgagentError(f"{what}: permissions {text!r} are not a subset of rwm", "use e.g. rwm, rw or r")
    return "".join(c for c in "rwm" if c in text)


def parse(text: str, what: str = "--device-cgroup-rule") -> list[Rule]:
    """`c|b|a MAJOR|*:MINOR|* [rwm]` -> rules ("a" = both kinds, as Docker means it)."""
    m = _RULE.match(" ".join(str(text).split()))
    if not m:
        raise CgagentError(f"{what} {text!r} is not TYPE MAJOR:MINOR PERMS",
                           "e.g. 'c 1:3 rwm', 'b 7:* r' or 'c *:* m' (TYPE is c, b or a)")
    kind, major_s, minor_s, acc = m.groups()
    major = WILDCARD if major_s == "*" else int(major_s)
    minor = WILDCARD if minor_s == "*" else int(minor_s)
    if major > _MAX_MAJOR or minor > _MAX_MINOR:
        raise CgagentError(f"{what} {text!r}: major or minor number out of range",
                           f"majors go up to {_MAX_MAJOR}, minors up to {_MAX_MINOR}")
    access = _access(acc, what)
    return [Rule(k, major, minor, access) for k in (("c", "b") if kind == "a" else (kind,))]


def parse_all(rules: list[str] | tuple[str, ...]) -> list[Rule]:
    return [r for text in rules for r in parse(text)]


def merge(rules: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Normalised, duplicates joined (the v1 kernel joins the access of equal entries too)."""
    acc: dict[tuple[str, int, int], str] = {}
    for r in parse_all(rules):
        key = (r.kind, r.major, r.minor)
        acc[key] = _access("".join(sorted(set(acc.get(key, "") + r.access))), "rule")
    if len(acc) > MAX_RULES:
        raise CgagentError(f"{len(acc)} device rules are too many", f"give at most {MAX_RULES}")
    return tuple(str(Rule(k, ma, mi, a)) for (k, ma, mi), a in acc.items())


# --- --device HOST[:CONTAINER][:PERMS]

def device(spec: str) -> dict[str, Any]:
    """-> the node to make inside and the rule that lets it be used. The host path must be a
    character or block device (followed if a symlink: /dev/disk/by-id/... names a real node)."""
    parts = spec.split(":")
    perms = "rwm"
    if len(parts) > 1 and parts[-1] and all(c in "rwm" for c in parts[-1]):
        perms = _access(parts.pop(), f"--device {spec!r}")
    if len(parts) not in (1, 2) or not parts[0]:
        raise CgagentError(f"--device {spec!r} is not HOST[:CONTAINER][:PERMS]",
                           "e.g. --device /dev/loop3 or --device /dev/fuse:/dev/fuse:rw")
    host = parts[0]
    ctr = os.path.normpath(parts[1] if len(parts) == 2 and parts[1] else host)
    if not os.path.isabs(host):
        raise CgagentError(f"--device {spec!r}: {host} is not an absolute path",
                           "give the device's path, e.g. /dev/loop3")
    try:
        st = os.stat(host)
    except OSError as e:
        raise CgagentError(f"--device {spec!r}: {host}: {e.strerror}", "give an existing device node") from None
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise CgagentError(f"--device {spec!r}: {host} is not a character or block device",
                           "give a device node (see `ls -l /dev`); use -v for files and directories")
    if not ctr.startswith("/dev/") or ".." in ctr.split("/"):
        raise CgagentError(f"--device {spec!r}: the path inside must be under /dev",
                           "e.g. --device /dev/loop3:/dev/xvda")
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    return {"path": ctr, "type": kind, "major": major, "minor": minor, "mode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid, "gid": st.st_gid, "rule": f"{kind} {major}:{minor} {perms}"}


def for_workload(isolated: bool, device_rules: list[str], extra_rules: list[str]) -> tuple[str, ...] | None:
    """The device rules of a new workload (`device_rules`: its --device nodes'); None = no device
    control (a host workload, as with systemd-run: it uses the host's /dev)."""
    if not isolated and not extra_rules:
        return None
    return merge([*DEFAULT, *device_rules, *extra_rules])


# --- what the drivers need

def proc_devices(path: str = "/proc/devices") -> dict[tuple[str, int], str]:
    """(kind, major) -> the driver's name in /proc/devices ("pts", "loop"): systemd's DeviceAllow=
    names a whole major that way (char-pts)."""
    out: dict[tuple[str, int], str] = {}
    kind = ""
    with open(path) as f:
        for line in f:
            if line.startswith("Character"):
                kind = "c"
            elif line.startswith("Block"):
                kind = "b"
            elif line.strip() and kind:
                num, _, name = line.strip().partition(" ")
                out.setdefault((kind, int(num)), name.strip())
    return out


if TYPE_CHECKING:
    class Isolated(Protocol):
        """An isolated run's spec as this module sees it (cgagent.isolation.spec.IsolationSpec, which
        sits above it and so is not imported here)."""

        @property
        def device_rules(self) -> list[str]: ...


def with_rules(resources: Resources, isolation: Isolated | None, extra_rules: list[str] | None) -> Resources:
    """The run request's Resources with its device rules (both `run` front doors call this)."""
    rules = for_workload(isolation is not None, isolation.device_rules if isolation is not None else [],
                         list(extra_rules or []))
    return dataclasses.replace(resources, devices=rules)
