"""Connecting a workload's network namespace to a network, and undoing it on every exit path.

The attachment record (<root>/networks/attachments/<owner>.json) is written before any link is made
and names everything connect makes, so disconnect and prune can always finish the job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from cgagent import procs
from cgagent.errors import CgagentError
from cgagent.network import (
    BRIDGE_PREFIX,
    DEFAULT_BRIDGE,
    VETH_PREFIX,
    VXLAN_PREFIX,
    bridge,
    config,
    etc_dir,
    fault,
    files,
    is_pool,
    net_dir,
    netns,
    nft,
    proxy,
    veth,
)
from cgagent.network.config import Network
from cgagent.network.ipam import Ipam
from cgagent.state import FILE_MODE, atomic_write, validate_name

PROTOS = ("tcp", "udp")


@dataclass
class Attachment:
    """One workload's place on one network: its namespace, link, address and ports."""

    owner: str
    network: str
    driver: str
    netns: str                           # the namespace: its pid's, else the path given at connect time
    pid: int | None = None               # a process in that namespace: liveness for prune
    pid_start: int | None = None
    host_if: str | None = None           # bridge drivers: the host end of the veth pair
    address: str | None = None
    prefixlen: int = 0
    gateway: str | None = None
    mac: str | None = None
    ports: list[list[Any]] = field(default_factory=list)   # [proto, host port, workload port, host address]
    hostname: str | None = None
    created: float = 0.0
    proxy_pid: int | None = None         # the loopback ports' relay (proxy.py)
    proxy_start: int | None = None
    dns: list[str] = field(default_factory=list)           # --dns: its resolv.conf's nameservers
    extra_hosts: list[str] = field(default_factory=list)   # --add-host: lines of its hosts file

    def port_tuples(self) -> list[tuple[str, int, int, str]]:
        return [(str(p[0]), int(p[1]), int(p[2]), str(p[3]) if len(p) > 3 else nft.ANY) for p in self.ports]


def _adir(root: str | None) -> str:
    return os.path.join(net_dir(root), "attachments")


def ipam_for(net: Network, root: str | None = None) -> Ipam:
    first = last = None
    if net.ip_range:
        rng = ipaddress.IPv4Network(net.ip_range)
        first, last = str(rng.network_address), str(rng.broadcast_address)
    return Ipam(os.path.join(net_dir(root), "ipam", net.name), net.pool, net.gateway, first, last)


def load(owner: str, root: str | None = None) -> Attachment | None:
    try:
        with open(os.path.join(_adir(root), f"{owner}.json")) as f:
            return Attachment(**json.load(f))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def _save(att: Attachment, root: str | None) -> None:
    # not durable: what it names (links, an address in use, a proxy) dies with a power loss, and
    # prune removes an attachment that a power loss tore, and the address it held
    os.makedirs(_adir(root), mode=0o755, exist_ok=True)
    atomic_write(os.path.join(_adir(root), f"{att.owner}.json"),
                 json.dumps(asdict(att), indent=1, sort_keys=True).encode() + b"\n", durable=False)


def _stale_file(root: str | None) -> str:
    return os.path.join(net_dir(root), "stale-ports.json")


def _stale(root: str | None) -> tuple[nft.Port, ...]:
    """Ports whose links are gone and whose anti-spoofing elements the next nft run forgets."""
    try:
        with open(_stale_file(root)) as f:
            return tuple((str(a), str(b), str(c)) for a, b, c in json.load(f))
    except (OSError, ValueError, TypeError):
        return ()


def _set_stale(root: str | None, ports: tuple[nft.Port, ...]) -> None:
    # in place and kept when empty: each teardown adds a port and the next launch empties the list,
    # and a rename or an unlink would allocate and free an inode each time. Not durable: a list a
    # crash tore or lost leaves elements of gone ports, which guard nothing, and prune finds them
    # by listing the table
    files.write_in_place(_stale_file(root), json.dumps([list(p) for p in ports]), FILE_MODE)


def _forget_stale(root: str | None) -> None:
    stale = _stale(root)
    if stale:
        nft.forget_ports(stale)
        _set_stale(root, ())


def all_attachments(root: str | None = None) -> list[Attachment]:
    try:
        names = sorted(os.listdir(_adir(root)))
    except FileNotFoundError:
        return []
    out = []
    for fn in names:
        if fn.endswith(".json"):
            a = load(fn[:-5], root)
            if a is not None:
                out.append(a)
    return out


