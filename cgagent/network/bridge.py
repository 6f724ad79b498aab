"""The host side of a bridge network: the bridge, its gateway address, forwarding and masquerade."""

from __future__ import annotations

import contextlib
from typing import Any

from cgagent.network import netns, nft
from cgagent.network.config import Network

EEXIST = 17


def link_index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def ensure(ipr: Any, net: Network) -> int:
    """Create (or find) the bridge with the gateway address, up; forwarding and NAT on. -> its index."""
    import ipaddress

    assert net.bridge and net.gateway
    idx = link_index(ipr, net.bridge)
    fresh = idx is None
    if idx is None:
        try:
            ipr.link("add", ifname=net.bridge, kind="bridge")
        except Exception as e:   # NetlinkError: a concurrent creator won
            if getattr(e, "code", None) != EEXIST:
                raise
        idx = link_index(ipr, net.bridge)
        assert idx is not None
    pool = ipaddress.IPv4Network(net.pool)
    have = {a.get("address") for a in ipr.get_addr(index=idx, family=2)}
    if net.gateway not in have:
        fresh = True
        try:
            ipr.addr("add", index=idx, address=net.gateway, prefixlen=pool.prefixlen)
        except Exception as e:
            if getattr(e, "code", None) != EEXIST:
                raise
    ipr.link("set", index=idx, state="up")
    if not fresh:   # set up by the first workload (prune takes all of it away together)
        return idx
    netns.sysctl("net.ipv4.ip_forward", "1")
    # 127.0.0.1:PORT published to a workload: the DNAT'd packet keeps a loopback source on the bridge
    netns.sysctl(f"net.ipv4.conf.{net.bridge}.route_localnet", "1")
    nft.add_network(net.pool, net.subnet)
    return idx


def remove(ipr: Any, net: Network) -> None:
    """Delete the bridge and the network's NAT elements (idempotent)."""
    if net.bridge:
        idx = link_index(ipr, net.bridge)
        if idx is not None:
            with contextlib.suppress(Exception):
                ipr.link("del", index=idx)
    nft.remove_network(net.pool, net.subnet)
