"""VXLAN overlay with static peers, as flannel's vxlan backend does it (L3, one /24 per host).

One vxlan device per host and network, its MAC derived from the host's underlay address (so the
peers need no exchange of MACs) and the host's overlay slice's .0 as its address. Per remote host:
  route     remote slice via remote VTEP address (remote slice .0), onlink, dev vxlan
  neighbour remote VTEP address -> remote VTEP MAC (permanent)
  fdb       remote VTEP MAC -> remote underlay address
Workloads hang off a bridge holding this host's slice, as with --driver bridge.
"""

from __future__ import annotations

import contextlib
import ipaddress
from typing import Any

from cgagent.network.config import VXLAN_PORT, Network, vxlan_slice

NUD_PERMANENT = 0x80
RTNH_F_ONLINK = 4
EEXIST = 17


def vtep_mac(underlay: str) -> str:
    """0a:58 (locally administered, unicast) + the four bytes of the underlay address."""
    return "0a:58:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(underlay).packed)


def _ignore_exists(fn: Any, *a: Any, **kw: Any) -> None:
    try:
        fn(*a, **kw)
    except Exception as e:
        if getattr(e, "code", None) != EEXIST:
            raise


def ensure(ipr: Any, net: Network) -> int:
    assert net.vni is not None and net.local is not None
    dev = net.vxlan_dev
    found = ipr.link_lookup(ifname=dev)
    if not found:
        kw: dict[str, Any] = {"vxlan_id": net.vni, "vxlan_local": net.local, "vxlan_port": VXLAN_PORT,
                              "vxlan_learning": 0, "address": vtep_mac(net.local)}
        if net.parent:
            kw["vxlan_link"] = ipr.link_lookup(ifname=net.parent)[0]
        _ignore_exists(ipr.link, "add", ifname=dev, kind="vxlan", **kw)
        found = ipr.link_lookup(ifname=dev)
    idx = int(found[0])
    assert net.host_subnet
    my_vtep = str(ipaddress.IPv4Network(net.host_subnet).network_address)
    _ignore_exists(ipr.addr, "add", index=idx, address=my_vtep, prefixlen=32)
    ipr.link("set", index=idx, state="up")
    slices = vxlan_slice(ipaddress.IPv4Network(net.subnet), net.local, net.peers)
    for peer in net.peers:
        remote = ipaddress.IPv4Network(slices[peer])
        vtep = str(remote.network_address)
        mac = vtep_mac(peer)
        _ignore_exists(ipr.fdb, "add", ifindex=idx, lladdr=mac, dst=peer)
        _ignore_exists(ipr.neigh, "add", dst=vtep, lladdr=mac, ifindex=idx, state=NUD_PERMANENT)
        _ignore_exists(ipr.route, "add", dst=str(remote), gateway=vtep, oif=idx, flags=RTNH_F_ONLINK)
    return idx


def remove(ipr: Any, net: Network) -> None:
    """Deleting the device drops its routes, neighbours and FDB entries with it."""
    for idx in ipr.link_lookup(ifname=net.vxlan_dev):
        with contextlib.suppress(Exception):
            ipr.link("del", index=idx)