def _unreadable(root: str | None, read: set[str]) -> list[str]:
    """Owners whose attachment file exists but did not load (not among `read`)."""
    with contextlib.suppress(FileNotFoundError):
        return sorted(fn[:-5] for fn in os.listdir(_adir(root)) if fn.endswith(".json") and fn[:-5] not in read)
    return []


def parse_ports(specs: list[str]) -> list[tuple[str, int, int, str]]:
    """[IP:]HOSTPORT:CTRPORT[/tcp|udp] (Docker's syntax) -> (proto, host port, workload port, host
    address); no address (or 0.0.0.0) is every address of the host, loopback included."""
    out: list[tuple[str, int, int, str]] = []
    for s in specs:
        body, _, proto = s.partition("/")
        proto = proto or "tcp"
        parts = body.split(":")
        try:
            if len(parts) not in (2, 3) or proto not in PROTOS:
                raise ValueError
            hip = str(ipaddress.IPv4Address(parts[0])) if len(parts) == 3 else nft.ANY
            h, c = int(parts[-2]), int(parts[-1])
            if not (0 < h < 65536 and 0 < c < 65536):
                raise ValueError
        except ValueError:
            raise CgagentError(f"-p {s!r} is not [IP:]HOSTPORT:CTRPORT[/tcp|udp]",
                               "e.g. -p 8080:80, -p 127.0.0.1:8080:80 or -p 5353:53/udp") from None
        if any(_clash((proto, h, hip), (p, hp2, ip2)) for p, hp2, _, ip2 in out):
            raise CgagentError(f"port {h}/{proto} is given twice", "publish each host port once")
        out.append((proto, h, c, hip))
    return out


def _clash(a: tuple[str, int, str], b: tuple[str, int, str]) -> bool:
    """Two publications of one host port collide unless both name different addresses."""
    return a[:2] == b[:2] and (a[2] == b[2] or nft.ANY in (a[2], b[2]))


def loopback_ports(ports: list[tuple[str, int, int, str]]) -> list[tuple[str, int, int, str]]:
    """The ports the proxy serves: explicit loopback ones, and 127.0.0.1 for every-address ones."""
    return [(p, h, c, "127.0.0.1" if ip == nft.ANY else ip) for p, h, c, ip in ports
            if ip == nft.ANY or ip.startswith("127.")]


def alive(att: Attachment) -> bool:
    if att.pid is not None:
        return procs.alive(att.pid, att.pid_start)
    return os.path.exists(att.netns)


# --- connect / disconnect

def connect(owner: str, network: str, ns_path: str, pid: int | None = None, ports: list[str] | None = None,
            hostname: str | None = None, root: str | None = None, ip: str | None = None,
            dns: list[str] | None = None, extra_hosts: list[str] | None = None, pool: bool = False) -> Attachment:
    """Connect the namespace `ns_path` to `network` for `owner`. With `pid`, that process joins it (or
    is in it): its liveness is the connection's. `pool`: a connection made ahead by this process,
    which holds the namespace (cgagent.network.slot), under a POOL_OWNER name; no files of its own."""
    if pool:
        assert is_pool(owner) and pid is None
    else:
        validate_name(owner)
    static = static_ip(ip)
    wanted = parse_ports(list(ports or []))
    with config.lock(root):
        if load(owner, root) is not None:
            raise CgagentError(f"{owner!r} is already connected", f"`cgagent network disconnect {owner}` first")
        net = config.load(network, root)
        if wanted and (net.driver == "macvlan" or net.underlay):
            raise CgagentError("-p needs a NAT bridge or vxlan network",
                               "macvlan and underlay workloads are reachable directly")
        check_addressing(net, static, root)
        _check_ports(wanted, root)
        if net.driver == "macvlan":
            _check_parent(net)
        if not os.path.exists(ns_path):
            raise CgagentError(f"network namespace {ns_path} does not exist", "is the workload running?")
        if net.driver != "macvlan" or wanted:
            nft.check_installed()
        first_use = not config.made(net.name, root)
        if first_use:   # the default network, made on first use
            config.check_default(net, root, host_facts()[1])
        ipam = ipam_for(net, root)
        # raises "network is full" / "in use" with nothing made
        addr = ipam.reserve(static, owner, net.name) if static else ipam.allocate(owner, net.name)
        # with `pid`, the namespace is that process's once it has joined it (a forked workload that
        # waits for "go" joins the one `ns_path` names only then): the links are made through ns_path
        holder = os.getpid() if pool else pid
        att = Attachment(owner=owner, network=net.name, driver=net.driver, pid=holder,
                         netns=f"/proc/{pid}/ns/net" if pid else ns_path,
                         pid_start=procs.start_time(holder) if holder else None, address=str(addr),
                         prefixlen=ipaddress.IPv4Network(net.pool).prefixlen, gateway=net.gateway,
                         ports=[list(p) for p in wanted], hostname=hostname, created=time.time(),
                         dns=list(dns or []), extra_hosts=list(extra_hosts or []))
        stale = _stale(root)
        if net.driver != "macvlan":
            att.host_if = _port_name({p[0] for p in stale})
            att.mac = _random_mac()
        go_fd = None
        try:
            _save(att, root)
            fault("record")
            if first_use:
                config.save(net, root)
            _plumb(net, att, ns_path, root, stale)
            nft.publish(att.port_tuples(), str(addr))
            fault("publish")
            listeners = proxy.bind(loopback_ports(att.port_tuples()))
            if listeners:
                att.proxy_pid, go_fd = proxy.start(listeners, str(addr), att.host_if)
                att.proxy_start = procs.start_time(att.proxy_pid)
            fault("proxy")
            if att.proxy_pid or net.driver == "macvlan":   # else nothing changed since the first save
                _save(att, root)   # the proxy's pid; macvlan: its MAC, how teardown finds the link inside
            if not pool:
                _write_files(att, root)
                _refresh_hosts(net.name, root)
            fault("files")
        except BaseException:
            if go_fd is not None:
                os.close(go_fd)   # the proxy ends by itself, unstarted
            _rollback(att, net, first_use, root)
            raise
        if go_fd is not None:
            proxy.go(go_fd)
    return att


