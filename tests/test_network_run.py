"""`cgagent run --net bridge|none|container:NAME|NETWORK -p ...`: the CLI end to end, inside a "host"
network namespace the test makes (the CLI runs under nsenter --net; cgroups come from the `cg` fixture)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.conftest import Env
from tests.netkit import ROOT, Host, hosts, make_host, wire

__all__ = ["hosts"]

SERVE = "while true; do echo hello-from-$(hostname) | nc -l -p 80; done"


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A busybox root filesystem (Debian's busybox-static): sh, nc, ip, cat."""
    root = str(tmp_path_factory.mktemp("netroot") / "rootfs")
    os.makedirs(f"{root}/bin")
    os.makedirs(f"{root}/etc")
    shutil.copy(shutil.which("busybox") or "/bin/busybox", f"{root}/bin/busybox")
    for a in subprocess.run([f"{root}/bin/busybox", "--list"], capture_output=True, text=True).stdout.split():
        if a != "busybox":
            os.symlink("busybox", f"{root}/bin/{a}")
    return root


class Node:
    """The CLI of one host: its namespace, the cg fixture's state dir and cgroup parent, its own state root."""

    def __init__(self, host: Host, cg: Env, rootfs: str) -> None:
        self.host, self.cg, self.rootfs = host, cg, rootfs

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.host.enter(), sys.executable, "-m", "cgagent", *args],
                              env=self.cg.env(CGAGENT_ROOT=self.host.root, PYTHONPATH=ROOT), cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)

    def box(self, *args: str) -> list[str]:
        """`run` arguments for an isolated busybox workload: options, then --rootfs, then the command."""
        i = args.index("--")
        return [*args[:i], "--rootfs", self.rootfs, *args[i:]]

    def ok(self, *args: str) -> str:
        res = self.run(*args)
        assert res.returncode == 0, res.stderr
        return res.stdout


@pytest.fixture
def node(cg: Env, hosts: list[Host], rootfs: str, tmp_path: object) -> Iterator[Node]:
    h = make_host(str(tmp_path))
    hosts.append(h)
    n = Node(h, cg, rootfs)
    yield n
    ws = os.path.join(cg.state_dir, "workloads")
    names = [f[:-5] for f in os.listdir(ws)] if os.path.isdir(ws) else []
    if names:
        n.run("rm", "-f", *names)


def test_run_bridge_workloads_reach_each_other_by_name_and_published_port(node: Node, hosts: list[Host],
                                                                          tmp_path: object) -> None:
    other = make_host(str(tmp_path))
    hosts.append(other)
    wire(node.host, other, "192.0.2.1", "192.0.2.2")
    node.ok("run", *node.box("-d", "--name", "alpha", "--net", "bridge", "-p", "8080:80", "--", "sh", "-c", SERVE))
    out = node.ok("run", *node.box("--rm", "--name", "beta", "--net", "bridge", "--", "sh", "-c",
                                   "cat /etc/hosts; nc alpha 80 </dev/null"))
    assert "\talpha" in out and "\tbeta" in out         # the generated hosts file is the workload's /etc/hosts
    assert "hello-from-alpha" in out                     # by name, over the bridge
    assert node.host.fetch(None, "127.0.0.1", 8080) == "hello-from-alpha"   # published: from the host
    assert other.fetch(None, "192.0.2.1", 8080) == "hello-from-alpha"       # and from another host
    # beta exited: its veth, address and hosts entry are gone; alpha's hosts file was rewritten in place
    hosts_a = open(os.path.join(node.host.root, "networks", "etc", "alpha", "hosts")).read()
    assert "beta" not in hosts_a
    # the same port again: one line, nothing made
    before = (node.host.links(), sorted(os.listdir(node.cg.state_dir + "/workloads")))
    res = node.run("run", *node.box("--rm", "--net", "bridge", "-p", "8080:81", "--", "true"))
    assert res.returncode != 0 and res.stderr.startswith("cgagent: error: port 8080/tcp is already published")
    assert res.stderr.count("\n") == 1
    assert (node.host.links(), sorted(os.listdir(node.cg.state_dir + "/workloads"))) == before
    assert node.host.published() == {8080}
    node.ok("rm", "-f", "alpha")
    assert not [ln for ln in node.host.links() if ln.startswith("cgv")]
    assert 8080 not in node.host.published()
    ipam = os.path.join(node.host.root, "networks", "ipam", "bridge")
    assert sorted(os.listdir(ipam)) == ["last_reserved_ip.0", "lock"]


