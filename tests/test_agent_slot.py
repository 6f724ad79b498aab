"""Connections made ahead (cgagent.network.slot): an agent serving in a network namespace of the
test's own, where the default bridge network's bridge exists, parks each runner with a namespace already
connected to it under a `.pool-PID` owner; a bridged run takes one over, a run that wants more (-p)
connects anew, and nothing of them is seen by users or outlives the agent (stopped or killed)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.exporter_helpers import poll
from tests.netkit import ROOT, hosts
from tests.test_network_run import Node, node, rootfs

__all__ = ["hosts", "node", "rootfs"]

pytestmark = [pytest.mark.root]


def _pools(node: Node) -> dict[str, str]:
    """address -> owner of each connection made ahead, as its record names it."""
    out = {}
    for f in glob.glob(os.path.join(node.host.root, "networks", "attachments", ".pool-*.json")):
        try:
            with open(f) as fh:
                att = json.load(fh)
        except FileNotFoundError:   # its runner removed it after the listing: gone (run 58)
            continue
        out[att["address"]] = att["owner"]
    return out


def _ipam(node: Node) -> dict[str, str]:
    d = os.path.join(node.host.root, "networks", "ipam", "bridge")
    out = {}
    for n in os.listdir(d) if os.path.isdir(d) else []:
        if n[0].isdigit() and "." in n and ".tmp." not in n:
            try:
                with open(os.path.join(d, n)) as f:
                    out[n] = f.read().strip()
            except FileNotFoundError:   # released after the listing
                continue
    return out


@contextlib.contextmanager
def agent_in(node: Node) -> Iterator[subprocess.Popen[str]]:
    """`cgagent serve` in the node's network namespace (nsenter execs it: its pid is the agent's),
    on the node's state dir and store root, so that the node's CLI calls go through it."""
    p = subprocess.Popen([*node.host.enter(), sys.executable, "-m", "cgagent", "serve", "--listen", "127.0.0.1:0"],
                         env=node.cg.env(CGAGENT_ROOT=node.host.root, PYTHONPATH=ROOT), cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert p.stdout is not None and "/metrics" in p.stdout.readline()
        yield p
    finally:
        if p.poll() is None:
            p.terminate()
        p.wait(60)
        if p.stdout is not None:
            p.stdout.close()


def _park_both(node: Node) -> None:
    """Runners park connections only where the network's bridge is (an agent's start prunes an idle
    one): two bridged runs through the agent take the two runners parked before it existed, and the
    two forked after them park theirs."""
    for _ in range(2):
        node.ok("run", *node.box("--rm", "--net", "bridge", "--", "true"))
    assert poll(lambda: len(_pools(node)) == 2, 30), _pools(node)


def test_a_bridged_run_through_the_agent_takes_over_a_connection_made_ahead(node: Node) -> None:
    with agent_in(node):
        _park_both(node)
        ahead = _pools(node)
        assert all(_ipam(node)[ip] == owner for ip, owner in ahead.items())
        node.ok("run", *node.box("-d", "--name", "web", "--net", "bridge", "--", "sleep", "300"))
        with open(os.path.join(node.host.root, "networks", "attachments", "web.json")) as f:
            web = json.load(f)
        # the address and the port made ahead are the workload's now, under its name and process
        assert web["address"] in ahead and web["owner"] == "web" and _ipam(node)[web["address"]] == "web"
        assert web["netns"] == f"/proc/{web['pid']}/ns/net"
        out = node.ok("run", *node.box("--rm", "--net", "bridge", "--", "sh", "-c",
                                       "ip -o -4 addr show dev eth0; cat /etc/hosts"))
        assert "web" in out and ".pool-" not in out, out   # its hosts file names web, never a pool owner
        with open(os.path.join(node.host.root, "networks", "etc", "web", "hosts")) as f:
            assert ".pool-" not in f.read()
        nets = json.loads(node.ok("network", "ls", "--json"))
        assert [n["workloads"] for n in nets if n["name"] == "bridge"] == [["web"]]
        # -p: more than a connection made ahead has; connected anew. Neither it nor a host workload
        # (runs that leave their runner's connection) inherits that namespace's fd: 0-2, and ls's own
        out = node.ok("run", *node.box("--rm", "--net", "bridge", "-p", "8080:80", "--", "sh", "-c",
                                       "ip -o -4 addr; ls /proc/self/fd"))
        assert "eth0" in out and out.split()[-4:] == ["0", "1", "2", "3"], out
        assert node.ok("run", "--rm", "--", "ls", "/proc/self/fd").split() == ["0", "1", "2", "3"]
        # what no run took goes with its runner: every pool record names a live runner
        assert poll(lambda: len(_pools(node)) == 2 and all(
            os.path.exists(f"/proc/{o[len('.pool-'):]}") for o in _pools(node).values()), 30), _pools(node)
        node.ok("rm", "-f", "web")
    # the agent stopped: its parked runners removed theirs before it exited; a runner that served a
    # request removes its own after its report, on its own time
    assert poll(lambda: not _pools(node), 30), _pools(node)
    assert not [o for o in _ipam(node).values() if o.startswith(".pool-")], _ipam(node)
    assert poll(lambda: not [ln for ln in node.host.links() if ln.startswith("cgv")], 30), node.host.links()


def test_connections_made_ahead_go_with_a_killed_agent_and_a_removed_network(node: Node) -> None:
    with agent_in(node) as a:
        _park_both(node)
        a.send_signal(signal.SIGKILL)   # its launcher sees its end: the parked runners end, removing theirs
        assert poll(lambda: not _pools(node), 30), _pools(node)
    assert not [o for o in _ipam(node).values() if o.startswith(".pool-")], _ipam(node)
    assert poll(lambda: not [ln for ln in node.host.links() if ln.startswith("cgv")], 30), node.host.links()
    with agent_in(node):
        _park_both(node)
        node.ok("network", "rm", "bridge")   # no workload on it: the connections made ahead go with it
        assert _pools(node) == {} and "cgagent0" not in node.host.links()
        # the runners find theirs gone and connect anew (the network is made again)
        out = node.ok("run", *node.box("--rm", "--net", "bridge", "--", "ip", "-o", "-4", "addr", "show", "eth0"))
        assert "inet 10.89." in out
