"""The host side of a bridge network: the bridge, its gateway address, forwarding, NAT and filters.

Host settings: cgagent turns `net.ipv4.ip_forward` on while at least one of its bridges exists.
When it was off before, the previous value is kept in <root>/networks/ip_forward.prev and written
back when the last of cgagent's bridges goes (network rm / prune); when it was already on, cgagent
never touches it. `route_localnet` is never set (CVE-2020-8558): see nft.py and proxy.py.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from typing import Any

from cgagent.network import BRIDGE_PREFIX, DEFAULT_BRIDGE, config, net_dir, netns, nft, rtnl
from cgagent.network.config import Network

EEXIST = 17
FORWARD = "net.ipv4.ip_forward"


def link_index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def _prev_file(root: str | None) -> str:
    return os.path.join(net_dir(root), "ip_forward.prev")


def forwarding_on(root: str | None) -> None:
    """ip_forward=1, remembering the value it replaces (only the first time: the file says we own it)."""
    was = netns.read_sysctl(FORWARD)
    if was == "1":
        return
    path = _prev_file(root)
    if not os.path.exists(path):
        with open(path + ".tmp", "w") as f:
            f.write(was)
        os.rename(path + ".tmp", path)
    netns.sysctl(FORWARD, "1")


def forwarding_restore(ipr: Any, root: str | None) -> None:
    """The last of our NAT bridges is gone: put ip_forward back as we found it (an underlay's bridge
    never turned it on)."""
    underlays = {n.bridge for n in config.all_networks(root) if n.underlay}
    if any(str(lk.get("ifname")).startswith((BRIDGE_PREFIX, DEFAULT_BRIDGE)) and lk.get("ifname") not in underlays
           for lk in ipr.get_links()):
        return
    path = _prev_file(root)
    try:
        with open(path) as f:
            was = f.read().strip()
    except FileNotFoundError:
        return
    if was in ("0", "1"):
        netns.sysctl(FORWARD, was)
    os.unlink(path)


def ensure(net: Network, root: str | None = None, port: nft.Port | None = None,
           stale: tuple[nft.Port, ...] = ()) -> int:
    """Create (or find) the bridge with the gateway address, up; forwarding, NAT and filters on
    (every time: a network left half-made by a crash is completed, never used without NAT), and the
    anti-spoofing elements of `port` (host end, MAC, address) in the same nft run, where those of
    `stale` ports (gone) are forgotten. -> index."""
    assert net.bridge and net.gateway
    idx = _whole(net)   # the usual case: two requests (pyroute2 costs ~10 ms here)
    if idx is None:
        ipr = netns.iproute()
        try:
            idx = _make(ipr, net)
        finally:
            ipr.close()
    forwarding_on(root)
    nft.add_network(net.bridge, net.pool, net.subnet, net.vxlan_dev if net.driver == "vxlan" else None, port,
                    stale)
    return idx


def _whole(net: Network) -> int | None:
    """The bridge's index when it exists, is up and has the gateway address."""
    if not net.bridge or not net.gateway:
        return None
    with rtnl.Rtnl() as rt:
        found = rt.link(net.bridge)
        if found is not None and found[1] & rtnl.IFF_UP and net.gateway in rt.ipv4_addresses(found[0]):
            return int(found[0])
    return None


def whole(net: Network) -> bool:
    """The network's bridge is there as a connect leaves it (a connection made ahead never makes it)."""
    return _whole(net) is not None


def _make(ipr: Any, net: Network) -> int:
    """The bridge, its gateway address and up, whatever of them is missing."""
    assert net.bridge and net.gateway
    idx = link_index(ipr, net.bridge)
    if idx is None:
        try:
            ipr.link("add", ifname=net.bridge, kind="bridge")
        except Exception as e:   # NetlinkError: a concurrent creator won
            if getattr(e, "code", None) != EEXIST:
                raise
        idx = link_index(ipr, net.bridge)
        assert idx is not None
    pool = ipaddress.IPv4Network(net.pool)
    have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx, family=2)}
    if net.gateway not in have:
        try:
            ipr.addr("add", index=idx, address=net.gateway, prefixlen=pool.prefixlen)
        except Exception as e:
            if getattr(e, "code", None) != EEXIST:
                raise
    ipr.link("set", index=idx, state="up")
    return idx


def remove(ipr: Any, net: Network, root: str | None = None) -> None:
    """Delete the bridge and the network's NAT elements; the last bridge restores ip_forward (idempotent)."""
    if net.bridge:
        idx = link_index(ipr, net.bridge)
        if idx is not None:
            with contextlib.suppress(Exception):
                ipr.link("del", index=idx)
    try:
        forwarding_restore(ipr, root)
    finally:
        nft.remove_network(net.bridge, net.pool, net.subnet, net.vxlan_dev if net.driver == "vxlan" else None)
