"""macvlan: the workload gets its own MAC and an address on the parent link's network (underlay).

The link is created on the parent straight into the workload's namespace under a temporary name
(the name eth0 may exist in the host), then renamed inside, as CNI's macvlan plugin does.
"""

from __future__ import annotations

import os
from typing import Any

from cgagent.errors import CgagentError
from cgagent.network import netns


def create(ipr: Any, parent: str, ns_path: str, tmp_name: str) -> None:
    found = ipr.link_lookup(ifname=parent)
    if not found:
        raise CgagentError(f"parent interface {parent!r} does not exist", "see `ip link` for the names")
    fd = netns.open_ns(ns_path)
    try:
        ipr.link("add", ifname=tmp_name, kind="macvlan", link=found[0], macvlan_mode="bridge", net_ns_fd=fd)
    finally:
        os.close(fd)