def adopt(pool_owner: str, owner: str, pid: int, hostname: str | None = None, root: str | None = None,
          dns: list[str] | None = None, extra_hosts: list[str] | None = None) -> Attachment:
    """`owner`'s workload (process `pid`, which joins the namespace) takes over the connection made
    ahead under `pool_owner` (cgagent.network.slot): its record, its address, its files; the links
    and the port's guard stay as they are. Raises, changing nothing, when that connection is gone."""
    validate_name(owner)
    with config.lock(root):
        if load(owner, root) is not None:
            raise CgagentError(f"{owner!r} is already connected", f"`cgagent network disconnect {owner}` first")
        att = load(pool_owner, root)
        if att is None or not att.address:
            raise CgagentError("the network connection made ahead for this run is gone (the network was "
                               "removed meanwhile)", "run the workload again")
        net = config.load(att.network, root)
        mine = dataclasses.replace(att, owner=owner, pid=pid, pid_start=procs.start_time(pid),
                                   netns=f"/proc/{pid}/ns/net", hostname=hostname, dns=list(dns or []),
                                   extra_hosts=list(extra_hosts or []))
        _save(mine, root)   # first: a crash from here leaves two records of one port, both of the dead
        try:
            ipam_for(net, root).reown(att.address, pool_owner, owner)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(_adir(root), f"{owner}.json"))
            raise
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(_adir(root), f"{pool_owner}.json"))
        _write_files(mine, root)
        _refresh_hosts(net.name, root)
    return mine


def warm(root: str | None = None) -> None:
    """Pay, at idle, what the first bridged connect of a process pays once: the nft context and its
    first netlink exchange, and the first reads and parses of the network's files (a process forked
    from the agent's launcher has its modules, not these). Reads only, and nothing at all where the
    default network was never made. Saves ~2.3 ms of a bridged connect in a runner (7.9 -> 5.6 ms,
    timed per phase in a process forked as a runner is)."""
    if not config.made(root=root):
        return
    nft.warm()
    net = config.load(config.DEFAULT_NETWORK, root)
    ipam_for(net, root).entries()
    all_attachments(root)


def static_ip(ip: str | None) -> ipaddress.IPv4Address | None:
    if ip is None:
        return None
    try:
        return ipaddress.IPv4Address(ip)
    except ValueError:
        raise CgagentError(f"--ip {ip!r} is not an IPv4 address", "e.g. --ip 192.168.1.200") from None


def check_addressing(net: Network, static: ipaddress.IPv4Address | None, root: str | None) -> None:
    """An underlay hands out addresses on the LAN only from the range the user reserved for it."""
    if not net.underlay:
        return
    from cgagent.network import underlay

    underlay.check_ready(net, root)
    if static is None and not net.ip_range:
        raise CgagentError(f"underlay network {net.name!r} has no --ip-range: each workload needs --ip ADDR",
                           "give --ip (an address of the LAN nobody else uses), or recreate it with --ip-range")


