"""Container networking through netlink (pyroute2) and nftables, done as the CNI reference plugins do it.

The namespace the agent runs in is the "host"; a workload's network namespace is named by a path
(/proc/<pid>/ns/net or a bind-mounted nsfs file). State lives under `<CGAGENT_ROOT>/networks`:
  networks/<name>.json        a named network (config.py)
  ipam/<network>/             one file per allocated address, lock, last_reserved_ip.0 (ipam.py)
  attachments/<owner>.json    what one workload's connection made: links, address, ports (attach.py)
  etc/<owner>/hosts, resolv.conf   files for the isolation layer to bind-mount (files.py)
"""

from __future__ import annotations

import os

from cgagent.errors import CgagentError

DEFAULT_ROOT = "/var/lib/cgagent"
# every host-side link cgagent makes starts with "cg": prune finds leftovers by these prefixes
VETH_PREFIX = "cgv"       # host end of a workload's veth pair
BRIDGE_PREFIX = "cgbr"    # bridges of user networks; the default network's bridge is cgagent0
VXLAN_PREFIX = "cgvx"
DEFAULT_BRIDGE = "cgagent0"


def state_root(root: str | None = None) -> str:
    return root or os.environ.get("CGAGENT_ROOT") or DEFAULT_ROOT


def net_dir(root: str | None = None) -> str:
    return os.path.join(state_root(root), "networks")


# owner of a connection made ahead by a parked runner (cgagent.network.slot): no workload name starts
# with a dot (cgagent.state.validate_name), and no user sees one (hosts files, `network ls`)
POOL_OWNER = ".pool-"


def is_pool(owner: str) -> bool:
    return owner.startswith(POOL_OWNER)


def etc_dir(owner: str, root: str | None = None) -> str:
    """Where the workload's hosts and resolv.conf live (the isolation layer bind-mounts them)."""
    return os.path.join(net_dir(root), "etc", owner)


def fault(step: str) -> None:
    """Test-only fault injection: CGAGENT_FAULT=net:STEP (comma-separated list) fails the network
    setup at STEP, so tests can prove every step is rolled back."""
    if f"net:{step}" in os.environ.get("CGAGENT_FAULT", "").split(","):
        raise CgagentError(f"network setup failed at {step} (CGAGENT_FAULT)", "unset CGAGENT_FAULT")
