"""Glue between `cgagent run` and the network code: the one module the runtime calls.

The agent makes the workload's network namespace itself, before the fork (podman does the same):
a fresh namespace held by an fd, connected to its network from outside, then joined by the child
with setns(2) where it would otherwise unshare CLONE_NEWNET. `container:NAME` joins NAME's
namespace through the same fd path. Modes, in IsolationSpec.net:
  none            the isolation layer unshares a namespace with lo only
  host            no namespace
  bridge | NAME   a namespace connected to the default bridge network / the named network
  container:NAME  NAME's namespace
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING

from cgagent.errors import CgagentError

if TYPE_CHECKING:
    from cgagent.isolation.spec import IsolationSpec

OWN_MODES = ("none", "host")


def wanted(net: str | None) -> bool:
    """True when the network layer has work for this --net value."""
    return bool(net) and net not in OWN_MODES


def check(net: str, publish: list[str], root: str | None, state_dir: str | None = None,
          ip: str | None = None) -> tuple[str, ...] | None:
    """Validate --net/-p/--ip before anything is made. -> the spec's `publish` (None: not a bridge-like net)."""
    from cgagent.network import attach, config

    if publish and (net in OWN_MODES or net.startswith("container:")):
        raise CgagentError(f"-p needs a bridge network, not --net {net}", "use --net bridge (or a network name)")
    if ip and (net in OWN_MODES or net.startswith("container:")):
        raise CgagentError(f"--ip needs a network, not --net {net}", "use --net NETWORK")
    if net.startswith("container:"):
        netns_of(net.partition(":")[2], state_dir)   # raises when it names no running workload
        return None
    network = config.load(net, root)                 # raises "no network named"
    attach.check_addressing(network, attach.static_ip(ip), root)   # an underlay needs --ip or a range
    ports = attach.parse_ports(publish)
    attach._check_ports(ports, root)                 # a port already published: one line, nothing made
    return tuple(publish)


def netns_of(name: str, state_dir: str | None = None) -> str:
    """The network namespace path of running workload `name`."""
    return ns_of(name, state_dir)


def ns_of(name: str, state_dir: str | None = None, ns: str = "net", opt: str = "--net") -> str:
    """The path of namespace `ns` of running workload `name` (`opt` names the option that asked)."""
    from cgagent import host as hostmod
    from cgagent import procs
    from cgagent.live import live_status, manager
    from cgagent.state import Store

    store = Store(state_dir)
    try:
        rec = store.load(name)
    except CgagentError:
        raise CgagentError(f"{opt} container:{name}: no workload named {name!r}",
                           "give a running workload's name (see `cgagent ps`)") from None
    h = hostmod.detect()
    if live_status(h, rec) != "running":
        raise CgagentError(f"{opt} container:{name}: workload {name!r} is not running", "start it first")
    cands = manager(h, rec).procs()
    from cgagent.isolation.namespaces import init_pid, inner_pid, top_pid

    if ns == "pid":   # any of its processes in a pid namespace not ours (its relay is in ours)
        pid = inner_pid(cands)
        if pid is None and cands:
            raise in_host_pid_ns(opt, name)
    else:   # its PID 1; a --pid host or container: workload has none: its first process (not a relay)
        pid = init_pid(cands) or top_pid(cands) or (rec.pid if procs.alive(rec.pid, rec.pid_start) else None) \
            or (cands[0] if cands else None)
    if pid is None:
        raise CgagentError(f"{opt} container:{name}: workload {name!r} has no process", "start it again")
    return f"/proc/{pid}/ns/{ns}"


def in_host_pid_ns(opt: str, name: str) -> CgagentError:
    """The refusal of `opt container:NAME` when NAME shares the host's pid namespace."""
    return CgagentError(f"{opt} container:{name}: {name!r} runs in the host's pid namespace (--pid host)",
                        "use --pid host, or name a workload with a pid namespace of its own")


