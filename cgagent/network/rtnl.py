"""The few rtnetlink requests a bridged launch makes, written here instead of through pyroute2.

A launch asks for a link by name, the bridge's addresses, one veth pair, and inside the workload's
namespace an address, two links up and a default route. Through pyroute2 each request is a Python
object tree encoded and decoded, and each new process first pays ~5 ms building pyroute2's
per-process machinery: ~25 ms of a launch under load, for ~1 ms of kernel work. Here each request is
a few struct.pack calls, and the requests made inside the namespace go in one sendmsg (the kernel
runs them in order; one ack each). Everything else (creating bridges, vxlan, macvlan, listings for
prune) stays with pyroute2.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import time
from collections.abc import Iterator

from cgagent.network import netns
from cgagent.wakeup import ready_to_read

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE = 24
RTMGRP_LINK = 1
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFF_UP = 0x1
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 10, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_GATEWAY = 5
RT_TABLE_MAIN, RTPROT_STATIC, RTN_UNICAST = 254, 4, 1
LOOPBACK_INDEX = 1   # lo is interface 1 in every network namespace

_HDR = struct.Struct("=IHHII")        # nlmsghdr
_IFINFO = struct.Struct("=BxHiII")    # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")     # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg
_ATTR = struct.Struct("=HH")


class NetlinkError(OSError):
    """A request the kernel refused; `code` is the errno (as pyroute2's NetlinkError has it)."""

    def __init__(self, code: int) -> None:
        super().__init__(code, os.strerror(code))
        self.code = code


def _attr(kind: int, data: bytes) -> bytes:
    raw = _ATTR.pack(_ATTR.size + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def _name(kind: int, name: str) -> bytes:
    return _attr(kind, name.encode() + b"\0")


def _mac(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def _messages(data: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """(type, flags, seq, offset, length) of each netlink message in one datagram."""
    off = 0
    while off + _HDR.size <= len(data):
        length, kind, flags, seq, _ = _HDR.unpack_from(data, off)
        if length < _HDR.size:
            return
        yield kind, flags, seq, off, length
        off += (length + 3) & ~3


def _attrs(data: bytes, off: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while off + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, off)
        if length < _ATTR.size:
            break
        out.setdefault(kind & 0x3FFF, data[off + _ATTR.size:off + length])
        off += (length + 3) & ~3
    return out


class Rtnl:
    """An rtnetlink socket in the namespace `path` (None: this thread's); a context manager."""

    def __init__(self, path: str | None = None) -> None:
        with netns.entered(path):   # a netlink socket keeps the namespace it was opened in
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _msg(self, kind: int, flags: int, body: bytes) -> tuple[int, bytes]:
        self.seq += 1
        return self.seq, _HDR.pack(_HDR.size + len(body), kind, flags | NLM_F_REQUEST, self.seq, 0) + body

    def _talk(self, msgs: list[tuple[int, bytes]]) -> list[tuple[int, bytes, int]]:
        """Send `msgs` in one sendmsg; -> every answer (type, message, offset of its body) until each
        has its ack or its dump's end. The first refusal raises, after all answers are read."""
        self.sock.sendall(b"".join(m for _, m in msgs))
        waiting = {seq for seq, _ in msgs}
        answers: list[tuple[int, bytes, int]] = []
        error = 0
        while waiting:
            data = self.sock.recv(1 << 16)
            for kind, flags, seq, off, length in _messages(data):
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, off + _HDR.size)[0]
                    error = error or code
                    waiting.discard(seq)
                elif kind == NLMSG_DONE:
                    waiting.discard(seq)
                else:
                    answers.append((kind, data[off:off + length], _HDR.size))
                    if not flags & NLM_F_MULTI:
                        waiting.discard(seq)
        if error:
            raise NetlinkError(error)
        return answers

    def link(self, name: str) -> tuple[int, int] | None:
        """(index, flags) of the link called `name`; None when there is none."""
        try:
            got = self._talk([self._msg(RTM_GETLINK, 0, _IFINFO.pack(0, 0, 0, 0, 0) + _name(IFLA_IFNAME, name))])
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise
        for kind, msg, off in got:
            if kind == RTM_NEWLINK:
                _, _, index, flags, _ = _IFINFO.unpack_from(msg, off)
                return index, flags
        return None

    def ipv4_addresses(self, index: int) -> set[str]:
        """The IPv4 addresses on interface `index`."""
        out = set()
        dump = self._msg(RTM_GETADDR, NLM_F_DUMP, _IFADDR.pack(socket.AF_INET, 0, 0, 0, 0))
        for kind, msg, off in self._talk([dump]):
            if kind != RTM_NEWADDR:
                continue
            family, _, _, _, idx = _IFADDR.unpack_from(msg, off)
            addr = _attrs(msg, off + _IFADDR.size).get(IFA_ADDRESS)
            if family == socket.AF_INET and idx == index and addr and len(addr) == 4:
                out.add(socket.inet_ntoa(addr))
        return out

    def up(self, index: int) -> None:
        self._talk([self._up(index)])

    def _up(self, index: int) -> tuple[int, bytes]:
        return self._msg(RTM_NEWLINK, NLM_F_ACK, _IFINFO.pack(0, 0, index, IFF_UP, IFF_UP))

    def delete(self, index: int) -> None:
        self._talk([self._msg(RTM_DELLINK, NLM_F_ACK, _IFINFO.pack(0, 0, index, 0, 0))])

    def veth(self, host: str, master: int, peer: str, ns_fd: int, mac: str) -> None:
        """The pair: `host` up on bridge `master`, `peer` (MAC `mac`, down) born in namespace `ns_fd`."""
        peer_info = _IFINFO.pack(0, 0, 0, 0, 0) + _name(IFLA_IFNAME, peer) + \
            _attr(IFLA_NET_NS_FD, struct.pack("=I", ns_fd)) + _attr(IFLA_ADDRESS, _mac(mac))
        info = _name(IFLA_INFO_KIND, "veth") + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_info))
        body = _IFINFO.pack(0, 0, 0, IFF_UP, IFF_UP) + _name(IFLA_IFNAME, host) + \
            _attr(IFLA_MASTER, struct.pack("=I", master)) + _attr(IFLA_LINKINFO, info)
        self._talk([self._msg(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)])

    def configure(self, index: int, address: str, prefixlen: int, gateway: str | None) -> None:
        """Address on `index`, it and lo up, default route via `gateway`: one sendmsg, in that order."""
        addr = ipaddress.IPv4Address(address).packed
        msgs = [self._msg(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                          _IFADDR.pack(socket.AF_INET, prefixlen, 0, 0, index)
                          + _attr(IFA_LOCAL, addr) + _attr(IFA_ADDRESS, addr)),
                self._up(index), self._up(LOOPBACK_INDEX)]
        if gateway:
            msgs.append(self._msg(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                                  _RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, 0, RTN_UNICAST, 0)
                                  + _attr(RTA_GATEWAY, ipaddress.IPv4Address(gateway).packed)))
        self._talk(msgs)


class LinkEvents:
    """This namespace's link notifications (RTMGRP_LINK); a context manager. Subscribe before looking a
    link up, and no change of it can slip between the look-up and the wait."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        try:
            self.sock.bind((0, RTMGRP_LINK))
        except BaseException:
            self.sock.close()
            raise

    def __enter__(self) -> LinkEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def deleted(self, index: int, deadline: float) -> bool:
        """True once interface `index` is deleted (not merely leaving its bridge: that RTM_DELLINK is
        AF_BRIDGE's), False at the deadline (time.monotonic()) or when events were lost (look again)."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not ready_to_read([self.sock.fileno()], left):
                return False
            try:
                data = self.sock.recv(1 << 16)
            except OSError:   # ENOBUFS: events were dropped
                return False
            for kind, _, _, off, length in _messages(data):
                if kind == RTM_DELLINK and length >= _HDR.size + _IFINFO.size:
                    family, _, idx, _, _ = _IFINFO.unpack_from(data, off + _HDR.size)
                    if family == socket.AF_UNSPEC and idx == index:
                        return True
