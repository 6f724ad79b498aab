"""A connection made ahead: a runner the agent's launcher parks (cgagent.api.attach.Pool.park) makes,
at idle, a network namespace of its own and connects it to the default bridge network under an
owner no workload can have (POOL_OWNER + its pid). A bridged run it then serves that asks for nothing
else (no -p, no --ip, the same store root) takes that namespace over instead of connecting one:
a record renamed, an address re-owned, two files written, ~1 ms where a connect costs ~4-6 ms
(links, the port's nft guard, addresses, routes). Anything else leaves it, and the runner removes
it once its request is done (after it reported its code).

Only where a bridged run made the network already: a slot never creates the bridge, its NAT or a
sysctl (an agent that never ran a bridged workload adds nothing to its network namespace). Its
record names the runner (pid, start time) and the namespace by the runner's fd, so a runner that
was killed leaves what `cgagent network prune` (and the agent's start) removes.
"""

from __future__ import annotations

import contextlib
import os

from cgagent.network import POOL_OWNER, state_root

TYPE_CHECKING = False   # not typing's own (see cgagent.cli.thin)
if TYPE_CHECKING:
    from cgagent.isolation.spec import IsolationSpec

# this process's slot: (the namespace's fd, its owner, the store root); None: none, or taken
_slot: tuple[int, str, str] | None = None
_handed: tuple[int, str, str] | None = None   # taken for a launch (its fd the launch's), not yet claimed


def park(root: str | None = None) -> None:
    """At idle, in a runner: make the slot, where the default network and its bridge exist."""
    global _slot
    from cgagent.network import attach, bridge, config, netns

    r = state_root(root)
    if _slot is not None or not config.made(root=r):
        return
    if not bridge.whole(config.load(config.DEFAULT_NETWORK, r)):
        return
    fd = netns.new_netns()
    owner = f"{POOL_OWNER}{os.getpid()}"
    try:
        attach.connect(owner, config.DEFAULT_NETWORK, netns.fd_path(fd), root=r, pool=True)
    except BaseException:
        os.close(fd)
        raise
    _slot = (fd, owner, r)


def held_fds() -> set[int]:
    """What the runner's request must keep open (cgagent.api.attach._close_inherited)."""
    return {_slot[0]} if _slot is not None else set()


def _fits(spec: IsolationSpec, root: str) -> bool:
    from cgagent.network.config import DEFAULT_NETWORK

    return spec.net == DEFAULT_NETWORK and not spec.publish and not spec.ip and state_root(spec.store or None) == root


def take(spec: IsolationSpec) -> int | None:
    """Before the fork: the slot's namespace fd when this run can have it, else None. The fd is the
    launch's from here on (it closes it once the workload runs, or fails); claim() follows."""
    global _slot, _handed
    if _slot is None or not _fits(spec, _slot[2]):
        return None
    from cgagent.network import attach

    fd, owner, root = _slot
    if attach.load(owner, root) is None:   # removed meanwhile (`network rm`, a prune): connect anew
        _slot = None
        os.close(fd)
        return None
    _handed, _slot = _slot, None
    return fd


def taken(fd: int | None) -> bool:
    return _handed is not None and fd == _handed[0]


def claim(spec: IsolationSpec, owner: str, pid: int) -> None:
    """After the fork (the child waits for "go"): `owner`'s workload takes the connection over."""
    global _handed
    from cgagent.network import attach

    assert _handed is not None
    _fd, pool_owner, root = _handed
    attach.adopt(pool_owner, owner, pid, spec.hostname or None, root, list(spec.dns), list(spec.extra_hosts))
    _handed = None


def discard() -> None:
    """The runner is done (or stops): remove its slot, if no workload took it over. The namespace
    goes with the last fd, and its veth pair with it (the kernel's deletion, watched for). Never raises."""
    global _slot, _handed
    left, handed = _slot, _handed
    _slot = _handed = None
    for held, fd_ours in ((left, True), (handed, False)):
        if held is None:
            continue
        fd, owner, root = held
        if int(owner[len(POOL_OWNER):]) != os.getpid():
            continue   # a process forked from the runner (a detached run's supervisor): not its to remove
        from cgagent.network import attach

        with contextlib.suppress(Exception):
            attach.expect_disconnect(owner, root)
        if fd_ours:
            os.close(fd)
        with contextlib.suppress(Exception):
            attach.disconnect(owner, root)
