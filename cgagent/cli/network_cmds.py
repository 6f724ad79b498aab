"""`cgagent network create|ls|rm|prune|connect|disconnect`."""

from __future__ import annotations

import json
from typing import Annotated

import typer

network_app = typer.Typer(help="Manage networks: bridge (NAT), macvlan (underlay), vxlan (overlay across hosts).",
                          no_args_is_help=True)

Root = Annotated[str | None, typer.Option("--root", envvar="CGAGENT_ROOT",
                                          help="State root (default /var/lib/cgagent).")]


@network_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Network name (used with `run --net NAME`).")],
    subnet: Annotated[str | None, typer.Option("--subnet", help="IPv4 CIDR; vxlan: the whole overlay (a /24 per host); "
                                               "bridge with --parent: default the parent's subnet.")] = None,
    driver: Annotated[str, typer.Option("--driver", "-d", help="bridge, macvlan or vxlan.")] = "bridge",
    gateway: Annotated[str | None, typer.Option("--gateway", help="Default: the subnet's first address; "
                                                "bridge with --parent: the parent's default route.")] = None,
    parent: Annotated[str | None, typer.Option("--parent", help="macvlan: the underlay link; vxlan: optional; "
                                               "bridge: the NIC to enslave (underlay: its addresses and routes "
                                               "move onto the bridge until `network rm`).")] = None,
    vni: Annotated[int | None, typer.Option("--vni", help="vxlan: the VXLAN id.")] = None,
    peer: Annotated[list[str] | None, typer.Option("--peer", help="vxlan: another host's underlay address.")] = None,
    local: Annotated[str | None, typer.Option("--local", help="vxlan: this host's underlay address.")] = None,
    ip_range: Annotated[str | None, typer.Option("--ip-range", help="Hand out addresses only from this CIDR.")] = None,
    force: Annotated[bool, typer.Option("--force", help="bridge --parent: even when the parent carries the "
                                        "host's only management address.")] = False,
    root: Root = None,
) -> None:
    """Define a network; its devices are made when the first workload joins (an underlay's at once).

    Example: cgagent network create web --subnet 10.90.0.0/24

    Example: cgagent network create lan -d macvlan --parent eth0 --subnet 192.168.1.0/24 --ip-range 192.168.1.192/26

    Example: cgagent network create phys --driver bridge --parent eth0 --ip-range 192.168.1.192/27

    Example: cgagent network create ov --driver vxlan --vni 42 --subnet 10.96.0.0/16 --local 192.0.2.1 --peer 192.0.2.2
    """
    from cgagent.network.attach import create_network

    net = create_network(name, driver, subnet, gateway, parent, vni, peer, local, root, ip_range, force)
    print(net.name)


@network_app.command("ls")
def ls(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False, root: Root = None) -> None:
    """List networks and the workloads connected to each."""
    from dataclasses import asdict

    from cgagent.network import config
    from cgagent.network.attach import usage

    nets = config.all_networks(root)
    if not any(n.name == config.DEFAULT_NETWORK for n in nets):
        nets.insert(0, config.default_network())
    used = usage(root)
    if as_json:
        print(json.dumps([{**asdict(n), "workloads": used.get(n.name, [])} for n in nets], indent=1))
        return
    rows = [("NAME", "DRIVER", "SUBNET", "GATEWAY", "DEVICE", "WORKLOADS")]
    for n in nets:
        dev = n.parent if n.driver == "macvlan" else f"{n.bridge} ({n.parent})" if n.underlay else n.bridge
        rows.append((n.name, n.driver, n.pool if n.pool == n.subnet else f"{n.pool} of {n.subnet}",
                     n.gateway or "-", dev or "-", str(len(used.get(n.name, [])))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@network_app.command("rm")
def rm(names: Annotated[list[str], typer.Argument(help="Networks to remove.")], root: Root = None) -> None:
    """Remove networks (their bridge, NAT entries and address pool) that no workload uses.

    An underlay's parent gets its addresses and routes back as they were."""
    from cgagent.network.attach import remove_network

    for n in names:
        remove_network(n, root)
        print(n)


@network_app.command("prune")
def prune(root: Root = None) -> None:
    """Remove leftovers: connections of workloads that are gone, their addresses and links, idle devices."""
    from cgagent.network.attach import prune as do_prune

    for what in do_prune(root):
        print(what)


@network_app.command("connect")
def connect(
    network: Annotated[str, typer.Argument(help="Network name (`bridge` is the default network).")],
    owner: Annotated[str, typer.Option("--id", help="Who holds the connection (a workload name).")],
    netns: Annotated[str | None, typer.Option("--netns", help="The namespace: a path like /run/netns/x.")] = None,
    pid: Annotated[int | None, typer.Option("--pid", help="Or a process whose namespace to connect.")] = None,
    publish: Annotated[list[str] | None, typer.Option("--publish", "-p",
                                                      help="\\[IP:]HOSTPORT:CTRPORT\\[/tcp|udp].")] = None,
    hostname: Annotated[str | None, typer.Option("--hostname", help="Name in the others' /etc/hosts.")] = None,
    ip: Annotated[str | None, typer.Option("--ip", help="A static address (needed on an underlay without "
                                           "--ip-range).")] = None,
    root: Root = None,
) -> None:
    """Connect a namespace (of a workload not started by cgagent run) to a network; prints its address.

    Example: cgagent network connect bridge --id web --pid 4242 -p 8080:80 -p 127.0.0.1:9090:90
    """
    from cgagent.errors import CgagentError
    from cgagent.network.attach import connect as do_connect

    if (netns is None) == (pid is None):
        raise CgagentError("give one of --netns PATH or --pid PID", "e.g. --pid 4242")
    path = netns or f"/proc/{pid}/ns/net"
    att = do_connect(owner, network, path, pid=pid, ports=publish, hostname=hostname, root=root, ip=ip)
    print(f"{att.address}/{att.prefixlen}")


@network_app.command("disconnect")
def disconnect(owners: Annotated[list[str], typer.Argument(help="Connection ids.")], root: Root = None) -> None:
    """Undo `network connect`: its ports, links, address and files."""
    from cgagent.errors import CgagentError
    from cgagent.network.attach import disconnect as do_disconnect

    for o in owners:
        if not do_disconnect(o, root):
            raise CgagentError(f"{o!r} is not connected", "see `cgagent network ls`")
        print(o)
