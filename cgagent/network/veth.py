"""A workload's veth pair: host end on a bridge, the other end created straight in the workload's
namespace as eth0, with its address and default route."""

from __future__ import annotations

import os
import select
import socket
import struct
import time

from cgagent.errors import CgagentError
from cgagent.network import netns, rtnl

EEXIST = 17
ENODEV = 19
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
        if e.code == EEXIST:
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


def remove(host_name: str, wait: float = GONE_WAIT) -> bool:
    """Make sure the pair is gone, by its host end. -> True when it is (False: the delete failed).

    When the workload's namespace dies with it, the kernel deletes the pair itself, within a
    millisecond or so; deleting it ourselves meanwhile costs ~20 ms (the unregister's RCU waits) and
    races the kernel's own cleanup. So: wait for the kernel's RTM_DELLINK, and delete only when it
    does not come (someone still holds the namespace)."""
    with rtnl.Rtnl() as rt, _LinkEvents() as events:   # subscribed before the look-up: no deletion slips between
        found = rt.link(host_name)
        if found is None:
            return True
        idx = found[0]
        if events.deleted(idx, time.monotonic() + wait):
            return True
        try:
            rt.delete(idx)
        except rtnl.NetlinkError as e:
            return e.code == ENODEV or rt.link(host_name) is None
    return True


RTMGRP_LINK = 1
RTM_DELLINK = 17
_NLMSG = struct.Struct("=IHHII")     # nlmsghdr
_IFINFO = struct.Struct("=BBHiII")   # ifinfomsg: family, pad, type, index, flags, change


class _LinkEvents:
    """The host's link notifications (rtnetlink RTMGRP_LINK), read raw: a few bytes per event."""

    def __enter__(self) -> _LinkEvents:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        try:
            self.sock.bind((0, RTMGRP_LINK))
        except BaseException:
            self.sock.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def deleted(self, index: int, deadline: float) -> bool:
        """True once interface `index` is deleted (not merely leaving its bridge: that RTM_DELLINK is
        AF_BRIDGE's), False at the deadline or when events were lost (the caller looks again)."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                return False
            try:
                data = self.sock.recv(65536)
            except OSError:   # ENOBUFS: events were dropped
                return False
            off = 0
            while off + _NLMSG.size + _IFINFO.size <= len(data):
                length, kind = _NLMSG.unpack_from(data, off)[:2]
                if length < _NLMSG.size:
                    break
                family, _, _, idx, _, _ = _IFINFO.unpack_from(data, off + _NLMSG.size)
                if kind == RTM_DELLINK and family == socket.AF_UNSPEC and idx == index:
                    return True
                off += (length + 3) & ~3
