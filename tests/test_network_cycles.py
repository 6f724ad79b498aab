"""200 connect/exit cycles at concurrency 8 against one bridge: no address twice, nothing left."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.netkit import ROOT, Host, hosts, make_host

__all__ = ["hosts"]

# one worker process: N times start a stand-in workload, connect it (with a published port), prove with an
# O_EXCL marker that no one else holds its address, let it exit, disconnect
WORKER = r"""
import os, subprocess, sys
from cgagent.network import attach
held, n, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for i in range(n):
    p = subprocess.Popen(["unshare", "-n", "sleep", "infinity"])
    while not os.readlink(f"/proc/{p.pid}/exe").endswith("/sleep"):
        pass
    owner = f"{tag}-{i}"
    port = f"{20000 + int(tag[1:]) * 100 + i}:80"
    att = attach.connect(owner, "bridge", f"/proc/{p.pid}/ns/net", pid=p.pid, ports=[port])
    fd = os.open(os.path.join(held, att.address), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.close(fd)
    os.unlink(os.path.join(held, att.address))
    p.kill(); p.wait()
    assert attach.disconnect(owner)
print("ok")
"""


def test_200_cycles_at_concurrency_8_leave_nothing(hosts: list[Host], tmp_path: object) -> None:
    h = make_host(str(tmp_path))
    hosts.append(h)
    held = os.path.join(str(tmp_path), "held")
    os.makedirs(held)
    env = h.env(CGAGENT_BRIDGE_SUBNET="10.97.0.0/26")   # 61 addresses for 8 concurrent holders: the cursor wraps
    workers = [subprocess.Popen([*h.enter(), sys.executable, "-c", WORKER, held, "25", f"w{k}"], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(8)]
    for w in workers:
        out, err = w.communicate(timeout=600)
        assert w.returncode == 0 and out.strip() == "ok", err
    ipam_dir = os.path.join(h.root, "networks", "ipam", "bridge")
    assert sorted(os.listdir(ipam_dir)) == ["last_reserved_ip.0", "lock"]
    assert os.listdir(os.path.join(h.root, "networks", "attachments")) == []
    assert not [ln for ln in h.links() if ln.startswith("cgv")]
    assert "elements" not in h.sh("nft", "list", "map", "ip", "cgagent", "ports").stdout
    assert h.cgagent("network", "prune").stdout == ""   # nothing was left for prune either
