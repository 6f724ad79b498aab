"""Attacks on the bridge network from a workload, inside "host" network namespaces the tests make
(tests/netkit.py): the host's 127.0.0.1 (CVE-2020-8558), spoofed sources, loopback and per-address
publishing, ip_forward left as found, and a failed setup rolled back whole.

The raw frames are sent from the stand-in workload's namespace with CAP_NET_RAW, the capability a
workload has by default (Docker's set). "Not received" is proven without waiting on a clock: the
sender is pinned to one CPU and sends a control frame last, down the same veth; frames from one CPU's
backlog go through the stack in order, so once the control frame is in, an earlier frame that was
let through would be in too. Each attack test also lifts the filter it tests and sees the attack
land, so the test cannot pass with a frame that would never have worked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.netkit import Host, hosts, make_host, wire

__all__ = ["hosts"]

GW = "10.89.0.1"
PORT = 5005

# UDP sockets on the given addresses; after "ready", wait for the datagram "control", then report
# every datagram received as [local address, payload, source address]
LISTEN = r"""
import json, select, socket, sys
socks = []
for a in sys.argv[1:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((a, int(__import__("os").environ["PORT"])))
    socks.append(s)
print("ready", flush=True)
got, done = [], False
while not done:
    r, _, _ = select.select(socks, [], [], 20)
    if not r: break
    for s in r:
        data, peer = s.recvfrom(2048)
        got.append([s.getsockname()[0], data.decode(), peer[0]]); done = done or data == b"control"
for s in socks:
    s.setblocking(False)
    try:
        while True:
            data, peer = s.recvfrom(2048); got.append([s.getsockname()[0], data.decode(), peer[0]])
    except BlockingIOError:
        pass
print(json.dumps(got))
"""

# raw Ethernet frames out of eth0: each argv item is "srcmac,srcip,dstip,payload"; dst MAC is argv[1]
SEND = r"""
import os, socket, struct, sys
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
def csum(b):
    s = sum(struct.unpack("!10H", b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
mac = lambda m: bytes.fromhex(m.replace(":", ""))
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); sock.bind(("eth0", 0))
for spec in sys.argv[2:]:
    smac, sip, dip, payload = spec.split(",")
    udp = struct.pack("!HHHH", 40000, int(os.environ["PORT"]), 8 + len(payload), 0) + payload.encode()
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                     socket.inet_aton(sip), socket.inet_aton(dip))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    sock.send(mac(sys.argv[1]) + mac(smac) + b"\x08\x00" + ip + udp)
"""


UDP_ECHO = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 53)); print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048); s.sendto(b"echo:" + data + b" from " + peer[0].encode(), peer)
"""

UDP_ASK = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(20)
s.sendto(b"ping", (sys.argv[1], int(sys.argv[2]))); print(s.recv(2048).decode())
"""


def _connect(h: Host, owner: str, pid: int, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
    return h.cgagent("network", "connect", "bridge", "--id", owner, "--pid", str(pid), *extra, **env)


def _addr(h: Host, pid: int) -> tuple[str, str]:
    """(IPv4 address, MAC) of the workload's eth0."""
    ip = h.in_workload(pid, "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout.split()[3].split("/")[0]
    return ip, _mac(h.in_workload(pid, "ip", "-o", "link", "show", "eth0").stdout)


def _mac(ip_link: str) -> str:
    """The MAC in one line of `ip -o link` (/sys/class/net under nsenter --net shows the wrong namespace)."""
    words = ip_link.split()
    return words[words.index("link/ether") + 1]


def _attack(h: Host, pid: int, listen: list[str], frames: list[str], control: str) -> list[list[str]]:
    """Listen on `listen` in the host, send `frames` then `control` from the workload: what arrived."""
    env = dict(os.environ, PORT=str(PORT))
    lst = subprocess.Popen([*h.enter(), sys.executable, "-c", LISTEN, *listen], stdout=subprocess.PIPE, text=True,
                           env=env)
    h.procs.append(lst)
    assert lst.stdout is not None and lst.stdout.readline().strip() == "ready"
    gw_mac = _mac(h.sh("ip", "-o", "link", "show", "cgagent0").stdout)
    subprocess.run(["nsenter", "-t", str(pid), "-n", "--", sys.executable, "-c", SEND, gw_mac, *frames, control],
                   check=True, env=env, timeout=30)
    out, _ = lst.communicate(timeout=30)
    got: list[list[str]] = json.loads(out)
    assert [g for g in got if g[1] == "control"], "the control frame never arrived: the harness is broken"
    return [g for g in got if g[1] != "control"]


def _host_with_workload(tmp_path: object, hosts: list[Host]) -> tuple[Host, int, str, str]:
    h = make_host(str(tmp_path))
    hosts.append(h)
    w = h.workload()
    res = _connect(h, "victim-free", w)
    assert res.returncode == 0, res.stderr
    return (h, w, *_addr(h, w))


def test_workload_cannot_reach_the_hosts_loopback(hosts: list[Host], tmp_path: object) -> None:
    h, w, ip, mac = _host_with_workload(tmp_path, hosts)
    assert h.sh("cat", "/proc/sys/net/ipv4/conf/cgagent0/route_localnet").stdout.strip() == "0"
    assert h.sh("cat", "/proc/sys/net/ipv4/conf/all/route_localnet").stdout.strip() == "0"
    frames = [f"{mac},{ip},127.0.0.1,to-loopback", f"{mac},127.0.0.1,{GW},from-loopback"]
    control = f"{mac},{ip},{GW},control"
    assert _attack(h, w, ["127.0.0.1", GW], frames, control) == []
    # another tool on the host turns route_localnet on (kube-proxy does): the nft guard still holds
    h.sh("sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1", "net.ipv4.conf.cgagent0.route_localnet=1")
    assert _attack(h, w, ["127.0.0.1", GW], frames, control) == []
    # proof that the frames are real attacks: without the guard (and with route_localnet, as before
    # the fix) the host's 127.0.0.1 listener gets the datagram
    h.sh("nft", "flush", "chain", "ip", "cgagent", "guard")
    assert ["127.0.0.1", "to-loopback", ip] in _attack(h, w, ["127.0.0.1", GW], frames, control)


def test_spoofed_sources_are_dropped(hosts: list[Host], tmp_path: object) -> None:
    h, w, ip, mac = _host_with_workload(tmp_path, hosts)
    other = h.workload()
    assert _connect(h, "neighbour", other).returncode == 0
    nip, nmac = _addr(h, other)
    frames = [f"{mac},{nip},{GW},neighbours-ip", f"{mac},10.89.0.99,{GW},unassigned-ip",
              f"{nmac},{ip},{GW},neighbours-mac", f"02:00:00:00:00:01,{ip},{GW},made-up-mac",
              f"{mac},{ip},{GW},genuine"]
    got = _attack(h, w, [GW], frames, f"{mac},{ip},{GW},control")
    assert got == [[GW, "genuine", ip]]
    # proof: the anti-spoofing elements of this port gone, the forged frames arrive
    h.sh("nft", "flush", "set", "bridge", "cgagent", "guarded")
    got = _attack(h, w, [GW], frames, f"{mac},{ip},{GW},control")
    assert sorted(g[1] for g in got) == sorted(f.split(",")[3] for f in frames)


def _refused(h: Host, pid: int | None, addr: str, port: int) -> bool:
    from tests.netkit import CLIENT

    pre = ["nsenter", "-t", str(pid), "-n", "--"] if pid else h.enter()
    res = subprocess.run([*pre, sys.executable, "-c", CLIENT, addr, str(port)], capture_output=True, text=True,
                         timeout=30)
    return res.returncode != 0 and "ConnectionRefusedError" in res.stderr


def test_publish_on_loopback_and_on_one_address_only(hosts: list[Host], tmp_path: object) -> None:
    h, other = make_host(str(tmp_path)), make_host(str(tmp_path))
    hosts += [h, other]
    ia, _ = wire(h, other, "192.0.2.1", "192.0.2.2")
    h.sh("ip", "addr", "add", "198.51.100.1/24", "dev", ia)   # a second address of the host
    w, client = h.workload(), h.workload()
    res = _connect(h, "web", w, "-p", "127.0.0.1:8080:80", "-p", "192.0.2.1:8081:80", "-p", "5353:53/udp")
    assert res.returncode == 0, res.stderr
    assert _connect(h, "client", client).returncode == 0
    h.serve(w, 80, "published")
    assert h.fetch(None, "127.0.0.1", 8080) == "published"       # loopback: from the host
    assert _refused(other, None, "192.0.2.1", 8080)               # not from another host
    assert _refused(h, None, "192.0.2.1", 8080)                   # nor on the host's other addresses
    assert _refused(h, client, GW, 8080)                          # nor from a workload, via the gateway
    assert h.fetch(None, "192.0.2.1", 8081) == "published"        # the one address: from the host
    assert other.fetch(None, "192.0.2.1", 8081) == "published"    # and from elsewhere
    assert _refused(h, None, "198.51.100.1", 8081)                # not on another address
    assert _refused(h, None, "127.0.0.1", 8081)                   # nor on loopback
    # UDP on every address: relayed on loopback by the proxy, answered by the workload
    echo = subprocess.Popen(["nsenter", "-t", str(w), "-n", "--", sys.executable, "-c", UDP_ECHO],
                            stdout=subprocess.PIPE, text=True)
    h.procs.append(echo)
    assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
    ask = h.sh(sys.executable, "-c", UDP_ASK, "127.0.0.1", "5353").stdout.strip()
    assert ask.startswith("echo:ping from 10.89.0.1")             # the proxy speaks from the gateway
    bad = _connect(h, "nope", client, "-p", "203.0.113.9:9000:80")
    assert bad.returncode != 0 and bad.stderr.startswith("cgagent: error: -p 203.0.113.9:9000: 203.0.113.9 is not an")
    clash = _connect(h, "nope", client, "-p", "8081:80")
    assert clash.stderr.startswith("cgagent: error: port 8081/tcp is already published (by web)")
    # the workload dies unseen (no disconnect, no prune): its loopback proxy ends with its veth
    from cgagent import procs
    from cgagent.network import attach

    att = attach.load("web", h.root)
    assert att is not None and att.proxy_pid and procs.alive(att.proxy_pid, att.proxy_start)
    ns = os.readlink(f"/proc/{w}/ns/net")
    for p in list(h.procs):   # the workload and the server running in its namespace
        if p.poll() is None and os.readlink(f"/proc/{p.pid}/ns/net") == ns:
            h.kill(p.pid)
    assert procs.wait_exit(att.proxy_pid, att.proxy_start, 20)
    assert _refused(h, None, "127.0.0.1", 8080)
    assert h.cgagent("network", "disconnect", "web", "client").returncode == 0


@pytest.mark.parametrize("before", ["0", "1"])
def test_ip_forward_is_restored_when_the_last_bridge_goes(hosts: list[Host], tmp_path: object, before: str) -> None:
    h = make_host(str(tmp_path))
    hosts.append(h)
    h.sh("sysctl", "-qw", f"net.ipv4.ip_forward={before}")
    w = h.workload()
    assert _connect(h, "one", w).returncode == 0
    assert h.cgagent("network", "create", "second", "--subnet", "10.92.0.0/24").returncode == 0
    w2 = h.workload()
    assert h.cgagent("network", "connect", "second", "--id", "two", "--pid", str(w2)).returncode == 0
    assert h.sh("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    assert h.cgagent("network", "disconnect", "one", "two").returncode == 0
    assert h.cgagent("network", "rm", "second").returncode == 0      # one bridge left: still on
    assert h.sh("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    assert h.cgagent("network", "prune").returncode == 0              # the last bridge goes
    assert h.links() == ["lo"] and "cgagent" not in h.nft()
    assert h.sh("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == before


STEPS = ["record", "bridge", "veth", "inside", "publish", "proxy", "files"]


def test_a_failed_network_setup_leaves_nothing_and_the_next_is_whole(hosts: list[Host], tmp_path: object) -> None:
    h = make_host(str(tmp_path))
    hosts.append(h)
    w = h.workload()

    def nothing_left() -> None:
        assert h.links() == ["lo"]
        assert h.nft().strip() == ""
        assert h.sh("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "0"
        for d in ("attachments", "networks"):
            p = os.path.join(h.root, "networks", d)
            assert not os.path.isdir(p) or os.listdir(p) == [], os.listdir(p)
        ipam = os.path.join(h.root, "networks", "ipam", "bridge")
        assert not os.path.isdir(ipam) or not [f for f in os.listdir(ipam) if f[0].isdigit()]
        assert _refused(h, None, "127.0.0.1", 8080)                # no proxy left listening
        assert h.in_workload(w, "ip", "-o", "link").stdout.count("\n") == 1   # only lo inside

    for step in STEPS:
        res = _connect(h, "web", w, "-p", "8080:80", CGAGENT_FAULT=f"net:{step}")
        assert res.returncode != 0 and res.stderr == \
            f"cgagent: error: network setup failed at {step} (CGAGENT_FAULT): unset CGAGENT_FAULT\n", res.stderr
        nothing_left()
    # a host without nftables: neither the `nft` program on PATH nor libnftables, which cgagent loads
    # in-process (covered by /dev/null in a private mount namespace: the machine's file is untouched)
    no_nft = ":".join(p for p in os.environ["PATH"].split(":") if not os.path.exists(os.path.join(p, "nft")))
    lib = next(ln.split(" => ")[1].strip() for ln in subprocess.run(["ldconfig", "-p"], capture_output=True,
               text=True, check=True).stdout.splitlines() if "libnftables.so.1 " in ln)
    res = subprocess.run(["unshare", "-m", "--", "sh", "-c", f'mount --bind /dev/null {lib} && exec "$@"', "-",
                          *h.enter(), sys.executable, "-m", "cgagent", "network", "connect", "bridge", "--id", "web",
                          "--pid", str(w), "-p", "8080:80"], env=h.env(PATH=no_nft), capture_output=True, text=True,
                         timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert res.stderr.startswith("cgagent: error: nft is not installed") and res.stderr.count("\n") == 1, res.stderr
    nothing_left()
    # the next run builds the network whole: NAT, filters, the published port
    res = _connect(h, "web", w, "-p", "8080:80")
    assert res.returncode == 0, res.stderr
    nft = h.nft()
    assert "10.89.0.0/16" in nft and "masquerade" in nft and "tcp . 8080" in nft and '"cgagent0"' in nft
    h.serve(w, 80, "whole")
    assert h.fetch(None, "127.0.0.1", 8080) == "whole"


def test_publish_syntax_is_dockers() -> None:
    from cgagent.errors import CgagentError
    from cgagent.network.attach import loopback_ports, parse_ports

    got = parse_ports(["8080:80", "127.0.0.1:9000:90/udp", "192.0.2.1:8443:443", "0.0.0.0:81:80",
                       "192.0.2.2:8443:443"])
    assert got == [("tcp", 8080, 80, "0.0.0.0"), ("udp", 9000, 90, "127.0.0.1"), ("tcp", 8443, 443, "192.0.2.1"),
                   ("tcp", 81, 80, "0.0.0.0"), ("tcp", 8443, 443, "192.0.2.2")]
    assert loopback_ports(got) == [("tcp", 8080, 80, "127.0.0.1"), ("udp", 9000, 90, "127.0.0.1"),
                                   ("tcp", 81, 80, "127.0.0.1")]
    for bad in ("80", "1.2.3:80:80", "::1:80:80", "x:80:80", "80:80/sctp", "0:80", "80:65536", "a:b:c:d"):
        with pytest.raises(CgagentError, match="is not \\[IP:\\]HOSTPORT:CTRPORT"):
            parse_ports([bad])
    for twice in (["80:80", "80:81"], ["80:80", "127.0.0.1:80:81"], ["127.0.0.1:80:80", "127.0.0.1:80:81"]):
        with pytest.raises(CgagentError, match="port 80/tcp is given twice"):
            parse_ports(twice)
    assert len(parse_ports(["80:80/udp", "80:80"])) == 2
