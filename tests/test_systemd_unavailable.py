"""The systemd driver on a host where systemd is not running (this machine): one line, nothing made."""

from __future__ import annotations

import os

import pytest

from cgagent import host as hostmod
from tests.conftest import Env

pytestmark = pytest.mark.skipif(hostmod.detect().init_is_systemd or os.path.exists("/run/systemd/private"),
                                reason="systemd runs here: tests/test_systemd_ns.py covers the driver")


def _one_line(r: object, needle: str) -> None:
    err: str = r.stderr  # type: ignore[attr-defined]
    assert r.returncode != 0 and err.startswith("cgagent: error: ") and err.count("\n") == 1, err  # type: ignore[attr-defined]
    assert needle in err, err


def test_systemd_driver_without_systemd_is_one_line_and_leaves_nothing(cg: Env) -> None:
    r = cg.run("run", "--cgroup-driver", "systemd", "--cgroup-parent", "cgagent.slice", "--name", "nosd",
               "--", "sleep", "1000")
    _one_line(r, "systemd is not answering on /run/systemd/private")
    assert cg.run("ps", "-a", "--json").stdout.strip() == "[]"
    assert not any(os.path.exists(d) for d in cg.roots)   # not even the test's own cgroup parent


def test_systemd_driver_maps_a_path_and_refuses_nested(cg: Env) -> None:
    r = cg.run("run", "--cgroup-driver", "systemd", "--cgroup-parent", "/some/path", "--", "true")
    _one_line(r, "systemd is not answering")   # mapped to some-path.slice: only systemd is missing
    r = cg.run("run", "--cgroup-driver", "systemd", "--cgroup-parent", "nested:x", "--", "true")
    _one_line(r, "only the cgroupfs driver can do")
    r = cg.run("run", "--cgroup-driver", "systemd", "--cgroup-parent", "a--b.slice", "--", "true")
    _one_line(r, "is not a valid slice name")