def _port_name(taken: set[str]) -> str:
    """A host end's name; never one whose old elements are still in the table (`taken`)."""
    while (name := VETH_PREFIX + os.urandom(4).hex()) in taken:
        pass
    return name


def _random_mac() -> str:
    """Locally administered, unicast: known before the link exists, so the anti-spoofing rule is in
    place before the workload's first frame."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def _rollback(att: Attachment, net: Network, first_use: bool, root: str | None) -> None:
    """A connect that failed: remove what it made, and the network's devices too when nobody else
    uses them (a half-made bridge must not be taken for a whole one by the next run)."""
    _teardown(att, net, root)
    if not any(a.network == net.name for a in all_attachments(root)):
        with contextlib.suppress(Exception):
            _devices_remove(net, root)
        if first_use:
            config.delete(net.name, root)


def _check_ports(wanted: list[tuple[str, int, int, str]], root: str | None) -> None:
    if not wanted:
        return
    taken = {(p, h, ip): a.owner for a in all_attachments(root) for p, h, _, ip in a.port_tuples()}
    taken.update({k: v[0] for k, v in nft.published().items() if k not in taken})
    local: set[str] | None = None
    for p, h, _, ip in wanted:
        for key, who in taken.items():
            if _clash((p, h, ip), key):
                raise CgagentError(f"port {h}/{p} is already published (by {who})", "choose another host port")
        if ip != nft.ANY and not ip.startswith("127."):
            local = host_addresses() if local is None else local
            if ip not in local:
                raise CgagentError(f"-p {ip}:{h}: {ip} is not an address of this host",
                                   "give one of `ip -4 addr` (or none for every address)")


def host_addresses() -> set[str]:
    ipr = netns.iproute()
    try:
        # IFA_LOCAL is the host's own end on point-to-point links, where IFA_ADDRESS is the peer's
        return {str(a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(family=2)}
    finally:
        ipr.close()


def _check_parent(net: Network) -> None:
    ipr = netns.iproute()
    try:
        if not ipr.link_lookup(ifname=net.parent):
            raise CgagentError(f"parent interface {net.parent!r} does not exist", "see `ip link` for the names")
    finally:
        ipr.close()


def _plumb(net: Network, att: Attachment, ns: str, root: str | None, stale: tuple[nft.Port, ...] = ()) -> None:
    """Make the links, the workload's end in namespace `ns`; the nft run that guards the new port
    forgets the `stale` ones."""
    assert att.address
    if net.driver == "macvlan":
        from cgagent.network import macvlan

        assert net.parent
        tmp = "cgt" + os.urandom(4).hex()
        ipr = netns.iproute()
        try:
            macvlan.create(ipr, net.parent, ns, tmp)
        finally:
            ipr.close()
        att.mac = veth.configure_renamed(ns, tmp, att.address, att.prefixlen, att.gateway, "eth0")
        return
    assert att.host_if and att.mac
    port = (att.host_if, att.mac, att.address)
    # the port's anti-spoofing rule goes in with the network's, before the port exists
    if net.driver == "vxlan" or net.underlay:
        from cgagent.network import underlay, vxlan

        ipr = netns.iproute()
        try:
            if net.driver == "vxlan":
                vxlan.ensure(ipr, net)
            if net.underlay:
                br = underlay.bridge_index(ipr, net)
                nft.guard(port, stale)
        finally:
            ipr.close()
    if not net.underlay:
        br = bridge.ensure(net, root, port, stale)
    if stale:
        _set_stale(root, ())
    fault("bridge")
    veth.create(att.host_if, br, ns, att.mac)
    fault("veth")
    veth.configure_inside(ns, "eth0", att.address, att.prefixlen, att.gateway)
    fault("inside")


def _write_files(att: Attachment, root: str | None) -> None:
    d = etc_dir(att.owner, root)
    files.write_in_place(os.path.join(d, "resolv.conf"), files.resolv_conf(dns=att.dns))


def _names(a: Attachment) -> list[str]:
    return [n for n in dict.fromkeys([a.hostname or a.owner, a.owner]) if n]


def _refresh_hosts(network: str, root: str | None) -> None:
    """Every workload on `network` gets a hosts file naming all of them."""
    members = [a for a in all_attachments(root) if a.network == network and a.address and not is_pool(a.owner)]
    for a in members:
        others = [(str(b.address), _names(b)) for b in members if b.owner != a.owner]
        files.write_in_place(os.path.join(etc_dir(a.owner, root), "hosts"),
                             files.hosts((str(a.address), _names(a)), others, a.extra_hosts))


def _teardown(att: Attachment, net: Network | None, root: str | None) -> None:
    """Undo whatever of `att` exists: ports, proxy, veth, guard, address, files, record. Never raises."""
    if att.proxy_pid:
        with contextlib.suppress(Exception):
            proxy.stop(att.proxy_pid, att.proxy_start)
    with contextlib.suppress(Exception):
        if att.address:
            nft.unpublish(att.port_tuples(), att.address)
    if att.host_if:
        gone = False
        with contextlib.suppress(Exception):
            gone = veth.remove(att.host_if)
        # a port that is still there stays guarded (prune removes both later); a gone one's elements
        # guard nothing and go with the next nft run (a connect's), which saves each workload's end
        # an nft commit (~10 ms of kernel waits); no new port is given a name on that list
        with contextlib.suppress(Exception):
            if gone and att.mac and att.address:
                _set_stale(root, (*_stale(root), (att.host_if, att.mac, att.address)))
            elif gone:
                nft.unguard(att.host_if)
    if att.driver == "macvlan" and att.mac:   # nothing on the host side: remove it inside, if still alive
        with contextlib.suppress(Exception):
            inner = netns.iproute(att.netns)
            try:
                for idx in inner.link_lookup(address=att.mac):
                    inner.link("del", index=idx)
            finally:
                inner.close()
    if net is not None:
        with contextlib.suppress(Exception):
            ipam_for(net, root).release(att.owner)
    d = etc_dir(att.owner, root)
    for fn in ("hosts", "resolv.conf"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(d, fn))
    with contextlib.suppress(OSError):
        os.rmdir(d)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(_adir(root), f"{att.owner}.json"))
    with contextlib.suppress(Exception):
        _refresh_hosts(att.network, root)


def expect_disconnect(owner: str, root: str | None = None) -> None:
    """`owner`'s workload has ended and disconnect() follows: watch for its link's end from now."""
    att = load(owner, root)
    if att is not None and att.host_if:
        veth.watch(att.host_if)


def disconnect(owner: str, root: str | None = None, only_dead: bool = False) -> bool:
    """Remove what connecting `owner` made (idempotent). False when it was not connected, or with
    `only_dead`, when its connection belongs to a live workload (looked at under the lock: a new
    workload may have taken the name since a dead one's was seen)."""
    with config.lock(root):
        att = load(owner, root)
        if att is None or (only_dead and alive(att)):
            return False
        try:
            net: Network | None = config.load(att.network, root)
        except CgagentError:
            net = None
        _teardown(att, net, root)
    return True


# --- network lifecycle

def host_facts() -> tuple[list[str], list[str]]:
    """(link names, IPv4 route destinations that are not ours) of the host namespace."""
    ipr = netns.iproute()
    try:
        links = [str(lk.get("ifname")) for lk in ipr.get_links()]
        routes = []
        for r in ipr.get_routes(family=2, table=254):
            dst, plen = r.get("dst"), r.get("dst_len")
            oif = r.get("oif")
            name = next((str(lk.get("ifname")) for lk in ipr.get_links(oif)), "") if oif else ""
            if dst and plen and not name.startswith(("cg", DEFAULT_BRIDGE)):
                routes.append(f"{dst}/{plen}")
        return links, routes
    finally:
        ipr.close()


def create_network(name: str, driver: str, subnet: str | None, gateway: str | None = None,
                   parent: str | None = None, vni: int | None = None, peers: list[str] | None = None,
                   local: str | None = None, root: str | None = None, ip_range: str | None = None,
                   force: bool = False) -> Network:
    with config.lock(root):
        links, routes = host_facts()
        if driver == "bridge" and parent:
            return _create_underlay(name, parent, subnet, gateway, root, ip_range, force, links, routes)
        if subnet is None:
            raise CgagentError(f"--driver {driver} needs --subnet CIDR", "e.g. --subnet 10.90.0.0/24")
        net = config.validate_new(name, driver, subnet, gateway, parent, vni, list(peers or []), local, root,
                                  links, routes, ip_range)
        config.save(net, root)
    return net


def _create_underlay(name: str, parent: str, subnet: str | None, gateway: str | None, root: str | None,
                     ip_range: str | None, force: bool, links: list[str], routes: list[str]) -> Network:
    from cgagent.network import underlay

    ipr = netns.iproute()
    try:
        subnet, gateway = underlay.plan(ipr, name, parent, subnet, gateway, force)
        host = {str(a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(family=2)}
    finally:
        ipr.close()
    net = config.validate_new(name, "bridge", subnet, gateway, parent, None, [], None, root, links, routes, ip_range)
    if net.ip_range:
        rng = ipaddress.IPv4Network(net.ip_range)
        for h in sorted(host):
            if ipaddress.IPv4Address(h) in rng:
                raise CgagentError(f"--ip-range {rng} holds this host's address {h}",
                                   "reserve a range of the LAN that no host or DHCP server uses")
    config.save(net, root)   # first: `network rm` finds a crashed create by it
    try:
        underlay.create(net, root)
    except BaseException:
        config.delete(net.name, root)
        raise
    return net


def _devices_remove(net: Network, root: str | None) -> None:
    if net.underlay:   # the bridge holds the host's NIC: made by `network create`, removed by `network rm` only
        return
    ipr = netns.iproute()
    try:
        if net.driver in ("bridge", "vxlan"):
            bridge.remove(ipr, net, root)
        if net.driver == "vxlan":
            from cgagent.network import vxlan

            vxlan.remove(ipr, net)
    finally:
        ipr.close()


def remove_network(name: str, root: str | None = None) -> None:
    with config.lock(root):
        net = config.load(name, root)
        atts = [a for a in all_attachments(root) if a.network == name]
        users = [a.owner for a in atts if not is_pool(a.owner)]
        if users:
            raise CgagentError(f"network {name!r} has workloads connected: {', '.join(users)}",
                               "stop them first (or `cgagent network prune` if they are gone)")
        for a in atts:   # connections parked runners made ahead: they see theirs gone and make none
            if is_pool(a.owner):
                _teardown(a, net, root)
        _forget_stale(root)
        if net.underlay:
            from cgagent.network import underlay

            underlay.remove(net, root)
        _devices_remove(net, root)
        ipam_for(net, root).destroy()
        config.delete(name, root)


def prune(root: str | None = None) -> list[str]:
    """Remove leftovers: attachments of dead workloads, addresses whose owner is gone, our links that
    no attachment names, and the host devices of networks nobody uses. -> what was removed."""
    done: list[str] = []
    for a in all_attachments(root):
        if not alive(a) and disconnect(a.owner, root, only_dead=True):
            done.append(f"attachment {a.owner}")
    with config.lock(root):
        atts = all_attachments(root)
        owners = {a.owner for a in atts}
        for torn in _unreadable(root, owners):   # a power loss's: not fsync'd (_save)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(_adir(root), f"{torn}.json"))
            done.append(f"attachment {torn} (unreadable)")
        nets = config.all_networks(root)
        for net in nets:
            ipam = ipam_for(net, root)
            for ip, who in ipam.entries().items():
                if who not in owners:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(ipam.dir, ip))
                    done.append(f"address {ip} ({who})")
        used = {a.network for a in atts}
        for net in nets:
            if net.name not in used:
                _devices_remove(net, root)
        ours = {a.host_if for a in atts} | {n.bridge for n in nets if n.name in used or n.underlay} | \
               {n.vxlan_dev for n in nets if n.name in used and n.driver == "vxlan"}
        ipr = netns.iproute()
        try:
            for lk in ipr.get_links():
                name = str(lk.get("ifname"))
                if name.startswith((VETH_PREFIX, BRIDGE_PREFIX, VXLAN_PREFIX, DEFAULT_BRIDGE)) and name not in ours:
                    with contextlib.suppress(Exception):
                        ipr.link("del", index=lk["index"])
                    done.append(f"link {name}")
            _forget_stale(root)   # and the elements of any other port that is gone (a crash's)
            live = {str(lk.get("ifname")) for lk in ipr.get_links()}
            for port in nft.guarded_ports() - live:
                nft.unguard(port)
                done.append(f"rule elements of {port}")
        finally:
            ipr.close()
        if not used and nft.table_exists() and not nft.published():
            nft.delete_table()
    return done


def usage(root: str | None = None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in all_attachments(root):
        if not is_pool(a.owner):
            out.setdefault(a.network, []).append(a.owner)
    return out
