"""The bridge underlay: `network create --driver bridge --parent IFACE` puts the host's own NIC into
a bridge, so workloads on that network take addresses from the physical subnet (the classic Docker
underlay: no NAT, the LAN reaches them directly).

IFACE's IPv4 addresses and the routes through it (every table but `local`, all but the prefix routes
the kernel makes for an address) move onto the bridge; `network rm` moves them back in the order they
were, so `ip -j addr` and `ip -j route` read as before. IPv6 on IFACE is left as it is (the networks
are IPv4 only).

Crash consistency: the network's file is saved first, then <root>/networks/underlay/<name>.json (the
record: IFACE's addresses and routes as found) is written before each step, naming that step. One
function, restore(), puts IFACE back from the record whatever was done (idempotent): a failed step
runs it at once, and `network rm` runs it after a crash. A network whose record is not `complete` is
refused to workloads.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from cgagent import faults
from cgagent.errors import CgagentError
from cgagent.network import BRIDGE_PREFIX, DEFAULT_BRIDGE, VETH_PREFIX, VXLAN_PREFIX, fault, net_dir, netns
from cgagent.network.config import Network
from cgagent.state import atomic_write

AF_INET = 2
RTPROT_KERNEL = 2
TABLE_LOCAL = 255
EEXIST = 17
STEPS = ("ul-record", "ul-bridge", "ul-enslave", "ul-addresses", "ul-routes")


@dataclass
class Record:
    """What enslaving a NIC to a bridge took from it (addresses, routes, link state), to give back."""

    network: str
    parent: str
    bridge: str
    was_up: bool
    addresses: list[dict[str, Any]] = field(default_factory=list)   # in the kernel's order
    routes: list[dict[str, Any]] = field(default_factory=list)      # in the kernel's order
    step: str = ""
    complete: bool = False


def _path(name: str, root: str | None) -> str:
    return os.path.join(net_dir(root), "underlay", f"{name}.json")


def _save(rec: Record, root: str | None) -> None:
    os.makedirs(os.path.dirname(_path(rec.network, root)), mode=0o700, exist_ok=True)
    atomic_write(_path(rec.network, root), json.dumps(asdict(rec), indent=1, sort_keys=True).encode() + b"\n")


def load(name: str, root: str | None = None) -> Record | None:
    try:
        with open(_path(name, root)) as f:
            return Record(**json.load(f))
    except (FileNotFoundError, ValueError, TypeError):
        return None


# --- what IFACE holds

def _addresses(ipr: Any, idx: int) -> list[dict[str, Any]]:
    out = []
    for a in ipr.get_addr(index=idx, family=AF_INET):
        ci = a.get_attr("IFA_CACHEINFO") or {}
        out.append({"address": a.get_attr("IFA_ADDRESS"), "local": a.get_attr("IFA_LOCAL"),
                    "prefixlen": a["prefixlen"], "broadcast": a.get_attr("IFA_BROADCAST"),
                    "label": a.get_attr("IFA_LABEL"), "scope": a["scope"],
                    "flags": a.get_attr("IFA_FLAGS") or a["flags"],
                    "preferred": ci.get("ifa_preferred"), "valid": ci.get("ifa_valid")})
    return out


def _routes(ipr: Any, idx: int) -> list[dict[str, Any]]:
    """Every IPv4 route out of `idx` that an address does not bring along by itself."""
    out = []
    for r in ipr.get_routes(family=AF_INET):   # no table given: every table
        table = r.get_attr("RTA_TABLE") or r["table"]
        if table == TABLE_LOCAL or r["proto"] == RTPROT_KERNEL:
            continue
        if r.get_attr("RTA_MULTIPATH") is not None:
            hops = [h.get("oif") for h in r.get_attr("RTA_MULTIPATH")]
            if idx in hops:
                raise CgagentError("the parent interface carries a multipath route",
                                   "move that route off it first; the underlay moves single-path routes only")
            continue
        if r.get_attr("RTA_OIF") != idx:
            continue
        metrics = r.get_attr("RTA_METRICS")
        out.append({"dst": r.get_attr("RTA_DST"), "dst_len": r["dst_len"], "tos": r["tos"], "table": table,
                    "proto": r["proto"], "scope": r["scope"], "type": r["type"], "flags": r["flags"],
                    "gateway": r.get_attr("RTA_GATEWAY"), "priority": r.get_attr("RTA_PRIORITY"),
                    "prefsrc": r.get_attr("RTA_PREFSRC"),
                    "metrics": {k[5:].lower(): v for k, v in metrics["attrs"]} if metrics else None})
    return out


def _add_address(ipr: Any, idx: int, a: dict[str, Any], label: str) -> None:
    kw: dict[str, Any] = {"index": idx, "address": a["address"], "prefixlen": a["prefixlen"], "label": label,
                          "scope": a["scope"]}
    if a.get("local"):
        kw["local"] = a["local"]
    if a.get("broadcast"):
        kw["broadcast"] = a["broadcast"]
    if a.get("flags"):
        kw["IFA_FLAGS"] = a["flags"]
    if a.get("valid") is not None and a["valid"] != 0xFFFFFFFF:   # a lease: what was left of it
        kw["IFA_CACHEINFO"] = {"ifa_preferred": a["preferred"], "ifa_valid": a["valid"], "cstamp": 0, "tstamp": 0}
    try:
        ipr.addr("add", **kw)
    except Exception as e:
        if getattr(e, "code", None) != EEXIST:
            raise


def _add_route(ipr: Any, idx: int, r: dict[str, Any]) -> None:
    kw: dict[str, Any] = {"dst_len": r["dst_len"], "tos": r["tos"], "table": r["table"], "proto": r["proto"],
                          "scope": r["scope"], "type": r["type"], "flags": r["flags"], "oif": idx}
    for k in ("dst", "gateway", "priority", "prefsrc", "metrics"):
        if r.get(k) is not None:
            kw[k] = r[k]
    try:
        ipr.route("add", **kw)
    except Exception as e:
        if getattr(e, "code", None) != EEXIST:
            raise


def _label(a: dict[str, Any], old: str, new: str) -> str:
    """eth0:1 on IFACE is br:1 on the bridge, and back (the kernel names an address by its device)."""
    label = str(a.get("label") or old)
    return new + label[len(old):] if label.startswith(old) else new


# --- checks, before anything is made

def plan(ipr: Any, name: str, parent: str, subnet: str | None, gateway: str | None,
         force: bool) -> tuple[str, str]:
    """Check that IFACE can be an underlay's parent. -> (subnet, gateway) defaulted from IFACE."""
    found = ipr.link_lookup(ifname=parent)
    if not found:
        raise CgagentError(f"parent interface {parent!r} does not exist", "see `ip link` for the names")
    link = ipr.get_links(found[0])[0]
    info = link.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info else None
    if kind == "bridge":
        raise CgagentError(f"{parent} is a bridge itself",
                           "give the physical interface under it (see `ip link show master " + parent + "`)")
    if link.get_attr("IFLA_MASTER"):
        master = ipr.get_links(link.get_attr("IFLA_MASTER"))[0].get_attr("IFLA_IFNAME")
        raise CgagentError(f"{parent} is already enslaved to {master}",
                           f"give a free interface, or take it out first (ip link set {parent} nomaster)")
    if parent == "lo" or parent.startswith((BRIDGE_PREFIX, DEFAULT_BRIDGE, VETH_PREFIX, VXLAN_PREFIX)):
        raise CgagentError(f"{parent} cannot be an underlay's parent", "give a physical interface such as eth0")
    addrs = _addresses(ipr, found[0])
    if subnet is None:
        if not addrs:
            raise CgagentError(f"{parent} has no IPv4 address to take the subnet from", "give --subnet CIDR")
        subnet = str(ipaddress.IPv4Network(f"{addrs[0]['local'] or addrs[0]['address']}/{addrs[0]['prefixlen']}",
                                           strict=False))
    if gateway is None:
        default = [r for r in _routes(ipr, found[0]) if r["dst_len"] == 0 and r["gateway"] and r["table"] == 254]
        gateway = default[0]["gateway"] if default else (addrs[0]["local"] or addrs[0]["address"] if addrs else None)
    if gateway is None:
        raise CgagentError(f"{parent} has no address and no default route to serve as the workloads' gateway",
                           "give --gateway ADDR")
    if not force:
        _check_management(ipr, found[0], parent, addrs)
    return subnet, str(gateway)


