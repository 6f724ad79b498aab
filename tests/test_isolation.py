"""Acceptance for isolated runs (issue 4): namespaces, overlay root from image layers, image config."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests import images
from tests.isolated import IMG, Box, ok, ps_json, wait_for

pytest_plugins = ("tests.isolated_fixtures",)  # the box and image_store fixtures


def test_ps_sees_only_the_workload_which_is_pid_1(box: Box) -> None:
    out = ok(box.run("run", "--rm", IMG, "--", "ps"))
    rows = [ln.split() for ln in out.strip().splitlines()[1:]]
    assert [r[0] for r in rows] == ["1"], out
    assert rows[0][2] == "ps"


def test_hostname_is_the_given_name(box: Box) -> None:
    assert ok(box.run("run", "--rm", "--hostname", "box-one", IMG, "--", "hostname")).strip() == "box-one"
    # the host keeps its own
    assert ok(box.run("run", "--rm", "--net", "host", IMG, "--", "hostname")).strip() != "box-one"


def test_net_none_has_only_lo_and_it_is_up(box: Box) -> None:
    out = ok(box.sh("ls /sys/class/net; ip -o link", "--net", "none"))
    lines = out.strip().splitlines()
    assert lines[0] == "lo" and len([x for x in lines if ": " in x]) == 1, out
    assert "UP" in lines[1].split("<", 1)[1].split(">")[0], out
    host_links = sorted(os.listdir("/sys/class/net"))
    assert ok(box.sh("ls /sys/class/net", "--net", "host")).split() == host_links


def test_writes_stay_in_the_workload(box: Box, image_store: str) -> None:
    script = "echo mine > /etc/new.txt && echo changed > /etc/hostname && rm /etc/passwd && cat /etc/new.txt"
    assert ok(box.sh(script)).strip() == "mine"
    # the image's layers are untouched
    layers = Path(image_store) / "layers"
    assert not list(layers.glob("*/diff/etc/new.txt"))
    assert [p.read_text() for p in layers.glob("*/diff/etc/hostname")] == ["image\n"]
    # a second workload of the same image sees the image, not the first one's writes
    out = ok(box.sh("cat /etc/hostname; test -e /etc/new.txt && echo LEAK; test -e /etc/passwd && echo passwd"))
    assert out.split() == ["image", "passwd"]


def test_two_live_workloads_do_not_share_writes(box: Box) -> None:
    ok(box.run("run", "-d", "--name", "w1", IMG, "--", "sh", "-c", "echo one > /tmp/mark; sleep 1000"))
    try:
        wait_for(lambda: any(r["name"] == "w1" and r["status"] == "running" for r in ps_json(box)))
        assert "absent" in ok(box.sh("cat /tmp/mark 2>/dev/null || echo absent"))
    finally:
        ok(box.run("rm", "-f", "w1"))
    assert box.containers() == []


def test_whited_out_file_is_absent_and_opaque_dir_hides_lower(box: Box) -> None:
    out = ok(box.sh(f"ls /etc; test -e {images.WHITED_OUT} && echo PRESENT; ls /opq"))
    names = out.split()
    assert "removed.txt" not in names and "PRESENT" not in names
    assert "layer2.txt" in names and "passwd" in names
    assert "from-layer2" in names and "from-layer1" not in names


def test_image_config_env_cmd_workdir_user(box: Box) -> None:
    assert ok(box.run("run", "--rm", IMG, "--")).strip() == "default-cmd"   # the image's Cmd
    out = ok(box.sh("echo $IMAGE_VAR $EXTRA $HOSTNAME; pwd; id -u", "-e", "EXTRA=given", "--hostname", "hh",
                    "-w", "/tmp/work"))
    assert out.split() == ["from-image", "given", "hh", "/tmp/work", "0"]
    out = ok(box.sh("id -u; id -g; echo $HOME; cat /proc/self/status | grep CapEff", "-u", "nobody"))
    uid, gid, home, _, capeff = out.split()
    assert (uid, gid, home) == ("65534", "65534", "/home/nobody") and int(capeff, 16) == 0


def test_volumes_and_read_only_root(box: Box, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("from host\n")
    out = ok(box.sh("cat /data/in.txt; echo back > /data/out.txt", "-v", f"{data}:/data"))
    assert out == "from host\n" and (data / "out.txt").read_text() == "back\n"
    r = box.sh("echo x > /data/nope.txt", "-v", f"{data}:/data:ro")
    assert r.returncode != 0 and "Read-only" in r.stderr and not (data / "nope.txt").exists()
    r = box.sh("echo ok > /dev/shm/a && echo ok > /data/rw.txt && touch /etc/x", "--read-only", "-v", f"{data}:/data")
    assert r.returncode != 0 and "Read-only" in r.stderr
    assert (data / "rw.txt").read_text() == "ok\n"  # volumes and /dev stay writable under --read-only


def test_plain_rootfs_dir(box: Box, tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "busybox").write_bytes(Path(images.BUSYBOX).read_bytes())
    (root / "bin" / "busybox").chmod(0o755)
    for a in ("sh", "echo", "cat", "hostname"):
        (root / "bin" / a).symlink_to("busybox")
    out = ok(box.run("run", "--rm", "--rootfs", str(root), "--hostname", "plain", "--", "sh", "-c",
                     "hostname; echo w > /written"))
    assert out.strip() == "plain" and (root / "written").read_text() == "w\n"   # writes go to the dir itself
    assert sorted(os.listdir(root)) == ["bin", "dev", "proc", "sys", "written"]


def test_exec_failure_is_one_line_and_leaves_nothing(box: Box) -> None:
    r = box.run("run", "--rm", IMG, "--", "no-such-command")
    assert r.returncode == 127 and r.stderr.strip().splitlines() == [
        "cgagent: error: command not found: no-such-command: check the name and PATH"]
    assert box.containers() == [] and ps_json(box) == []
    r = box.run("run", "--rm", "no-such-image:1", "--", "true")
    assert r.returncode != 0 and "no image" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_exit_code_passes_through(box: Box) -> None:
    assert box.sh("exit 7").returncode == 7


def test_init_reaps_and_forwards_signals(box: Box) -> None:
    out = ok(box.sh("sleep 0 & wait; ps -o pid,stat,comm; true", "--init"))
    rows = [ln.split() for ln in out.strip().splitlines()[1:]]
    # STAT: S (sleeping), with N when the test itself runs under nice
    assert (rows[0][0], rows[0][1][0], rows[0][2]) == ("1", "S", "init") and rows[1][0] == "2" and \
        rows[1][2] == "sh", out  # sh runs under PID 1
    assert not any("Z" in r[1] for r in rows), out
    out = ok(box.sh("ps -o pid,user,comm; true", "--init", "-u", "nobody"))   # a reaper that is not root
    assert out.splitlines()[1].split() == ["1", "nobody", "init"], out
    script = "trap 'exit 42' TERM; while :; do sleep 0.05; done"
    ok(box.run("run", "-d", "--init", "--name", "trapper", IMG, "--", "sh", "-c", script))
    wait_for(lambda: any(r["name"] == "trapper" and r["status"] == "running" for r in ps_json(box)))
    ok(box.run("stop", "-t", "20", "trapper"))
    [rec] = [r for r in ps_json(box) if r["name"] == "trapper"]
    assert rec["exit_code"] == 42   # SIGTERM reached sh through the reaper, sh's trap ran
    ok(box.run("rm", "trapper"))


def test_rm_f_cleans_up_after_the_cli_is_killed(box: Box) -> None:
    p = box.popen("run", "--name", "orphan", IMG, "--", "sleep", "1000", stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any(r["name"] == "orphan" and r["status"] == "running" for r in ps_json(box)))
        p.send_signal(signal.SIGKILL)
        p.wait()
        [rec] = ps_json(box)
        assert rec["status"] == "running"   # the workload outlives its CLI
        assert len(box.containers()) == 1
        ok(box.run("rm", "-f", "orphan"))
        assert ps_json(box) == [] and box.containers() == []
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_image_without_double_dash(box: Box) -> None:
    # `run IMG [CMD...]`, as Docker: the first word is the image (tests/test_run_grammar.py)
    assert ok(box.run("run", "--rm", IMG)).strip() == "default-cmd"
    assert ok(box.run("run", "--rm", "--hostname", "nodash", IMG, "hostname")).strip() == "nodash"
    assert box.run("run", "--rm", "echo", "host").returncode == 125   # a host command goes after --


def test_every_namespace_is_new_except_net_host(box: Box) -> None:
    kinds = ["pid", "mnt", "uts", "ipc", "net", "cgroup"]
    script = "; ".join(f"readlink /proc/self/ns/{k}" for k in kinds)
    host = {k: os.readlink(f"/proc/self/ns/{k}") for k in kinds}
    inside = dict(zip(kinds, ok(box.sh(script)).split(), strict=True))
    assert all(inside[k] != host[k] for k in kinds), (inside, host)
    inside = dict(zip(kinds, ok(box.sh(script, "--net", "host")).split(), strict=True))
    assert inside["net"] == host["net"] and all(inside[k] != host[k] for k in kinds if k != "net")


def test_entrypoint_cmd_workdir_user_from_the_config(box: Box, tmp_path: Path) -> None:
    images.write_layout(str(tmp_path / "ep"), [images.layer1()], ref="ep:1",
                        config={"Entrypoint": ["sh", "-c", "echo entry $0 $(pwd) $(id -u) $X"],
                                "Cmd": ["default-arg"], "WorkingDir": "/etc", "User": "nobody", "Env": ["PATH=/bin"]})
    r = box.run("image", "import", str(tmp_path / "ep"))
    assert r.returncode == 0, r.stderr
    assert ok(box.run("run", "--rm", "ep:1", "--")).split() == ["entry", "default-arg", "/etc", "65534"]
    out = ok(box.run("run", "--rm", "-e", "X=1", "-u", "root", "-w", "/tmp", "ep:1", "--", "given"))
    assert out.split() == ["entry", "given", "/tmp", "0", "1"]   # CMD replaces Cmd; -u, -w, -e override
    ok(box.run("image", "rm", "ep:1"))


def test_bad_isolation_options_are_one_line(box: Box, tmp_path: Path) -> None:
    for opts in (["--cap-add", "NOPE"], ["-v", "relative:/x"], ["-v", f"{tmp_path}/missing:/x"],
                 ["-v", f"{tmp_path}:/"], ["--security-opt", "apparmor=x"], ["--rootfs", f"{tmp_path}/none"]):
        r = box.run("run", "--rm", *opts, IMG, "--", "true")
        assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, (opts, r.stderr)
        assert r.stderr.startswith("cgagent: error: "), r.stderr
    assert ps_json(box) == [] and box.containers() == []
