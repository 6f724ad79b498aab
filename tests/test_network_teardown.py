"""A workload's network, as the kernel sees it (real links and nft tables, in a network namespace of
the test's own): the veth pair is gone when disconnect returns, whether the kernel deleted it with the
workload's namespace or disconnect had to (someone still held the namespace); the port's anti-spoofing
elements stay until the next nft run (a connect's) or a prune forgets them, and no new port gets the
name of one whose elements are still listed; watched from the workload's end, the teardown concerns
the pair that existed then. The rtnetlink requests cgagent writes itself (rtnl.py)
give what `ip` lists."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

SCRIPT = r"""
import json, os, subprocess, sys, time
from cgagent.errors import CgagentError
from cgagent.network import attach, libnft, netns, nft, rtnl, veth

root = sys.argv[1]
ipr = netns.iproute()
out = {}

def port(owner):
    return attach.load(owner, root).host_if

def elements():
    snap = nft._snapshot("bridge")
    return sorted(str(e) for e in snap["guarded"]), len(snap["pairs"])

def link(name):
    return bool(ipr.link_lookup(ifname=name))

# the requests written by hand (rtnl) against what `ip` lists
fd = netns.new_netns()
attach.connect("probe", "bridge", netns.fd_path(fd), root=root)
inside = subprocess.run(["nsenter", f"--net={netns.fd_path(fd)}", "sh", "-c", "ip -o -4 addr; ip route; ip -o link"],
                        capture_output=True, text=True).stdout
a = attach.load("probe", root)
out["inside"] = (f"eth0    inet {a.address}/{a.prefixlen}" in inside and f"default via {a.gateway} dev eth0" in inside
                 and "lo: <LOOPBACK,UP" in inside and a.mac in inside)
with rtnl.Rtnl() as rt:
    br = rt.link("cgagent0")
    out["bridge"] = br is not None and bool(br[1] & rtnl.IFF_UP) and a.gateway in rt.ipv4_addresses(br[0])
    out["missing"] = rt.link("cgvnothere")
try:
    veth.create("cgvsecond", br[0], netns.fd_path(fd), "02:00:00:00:00:08")
except CgagentError as e:
    out["second_eth0"] = str(e)
attach.disconnect("probe", root)
os.close(fd)
attach.prune(root)

# released: the namespace has no holder left when disconnect runs (a workload that ended)
fd = netns.new_netns()
attach.connect("one", "bridge", netns.fd_path(fd), root=root)
one = port("one")
os.close(fd)
attach.disconnect("one", root)
out["released_link"] = link(one)
out["released_stale"] = [p[0] for p in attach._stale(root)]
out["released_elements"] = elements()

# the next connect forgets them in its own nft run
fd = netns.new_netns()
attach.connect("two", "bridge", netns.fd_path(fd), root=root)
two = port("two")
out["connect_stale"], out["connect_elements"] = attach._stale(root), elements() == ([two], 1)

# held: another holder keeps the namespace (a `--net container:` workload): disconnect deletes the pair
attach.disconnect("two", root)
out["held_link"] = link(two)
os.close(fd)
out["held_stale"] = [p[0] for p in attach._stale(root)] == [two]

fd = netns.new_netns()
attach.connect("three", "bridge", netns.fd_path(fd), root=root)
three = port("three")
out["new_name_differs"] = three not in (one, two)
out["never_a_listed_name"] = all(attach._port_name({"cgv%08x" % i for i in range(4)}) not in
                                 {"cgv%08x" % i for i in range(4)} for _ in range(50))

# a prune forgets any element whose link is gone (a crash lost the list), and keeps a live port's
nft.guard(("cgvdeadbeef", "02:00:00:00:00:09", "10.9.0.9"))
out["pruned"] = sorted(d for d in attach.prune(root) if d.startswith("rule elements"))
out["after_prune"] = elements() == ([three], 1)
attach.disconnect("three", root)
os.close(fd)
attach.prune(root)
out["table_gone"] = nft._snapshot("bridge") is None

# the delete fails and the link stays (held namespace, the kernel refuses): the port stays guarded,
# its elements neither forgotten nor listed as stale (before, they were removed: an open port)
fd = netns.new_netns()
attach.connect("four", "bridge", netns.fd_path(fd), root=root)
four = port("four")
real_delete = rtnl.Rtnl.delete
def refused(self, index):
    raise rtnl.NetlinkError(16)   # EBUSY
rtnl.Rtnl.delete = refused
attach.disconnect("four", root)
rtnl.Rtnl.delete = real_delete
out["refused_link"] = link(four)
out["refused_guarded"] = elements() == ([four], 1) and attach._stale(root) == ()
ipr.link("del", index=ipr.link_lookup(ifname=four)[0])
os.close(fd)
attach.prune(root)