def _check_management(ipr: Any, idx: int, parent: str, addrs: list[dict[str, Any]]) -> None:
    """Moving IFACE's addresses drops them for a moment; if IFACE holds every address the host is
    managed through (or the ssh session this runs in), a mistake there cuts the host off."""
    mine = {str(a["local"] or a["address"]) for a in addrs}
    if not mine:
        return
    ssh = os.environ.get("SSH_CONNECTION", "").split()
    if len(ssh) == 4 and ssh[2] in mine:
        raise CgagentError(f"{parent} carries this ssh session ({ssh[2]}): moving it could cut you off",
                           "run it from a console or another interface, or give --force")
    others = []
    for a in ipr.get_addr(family=AF_INET):
        if a["index"] == idx or a["scope"] != 0:   # 0: global
            continue
        ifname = ipr.get_links(a["index"])[0].get_attr("IFLA_IFNAME")
        if ifname != "lo" and not str(ifname).startswith((BRIDGE_PREFIX, DEFAULT_BRIDGE, VETH_PREFIX, VXLAN_PREFIX)):
            others.append(a)
    if not others:
        raise CgagentError(f"{parent} carries the route to this host's only management address "
                           f"({', '.join(sorted(mine))}): a failure while moving it cuts the host off",
                           "run it from a console, or give --force")


# --- create and restore

