"""--userns: root inside is uid/gid 100000 on the host; image layers are mounted idmapped (issue 4)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cgagent.isolation import namespaces
from cgagent.isolation.spec import USERNS_BASE
from tests.isolated import IMG, Box, ok, ps_json, wait_for

pytest_plugins = ("tests.isolated_fixtures",)


def test_root_inside_is_an_unprivileged_host_uid(box: Box, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    os.chown(vol, USERNS_BASE, USERNS_BASE)   # root inside owns it
    out = ok(box.sh("cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g; stat -c %u:%g /bin/busybox /etc; "
                    "echo hi > /vol/f; touch /root-owned && echo wrote", "--userns", "-v", f"{vol}:/vol"))
    lines = out.split("\n")
    assert lines[0].split() == ["0", str(USERNS_BASE), "65536"] and lines[1].split() == lines[0].split()
    assert lines[2:4] == ["0", "0"]
    assert lines[4:6] == ["0:0", "0:0"]   # the image's root-owned files belong to root inside
    assert "wrote" in out
    st = os.stat(vol / "f")
    assert (st.st_uid, st.st_gid) == (USERNS_BASE, USERNS_BASE)   # ...and to uid 100000 on the host


def test_host_sees_the_workload_as_uid_100000(box: Box) -> None:
    ok(box.run("run", "-d", "--userns", "--name", "mapped", IMG, "--", "sh", "-c", "echo x > /tmp/f; sleep 1000"))
    try:
        wait_for(lambda: any(r["name"] == "mapped" and r["status"] == "running" for r in ps_json(box)))
        rec = json.load(open(f"{box.cg.state_dir}/workloads/mapped.json"))
        pids = [int(p) for p in open(f"{rec['dirs']['pids']}/cgroup.procs").read().split()]
        init = namespaces.init_pid(pids)
        assert init is not None
        status = dict(ln.split(":", 1) for ln in open(f"/proc/{init}/status").read().splitlines())
        assert status["Uid"].split()[0] == str(USERNS_BASE) and status["Gid"].split()[0] == str(USERNS_BASE)
        upper = Path(rec["isolation"]["container_dir"]) / "upper"
        wait_for(lambda: (upper / "tmp" / "f").exists())
        assert os.stat(upper / "tmp" / "f").st_uid == USERNS_BASE   # writes land as the mapped uid
        out = ok(box.run("exec", "mapped", "--", "sh", "-c", "id -u; cat /proc/self/uid_map; cat /tmp/f"))
        assert out.split() == ["0", "0", str(USERNS_BASE), "65536", "x"]
    finally:
        ok(box.run("rm", "-f", "mapped"))


def test_userns_keeps_the_rest_of_the_isolation(box: Box) -> None:
    out = ok(box.sh("ls /etc; ls /opq; hostname; ps -o pid | tail -n +2 | wc -l",
                    "--userns", "--hostname", "mapped-host"))
    names = out.split()
    assert "removed.txt" not in names and "from-layer1" not in names and "from-layer2" in names
    assert "mapped-host" in names
    for attempt in ("mount -t tmpfs x /mnt", "unshare -U true", "echo x > /proc/sys/kernel/hostname",
                    "hostname other", "mknod /tmp/b b 8 0", "echo 1 > /sys/fs/cgroup/pids/pids.max"):
        assert box.sh(attempt, "--userns").returncode != 0, attempt


def test_userns_with_a_plain_rootfs_dir(box: Box, tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "busybox").write_bytes(Path("/bin/busybox").read_bytes())
    (root / "bin" / "busybox").chmod(0o755)
    out = ok(box.run("run", "--rm", "--userns", "--rootfs", str(root), "--", "/bin/busybox", "sh", "-c",
                     "busybox cat /proc/self/uid_map; busybox touch /made; busybox stat -c %u /made"))
    assert out.split() == ["0", str(USERNS_BASE), "65536", "0"]
    assert os.stat(root / "made").st_uid == 0   # idmapped: root inside writes files owned by 0 in the dir