def test_run_net_none_has_only_lo_and_container_shares_interfaces(node: Node) -> None:
    out = node.ok("run", *node.box("--rm", "--net", "none", "--", "ip", "-o", "link"))
    assert [ln.split(": ")[1] for ln in out.splitlines()] == ["lo"]
    node.ok("run", *node.box("-d", "--name", "first", "--net", "bridge", "--", "sleep", "1000"))
    pid = int(node.ok("ps", "--json").split('"pid": ')[1].split(",")[0])

    def view(out: str) -> list[tuple[str, str]]:   # (interface, IPv4 address) per line of `ip -o -4 addr`
        return sorted((ln.split()[1], ln.split()[3]) for ln in out.splitlines() if " inet " in ln)

    mine = view(node.ok("run", *node.box("--rm", "--net", "container:first", "--", "ip", "-o", "-4", "addr")))
    theirs = view(node.host.in_workload(pid, "ip", "-o", "-4", "addr").stdout)
    assert mine == theirs and [i for i, _ in mine] == ["eth0", "lo"] and mine[0][1].startswith("10.89.")
    macs = node.ok("run", *node.box("--rm", "--net", "container:first", "--", "cat", "/sys/class/net/eth0/address"))
    link = node.host.in_workload(pid, "ip", "-o", "link", "show", "eth0").stdout.split()
    assert macs.strip() == link[link.index("link/ether") + 1]      # the same eth0, not a copy
    res = node.run("run", *node.box("--rm", "--net", "container:nosuch", "--", "true"))
    assert res.returncode != 0 and res.stderr.startswith("cgagent: error: --net container:nosuch: no workload")
    assert res.stderr.count("\n") == 1
    node.ok("rm", "-f", "first")
    node.ok("run", *node.box("-d", "--name", "lonely", "--net", "none", "--", "sleep", "1000"))
    out = node.ok("run", *node.box("--rm", "--net", "container:lonely", "--", "ip", "-o", "link"))
    assert [ln.split(": ")[1] for ln in out.splitlines()] == ["lo"]    # lonely's namespace, not the host's
    node.ok("rm", "-f", "lonely")


def test_run_on_a_named_network(node: Node) -> None:
    node.ok("network", "create", "back", "--subnet", "10.98.0.0/24")
    out = node.ok("run", *node.box("--rm", "--net", "back", "--", "ip", "-o", "-4", "addr", "show", "eth0"))
    assert "10.98.0.2/24" in out
    res = node.run("run", *node.box("--rm", "--net", "nosuch", "--", "true"))
    assert res.stderr.startswith("cgagent: error: no network named 'nosuch'") and res.stderr.count("\n") == 1
    node.ok("network", "rm", "back")
    # a full subnet found at launch: one line, and the failed run leaves no record, cgroup or link
    node.ok("network", "create", "tiny", "--subnet", "10.98.1.0/30")
    node.ok("run", *node.box("-d", "--name", "only", "--net", "tiny", "--", "sleep", "1000"))
    links = node.host.links()
    res = node.run("run", *node.box("--name", "extra", "--net", "tiny", "--", "true"))
    assert res.returncode != 0 and res.stderr.startswith("cgagent: error: network tiny is full")
    assert res.stderr.count("\n") == 1
    assert [w["name"] for w in json.loads(node.ok("ps", "-a", "--json"))] == ["only"]
    assert node.host.links() == links
    node.ok("rm", "-f", "only")
    node.ok("network", "rm", "tiny")
    assert not [ln for ln in node.host.links() if ln.startswith("cg")]


@pytest.mark.slow
def test_run_200_bridge_launches_at_concurrency_8_never_share_an_address(node: Node, tmp_path: object) -> None:
    """Each workload claims its address with mkdir in a shared volume while it runs: a second holder
    of the same address would fail (exit 99). At the end IPAM, links and NAT entries are empty."""
    from concurrent.futures import ThreadPoolExecutor

    held = os.path.join(str(tmp_path), "held")
    os.makedirs(held)
    script = ("a=$(ip -o -4 addr show eth0 | awk '{print $4}' | cut -d/ -f1); mkdir /held/$a || exit 99; "
              "sleep 0.05; rmdir /held/$a; echo $a")

    def one(i: int) -> str:
        res = node.run("run", *node.box("--rm", "--net", "bridge", "-p", f"{30000 + i}:80", "-v", f"{held}:/held",
                                        "--", "sh", "-c", script), timeout=300)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, range(200)))
    assert all(a.startswith("10.89.") for a in got)
    assert os.listdir(held) == []
    ipam = os.path.join(node.host.root, "networks", "ipam", "bridge")
    assert sorted(os.listdir(ipam)) == ["last_reserved_ip.0", "lock"]
    assert os.listdir(os.path.join(node.host.root, "networks", "attachments")) == []
    assert not [ln for ln in node.host.links() if ln.startswith("cgv")]
    assert "elements" not in node.host.sh("nft", "list", "map", "ip", "cgagent", "ports").stdout
    assert json.loads(node.ok("ps", "-a", "--json")) == []


