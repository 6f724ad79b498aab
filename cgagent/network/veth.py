"""A workload's veth pair: host end on a bridge, the other end created straight in the workload's
namespace as eth0, with its address and default route."""

from __future__ import annotations

import errno
import os
import time

from cgagent.errors import CgagentError
from cgagent.network import netns, rtnl

# how long a removal waits for the kernel to delete the pair with the workload's namespace before
# deleting it itself: ~1 ms when the namespace died with the workload; a namespace another process
# still holds (a `--net container:` workload) never frees it
GONE_WAIT = 0.05


def create(host_name: str, bridge_idx: int, ns_path: str, mac: str, inner: str = "eth0") -> None:
    """The pair, `inner` (with MAC `mac`, which the anti-spoofing rule names) inside the namespace."""
    fd = netns.open_ns(ns_path)
    try:
        with rtnl.Rtnl() as rt:   # on the bridge and up as it is born: one request
            rt.veth(host_name, bridge_idx, inner, fd, mac)
    except rtnl.NetlinkError as e:
        if e.code == errno.EEXIST:
            raise CgagentError(f"the workload already has an interface named {inner}",
                               "connect it to one network only") from None
        raise
    finally:
        os.close(fd)


def configure_inside(ns_path: str, ifname: str, address: str, prefixlen: int, gateway: str | None) -> None:
    """Inside the workload: address, up, lo up, default route (one sendmsg)."""
    with rtnl.Rtnl(ns_path) as rt:
        found = rt.link(ifname)
        if found is None:
            raise CgagentError(f"the workload's {ifname} vanished while it was being connected", "run it again")
        rt.configure(found[0], address, prefixlen, gateway)


def configure_renamed(ns_path: str, ifname: str, address: str, prefixlen: int, gateway: str | None,
                      rename_to: str) -> str:
    """configure_inside() for a link that comes in under a temporary name (macvlan). -> its MAC."""
    ipr = netns.iproute(ns_path)
    try:
        idx = ipr.link_lookup(ifname=ifname)[0]
        ipr.link("set", index=idx, ifname=rename_to)
        mac = str(ipr.get_links(idx)[0].get("address"))
    finally:
        ipr.close()
    configure_inside(ns_path, rename_to, address, prefixlen, gateway)
    return mac


# host end -> (its rtnetlink socket, link events subscribed before the look-up, its index or None)
_watched: dict[str, tuple[rtnl.Rtnl, rtnl.LinkEvents, int | None]] = {}


def _watch(host_name: str) -> tuple[rtnl.Rtnl, rtnl.LinkEvents, int | None]:
    rt = rtnl.Rtnl()
    try:
        events = rtnl.LinkEvents()   # before the look-up: a deletion after it is seen
    except BaseException:
        rt.sock.close()
        raise
    try:
        found = rt.link(host_name)
    except BaseException:
        rt.sock.close()
        events.sock.close()
        raise
    return rt, events, found[0] if found is not None else None


def watch(host_name: str) -> None:
    """Start watching for the pair's deletion now, for a later remove(host_name) in this process:
    the kernel deletes it a few ms after the workload's namespace died (its RCU grace periods), and
    what the caller does meanwhile (the cgroup's removal, the overlay's) is then not followed by a
    wait of the same length. Idempotent."""
    if host_name not in _watched:
        _watched[host_name] = _watch(host_name)


def remove(host_name: str, wait: float = GONE_WAIT) -> bool:
    """Make sure the pair is gone, by its host end. -> True when it is (False: the delete failed).

    When the workload's namespace dies with it, the kernel deletes the pair itself, within a
    millisecond or so; deleting it ourselves meanwhile costs ~20 ms (the unregister's RCU waits) and
    races the kernel's own cleanup. So: wait for the kernel's RTM_DELLINK (watched since watch()
    when it was called), and delete only when it does not come (someone still holds the namespace)."""
    rt, events, idx = _watched.pop(host_name) if host_name in _watched else _watch(host_name)
    with rt, events:
        if idx is None or events.deleted(idx, time.monotonic() + wait):
            return True
        try:
            rt.delete(idx)
        except rtnl.NetlinkError as e:
            return e.code == errno.ENODEV or rt.link(host_name) is None
    return True
