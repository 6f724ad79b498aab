"""The bridge underlay (`network create --driver bridge --parent IFACE`), on the real kernel, inside
namespaces the tests make (tests/netkit.py): a veth pair plays the host's physical NIC, its other end
sits in a "LAN" namespace with a static peer. Each test compares IFACE's addresses and routes (`ip -j
addr`, `ip -j route`, every table) before and after, byte for byte."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from cgagent.network import underlay
from tests.conftest import Env
from tests.netkit import Host, hosts, make_host, sh
from tests.test_network_run import Node, rootfs

__all__ = ["hosts", "rootfs"]

PEER = "192.0.2.1"        # the LAN's static peer (and its router: the host's default route points at it)
HOST_IP = "192.0.2.10"
RANGE = "192.0.2.128/27"  # what the user reserved for workloads


def lan(h: Host, tmp: str, hosts: list[Host]) -> tuple[Host, str]:
    """The LAN namespace and the host's NIC: two addresses, a default route, a static route, a route
    in another table. -> (LAN host, NIC name)."""
    other = make_host(tmp)
    hosts.append(other)
    nic, peer = "eth" + h.name[-6:], "lan" + other.name[-6:]
    sh("ip", "link", "add", nic, "netns", h.name, "type", "veth", "peer", "name", peer, "netns", other.name)
    # no duplicate address detection: a "tentative" flag that clears on its own would make the
    # before/after comparison depend on timing
    h.sh("sysctl", "-qw", f"net.ipv6.conf.{nic}.accept_dad=0")
    other.sh("sysctl", "-qw", f"net.ipv6.conf.{peer}.accept_dad=0")
    h.sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", nic)
    h.sh("ip", "addr", "add", "192.0.2.11/24", "dev", nic)   # a secondary: its order must survive too
    h.sh("ip", "link", "set", nic, "up")
    other.sh("ip", "addr", "add", f"{PEER}/24", "dev", peer)
    other.sh("ip", "link", "set", peer, "up")
    h.sh("ip", "route", "add", "default", "via", PEER, "dev", nic, "metric", "50")
    h.sh("ip", "route", "add", "198.51.100.0/24", "via", PEER, "proto", "static")
    h.sh("ip", "route", "add", "203.0.113.0/24", "via", PEER, "table", "100")
    return other, nic


def snapshot(h: Host) -> tuple[str, str, str]:
    return (h.sh("ip", "-j", "addr").stdout, h.sh("ip", "-j", "route").stdout,
            h.sh("ip", "-j", "route", "show", "table", "all").stdout)


def one_line(res: subprocess.CompletedProcess[str], start: str) -> None:
    assert res.returncode != 0 and res.stderr.startswith(f"cgagent: error: {start}"), res.stderr
    assert res.stderr.count("\n") == 1, res.stderr


def nothing_made(h: Host, before: tuple[str, str, str], links: list[str]) -> None:
    assert snapshot(h) == before
    assert h.links() == links
    for d in ("networks", "underlay", "attachments"):
        p = os.path.join(h.root, "networks", d)
        assert not os.path.isdir(p) or os.listdir(p) == [], os.listdir(p)


def test_underlay_workloads_are_on_the_lan_and_rm_restores_the_nic(cg: Env, hosts: list[Host], rootfs: str,
                                                                   tmp_path: object) -> None:
    h = make_host(str(tmp_path))
    hosts.append(h)
    node = Node(h, cg, rootfs)
    peer, nic = lan(h, str(tmp_path), hosts)
    before, links = snapshot(h), h.links()
    # the NIC holds this host's only address: refused without --force, nothing touched
    res = h.cgagent("network", "create", "phys", "--driver", "bridge", "--parent", nic, "--ip-range", RANGE)
    one_line(res, f"{nic} carries the route to this host's only management address ({HOST_IP}, 192.0.2.11)")
    nothing_made(h, before, links)
    node.ok("network", "create", "phys", "--driver", "bridge", "--parent", nic, "--ip-range", RANGE, "--force")
    net = json.loads(node.ok("network", "ls", "--json"))[-1]
    assert (net["name"], net["subnet"], net["gateway"], net["parent"]) == ("phys", "192.0.2.0/24", PEER, nic)
    br = net["bridge"]
    # the bridge holds the host's addresses (with the NIC's MAC) and its routes; the NIC is a port
    assert f"master {br}" in h.sh("ip", "-o", "link", "show", nic).stdout
    assert not [x["addr_info"] for x in json.loads(h.sh("ip", "-j", "-4", "addr", "show", nic).stdout)
                if x.get("addr_info")]
    got = [(a["local"], a.get("secondary", False)) for a in
           json.loads(h.sh("ip", "-j", "-4", "addr", "show", br).stdout)[0]["addr_info"]]
    assert got == [(HOST_IP, False), ("192.0.2.11", True)]
    assert f"default via {PEER} dev {br} metric 50" in h.sh("ip", "route").stdout
    assert f"203.0.113.0/24 via {PEER} dev {br}" in h.sh("ip", "route", "show", "table", "100").stdout
    h.serve(None, 8001, "host")
    assert peer.fetch(None, HOST_IP, 8001) == "host"
    # a workload run with --net phys: an address of the reserved range, the LAN router as gateway,
    # reachable from the LAN peer and reaching it with its own address (no NAT)
    peer.serve(None, 7000, "@peer")
    node.ok("run", *node.box("-d", "--name", "onlan", "--net", "phys", "--", "sh", "-c",
                             "while true; do echo from-onlan | nc -l -p 80; done"))
    from cgagent.network import attach

    att = attach.load("onlan", h.root)
    assert att is not None and att.address and att.gateway == PEER
    import ipaddress

    assert ipaddress.IPv4Address(att.address) in ipaddress.IPv4Network(RANGE)
    # run --ip: a static address; the peer sees it as the source
    out = node.ok("run", *node.box("--rm", "--net", "phys", "--ip", "192.0.2.51", "--", "sh", "-c",
                                   f"ip -o -4 addr show eth0; ip route; nc {PEER} 7000 </dev/null"))
    assert "192.0.2.51/24" in out and f"default via {PEER} dev eth0" in out, out
    assert out.strip().endswith("192.0.2.51"), out
    one_line(node.run("run", *node.box("--rm", "--net", "phys", "--ip", "192.0.2.1", "--", "true")),
             "--ip 192.0.2.1 is not a free host address of phys")   # the gateway
    one_line(node.run("run", *node.box("--rm", "--net", "none", "--ip", "192.0.2.52", "--", "true")),
             "--ip needs a network, not --net none")
    assert peer.fetch(None, att.address, 80) == "from-onlan"
    # a static address (a stand-in workload connected with --ip)
    w = h.workload()
    res = h.cgagent("network", "connect", "phys", "--id", "fixed", "--pid", str(w), "--ip", "192.0.2.50")
    assert res.returncode == 0 and res.stdout.strip() == "192.0.2.50/24", res.stderr
    h.serve(w, 81, "fixed")
    assert peer.fetch(None, "192.0.2.50", 81) == "fixed"
    one_line(h.cgagent("network", "connect", "phys", "--id", "twice", "--pid", str(h.workload()),
                       "--ip", "192.0.2.50"), "--ip 192.0.2.50 is in use on phys")
    one_line(h.cgagent("network", "rm", "phys"), "network 'phys' has workloads connected")
    assert h.cgagent("network", "disconnect", "fixed").returncode == 0
    node.ok("rm", "-f", "onlan")
    # prune leaves the underlay's bridge alone (it holds the host's addresses)
    node.ok("network", "prune")
    assert br in h.links()
    node.ok("network", "rm", "phys")
    assert snapshot(h) == before
    assert h.links() == links
    assert peer.fetch(None, HOST_IP, 8001) == "host"


def test_bad_input_is_one_line_and_touches_nothing(hosts: list[Host], tmp_path: object) -> None:
    h = make_host(str(tmp_path))
    hosts.append(h)
    _, nic = lan(h, str(tmp_path), hosts)
    h.sh("ip", "link", "add", "brt", "type", "bridge")
    h.sh("ip", "link", "add", "spare", "type", "veth", "peer", "name", "spare1")
    h.sh("ip", "link", "set", "spare", "master", "brt")
    before, links = snapshot(h), h.links()

    def create(*args: str) -> subprocess.CompletedProcess[str]:
        return h.cgagent("network", "create", "phys", "--driver", "bridge", *args)

    one_line(create("--parent", "nosuch", "--force"), "parent interface 'nosuch' does not exist")
    one_line(create("--parent", "spare", "--force"), "spare is already enslaved to brt")
    one_line(create("--parent", "brt", "--force"), "brt is a bridge itself")
    one_line(create("--parent", nic, "--ip-range", RANGE), f"{nic} carries the route to this host's only")
    one_line(create("--parent", nic, "--ip-range", "192.0.2.0/28", "--force"),
             f"--ip-range 192.0.2.0/28 holds this host's address {HOST_IP}")
    one_line(create("--parent", nic, "--ip-range", "10.0.0.0/24", "--force"), "--ip-range 10.0.0.0/24 is not inside")
    nothing_made(h, before, links)
    # another interface with an address: the NIC is not the only way in, no --force needed
    h.sh("ip", "addr", "add", "198.18.0.1/24", "dev", "brt")
    before, links = snapshot(h), h.links()
    one_line(h.cgagent("network", "create", "phys", "--parent", nic, SSH_CONNECTION=f"198.51.100.7 50000 {HOST_IP} 22"),
             f"{nic} carries this ssh session ({HOST_IP})")
    nothing_made(h, before, links)
    assert create("--parent", nic).returncode == 0   # no --ip-range: static addresses only
    w = h.workload()
    one_line(h.cgagent("network", "connect", "phys", "--id", "w", "--pid", str(w)),
             "underlay network 'phys' has no --ip-range: each workload needs --ip ADDR")
    one_line(h.cgagent("network", "connect", "phys", "--id", "w", "--pid", str(w), "--ip", "10.1.1.1"),
             "--ip 10.1.1.1 is not a free host address of phys")
    one_line(h.cgagent("network", "connect", "phys", "--id", "w", "--pid", str(w), "-p", "80:80", "--ip",
                       "192.0.2.60"), "-p needs a NAT bridge or vxlan network")
    assert h.in_workload(w, "ip", "-o", "link").stdout.count("\n") == 1   # only lo inside
    assert not os.listdir(os.path.join(h.root, "networks", "attachments")) \
        if os.path.isdir(os.path.join(h.root, "networks", "attachments")) else True
    # an underlay never turns ip_forward on, nor keeps it on after the last NAT bridge goes
    fwd = "/proc/sys/net/ipv4/ip_forward"
    assert h.sh("cat", fwd).stdout.strip() == "0"
    assert h.cgagent("network", "create", "nat", "--subnet", "10.92.0.0/24").returncode == 0
    res = h.cgagent("network", "connect", "nat", "--id", "w", "--pid", str(w))
    assert res.returncode == 0 and h.sh("cat", fwd).stdout.strip() == "1", res.stderr
    assert h.cgagent("network", "disconnect", "w").returncode == 0
    assert h.cgagent("network", "rm", "nat").returncode == 0
    assert h.sh("cat", fwd).stdout.strip() == "0"
    assert h.cgagent("network", "rm", "phys").returncode == 0
    assert snapshot(h) == before and h.links() == links


@pytest.mark.parametrize("step", underlay.STEPS)
def test_a_failure_or_crash_at_each_step_leaves_the_nic_as_it_was(hosts: list[Host], tmp_path: object,
                                                                 step: str) -> None:
    h = make_host(str(tmp_path))
    hosts.append(h)
    peer, nic = lan(h, str(tmp_path), hosts)
    before, links = snapshot(h), h.links()
    args = ("network", "create", "phys", "--driver", "bridge", "--parent", nic, "--ip-range", RANGE, "--force")
    res = h.cgagent(*args, CGAGENT_FAULT=f"net:{step}")
    assert res.returncode != 0 and res.stderr == \
        f"cgagent: error: network setup failed at {step} (CGAGENT_FAULT): unset CGAGENT_FAULT\n", res.stderr
    nothing_made(h, before, links)
    # a crash (SIGKILL) at the step: the network stays listed, refuses workloads, and `network rm`
    # restores the NIC from the record
    res = h.cgagent(*args, CGAGENT_FAULT=f"step:{step}")
    assert res.returncode == -9 or res.returncode == 137, res
    w = h.workload()
    one_line(h.cgagent("network", "connect", "phys", "--id", "w", "--pid", str(w)),
             "underlay network 'phys' was not made whole")
    assert h.cgagent("network", "rm", "phys").returncode == 0
    nothing_made(h, before, links)
    h.serve(None, 8001, "host")
    assert peer.fetch(None, HOST_IP, 8001) == "host"
