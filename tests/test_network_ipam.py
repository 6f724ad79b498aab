"""Persistent IPAM (CNI host-local style): files on disk, flock, cursor, concurrency across processes."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from cgagent.errors import CgagentError
from cgagent.network.ipam import CURSOR, Ipam


def _cycle(args: tuple[str, str, int]) -> str:
    """One allocate/hold/release cycle; a marker made with O_EXCL proves nobody else holds the address."""
    d, held, i = args
    ipam = Ipam(d, "10.200.0.0/27", "10.200.0.1")
    owner = f"w{os.getpid()}-{i}"
    ip = ipam.allocate(owner)
    marker = os.path.join(held, str(ip))
    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)   # FileExistsError = handed out twice
    os.close(fd)
    assert ipam.entries()[str(ip)] == owner
    os.unlink(marker)
    assert ipam.release(owner) == [str(ip)]
    return str(ip)


def test_ipam_200_cycles_at_concurrency_8_never_hands_an_address_out_twice(tmp_path: object) -> None:
    d, held = os.path.join(str(tmp_path), "ipam"), os.path.join(str(tmp_path), "held")
    os.makedirs(held)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(8) as pool:
        got = pool.map(_cycle, [(d, held, i) for i in range(200)], chunksize=1)
    assert len(got) == 200
    assert len(set(got)) > 1                     # the cursor moves on instead of reusing one address
    assert Ipam(d, "10.200.0.0/27").entries() == {}
    assert os.listdir(held) == []


def test_ipam_skips_gateway_moves_cursor_and_persists(tmp_path: object) -> None:
    d = str(tmp_path)
    ipam = Ipam(d, "10.201.0.0/29", "10.201.0.1")
    a = ipam.allocate("a")
    b = ipam.allocate("b")
    assert (str(a), str(b)) == ("10.201.0.2", "10.201.0.3")
    assert open(os.path.join(d, "10.201.0.2")).read() == "a"
    assert open(os.path.join(d, CURSOR)).read() == "10.201.0.3"
    ipam.release("a")
    # a fresh object (another process) continues after the cursor, not at the freed address
    assert str(Ipam(d, "10.201.0.0/29", "10.201.0.1").allocate("c")) == "10.201.0.4"
    assert ipam.release("nobody") == []


def test_the_cursor_is_rewritten_in_place_and_a_torn_one_is_no_cursor(tmp_path: object) -> None:
    # in place: a launch then allocates one inode (its address's file), not two, and frees none
    d = str(tmp_path)
    ipam = Ipam(d, "10.201.0.0/29", "10.201.0.1")
    ipam.allocate("a")
    ino = os.stat(os.path.join(d, CURSOR)).st_ino
    ipam.allocate("b")
    assert os.stat(os.path.join(d, CURSOR)).st_ino == ino
    assert open(os.path.join(d, CURSOR)).read() == "10.201.0.3"
    with open(os.path.join(d, CURSOR), "w") as f:
        f.write("10.201.")   # what a crash between the truncation and the write may leave
    assert str(ipam.allocate("c")) == "10.201.0.4"   # from the range's start: .2 and .3 are held


def test_ipam_full_subnet_is_one_error_and_allocates_nothing(tmp_path: object) -> None:
    d = str(tmp_path)
    ipam = Ipam(d, "10.202.0.0/30", "10.202.0.1")   # .1 gateway, .2 the only workload address
    ipam.allocate("a")
    with pytest.raises(CgagentError, match="is full"):
        ipam.allocate("b")
    assert ipam.entries() == {"10.202.0.2": "a"}
