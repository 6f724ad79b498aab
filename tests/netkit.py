"""Test "hosts" for the network tests: network namespaces the test makes, and stand-in workloads.

Every piece of network code under test runs INSIDE a namespace made here (nsenter --net, which keeps
the mount namespace so cgroupfs stays visible), never in the machine's own. Teardown kills the
workloads and deletes the namespaces even when the test failed; deleting a namespace takes every
bridge, veth, vxlan device, route, sysctl and nft table made in it along.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a TCP server that answers every connection with a fixed text ("@peer": the client's address)
# and prints "ready" once listening
SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16)
print("ready", flush=True)
while True:
    c, peer = s.accept(); c.sendall((peer[0] if sys.argv[2] == "@peer" else sys.argv[2]).encode()); c.close()
"""

CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
data = b""
while True:
    b = s.recv(100)
    if not b: break
    data += b
print(data.decode())
"""


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=60)



def dnat_ports(listed: str) -> set[int]:
    """The host ports cgagent's DNAT maps hold in `nft -j list ruleset` output, read as elements: a
    substring test on the ruleset would also match a veth's random name (`cgv7f580800` holds "8080")."""
    ports: set[int] = set()
    for obj in json.loads(listed or "{}").get("nftables", []):
        m = obj.get("map", {})
        if m.get("table") == "cgagent" and m.get("name") in ("ports", "ports_at"):
            ports |= {int(key["concat"][-1]) for key, _ in m.get("elem", [])}
    return ports

@dataclass
class Host:
    """One "host": a named network namespace with lo up, and the cgagent state root it uses."""

    name: str
    root: str
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def enter(self) -> list[str]:
        return ["nsenter", f"--net={self.path}", "--"]

    def env(self, **extra: str) -> dict[str, str]:
        return dict(os.environ, CGAGENT_ROOT=self.root, PYTHONPATH=ROOT, **extra)

    def sh(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.enter(), *cmd], capture_output=True, text=True, check=check, timeout=60)

    def cgagent(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.enter(), sys.executable, "-m", "cgagent", *args], env=self.env(**extra),
                              capture_output=True, text=True, timeout=120, cwd=ROOT)

    def workload(self) -> int:
        """A stand-in workload: a process in its own network namespace, a child of this host's."""
        p = subprocess.Popen([*self.enter(), "unshare", "-n", "sleep", "infinity"], text=True)
        self.procs.append(p)
        # nsenter and unshare exec, so the pid is sleep's once `sleep` runs (after unshare -n)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                if os.readlink(f"/proc/{p.pid}/exe").endswith("/sleep"):
                    return p.pid
            except OSError:
                pass
            time.sleep(0.005)   # no event for "another process exec'd"
        raise AssertionError("stand-in workload did not start")

    def in_workload(self, pid: int, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", "-t", str(pid), "-n", "--", *cmd], capture_output=True, text=True,
                              check=check, timeout=60)

    def serve(self, pid: int | None, port: int, text: str) -> None:
        """A TCP server in workload `pid`'s namespace (None: in this host's)."""
        pre = ["nsenter", "-t", str(pid), "-n", "--"] if pid else self.enter()
        p = subprocess.Popen([*pre, sys.executable, "-c", SERVER, str(port), text], stdout=subprocess.PIPE,
                             text=True)
        self.procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"

    def fetch(self, pid: int | None, addr: str, port: int) -> str:
        """Connect from workload `pid` (None: from this host) and return what the server said."""
        pre = ["nsenter", "-t", str(pid), "-n", "--"] if pid else self.enter()
        res = subprocess.run([*pre, sys.executable, "-c", CLIENT, addr, str(port)], capture_output=True,
                             text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    def kill(self, pid: int) -> None:
        for p in self.procs:
            if p.pid == pid:
                p.kill()
                p.wait()

    def links(self) -> list[str]:
        out = self.sh("ip", "-o", "link", "show").stdout.splitlines()
        return [ln.split(": ")[1].split("@")[0] for ln in out]

    def nft(self) -> str:
        return self.sh("nft", "list", "ruleset").stdout

    def published(self) -> set[int]:
        return dnat_ports(self.sh("nft", "-j", "list", "ruleset").stdout)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        self.stop_proxies()
        sh("ip", "netns", "del", self.name, check=False)

    def stop_proxies(self) -> None:
        """Loopback-port proxies are processes, not namespace objects: deleting the namespace would
        not end them (they would hold it). Those of connections a test left behind are ended here."""
        from cgagent.network import attach, proxy

        for a in attach.all_attachments(self.root):
            if a.proxy_pid:
                proxy.stop(a.proxy_pid, a.proxy_start)


def make_host(tmp: str) -> Host:
    name = f"cgtest-{uuid.uuid4().hex[:8]}"
    sh("ip", "netns", "add", name)
    h = Host(name=name, root=os.path.join(tmp, name))
    h.sh("ip", "link", "set", "lo", "up")   # as on a real host: local addresses route through lo
    return h


def wire(a: Host, b: Host, a_addr: str, b_addr: str, prefix: int = 24) -> tuple[str, str]:
    """A cable between two hosts: a veth pair, an address on each end. -> the link names."""
    ia, ib = "up" + a.name[-6:], "up" + b.name[-6:]
    sh("ip", "link", "add", ia, "netns", a.name, "type", "veth", "peer", "name", ib, "netns", b.name)
    a.sh("ip", "addr", "add", f"{a_addr}/{prefix}", "dev", ia)
    b.sh("ip", "addr", "add", f"{b_addr}/{prefix}", "dev", ib)
    a.sh("ip", "link", "set", ia, "up")
    b.sh("ip", "link", "set", ib, "up")
    return ia, ib


@pytest.fixture
def hosts(tmp_path: object) -> Iterator[list[Host]]:
    """Call hosts_factory-style: `hosts` is a list you extend with make_host(); all are removed."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make network namespaces (CI runs as root)")
    made: list[Host] = []
    try:
        yield made
    finally:
        for h in made:
            h.close()

