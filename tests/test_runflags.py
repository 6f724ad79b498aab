"""The two front doors of `run` (the fast parser and the typer command) are generated from one table,
cgagent.runflags.OPTIONS: for the same argv they must build the same RunRequest, or fail with the same
line and exit code. The launch itself is replaced by capturing the request: nothing is started."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main

from cgagent.cli import app as appmod
from cgagent.cli import fastrun
from cgagent.errors import CgagentError
from cgagent.runflags import OPTIONS, build, with_env

# a value that validates, per option; flags take none. Isolation options run on ROOTFS with --net none.
GOOD: dict[str, str] = {
    "cpus": "0.5", "cpu_shares": "512", "cpu_weight": "50", "cpu_period": "50000", "memory": "64M",
    "memory_swap": "128M", "pids_limit": "16", "cpuset_cpus": "0", "cpuset_mems": "0", "name": "eq",
    "cgroup_parent": "/cgagent/eq", "cgroup_driver": "cgroupfs", "state_dir": "{tmp}/state2",
    "rootfs": "{tmp}/rootfs", "volume": "{tmp}:/mnt:ro", "hostname": "box", "net": "none", "publish": "8080:80",
    "ip": "192.0.2.5", "env": "A=1", "user": "1000:1000", "workdir": "/", "cap_add": "NET_ADMIN", "cap_drop": "ALL",
    "security_opt": "seccomp=unconfined", "device": "/dev/null", "device_cgroup_rule": "c 1:3 rwm",
    "root": "{tmp}/images", "restart": "on-failure:3", "policy": "burstable", "policy_dir": "{tmp}",
    "preserve_fds": "1", "blkio_weight": "300", "blkio_weight_device": "/dev/loop0:200",
    "device_read_bps": "/dev/loop0:2mb", "device_write_bps": "/dev/loop0:1m", "device_read_iops": "/dev/loop0:100",
    "device_write_iops": "/dev/loop0:50",
}
# process and lifecycle (cgagent.procopts); {tmp}/kv is a KEY=VALUE file the fixture makes
GOOD.update({"entrypoint": "/bin/sh", "env_file": "{tmp}/kv", "label": "tier=web", "label_file": "{tmp}/kv",
             "ulimit": "nofile=100:200", "stop_signal": "SIGINT", "stop_timeout": "3"})
# flagsiso
GOOD.update(tmpfs="/run:size=1m", mount="type=tmpfs,target=/scratch,tmpfs-size=1m", pid="host", ipc="host",
            dns="192.0.2.53", add_host="db:192.0.2.10")
# an option that needs another one to be valid
NEEDS = {"memory_swap": ["--memory", "64M"]}
# expected to fail, identically through both doors
FAILS = {"publish", "ip"}   # -p (--ip) needs a bridge network (a network), and the isolated base uses --net none


@pytest.fixture
def doors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """-> door(kind, argv) -> (exit code, stderr, captured (RunRequest, state dir) or None)."""
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "kv").write_text("# a comment\nA=1\n")
    monkeypatch.setenv("CGAGENT_STATE_DIR", str(tmp_path / "state"))
    for o in OPTIONS:
        if o.env and o.env != "CGAGENT_STATE_DIR":
            monkeypatch.delenv(o.env, raising=False)
    got: list[tuple[Any, str]] = []

    def launch(req: Any, _h: Any, store: Any) -> int:
        got.append((req, str(store.root)))
        return 0

    monkeypatch.setattr("cgagent.runtime.run_foreground", launch)
    monkeypatch.setattr("cgagent.runtime.run_detached", lambda req, h, store: launch(req, h, store) or "id")

    def door(kind: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, Any]:
        got.clear()
        capsys.readouterr()
        if kind == "fast":
            rc = fastrun.main(argv)
            assert rc is not None, f"the fast parser refused {argv}"
        else:
            rc = appmod.main(["run", *argv])
        err = capsys.readouterr().err
        return rc, err, _comparable(got[0]) if got else None

    return door


def _comparable(captured: tuple[Any, str]) -> tuple[Any, str]:
    """The container dir's random suffix is the one part of a request that differs between builds."""
    req, state = captured
    if req.isolation is not None:
        req = dataclasses.replace(req, isolation=dataclasses.replace(req.isolation, container_dir="X"))
    return req, state


def _argv(name: str, flag: str, tmp: Path) -> list[str]:
    opt = next(o for o in OPTIONS if o.name == name)
    base = ["--rootfs", f"{tmp}/rootfs", "--net", "none"] if opt.lands == "iso" else []
    use = [flag] if opt.kind == "flag" else [flag, GOOD[name].format(tmp=tmp)]
    return [*NEEDS.get(name, []), *base, "--name", "eq", *use, "--", "true"]


CASES = [(o.name, f) for o in OPTIONS for f in o.flags]


@pytest.mark.parametrize(("name", "flag"), CASES, ids=[f for _, f in CASES])
def test_both_doors_build_the_same_request(doors: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           name: str, flag: str) -> None:
    argv = _argv(name, flag, tmp_path)
    fast, full = doors("fast", argv, capsys), doors("typer", argv, capsys)
    assert fast == full
    if name in FAILS:
        assert fast[0] == 125 and fast[2] is None and len(fast[1].splitlines()) == 1, fast
    else:
        assert fast[0] == 0 and fast[2] is not None, fast


