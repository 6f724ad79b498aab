"""A workload's veth pair: host end on a bridge, the other end created straight in the workload's
namespace as eth0, with its address and default route."""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from typing import Any

from cgagent.errors import CgagentError
from cgagent.network import netns

EEXIST = 17
ENODEV = 19
# how long a removal waits for the kernel to delete the pair with the workload's namespace before
# deleting it itself: ~1 ms when the namespace died with the workload; a namespace another process
# still holds (a `--net container:` workload) never frees it
GONE_WAIT = 0.05


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


def remove(ipr: Any, host_name: str, wait: float = GONE_WAIT) -> bool:
    """Make sure the pair is gone, by its host end. -> True when it is (False: the delete failed).

    When the workload's namespace dies with it, the kernel deletes the pair itself, within a
    millisecond or so; deleting it ourselves meanwhile costs ~20 ms (the unregister's RCU waits) and
    races the kernel's own cleanup. So: wait for the kernel's RTM_DELLINK, and delete only when it
    does not come (someone still holds the namespace)."""
    with _LinkEvents() as events:   # subscribed before the look-up: the deletion cannot slip between
        found = ipr.link_lookup(ifname=host_name)
        if not found:
            return True
        idx = int(found[0])
        if events.deleted(idx, time.monotonic() + wait):
            return True
    try:
        ipr.link("del", index=idx)
    except Exception as e:   # NetlinkError
        return getattr(e, "code", None) == ENODEV or not ipr.link_lookup(ifname=host_name)
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