def test_isolated_workloads_default_to_the_bridge(node: Node) -> None:
    # As Docker: no --net means bridge. (The suite sets CGAGENT_DEFAULT_NET=none for everything
    # that runs in the machine's own netns; this test runs inside its own "host" namespace.)
    env = node.cg.env(CGAGENT_ROOT=node.host.root, PYTHONPATH=ROOT)
    env.pop("CGAGENT_DEFAULT_NET", None)
    res = subprocess.run([*node.host.enter(), sys.executable, "-m", "cgagent", "run",
                          *node.box("--rm", "--", "ip", "-o", "-4", "addr", "show", "dev", "eth0")],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "inet 10.89." in res.stdout


def test_run_whose_network_setup_fails_leaves_nothing_and_the_next_run_is_whole(node: Node) -> None:
    # issue 10: a failed --net bridge run used to leave cgagent0 and the network's record behind,
    # and the next run then went without NAT
    env = node.cg.env(CGAGENT_ROOT=node.host.root, PYTHONPATH=ROOT, CGAGENT_FAULT="net:inside")
    res = subprocess.run([*node.host.enter(), sys.executable, "-m", "cgagent", "run",
                          *node.box("--rm", "--net", "bridge", "-p", "8080:80", "--", "true")],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and res.stderr.startswith("cgagent: error: network setup failed at inside")
    assert res.stderr.count("\n") == 1
    assert node.host.links() == ["lo"] and node.host.nft().strip() == ""
    assert not os.path.exists(os.path.join(node.host.root, "networks", "networks", "bridge.json"))
    assert json.loads(node.ok("ps", "-a", "--json")) == []
    node.ok("run", *node.box("-d", "--name", "web", "--net", "bridge", "-p", "8080:80", "--", "sh", "-c", SERVE))
    assert "ip saddr @masq ip daddr != @internal masquerade" in node.host.nft()
    assert "10.89.0.0/16" in node.host.sh("nft", "list", "set", "ip", "cgagent", "masq").stdout
    assert node.host.fetch(None, "127.0.0.1", 8080) == "hello-from-web"
    node.ok("rm", "-f", "web")


def test_a_runs_connection_names_its_workload_from_the_first_save(node: Node) -> None:
    # The connection is made once the workload's process exists (while it is placed in its cgroup,
    # which on cgroup v1 waits out an RCU grace period meanwhile). The CLI killed right after the
    # connection (CGAGENT_FAULT=step:network, direct path) leaves an attachment that names the
    # workload's process and namespace: its end is seen by prune; before, it named the CLI's fd
    env = node.cg.env(CGAGENT_ROOT=node.host.root, PYTHONPATH=ROOT, CGAGENT_FAULT="step:network",
                      CGAGENT_DIRECT="1")
    res = subprocess.run([*node.host.enter(), sys.executable, "-m", "cgagent", "run",
                          *node.box("--name", "cut", "--net", "bridge", "--", "true")],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    with open(os.path.join(node.host.root, "networks", "attachments", "cut.json")) as f:
        att = json.load(f)
    assert isinstance(att["pid"], int) and att["pid_start"] is not None, att
    assert att["netns"] == f"/proc/{att['pid']}/ns/net", att
    rows = json.loads(node.ok("ps", "-a", "--json"))
    assert [r["name"] for r in rows] == ["cut"] and rows[0]["status"] != "running", rows
    node.ok("rm", "-f", "cut")
    assert not [ln for ln in node.host.links() if ln.startswith("cgv")], node.host.links()
    assert not os.listdir(os.path.join(node.host.root, "networks", "attachments"))
    assert json.loads(node.ok("ps", "-a", "--json")) == []


def test_a_bridged_workloads_download_shows_in_its_network_series(node: Node, tmp_path: object) -> None:
    """Issue 11: a --net bridge workload downloads N bytes from a server in its host's namespace;
    container_network_receive_bytes_total, read in the workload's own namespace, is at least N."""
    from cgagent import host as hostmod
    from exporters.registry import Exporter, Options
    from tests.exporter_helpers import parse, poll, value

    n = 5 << 20
    www, out = os.path.join(str(tmp_path), "www"), os.path.join(str(tmp_path), "out")
    os.makedirs(www)
    os.makedirs(out)
    with open(os.path.join(www, "blob"), "wb") as f:
        f.write(b"x" * n)
    srv = subprocess.Popen([*node.host.enter(), sys.executable, "-u", "-m", "http.server", "--bind", "0.0.0.0",
                            "--directory", www, "8099"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    node.host.procs.append(srv)
    assert srv.stdout is not None and srv.stdout.readline().startswith("Serving HTTP")
    node.ok("run", *node.box("-d", "--name", "dl", "--net", "bridge", "-v", f"{out}:/out", "--", "sh", "-c",
                             "wget -q -O /out/blob.tmp http://10.89.0.1:8099/blob && mv /out/blob.tmp /out/blob; "
                             "exec sleep 1000"))
    assert poll(lambda: os.path.exists(os.path.join(out, "blob")), 60), "the download did not finish"
    assert os.path.getsize(os.path.join(out, "blob")) == n
    exp = Exporter(Options(host=hostmod.detect(), state_dir=node.cg.state_dir, process_metrics=False))
    try:
        s = parse(exp.render().decode())
    finally:
        exp.close()
    got = value(s, "container_network_receive_bytes_total", name="dl", interface="eth0")
    assert got is not None and got >= n, got
    assert value(s, "container_network_receive_bytes_total", name="dl", interface="lo") is None
