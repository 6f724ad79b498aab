"""Named networks: one JSON file each under <root>/networks/, validated before anything is made."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from cgagent.errors import CgagentError
from cgagent.network import BRIDGE_PREFIX, DEFAULT_BRIDGE, VXLAN_PREFIX, net_dir
from cgagent.state import atomic_write, validate_name

DRIVERS = ("bridge", "macvlan", "vxlan")
DEFAULT_NETWORK = "bridge"
# Docker takes 172.17.0.0/16 and podman 10.88.0.0/16: the default network takes the next /16
DEFAULT_SUBNET = "10.89.0.0/16"
VXLAN_PORT = 4789


@dataclass
class Network:
    """A defined network: its driver, subnet, gateway and the host links it uses."""

    name: str
    driver: str
    subnet: str                          # bridge/macvlan: the workloads' subnet; vxlan: the whole overlay
    gateway: str | None = None           # the address workloads route through
    bridge: str | None = None            # bridge/vxlan: the host bridge's name
    parent: str | None = None            # macvlan: the underlay link; bridge: the NIC enslaved (underlay.py)
    vni: int | None = None               # vxlan
    peers: list[str] = field(default_factory=list)   # vxlan: the other hosts' underlay addresses
    local: str | None = None             # vxlan: this host's underlay address
    host_subnet: str | None = None       # vxlan: this host's slice of the overlay (one /24 per host)
    ip_range: str | None = None          # hand out addresses only from this CIDR inside the subnet
    created: float = 0.0

    @property
    def pool(self) -> str:
        """The subnet this host hands addresses out of."""
        return self.host_subnet or self.subnet

    @property
    def underlay(self) -> bool:
        """A bridge holding the host's NIC: workloads take addresses from the physical subnet."""
        return self.driver == "bridge" and self.parent is not None

    @property
    def vxlan_dev(self) -> str:
        return f"{VXLAN_PREFIX}{self.vni}"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode() + b"\n"


def _dir(root: str | None) -> str:
    return os.path.join(net_dir(root), "networks")


def _path(name: str, root: str | None) -> str:
    return os.path.join(_dir(root), f"{name}.json")


def made(name: str = DEFAULT_NETWORK, root: str | None = None) -> bool:
    """Whether the network's file exists: the default network has none until its first use."""
    return os.path.exists(_path(name, root))