def prepare(spec: IsolationSpec, owner: str, state_dir: str | None = None) -> tuple[int | None, dict[str, str]]:
    """Before the fork: the fd of the namespace the child must join (None: the isolation layer's own
    choice), and the files to bind-mount in the workload (path inside -> file on the host: its
    hosts and resolv.conf, which connect() writes before the child reads them). Connects nothing."""
    net = spec.net
    if not wanted(net):
        if not (spec.dns or spec.extra_hosts) or not spec.container_dir:
            return None, {}
        from cgagent.network import files

        # --dns/--add-host without a connection: files of its own, in its container dir
        return None, files.for_workload(os.path.join(spec.container_dir, "etc"), net, spec.dns, spec.extra_hosts)
    from cgagent.network import etc_dir, netns, slot

    if net.startswith("container:"):
        return netns.open_ns(netns_of(net.partition(":")[2], state_dir)), {}
    etc = etc_dir(owner, spec.store or None)
    fd = slot.take(spec)   # a runner's connection made ahead, when this run wants nothing else
    return fd if fd is not None else netns.new_netns(), {"/etc/hosts": os.path.join(etc, "hosts"),
                                                           "/etc/resolv.conf": os.path.join(etc, "resolv.conf")}


def connect(spec: IsolationSpec, owner: str, pid: int, fd: int | None) -> None:
    """After the fork, while the child waits for "go": connect `owner`'s namespace (`fd`, from
    prepare) to its network, the child's pid its liveness handle from the first save on. Done here
    rather than before the fork so that it overlaps the child's placement in its cgroup (see
    cgagent.runtime.lifecycle.start). Raises with nothing of the connection left."""
    if fd is None or not _connected(spec):
        return
    from cgagent.network import attach, netns, slot

    if slot.taken(fd):
        slot.claim(spec, owner, pid)
        return
    attach.connect(owner, spec.net, netns.fd_path(fd), pid=pid, ports=list(spec.publish or []),
                   hostname=spec.hostname or None, root=spec.store or None, ip=spec.ip or None,
                   dns=list(spec.dns), extra_hosts=list(spec.extra_hosts))


def _connected(spec: IsolationSpec) -> bool:
    """The workload has a connection of its own (not none/host, not another's namespace)."""
    return wanted(spec.net) and not spec.net.startswith("container:")


def ended(spec: IsolationSpec, owner: str) -> None:
    """The workload has exited and release() follows after other work: the wait for its link's end
    begins now (attach.expect_disconnect). Never raises."""
    if _connected(spec):
        from cgagent.network import attach

        with contextlib.suppress(Exception):
            attach.expect_disconnect(owner, spec.store or None)


def release(spec: IsolationSpec, owner: str) -> None:
    """The workload is gone (or never started): remove its connection. Idempotent, never raises."""
    if _connected(spec):
        from cgagent.network import attach

        with contextlib.suppress(Exception):
            attach.disconnect(owner, spec.store or None)


def warm(root: str | None = None) -> None:
    """At idle, in a runner the agent's launcher forked ahead of its request: see attach.warm; and a
    connection made ahead (cgagent.network.slot)."""
    from cgagent.network import attach, slot

    attach.warm(root)
    slot.park(root)


def unpark() -> None:
    """The runner is done: what warm() made and no run took goes."""
    from cgagent.network import slot

    slot.discard()


def startup_prune(root: str | None = None) -> None:
    """The agent's start-up: remove what workloads that died meanwhile left (only where cgagent has
    network state at all, so a host that never used networking is not touched). Done in a child
    process: the network stack it loads (pyroute2, libnftables: ~10 MB) must not stay in the agent,
    which never uses it again (its launcher has its own)."""
    from cgagent.network import net_dir

    if not os.path.isdir(os.path.join(net_dir(root), "attachments")):
        return
    sys.stderr.flush()
    pid = os.fork()
    if pid != 0:
        os.waitpid(pid, 0)
        return
    code = 0
    try:
        from cgagent.network.attach import prune

        for what in prune(root):
            print(f"cgagent: network prune: removed {what}", file=sys.stderr)
    except (CgagentError, OSError) as e:
        print(f"cgagent: warning: network prune failed: {e}", file=sys.stderr)
    except BaseException:
        code = 1
    finally:
        sys.stderr.flush()
        os._exit(code)