def create(net: Network, root: str | None) -> None:
    """Bridge, IFACE into it, its addresses and routes onto it; a failure puts all of it back."""
    assert net.parent and net.bridge
    ipr = netns.iproute()
    try:
        idx = ipr.link_lookup(ifname=net.parent)[0]
        link = ipr.get_links(idx)[0]
        rec = Record(network=net.name, parent=net.parent, bridge=net.bridge,
                     was_up=bool(link["flags"] & 1), addresses=_addresses(ipr, idx), routes=_routes(ipr, idx))
        try:
            for step in STEPS:
                rec.step = step
                _save(rec, root)
                faults.fault(step)   # step:STEP: a crash (SIGKILL) here, which `network rm` must undo
                fault(step)          # net:STEP: a failure here, which the rollback must undo
                _STEP[step](ipr, rec, idx, link)
            rec.step, rec.complete = "", True
            _save(rec, root)
        except BaseException:
            restore(ipr, rec, root)
            raise
    finally:
        ipr.close()


def _step_record(ipr: Any, rec: Record, idx: int, link: Any) -> None:
    """Nothing but the record: a fault here proves a record alone is undone."""


def _step_bridge(ipr: Any, rec: Record, idx: int, link: Any) -> None:
    # IFACE's MAC, so the LAN's ARP caches (and a DHCP server's leases) stay right for the host's address
    kw: dict[str, Any] = {"ifname": rec.bridge, "kind": "bridge", "address": link.get_attr("IFLA_ADDRESS"),
                          "br_stp_state": 0, "br_forward_delay": 0}
    ipr.link("add", **kw)


def _step_enslave(ipr: Any, rec: Record, idx: int, link: Any) -> None:
    br = ipr.link_lookup(ifname=rec.bridge)[0]
    ipr.link("set", index=idx, master=br)
    ipr.link("set", index=br, state="up")
    ipr.link("set", index=idx, state="up")


def _step_addresses(ipr: Any, rec: Record, idx: int, link: Any) -> None:
    br = ipr.link_lookup(ifname=rec.bridge)[0]
    for a in reversed(rec.addresses):   # secondaries first: deleting a primary would take them along
        with contextlib.suppress(Exception):
            ipr.addr("del", index=idx, address=a["local"] or a["address"], prefixlen=a["prefixlen"])
    for a in rec.addresses:
        _add_address(ipr, br, a, _label(a, rec.parent, rec.bridge))


def _step_routes(ipr: Any, rec: Record, idx: int, link: Any) -> None:
    br = ipr.link_lookup(ifname=rec.bridge)[0]
    for r in rec.routes:
        _add_route(ipr, br, r)


_STEP = {"ul-record": _step_record, "ul-bridge": _step_bridge, "ul-enslave": _step_enslave,
         "ul-addresses": _step_addresses, "ul-routes": _step_routes}


def restore(ipr: Any, rec: Record, root: str | None) -> None:
    """Put IFACE back as the record found it, from whatever state (idempotent), then drop the record."""
    found = ipr.link_lookup(ifname=rec.parent)
    for br in ipr.link_lookup(ifname=rec.bridge):   # the bridge's addresses and routes go with it
        if found:
            with contextlib.suppress(Exception):
                ipr.link("set", index=found[0], master=0)
        ipr.link("del", index=br)
    if found:
        idx = found[0]
        have = [(a["local"] or a["address"], a["prefixlen"]) for a in _addresses(ipr, idx)]
        want = [(a["local"] or a["address"], a["prefixlen"]) for a in rec.addresses]
        if have != want:
            for addr, plen in reversed(have):
                with contextlib.suppress(Exception):
                    ipr.addr("del", index=idx, address=addr, prefixlen=plen)
            for a in rec.addresses:
                _add_address(ipr, idx, a, _label(a, rec.parent, rec.parent))
        ipr.link("set", index=idx, state="up" if rec.was_up else "down")
        for r in rec.routes:
            _add_route(ipr, idx, r)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_path(rec.network, root))


def remove(net: Network, root: str | None) -> None:
    """`network rm` of an underlay: IFACE back as it was (after a crash too: the record says what)."""
    rec = load(net.name, root)
    if rec is None:
        return
    ipr = netns.iproute()
    try:
        restore(ipr, rec, root)
    finally:
        ipr.close()


def check_ready(net: Network, root: str | None) -> None:
    rec = load(net.name, root)
    if rec is None or not rec.complete:
        raise CgagentError(f"underlay network {net.name!r} was not made whole (interrupted create)",
                           f"`cgagent network rm {net.name}` (it restores {net.parent}), then create it again")


def bridge_index(ipr: Any, net: Network) -> int:
    found = ipr.link_lookup(ifname=net.bridge)
    if not found:
        raise CgagentError(f"the bridge {net.bridge} of underlay network {net.name!r} is gone",
                           f"`cgagent network rm {net.name}` (it restores {net.parent}), then create it again")
    return int(found[0])