def test_every_value_option_also_as_opt_equals_value(doors: Any, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    for o in OPTIONS:
        if o.kind == "flag" or o.name in FAILS:
            continue
        spaced = _argv(o.name, o.flags[0], tmp_path)
        joined = list(spaced)
        i = joined.index(o.flags[0], len(NEEDS.get(o.name, [])))
        joined[i:i + 2] = [f"{joined[i]}={joined[i + 1]}"]
        assert doors("fast", joined, capsys) == doors("typer", joined, capsys) == doors("fast", spaced, capsys)


def test_repeatable_options_keep_every_value_in_order(doors: Any, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--rootfs", f"{tmp_path}/rootfs", "--net", "none", "--name", "eq", "-e", "A=1", "--env=B=2",
            "-v", f"{tmp_path}:/a", "--volume", f"{tmp_path}:/b:ro", "--", "sh", "-c", "true"]
    fast = doors("fast", argv, capsys)
    assert fast == doors("typer", argv, capsys)
    iso = fast[2][0].isolation
    assert list(iso.env[-2:]) == ["A=1", "B=2"] and [v.target for v in iso.volumes] == ["/a", "/b"]


BAD = [["--cpus", "0"], ["--memory", "1K"], ["--memory-swap", "1G"], ["--cpu-shares", "1", "--cpu-weight", "5"],
       ["--preserve-fds", "x"], ["--restart", "sometimes"], ["--policy", "no-such-policy"],
       ["--device-cgroup-rule", "z 1:1 r"], ["--rootfs", "/nonexistent-xyz"], ["--root", "/tmp"],
       ["--name", "eq", "nosuchimage:1", "--", "true"], ["--blkio-weight", "5"],
       ["--device-read-bps", "/dev/null:1mb"], ["--device-write-iops", "/nonexistent-xyz:10"],
       ["--device-read-bps", "/dev/loop0"]]


@pytest.mark.parametrize("args", BAD, ids=[" ".join(a) for a in BAD])
def test_both_doors_refuse_bad_values_alike(doors: Any, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    argv = args if "--" in args else [*args, "--", "true"]
    fast = doors("fast", argv, capsys)
    assert fast == doors("typer", argv, capsys)
    assert fast[0] == 125 and fast[2] is None and len(fast[1].splitlines()) == 1, fast


ENV_CASES = [o for o in OPTIONS if o.env]


@pytest.mark.parametrize("opt", ENV_CASES, ids=[o.name for o in ENV_CASES])
def test_env_defaults_are_the_same_through_both_doors(doors: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str], opt: Any) -> None:
    assert opt.env is not None
    good = GOOD[opt.name].format(tmp=tmp_path)
    other = {"cgroup_parent": "/cgagent/other", "cgroup_driver": "cgroupfs",
             "state_dir": f"{tmp_path}/state3"}[opt.name]
    results = {}
    for label, env_value, argv in (("unset", None, []), ("empty", "", []), ("env", good, []),
                                   ("flag wins", other, [opt.flags[0], good])):
        if env_value is None:
            monkeypatch.delenv(opt.env, raising=False)
        else:
            monkeypatch.setenv(opt.env, env_value)
        full = [*argv, "--", "true"]
        fast = doors("fast", full, capsys)
        assert fast == doors("typer", full, capsys), label
        assert fast[0] == 0, fast
        results[label] = fast[2]
    assert results["unset"] == results["empty"] != results["env"] == results["flag wins"]
    req, state = results["env"]
    landed = {"cgroup_parent": req.parent, "cgroup_driver": req.driver, "state_dir": state}[opt.name]
    assert landed == good


def test_the_typer_commands_have_exactly_the_table_options() -> None:
    cmds = typer.main.get_command(appmod.app).commands  # type: ignore[attr-defined]
    run = {p.name: tuple(p.opts) for p in cmds["run"].params if p.name != "cmd"}
    assert run == {o.name: o.flags for o in OPTIONS}
    update = {p.name for p in cmds["update"].params} - {"name", "cgroup_driver", "state_dir"}
    assert update == {o.name for o in OPTIONS if o.update} and update


def test_the_mapping_api_builds_the_same_request(doors: Any, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from cgagent import host

    argv = ["--cpus", "0.5", "-m", "64M", "--rm", "--name", "eq", "--restart", "no", "--", "sh", "-c", "true"]
    parsed = fastrun.parse(argv)
    assert parsed is not None
    req = build(parsed.values, parsed.cmd, host.detect())
    assert (req, str(tmp_path / "state")) == doors("fast", argv, capsys)[2]
    values = {"cpus": "0.5", "memory": "64M", "rm": True, "name": "eq", "restart": "no", "detach": False,
              "volume": [], "policy": None}
    assert build(values, ["sh", "-c", "true"], host.detect()) == req


@pytest.mark.parametrize(("values", "needle"), [
    ({"cpu": "1"}, "unknown run option 'cpu'"),
    ({"cpus": 0.5}, "--cpus has a value of the wrong type"),
    ({"detach": "yes"}, "--detach has a value of the wrong type"),
    ({"env": "A=1"}, "--env has a value of the wrong type"),
    ({"env": ["x" * (128 * 1024 + 1)]}, "--env has a value of the wrong type"),
    ({"env": ["A=1"] * 5000}, "--env has a value of the wrong type"),
])
def test_the_mapping_api_refuses_bad_shapes(values: dict[str, Any], needle: str) -> None:
    from cgagent import host

    with pytest.raises(CgagentError) as e:
        build(values, ["true"], host.detect())
    assert needle in str(e.value) and e.value.exit_code == 2


def test_with_env_takes_an_explicit_environment() -> None:
    assert with_env({}, {"CGAGENT_CGROUP_PARENT": "/x", "CGAGENT_CGROUP_DRIVER": ""}) == {"cgroup_parent": "/x"}
    assert with_env({"cgroup_parent": ""}, {"CGAGENT_CGROUP_PARENT": "/x"}) == {"cgroup_parent": ""}


@pytest.mark.parametrize("argv", [["--help"], ["-dm", "64M", "--", "true"], ["-m=64M", "--", "true"],
                                  ["--rm=1", "--", "true"], ["--memory"], ["--"], ["--cpus", "1"]])
def test_the_fast_parser_leaves_other_forms_to_typer(argv: list[str]) -> None:
    assert fastrun.parse(argv) is None


def test_fast_path_builds_without_typer_pydantic_or_rich() -> None:
    code = ("import sys\nfrom cgagent.cli import fastrun\nfrom cgagent import host\n"
            "from cgagent.runflags import build\np = fastrun.parse(sys.argv[1:])\n"
            "build(p.values, p.cmd, host.detect())\n"
            "print(sorted(m for m in ('typer', 'click', 'rich', 'pydantic') if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code, "--cpus", "0.5", "-m", "64M", "--rm", "--", "true"],
                       capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["[]"], r.stdout + r.stderr


# --- the grammar of the words after the options (issue 13), the same through every door

@pytest.fixture(scope="module")
def true_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An image store holding the test image under the name `true`, which is also a host command."""
    from tests import images

    base = tmp_path_factory.mktemp("grammar")
    images.busybox_layout(str(base / "oci"))
    r = subprocess.run([sys.executable, "-m", "cgagent", "image", "import", str(base / "oci"), "--name", "true"],
                       env={**os.environ, "CGAGENT_ROOT": str(base / "store")}, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return str(base / "store")


WORDS = [(["true"], "true", None), (["true", "hostname", "-s"], "true", ["hostname", "-s"]),
         (["true", "--", "hostname"], "true", ["hostname"]), (["--", "true", "x"], None, ["true", "x"]),
         (["--", "true", "--", "x"], None, ["true", "--", "x"])]


@pytest.mark.parametrize(("words", "image", "cmd"), WORDS, ids=[" ".join(w) for w, _i, _c in WORDS])
def test_every_door_reads_the_words_alike(doors: Any, true_image: str, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str], words: list[str], image: str | None,
                                          cmd: list[str] | None) -> None:
    from cgagent import host
    from cgagent.api.runreq import request

    monkeypatch.setenv("CGAGENT_ROOT", true_image)
    argv = ["--name", "eq", "--net", "none", *words] if image else ["--name", "eq", *words]
    fast = doors("fast", argv, capsys)
    assert fast[0] == 0, fast
    assert fast == doors("typer", argv, capsys)
    clustered = doors("typer", ["-dc", "512", *argv], capsys)   # clustered short flags: typer's door only
    assert fastrun.parse(["-dc", "512", *argv]) is None and clustered[0] == 0, clustered
    req = fast[2][0]
    assert (req.isolation.image_ref if req.isolation else None) == (image and "true")
    assert req.cmd == (cmd if cmd is not None else ["sh", "-c", "echo default-cmd"])
    assert clustered[2][0].cmd == req.cmd and clustered[2][0].detach
    # the API's "cmd" is the same words
    values = {"name": "eq", "net": "none"} if image else {"name": "eq"}
    api = request({**values, "cmd": words}, host.detect(), str(true_image))
    assert api.cmd == req.cmd and (api.isolation is None) == (req.isolation is None)


@pytest.mark.parametrize("argv", [["echo", "x"], ["-dc", "512", "echo", "x"], ["--name", "--", "echo"]])
def test_a_host_word_without_dashes_is_refused_by_every_door(doors: Any, capsys: pytest.CaptureFixture[str],
                                                             argv: list[str]) -> None:
    fast = doors("fast", argv, capsys) if fastrun.parse(argv) else None
    full = doors("typer", argv, capsys)
    assert full[0] == 125 and full[2] is None and len(full[1].splitlines()) == 1, full
    assert fast is None or fast == full
    if argv[0] != "--name":   # `--name --`: a `--` that is an option's value ends nothing (a bad name)
        assert "'echo' is a command of the host" in full[1] and "`cgagent run -- echo" in full[1], full
