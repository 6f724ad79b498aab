"""Who a cgroup belongs to: the container runtimes' own records on disk name the containers found
under a --watch-cgroup root, as cAdvisor and the kubelet name them (`name`, `image`, `container`,
`pod`, `namespace`, `container_label_*`).

Read at scrape time from the files each runtime writes, never through its API: no daemon is asked
and none is needed. One module per runtime, registered in RUNTIMES; each recognises its own cgroup
names (`match`) and reads its own metadata (`lookup`) through a `files.Files` cache (a file is
re-read only when its stat changes, bounded in size, opened without following a symlink below the
runtime's root). Anything
missing or malformed leaves the cgroup its cgroup-derived name: discovery never fails a scrape.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from exporters.discover import containerd, crio, docker, podman, systemd
from exporters.discover.files import Files
from exporters.discover.meta import CONTAINER, NOT_A_CONTAINER, Meta, is_id

__all__ = ["Meta", "Namer", "Roots"]

Lookup = Callable[[str], Meta | None]


class Runtime(Protocol):
    def match(self, last: str) -> Meta | str | None:
        """This runtime's cgroup (by the last path component): its container id, a Meta when the name
        alone says all (e.g. its monitor's scope), or None when the cgroup is not this runtime's."""

    def lookup(self, cid: str) -> Meta | None:
        """The container's Meta from the runtime's records, None when they do not know it."""


# Every runtime, under its Roots field, in the order a cgroup's name is tested against them.
RUNTIMES: tuple[tuple[str, Callable[[Files, str], Runtime]], ...] = (
    ("podman", podman.Podman), ("docker", docker.Docker), ("containerd", containerd.Containerd), ("crio", crio.Crio))
# Those whose cgroupfs driver names a container's cgroup by its bare id: asked in this order.
BARE = ("docker", "containerd", "crio")
_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class Roots:
    """Where each runtime keeps its records: the runtimes' defaults, or CGAGENT_*_ROOT for tests and
    for hosts that moved them (e.g. docker's data-root)."""
    podman: str = "/var/lib/containers/storage"              # graphroot: <driver>-containers/containers.json
    docker: str = "/var/lib/docker"                          # containers/<id>/config.v2.json
    containerd: str = "/run/containerd"                      # io.containerd.runtime.v2.task/<ns>/<id>/config.json
    crio: str = "/run/containers/storage"                    # runroot: <driver>-containers/<id>/userdata/config.json

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Roots:
        d = cls()
        return cls(podman=env.get("CGAGENT_PODMAN_ROOT", d.podman), docker=env.get("CGAGENT_DOCKER_ROOT", d.docker),
                   containerd=env.get("CGAGENT_CONTAINERD_ROOT", d.containerd),
                   crio=env.get("CGAGENT_CRIO_ROOT", d.crio))


class Namer:
    """Meta of a watched cgroup from its path; one instance per exporter (it holds the file cache)."""

    def __init__(self, roots: Roots | None = None) -> None:
        self.roots = roots or Roots.from_env()
        self.files = Files()
        self.runtimes = {n: make(self.files, getattr(self.roots, n)) for n, make in RUNTIMES}
        self.bare = tuple(self.runtimes[n].lookup for n in BARE)
        self._plans: dict[tuple[str, bool], Meta | tuple[tuple[Lookup, ...], str, Meta]] = {}
        self._used: dict[tuple[str, bool], Meta | tuple[tuple[Lookup, ...], str, Meta]] = {}

    def begin(self) -> None:
        """A new scrape: each metadata file is stat'ed at most once in it."""
        self.files.begin()
        self._used = {}

    def end(self) -> None:
        """Forget the files and cgroups this scrape did not see (removed containers do not pile up)."""
        self.files.end()
        self._plans = self._used

    def meta(self, cid: str, leaf: bool) -> Meta:
        """The cgroup's Meta: what its path says is worked out once (a cache), its runtime's file is
        looked at (one lstat when unchanged) every scrape."""
        k = (cid, leaf)
        plan = self._plans.get(k)
        if plan is None:
            plan = self._plan(cid, leaf)
        self._used[k] = plan
        if isinstance(plan, Meta):
            return plan
        lookups, ctr, fallback = plan
        for lookup in lookups:
            m = lookup(ctr)
            if m is not None:
                if lookup is not lookups[0]:   # a bare id: the runtime that knew it is asked first next time
                    self._used[k] = ((lookup, *(x for x in lookups if x is not lookup)), ctr, fallback)
                return m
        return fallback

    def _plan(self, cid: str, leaf: bool) -> Meta | tuple[tuple[Lookup, ...], str, Meta]:
        last = cid.rstrip("/").rpartition("/")[2]
        for rt in self.runtimes.values():
            m = rt.match(last)
            if isinstance(m, Meta):
                return m
            if m is not None:
                return (rt.lookup,), m, Meta(last)
        if is_id(last):
            # cgroupfs drivers name a container's cgroup by its bare id (/docker/<id>, --cgroup-parent
            # /any/<id>, /kubepods/<qos>/pod<uid>/<id>); a podman pod's cgroup is a bare id too, a parent
            return self.bare, last, \
                Meta(last, container=CONTAINER if leaf else NOT_A_CONTAINER)
        uid = _pod_uid(last)
        if uid:
            return Meta(last, container=NOT_A_CONTAINER, pod_uid=uid)
        unit = systemd.meta(last, leaf)
        if unit is not None:
            return unit
        return Meta(last or "/", container=NOT_A_CONTAINER)


def _pod_uid(last: str) -> str:
    """The pod UID of a kubelet pod cgroup (`pod<uid>` with cgroupfs, `kubepods-<qos>-pod<uid>.slice` with
    systemd, where the UID's dashes became underscores), or ""."""
    if last.endswith(".slice"):
        last = last[:-6].rpartition("-")[2].replace("_", "-")
    return last[3:] if last.startswith("pod") and _UID.fullmatch(last[3:]) else ""