# watched from the workload's end (veth.watch, as a run's finish does): remove() concerns the pair
# that existed then. Here the kernel deletes it with its namespace and a pair of the same name is
# made before the teardown: it is not the workload's, and stays (unwatched, remove() would wait for
# it and delete it)
fd = netns.new_netns()
attach.connect("five", "bridge", netns.fd_path(fd), root=root)
five = port("five")
with rtnl.Rtnl() as rt, rtnl.LinkEvents() as ev:
    idx = rt.link(five)[0]
    attach.expect_disconnect("five", root)
    os.close(fd)
    out["watched_died"] = ev.deleted(idx, time.monotonic() + 30)
    held = netns.new_netns()
    veth.create(five, rt.link("cgagent0")[0], netns.fd_path(held), "02:00:00:00:00:0a")
attach.disconnect("five", root)
out["watched_namesake_kept"] = link(five)
out["watched_closed"] = veth._watched == {}
for i in ipr.link_lookup(ifname=five):
    ipr.link("del", index=i)
os.close(held)
attach.prune(root)

# prune finds a dead workload's connection, and before it disconnects it, a new workload of that
# name has taken the name (the dead one's connection removed, the new one's made): the new one stays
fd = netns.new_netns()
attach.connect("six", "bridge", netns.fd_path(fd), root=root)
os.close(fd)
real_alive, fresh = attach.alive, []
def racing(a):
    if a.owner == "six" and not fresh:
        attach.disconnect("six", root)
        fresh.append(netns.new_netns())
        attach.connect("six", "bridge", netns.fd_path(fresh[0]), root=root)
        return False   # what prune saw: the dead one
    return real_alive(a)
attach.alive = racing
pruned = attach.prune(root)
attach.alive = real_alive
out["prune_race"] = ("attachment six" not in pruned and attach.load("six", root) is not None
                     and link(port("six")))
attach.disconnect("six", root)
os.close(fresh[0])
attach.prune(root)

# the library's netlink socket outlives each command: never inherited by what this process executes
flags = {}
for fd in os.listdir("/proc/self/fd"):
    try:   # the listing's own fd is gone by now
        if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
            continue
        with open(f"/proc/self/fdinfo/{fd}") as f:
            flags[fd] = int(next(l for l in f if l.startswith("flags:")).split()[1], 8)
    except FileNotFoundError:
        continue
out["sockets_cloexec"] = bool(flags) and all(v & os.O_CLOEXEC for v in flags.values())
pid = os.fork()
if pid == 0:   # a forked child makes its own context: its answers are its own
    os._exit(0 if nft._run("list tables").returncode == 0 else 1)
out["child"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
out["parent_after_child"] = nft._run("list tables").returncode
# everything closed (a shim becoming a fresh process) and the socket's fd number taken by a file: a
# new context, and the file is left alone
os.closerange(3, 1 << 16)
taken = os.open("/dev/null", os.O_RDONLY)
res = nft._run("list tables")
out["after_closerange"] = res.returncode == 0 and os.readlink(f"/proc/self/fd/{taken}") == "/dev/null"
os.write(1, json.dumps(out).encode())
"""


def test_a_workloads_link_is_gone_and_its_elements_go_with_the_next_nft_run() -> None:
    with tempfile.TemporaryDirectory(prefix="cgagent-teardown-") as root:
        r = subprocess.run(["unshare", "-n", sys.executable, "-c", SCRIPT, root], capture_output=True, text=True,
                           timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["inside"] is True and got["bridge"] is True and got["missing"] is None
    assert got["second_eth0"].startswith("the workload already has an interface named eth0")
    assert got["released_link"] is False and got["held_link"] is False
    one = got["released_stale"][0]
    assert got["released_stale"] == [one] and got["released_elements"] == [[one], 1]
    assert got["connect_stale"] == [] and got["connect_elements"] is True and got["held_stale"] is True
    assert got["new_name_differs"] is True and got["never_a_listed_name"] is True
    assert got["pruned"] == ["rule elements of cgvdeadbeef"] and got["after_prune"] is True
    assert got["table_gone"] is True
    assert got["refused_link"] is True and got["refused_guarded"] is True
    assert got["watched_died"] is True and got["watched_namesake_kept"] is True and got["watched_closed"] is True
    assert got["sockets_cloexec"] is True and got["child"] == 0 and got["parent_after_child"] == 0
    assert got["after_closerange"] is True
    assert got["prune_race"] is True


def test_the_stale_list_stays_one_private_inode_and_refuses_a_symlink(tmp_path: object) -> None:
    """Each teardown adds a port and the next launch empties the list: rewritten in place (no inode
    allocated and freed per launch), 0600 as the records are, and never written through a symlink."""
    import os
    import stat

    import pytest

    from cgagent.network import attach

    root = str(tmp_path)
    port = ("cgv0123abcd", "02:42:0a:59:00:02", "10.89.0.2")
    attach._set_stale(root, (port,))
    path = attach._stale_file(root)
    first = os.stat(path)
    assert stat.S_IMODE(first.st_mode) == 0o600 and attach._stale(root) == (port,)
    attach._set_stale(root, ())
    assert os.stat(path).st_ino == first.st_ino and attach._stale(root) == ()
    os.unlink(path)
    target = os.path.join(root, "target")
    with open(target, "w") as f:
        f.write("untouched")
    os.symlink(target, path)
    with pytest.raises(OSError):
        attach._set_stale(root, (port,))
    assert open(target).read() == "untouched"
