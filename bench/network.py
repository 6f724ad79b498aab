"""Network launch latency (issue 5), measured inside a network namespace made here as the "host"
(never the machine's own network):
  run --net none     `cgagent run --rm --rootfs BUSYBOX --net none -- /bin/true`
  run --net bridge   the same with --net bridge: veth, address, route, hosts files, IPAM, teardown
  floor (ip)         the same plumbing by `ip` commands in a shell loop: netns, veth onto a bridge,
                     address, lo up, route, /bin/true inside, delete; per iteration
  connect+disconnect the network step alone, in-process (cgagent.network.attach), per cycle
The price of networking is bridge - none; the floor shows what the plumbing costs with no agent."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable

from bench.common import busybox_rootfs, cgroup_parent_dirs, interleaved, remove_cgroup_tree, summary, time_cmd

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "30"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLOOR = r"""
set -e
ip link add cgfloor0 type bridge; ip addr add 10.99.0.1/16 dev cgfloor0; ip link set cgfloor0 up
start=$(date +%s%N)
i=0
while [ $i -lt $1 ]; do
  n=cgbench-floor-$$-$i
  ip netns add $n
  ip link add cgvf$i type veth peer name eth0 netns $n
  ip link set cgvf$i master cgfloor0 up
  ip -n $n addr add 10.99.1.$((i % 250 + 2))/16 dev eth0
  ip -n $n link set eth0 up
  ip -n $n link set lo up
  ip -n $n route add default via 10.99.0.1
  ip netns exec $n /bin/true
  ip netns del $n
  i=$((i + 1))
done
end=$(date +%s%N)
ip link del cgfloor0
echo $(( (end - start) / $1 ))
"""

CYCLE = r"""
import os, subprocess, sys, time
from cgagent.network import attach
n = int(sys.argv[1]); out = []
for i in range(n):
    p = subprocess.Popen(["unshare", "-n", "sleep", "infinity"])
    while not os.readlink(f"/proc/{p.pid}/exe").endswith("/sleep"):
        pass
    t = time.perf_counter()
    attach.connect(f"b{i}", "bridge", f"/proc/{p.pid}/ns/net", pid=p.pid)
    attach.disconnect(f"b{i}")
    out.append(time.perf_counter() - t)
    p.kill(); p.wait()
print(" ".join(str(x) for x in out))
"""


def main() -> None:
    if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"):
        print("network bench skipped: needs root, nft (nftables) and ip (iproute2)")
        return
    ns = f"cgbench-{uuid.uuid4().hex[:8]}"
    sub = f"cgagent-bench-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    tmp = tempfile.mkdtemp(prefix="cgagent-netbench-", dir="/run" if os.path.isdir("/run") else None)
    busybox_rootfs(f"{tmp}/rootfs")
    env = dict(os.environ, CGAGENT_STATE_DIR=f"{tmp}/state", CGAGENT_ROOT=f"{tmp}/root",
               CGAGENT_CGROUP_PARENT=f"nested:{sub}", PYTHONPATH=ROOT)
    enter = ["nsenter", f"--net=/run/netns/{ns}", "--"]
    cgagent = [*enter, os.path.join(os.path.dirname(sys.executable), "cgagent"), "run", "--rm",
               "--rootfs", f"{tmp}/rootfs"]
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run([*enter, "ip", "link", "set", "lo", "up"], check=True)
        cases: dict[str, Callable[[], float]] = {
            "run --net none": lambda: time_cmd([*cgagent, "--net", "none", "--", "/bin/true"], env=env),
            "run --net bridge": lambda: time_cmd([*cgagent, "--net", "bridge", "--", "/bin/true"], env=env),
        }
        for f in cases.values():   # warm caches; the first bridge run also makes cgagent0 and the nft table
            f()
        res = interleaved(cases, ROUNDS)
        floor_ns = subprocess.run([*enter, "sh", "-c", FLOOR, "floor", str(ROUNDS)], capture_output=True,
                                  text=True, check=True).stdout.strip()
        cyc = subprocess.run([*enter, sys.executable, "-c", CYCLE, str(ROUNDS)], env=env, capture_output=True,
                             text=True, check=True).stdout.split()
        res["floor: ip commands (mean)"] = [int(floor_ns) / 1e9]
        res["connect+disconnect (library)"] = [float(x) for x in cyc]
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        for d in cgroup_parent_dirs(sub):
            remove_cgroup_tree(d)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{ROUNDS} rounds, interleaved, in network namespace {ns} (deleted)")
    for k, v in res.items():
        print(f"  {k:32} " + (summary(v) if len(v) > 1 else f"mean   {1e3 * v[0]:7.1f} ms"))
    none, bridge = statistics.median(res["run --net none"]), statistics.median(res["run --net bridge"])
    floor = res["floor: ip commands (mean)"][0]
    print(f"  price of networking (bridge - none)  {1e3 * (bridge - none):6.1f} ms")
    print(f"  bridge - none vs the ip floor        {(bridge - none) / floor:6.2f}x")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"  ({time.perf_counter() - t0:.0f} s)")