@contextlib.contextmanager
def lock(root: str | None = None) -> Iterator[None]:
    """One lock for every change to networks and attachments on this host."""
    d = net_dir(root)
    os.makedirs(d, mode=0o755, exist_ok=True)
    fd = os.open(os.path.join(d, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def bridge_name(name: str) -> str:
    if name == DEFAULT_NETWORK:
        return DEFAULT_BRIDGE
    import hashlib  # here: a launch on the default network (its bridge's name is fixed) never loads it

    return BRIDGE_PREFIX + hashlib.sha1(name.encode()).hexdigest()[:8]   # IFNAMSIZ is 16


def default_network() -> Network:
    subnet = os.environ.get("CGAGENT_BRIDGE_SUBNET") or DEFAULT_SUBNET
    net = _subnet(subnet)
    return Network(name=DEFAULT_NETWORK, driver="bridge", subnet=str(net), gateway=str(net.network_address + 1),
                   bridge=DEFAULT_BRIDGE, created=time.time())


def load(name: str, root: str | None = None) -> Network:
    try:
        with open(_path(validate_name(name), root)) as f:
            return Network(**json.load(f))
    except FileNotFoundError:
        if name == DEFAULT_NETWORK:
            return default_network()
        raise CgagentError(f"no network named {name!r}", "see `cgagent network ls`, or create it") from None


def save(net: Network, root: str | None = None) -> None:
    os.makedirs(_dir(root), mode=0o755, exist_ok=True)
    atomic_write(_path(net.name, root), net.to_json())


def delete(name: str, root: str | None = None) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_path(name, root))


def all_networks(root: str | None = None) -> list[Network]:
    out = []
    try:
        names = sorted(os.listdir(_dir(root)))
    except FileNotFoundError:
        names = []
    for fn in names:
        if fn.endswith(".json"):
            with contextlib.suppress(CgagentError, ValueError, TypeError, OSError):
                out.append(load(fn[:-5], root))
    return out


def _subnet(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        raise CgagentError(f"--subnet {text!r} is not an IPv4 CIDR", "e.g. --subnet 10.90.0.0/24") from None
    if net.prefixlen > 30:
        raise CgagentError(f"--subnet {text} is too small", "use a /30 or larger")
    return net


def vxlan_slice(subnet: ipaddress.IPv4Network, local: str, peers: list[str]) -> dict[str, str]:
    """Each host's /24 of the overlay, by sorted underlay address: the same on every host given the same peers."""
    if subnet.prefixlen > 23:
        raise CgagentError(f"--subnet {subnet} is too small for an overlay", "use a /23 or larger (one /24 per host)")
    hosts = sorted({local, *peers}, key=ipaddress.IPv4Address)
    slices = list(subnet.subnets(new_prefix=24))
    if len(hosts) > len(slices):
        raise CgagentError(f"--subnet {subnet} has {len(slices)} /24s for {len(hosts)} hosts", "use a larger subnet")
    return {h: str(slices[i]) for i, h in enumerate(hosts)}


def validate_new(name: str, driver: str, subnet: str, gateway: str | None, parent: str | None,
                 vni: int | None, peers: list[str], local: str | None, root: str | None,
                 host_links: list[str], host_routes: list[str], ip_range: str | None = None) -> Network:
    """Every check a `network create` needs, before anything is made. Raises CgagentError."""
    validate_name(name)
    if driver not in DRIVERS:
        raise CgagentError(f"unknown network driver {driver!r}", "use --driver bridge, macvlan or vxlan")
    if made(name, root):
        raise CgagentError(f"a network named {name!r} exists", f"choose another name, or `cgagent network rm {name}`")
    net = _subnet(subnet)
    others = all_networks(root)
    if not any(o.name == DEFAULT_NETWORK for o in others):
        others.append(default_network())   # made on first use: its subnet is taken already
    for other in others:
        if net.overlaps(ipaddress.IPv4Network(other.subnet)):
            raise CgagentError(f"subnet {net} overlaps network {other.name!r} ({other.subnet})",
                               "choose a subnet that does not overlap, see `cgagent network ls`")
    if driver != "macvlan" and not (driver == "bridge" and parent):   # underlays share the parent's subnet
        for r in host_routes:
            if net.overlaps(ipaddress.IPv4Network(r)):
                raise CgagentError(f"subnet {net} overlaps the host route {r}", "choose another --subnet")
    gw = ipaddress.IPv4Address(gateway) if gateway else net.network_address + 1
    if gw not in net:
        raise CgagentError(f"--gateway {gw} is not in {net}", "give an address inside the subnet")
    out = Network(name=name, driver=driver, subnet=str(net), gateway=str(gw), created=time.time())
    if ip_range:
        rng = _subnet(ip_range)
        if not rng.subnet_of(net):
            raise CgagentError(f"--ip-range {rng} is not inside {net}", "give a CIDR inside the subnet")
        out.ip_range = str(rng)
    if driver == "bridge":
        out.bridge = bridge_name(name)
        out.parent = parent
    elif driver == "macvlan":
        if not parent:
            raise CgagentError("--driver macvlan needs --parent IFACE", "e.g. --parent eth0")
        if parent not in host_links:
            raise CgagentError(f"parent interface {parent!r} does not exist", "see `ip link` for the names")
        out.parent = parent
    else:
        if vni is None or not 0 < vni < 1 << 24:
            raise CgagentError("--driver vxlan needs --vni N (1..16777215)", "e.g. --vni 42")
        if not local:
            raise CgagentError("--driver vxlan needs this host's underlay address", "give --local ADDR")
        try:
            addrs = [str(ipaddress.IPv4Address(p)) for p in [local, *peers]]
        except ValueError as e:
            raise CgagentError(f"bad peer address: {e}", "give IPv4 addresses") from None
        if parent and parent not in host_links:
            raise CgagentError(f"parent interface {parent!r} does not exist", "see `ip link` for the names")
        for other in all_networks(root):
            if other.driver == "vxlan" and other.vni == vni:
                raise CgagentError(f"VNI {vni} is used by network {other.name!r}", "choose another --vni")
        slices = vxlan_slice(net, addrs[0], addrs[1:])
        out.vni, out.local, out.peers, out.parent = vni, addrs[0], addrs[1:], parent
        out.host_subnet = slices[addrs[0]]
        out.gateway = str(ipaddress.IPv4Network(out.host_subnet).network_address + 1)
        out.bridge = bridge_name(name)
    return out


def check_default(net: Network, root: str | None, host_routes: list[str]) -> None:
    """Before the default network's first use: its subnet must not collide with the host's or a network's."""
    sub = ipaddress.IPv4Network(net.subnet)
    for other in all_networks(root):
        if other.name != net.name and sub.overlaps(ipaddress.IPv4Network(other.subnet)):
            raise CgagentError(f"the default bridge subnet {sub} overlaps network {other.name!r}",
                               "set CGAGENT_BRIDGE_SUBNET to a free CIDR, or remove that network")
    for r in host_routes:
        if sub.overlaps(ipaddress.IPv4Network(r)):
            raise CgagentError(f"the default bridge subnet {sub} overlaps the host route {r}",
                               "set CGAGENT_BRIDGE_SUBNET to a free CIDR, e.g. 10.123.0.0/16")
