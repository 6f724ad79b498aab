"""A workload's veth pair: host end on a bridge, the other end created straight in the workload's
namespace as eth0, with its address and default route."""

from __future__ import annotations

import contextlib
from typing import Any

from cgagent.errors import CgagentError
from cgagent.network import netns

EEXIST = 17


def create(ipr: Any, host_name: str, bridge_idx: int, ns_path: str, mac: str, inner: str = "eth0") -> None:
    """The pair, `inner` (with MAC `mac`, which the anti-spoofing rule names) inside the namespace."""
    fd = netns.open_ns(ns_path)
    try:
        # on the bridge and up as it is born: one request, where add + lookup + set were three
        ipr.link("add", ifname=host_name, kind="veth", master=bridge_idx, state="up",
                 peer={"ifname": inner, "net_ns_fd": fd, "address": mac})
    except Exception as e:
        if getattr(e, "code", None) == EEXIST:
            raise CgagentError(f"the workload already has an interface named {inner}",
                               "connect it to one network only") from None
        raise
    finally:
        import os

        os.close(fd)


LOOPBACK_INDEX = 1   # lo is interface 1 in every network namespace


def configure_inside(ns_path: str, ifname: str, address: str, prefixlen: int, gateway: str | None,
                     rename_to: str | None = None, mac: str | None = None) -> str:
    """Inside the workload: (rename,) address, up, lo up, default route. -> the interface's MAC
    (`mac` when the caller gave it one, else asked)."""
    ipr = netns.iproute(ns_path)
    try:
        idx = ipr.link_lookup(ifname=ifname)[0]
        if rename_to:
            ipr.link("set", index=idx, ifname=rename_to)
        ipr.addr("add", index=idx, address=address, prefixlen=prefixlen)
        ipr.link("set", index=idx, state="up")
        ipr.link("set", index=LOOPBACK_INDEX, state="up")
        if gateway:
            ipr.route("add", dst="0.0.0.0/0", gateway=gateway)
        return mac or str(ipr.get_links(idx)[0].get("address"))
    finally:
        ipr.close()


def remove(ipr: Any, host_name: str) -> None:
    """Delete the pair by its host end (gone already when the workload's namespace died)."""
    for idx in ipr.link_lookup(ifname=host_name):
        with contextlib.suppress(Exception):
            ipr.link("del", index=idx)
