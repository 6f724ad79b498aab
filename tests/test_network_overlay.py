"""VXLAN overlay across two "hosts" and macvlan underlay, on the real kernel in test-made namespaces."""

from __future__ import annotations

import os

from tests.netkit import Host, hosts, make_host, wire

__all__ = ["hosts"]


def _ok(h: Host, *args: str) -> str:
    res = h.cgagent(*args)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_vxlan_workload_on_host_a_reaches_workload_on_host_b(hosts: list[Host], tmp_path: object) -> None:
    a, b = make_host(str(tmp_path)), make_host(str(tmp_path))
    hosts += [a, b]
    wire(a, b, "192.0.2.1", "192.0.2.2")
    common = ("--driver", "vxlan", "--vni", "42", "--subnet", "10.96.0.0/16")
    _ok(a, "network", "create", "ov", *common, "--local", "192.0.2.1", "--peer", "192.0.2.2")
    _ok(b, "network", "create", "ov", *common, "--local", "192.0.2.2", "--peer", "192.0.2.1")
    wa, wb = a.workload(), b.workload()
    ip_a = _ok(a, "network", "connect", "ov", "--id", "wa", "--pid", str(wa)).split("/")[0]
    ip_b = _ok(b, "network", "connect", "ov", "--id", "wb", "--pid", str(wb)).split("/")[0]
    assert ip_a.startswith("10.96.0.") and ip_b.startswith("10.96.1.")   # one /24 per host
    b.serve(wb, 7000, "hello across hosts")
    assert a.fetch(wa, ip_b, 7000) == "hello across hosts"
    # flannel's per-peer entries on A: FDB (VTEP MAC -> underlay), neighbour, route
    fdb = a.sh("bridge", "fdb", "show", "dev", "cgvx42").stdout
    assert "0a:58:c0:00:02:02 dst 192.0.2.2" in fdb
    assert "10.96.1.0 lladdr 0a:58:c0:00:02:02 PERMANENT" in a.sh("ip", "neigh", "show", "dev", "cgvx42").stdout
    assert "10.96.1.0/24 via 10.96.1.0 dev cgvx42 proto static onlink" in a.sh("ip", "route").stdout
    # across the overlay the source is not masqueraded: B's server saw A's workload address
    b.serve(wb, 7001, "@peer")
    assert a.fetch(wa, ip_b, 7001) == ip_a
    for h, w in ((a, "wa"), (b, "wb")):
        _ok(h, "network", "disconnect", w)
        _ok(h, "network", "rm", "ov")
        assert h.links() == ["lo", next(ln for ln in h.links() if ln.startswith("up"))]


def test_macvlan_workload_is_reachable_from_the_parent_links_network(hosts: list[Host], tmp_path: object) -> None:
    h, lan = make_host(str(tmp_path)), make_host(str(tmp_path))
    hosts += [h, lan]
    parent, _ = wire(h, lan, "198.51.100.1", "198.51.100.254")
    _ok(h, "network", "create", "under", "--driver", "macvlan", "--parent", parent, "--subnet", "198.51.100.0/24",
        "--gateway", "198.51.100.254", "--ip-range", "198.51.100.128/25")
    w = h.workload()
    ip = _ok(h, "network", "connect", "under", "--id", "mv", "--pid", str(w)).split("/")[0]
    assert ip == "198.51.100.128"
    inside = h.in_workload(w, "ip", "-d", "-o", "link", "show", "eth0").stdout
    assert "macvlan mode bridge" in inside
    assert "default via 198.51.100.254 dev eth0" in h.in_workload(w, "ip", "route").stdout
    h.serve(w, 8000, "on the underlay")
    assert lan.fetch(None, ip, 8000) == "on the underlay"     # straight from the LAN: no NAT, no port
    assert not [ln for ln in h.links() if ln.startswith("cg")]  # nothing on the host side
    _ok(h, "network", "disconnect", "mv")
    assert "eth0" not in h.in_workload(w, "ip", "-o", "link").stdout
    assert os.listdir(os.path.join(h.root, "networks", "ipam", "under")) in (["last_reserved_ip.0", "lock"],
                                                                              ["lock", "last_reserved_ip.0"])
