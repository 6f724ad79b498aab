"""Bridge networking on the real kernel, inside "host" namespaces the tests make (tests/netkit.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.netkit import Host, hosts, make_host, wire

__all__ = ["hosts"]


def _connect(h: Host, net: str, owner: str, pid: int, *extra: str) -> str:
    res = h.cgagent("network", "connect", net, "--id", owner, "--pid", str(pid), *extra)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().split("/")[0]


def _ipam(h: Host, net: str = "bridge") -> list[str]:
    d = os.path.join(h.root, "networks", "ipam", net)
    return sorted(f for f in os.listdir(d) if f[0].isdigit()) if os.path.isdir(d) else []


def test_two_bridged_workloads_reach_each_other_by_address_and_by_name(hosts: list[Host], tmp_path: object) -> None:
    h = make_host(str(tmp_path))
    hosts.append(h)
    a, b = h.workload(), h.workload()
    ip_a = _connect(h, "bridge", "alpha", a)
    ip_b = _connect(h, "bridge", "beta", b)
    assert ip_a != ip_b and ip_a.startswith("10.89.")
    # inside: eth0 with the address, lo up, default route via the gateway on cgagent0
    show = h.in_workload(a, "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
    assert f"{ip_a}/16" in show
    assert "default via 10.89.0.1 dev eth0" in h.in_workload(a, "ip", "route").stdout
    h.serve(a, 80, "hello from alpha")
    assert h.fetch(b, ip_a, 80) == "hello from alpha"
    # by name: beta's hosts file (bind-mounted at /etc/hosts by the isolation layer) names alpha, and
    # alpha's was rewritten in place when beta joined
    hosts_b = open(os.path.join(h.root, "networks", "etc", "beta", "hosts")).read()
    hosts_a = open(os.path.join(h.root, "networks", "etc", "alpha", "hosts")).read()
    by_name = {ln.split()[1]: ln.split()[0] for ln in hosts_b.splitlines() if ln and not ln.startswith("#")}
    assert by_name["alpha"] == ip_a and by_name["beta"] == ip_b
    assert f"{ip_b}\tbeta" in hosts_a
    assert h.fetch(b, by_name["alpha"], 80) == "hello from alpha"
    resolv = open(os.path.join(h.root, "networks", "etc", "beta", "resolv.conf")).read()
    assert "nameserver" in resolv and "nameserver 127." not in resolv
    # forwarding and masquerade are on in the host namespace (this test's, not the machine's)
    assert h.sh("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    assert "ip saddr @masq ip daddr != @internal masquerade" in h.nft()
    # disconnect: veths, addresses, hosts files gone; the bridge stays for the next workload
    assert h.cgagent("network", "disconnect", "alpha", "beta").returncode == 0
    assert not [ln for ln in h.links() if ln.startswith("cgv")]
    assert _ipam(h) == []
    assert not os.path.exists(os.path.join(h.root, "networks", "etc", "alpha"))


def test_published_port_answers_from_the_host_and_from_another_host(hosts: list[Host], tmp_path: object) -> None:
    h, other = make_host(str(tmp_path)), make_host(str(tmp_path))
    hosts += [h, other]
    wire(h, other, "192.0.2.1", "192.0.2.2")
    w = h.workload()
    _connect(h, "bridge", "web", w, "-p", "8080:80", "-p", "5353:53/udp")
    h.serve(w, 80, "published")
    assert h.fetch(None, "127.0.0.1", 8080) == "published"        # the loopback proxy (no route_localnet)
    assert h.fetch(None, "192.0.2.1", 8080) == "published"        # the host's own address
    assert other.fetch(None, "192.0.2.1", 8080) == "published"    # PREROUTING, from another host
    w2 = h.workload()                                              # hairpin: a neighbour via the host
    _connect(h, "bridge", "client", w2)
    assert h.fetch(w2, "192.0.2.1", 8080) == "published"
    assert "tcp . 8080 : " in h.nft() and "udp . 5353 : " in h.nft()
    assert h.published() == {8080, 5353}
    assert h.cgagent("network", "disconnect", "web").returncode == 0
    assert h.published() == set()


def test_port_already_published_is_one_line_and_creates_nothing(hosts: list[Host], tmp_path: object) -> None:
    h = make_host(str(tmp_path))
    hosts.append(h)
    a, b = h.workload(), h.workload()
    _connect(h, "bridge", "first", a, "-p", "8080:80")
    links, ipam = h.links(), _ipam(h)
    res = h.cgagent("network", "connect", "bridge", "--id", "second", "--pid", str(b), "-p", "8080:81")
    assert res.returncode != 0
    assert res.stderr.startswith("cgagent: error: port 8080/tcp is already published") and \
        res.stderr.count("\n") == 1, res.stderr
    assert h.links() == links and _ipam(h) == ipam
    assert h.in_workload(b, "ip", "-o", "link").stdout.count("\n") == 1   # only lo
    bad = h.cgagent("network", "connect", "bridge", "--id", "third", "--pid", str(b), "-p", "80")
    assert bad.stderr.startswith("cgagent: error: -p '80' is not [IP:]HOSTPORT:CTRPORT") and _ipam(h) == ipam


def test_full_subnet_is_one_line_and_creates_nothing(hosts: list[Host], tmp_path: object) -> None:
    h = make_host(str(tmp_path))
    hosts.append(h)
    assert h.cgagent("network", "create", "tiny", "--subnet", "10.93.0.0/30").returncode == 0
    a, b = h.workload(), h.workload()
    _connect(h, "tiny", "one", a)
    links = h.links()
    res = h.cgagent("network", "connect", "tiny", "--id", "two", "--pid", str(b))
    assert res.returncode != 0 and res.stderr.startswith("cgagent: error: network tiny is full")
    assert res.stderr.count("\n") == 1
    assert h.links() == links and _ipam(h, "tiny") == ["10.93.0.2"]
    assert not os.path.exists(os.path.join(h.root, "networks", "attachments", "two.json"))


def test_network_create_validation_errors_create_nothing(hosts: list[Host], tmp_path: object) -> None:
    h = make_host(str(tmp_path))
    hosts.append(h)
    assert h.cgagent("network", "create", "one", "--subnet", "10.94.0.0/16").returncode == 0
    cases = {
        ("two", "--subnet", "10.94.3.0/24"): "subnet 10.94.3.0/24 overlaps network 'one'",
        ("mv", "--driver", "macvlan", "--subnet", "192.0.2.0/24", "--parent", "nosuch0"):
            "parent interface 'nosuch0' does not exist",
        ("bad", "--subnet", "10.999.0.0/16"): "--subnet '10.999.0.0/16' is not an IPv4 CIDR",
        ("in-default", "--subnet", "10.89.7.0/24"): "subnet 10.89.7.0/24 overlaps network 'bridge'",
        ("vx", "--driver", "vxlan", "--subnet", "10.95.0.0/16"): "--driver vxlan needs --vni",
    }
    for args, msg in cases.items():
        res = h.cgagent("network", "create", *args)
        assert res.returncode != 0 and res.stderr.startswith(f"cgagent: error: {msg}"), res.stderr
        assert res.stderr.count("\n") == 1
    ls = json.loads(h.cgagent("network", "ls", "--json").stdout)
    assert sorted(n["name"] for n in ls) == ["bridge", "one"]
    assert h.links() == ["lo"]      # networks are definitions: devices come with the first workload
    w = h.workload()
    _connect(h, "one", "user", w)
    busy = h.cgagent("network", "rm", "one")
    assert busy.stderr.startswith("cgagent: error: network 'one' has workloads connected: user")
    assert h.cgagent("network", "disconnect", "user").returncode == 0
    assert h.cgagent("network", "rm", "one").returncode == 0
    assert h.links() == ["lo"]
    assert [n["name"] for n in json.loads(h.cgagent("network", "ls", "--json").stdout)] == ["bridge"]


def test_prune_removes_what_dead_workloads_left(hosts: list[Host], tmp_path: object) -> None:
    h = make_host(str(tmp_path))
    hosts.append(h)
    a, b = h.workload(), h.workload()
    _connect(h, "bridge", "gone", a, "-p", "9090:90")
    _connect(h, "bridge", "stays", b)
    h.kill(a)                               # dies without disconnect: its veth goes with its namespace
    os.makedirs(os.path.join(h.root, "networks", "ipam", "bridge"), exist_ok=True)
    with open(os.path.join(h.root, "networks", "ipam", "bridge", "10.89.9.9"), "w") as f:
        f.write("crashed-before-record")   # an address whose owner never got a record
    # attachments are not fsync'd (they die with the boot): a power loss can leave one empty
    open(os.path.join(h.root, "networks", "attachments", "torn.json"), "w").close()
    h.sh("ip", "link", "add", "cgv0stray", "type", "veth", "peer", "name", "cgv0strayp")  # ours, unowned
    assert h.published() == {9090}
    res = h.cgagent("network", "prune")
    assert res.returncode == 0, res.stderr
    assert "attachment gone" in res.stdout and "address 10.89.9.9" in res.stdout and "link cgv0stray" in res.stdout
    assert "attachment torn (unreadable)" in res.stdout
    assert not os.path.exists(os.path.join(h.root, "networks", "attachments", "torn.json"))
    assert 9090 not in h.published()
    assert _ipam(h) == [h.in_workload(b, "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout.split()[3]
                        .split("/")[0]]
    assert "cgv0stray" not in h.links()
    # the last workload leaves: prune takes the idle bridge and the nft table too
    assert h.cgagent("network", "disconnect", "stays").returncode == 0
    assert h.cgagent("network", "prune").returncode == 0
    assert h.links() == ["lo"] and "table ip cgagent" not in h.nft()


def test_agent_start_up_prunes_connections_of_dead_workloads(hosts: list[Host], tmp_path: object) -> None:
    h = make_host(str(tmp_path))
    hosts.append(h)
    w = h.workload()
    _connect(h, "bridge", "crashed", w, "-p", "7070:70")
    h.kill(w)
    assert h.published() == {7070}
    # and the agent keeps none of the network stack the prune loaded (pyroute2: ~10 MB of its RSS)
    res = subprocess.run([*h.enter(), sys.executable, "-c",
                          "import sys; from cgagent.network.workload import startup_prune; startup_prune(); "
                          "print(sorted(m for m in ('pyroute2', 'cgagent.network.attach') if m in sys.modules))"],
                         env=h.env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "removed attachment crashed" in res.stderr, res.stderr
    assert res.stdout == "[]\n", res.stdout
    assert _ipam(h) == [] and 7070 not in h.published()


def test_published_port_goes_on_a_host_without_etc_protocols(hosts: list[Host], tmp_path: object) -> None:
    # a minimal Debian (no netbase; the v2 VM) has no /etc/protocols: nft then lists `6 . 8080`, and
    # the element was left behind by disconnect. The CLI runs in a private mount namespace (unshare
    # -m) where /etc/protocols is empty; the machine's file is untouched.
    h = make_host(str(tmp_path))
    hosts.append(h)
    bare = ["unshare", "-m", "--", "sh", "-c", 'mount --bind /dev/null /etc/protocols && exec "$@"', "-"]

    def run(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*h.enter(), *bare, *cmd], env=h.env(), capture_output=True, text=True, timeout=120,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    w = h.workload()
    r = run(sys.executable, "-m", "cgagent", "network", "connect", "bridge", "--id", "web", "--pid", str(w),
            "-p", "8080:80", "-p", "5353:53/udp")
    assert r.returncode == 0, r.stderr
    listed = run("nft", "list", "ruleset").stdout
    assert "6 . 8080 : " in listed and "17 . 5353 : " in listed, listed   # the condition of the bug
    r = run(sys.executable, "-m", "cgagent", "network", "disconnect", "web")
    assert r.returncode == 0, r.stderr
    assert h.published() == set()
