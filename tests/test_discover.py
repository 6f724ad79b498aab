"""Discovery of other runtimes' containers (exporters.discover) on fixture trees built from what
docker, containerd, CRI-O and podman write on disk (tests/fixtures/runtimes/README.md), and the
kubelet's labelling: `container` only on leaf workloads, `pod`/`namespace` where known."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cgagent.state import Record
from exporters import targets
from exporters.discover import Roots, files
from exporters.targets import Discovery
from tests.conftest import Env
from tests.exporter_helpers import agent, parse
from tests.test_exporter_values import v2_host

RUNTIMES = Path(__file__).parent / "fixtures" / "runtimes"


def H(c: str) -> str:
    return c * 64


POD_A = "11111111-2222-3333-4444-555555555555"       # containerd, systemd driver
POD_C = "99999999-8888-7777-6666-555555555555"       # CRI-O, systemd driver
POD_D = "0f0e0d0c-0b0a-0908-0706-050403020100"       # cri-dockerd, cgroupfs driver
CGROUPS = [
    f"/system.slice/docker-{H('d')}.scope",
    "/system.slice/cron.service",
    f"/docker/{H('d')}",
    f"/docker/{H('9')}",
    f"/docker/{H('3')}",
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_A.replace('-', '_')}.slice/"
    f"cri-containerd-{H('a')}.scope",
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_A.replace('-', '_')}.slice/"
    f"cri-containerd-{H('b')}.scope",
    f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_C.replace('-', '_')}.slice/"
    f"crio-{H('5')}.scope",
    f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_C.replace('-', '_')}.slice/"
    f"crio-{H('c')}.scope",
    f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_C.replace('-', '_')}.slice/"
    f"crio-conmon-{H('c')}.scope",
    f"/kubepods/burstable/pod{POD_D}/{H('e')}",
    f"/kubepods/burstable/pod{POD_D}/{H('f')}",
    f"/machine.slice/libpod-{H('6')}.scope",
    f"/machine.slice/libpod-conmon-{H('6')}.scope",
    "/libpod_parent/conmon",
    f"/libpod_parent/libpod-{H('6')}",
    "/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service",
    f"/libpod_parent/{H('0')}/libpod-{H('6')}",       # a podman pod (cgroupfs): a bare id, a parent
    f"/custom/{H('d')}",                               # docker run --cgroup-parent /custom
    f"/machine.slice/libpod-{H('4')}.scope",           # no image-name in its metadata: images.json names it
]


def roots(base: Path = RUNTIMES) -> Roots:
    return Roots(podman=str(base / "podman"), docker=str(base / "docker"), containerd=str(base / "containerd"),
                 crio=str(base / "crio"))


def host_tree(tmp_path: Path, cgroups: list[str] = CGROUPS) -> Path:
    mount = tmp_path / "cgroup"
    for c in cgroups:
        (mount / c.lstrip("/")).mkdir(parents=True, exist_ok=True)
    return mount


def discovered(mount: Path, r: Roots, watch: str = "/") -> dict[str, dict[str, str]]:
    d = Discovery(v2_host(mount), None, [watch], roots=r)
    return {t.id: t.labels.values for t in d.targets([])}


def test_runtime_containers_are_named_and_pods_labelled(tmp_path: Path) -> None:
    got = discovered(host_tree(tmp_path), roots())
    docker = {"name": "web", "image": "nginx:1.25", "container": "web", "policy": "",
              "container_label_com_docker_compose_project": "shop", "container_label_com_example_team": "payments",
              "container_label_maintainer": "NGINX Docker Maintainers <docker-maint@nginx.com>"}
    assert got[f"/system.slice/docker-{H('d')}.scope"] == {"id": f"/system.slice/docker-{H('d')}.scope", **docker}
    assert got[f"/docker/{H('d')}"] == {"id": f"/docker/{H('d')}", **docker}
    # the kubelet's labels: pod members carry their container name, sandboxes and every parent container=""
    pa = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_A.replace('-', '_')}.slice"
    assert got[f"{pa}/cri-containerd-{H('b')}.scope"] == {
        "id": f"{pa}/cri-containerd-{H('b')}.scope", "name": f"k8s_postgres_db-0_data_{POD_A}",
        "image": "docker.io/library/postgres:16", "container": "postgres", "pod": "db-0", "namespace": "data",
        "policy": ""}
    sandbox = got[f"{pa}/cri-containerd-{H('a')}.scope"]
    assert (sandbox["name"], sandbox["container"], sandbox["pod"], sandbox["image"]) == \
        (f"k8s_POD_db-0_data_{POD_A}", "", "db-0", "registry.k8s.io/pause:3.9")
    assert got[pa] == {"id": pa, "name": pa.rpartition("/")[2], "container": "", "pod": "db-0", "namespace": "data",
                       "policy": ""}
    pc = f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_C.replace('-', '_')}.slice"
    assert got[f"{pc}/crio-{H('c')}.scope"] == {
        "id": f"{pc}/crio-{H('c')}.scope", "name": f"k8s_redis_cache-x1_web_{POD_C}_0",
        "image": "docker.io/library/redis:7", "container": "redis", "pod": "cache-x1", "namespace": "web",
        "policy": "", "container_label_io_kubernetes_container_name": "redis",
        "container_label_io_kubernetes_pod_name": "cache-x1", "container_label_io_kubernetes_pod_namespace": "web",
        "container_label_io_kubernetes_pod_uid": POD_C, "container_label_tier": "backend"}
    assert (got[f"{pc}/crio-{H('5')}.scope"]["container"], got[f"{pc}/crio-{H('5')}.scope"]["pod"]) == ("", "cache-x1")
    assert got[f"{pc}/crio-conmon-{H('c')}.scope"]["container"] == ""
    pd = f"/kubepods/burstable/pod{POD_D}"
    member = got[f"{pd}/{H('f')}"]
    assert (member["name"], member["container"], member["pod"], member["namespace"]) == \
        (f"k8s_api_api-7d9f_shop_{POD_D}_0", "api", "api-7d9f", "shop")
    assert (got[f"{pd}/{H('e')}"]["container"], got[pd]["pod"], got[pd]["container"]) == ("", "api-7d9f", "")
    for podman in (f"/machine.slice/libpod-{H('6')}.scope", f"/libpod_parent/libpod-{H('6')}"):
        assert (got[podman]["name"], got[podman]["image"], got[podman]["container"]) == \
            ("db", "docker.io/library/mariadb:11", "db")
    # parents, slices, QoS cgroups, runtimes' monitors and units with children: container=""
    for parent in ("/", "/docker", "/kubepods", "/kubepods/burstable", "/kubepods.slice", "/machine.slice",
                   "/system.slice", "/libpod_parent", "/libpod_parent/conmon",
                   f"/machine.slice/libpod-conmon-{H('6')}.scope",
                   "/user.slice/user-1000.slice/user@1000.service", f"/libpod_parent/{H('0')}"):
        assert got[parent]["container"] == "", parent
    assert got[f"/libpod_parent/{H('0')}/libpod-{H('6')}"]["name"] == "db"
    assert got[f"/machine.slice/libpod-{H('4')}.scope"]["image"] == "docker.io/library/mariadb:11"
    assert got[f"/custom/{H('d')}"]["container"] == "web"
    assert got["/system.slice/cron.service"]["container"] == "cron.service"
    assert got["/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service"]["name"] == "foo.service"


def test_malformed_metadata_keeps_the_cgroup_name(tmp_path: Path) -> None:
    got = discovered(host_tree(tmp_path), roots())
    for c in "93":   # truncated JSON; a JSON array instead of an object
        assert got[f"/docker/{H(c)}"] == {"id": f"/docker/{H(c)}", "name": H(c), "container": H(c), "policy": ""}


def test_hostile_files_are_not_followed_or_read_whole(tmp_path: Path) -> None:
    """A symlinked directory or file below the runtime's root, a FIFO and an oversized file read as
    no metadata: the name stays the cgroup's and nothing outside the root is read."""
    outside = tmp_path / "outside"
    (outside / "c").mkdir(parents=True)
    shutil.copy(RUNTIMES / "docker" / "containers" / H("d") / "config.v2.json", outside / "c" / "config.v2.json")
    base = tmp_path / "rt"
    cont = base / "docker" / "containers"
    cont.mkdir(parents=True)
    (cont / H("1")).symlink_to(outside / "c")                     # the directory leads outside
    (cont / H("2")).mkdir()
    (cont / H("2") / "config.v2.json").symlink_to(outside / "c" / "config.v2.json")
    (cont / H("4")).mkdir()
    os.mkfifo(cont / H("4") / "config.v2.json")                   # would block a plain open()
    (cont / H("7")).mkdir()
    big = '{"Name": "/big", "Config": {"Env": ["' + "x" * files.MAX_FILE + '"]}}'
    (cont / H("7") / "config.v2.json").write_text(big)
    (cont / H("8")).mkdir()
    many = {f"k{i:03}.dots-and/slashes": "v" * 5000 for i in range(200)}
    (cont / H("8") / "config.v2.json").write_text(
        '{"Name": "/labelled", "Config": {"Image": "i", "Labels": ' + json.dumps(many) + "}}")
    (cont / H("b")).mkdir()   # lone surrogates: valid JSON, not encodable as UTF-8
    (cont / H("b") / "config.v2.json").write_text(
        r'{"Name": "/s\ud800x", "Config": {"Image": "i\udfff", "Labels": {"k": "\ud83d"}}}')
    ids = "12478b"
    found = Discovery(v2_host(host_tree(tmp_path, [f"/docker/{H(c)}" for c in ids])), None, ["/"],
                      roots=roots(base)).targets([])
    got = {t.id: t.labels.values for t in found}
    assert all(t.labels.text.encode() for t in found)   # the exposition is UTF-8
    for c in "1247":
        assert got[f"/docker/{H(c)}"]["name"] == H(c), c
    assert (got[f"/docker/{H('b')}"]["name"], got[f"/docker/{H('b')}"]["image"]) == ("s?x", "i?")
    lab = got[f"/docker/{H('8')}"]
    keys = [k for k in lab if k.startswith("container_label_")]
    assert lab["name"] == "labelled" and len(keys) == 64
    assert keys[0] == "container_label_k000_dots_and_slashes" and len(lab[keys[0]]) == 1024


def test_metadata_is_reread_only_when_its_file_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "rt"
    shutil.copytree(RUNTIMES, base)
    mount = host_tree(tmp_path, [f"/docker/{H('d')}"])
    d = Discovery(v2_host(mount), None, ["/docker"], roots=roots(base))
    reads: list[str] = []
    real = files._read

    def counted(root: str, rel: str, cap: int) -> tuple[tuple[int, ...] | None, bytes | None]:
        reads.append(rel)
        return real(root, rel, cap)

    monkeypatch.setattr(files, "_read", counted)
    first = d.targets([])
    assert d.targets([])[1] is first[1] and reads == [f"containers/{H('d')}/config.v2.json"]
    cfg = base / "docker" / "containers" / H("d") / "config.v2.json"
    tmp = cfg.with_suffix(".tmp")   # docker renames a new copy over it, as here
    tmp.write_text(cfg.read_text().replace('"/web"', '"/web2"'))
    tmp.rename(cfg)
    assert d.targets([])[1].labels.values["name"] == "web2" and len(reads) == 2


def test_own_workloads_carry_image_and_run_labels(tmp_path: Path) -> None:
    mount = host_tree(tmp_path, ["/cgagent/w"])
    rec = Record(name="w", cmd=["sleep"], driver="cgroupfs", mode="v2", dirs={"": str(mount / "cgagent" / "w")},
                 cgroup="/cgagent/w", status="running", isolation={"image": "sha256:" + H("1"), "image_ref": "bb:1"})
    rec.labels = {"team": "payments", "app.kubernetes.io/name": "w"}   # type: ignore[attr-defined]
    (t,) = Discovery(v2_host(mount), None, []).targets([rec])
    assert t.labels.values == {"id": "/cgagent/w", "name": "w", "image": "bb:1", "container": "w", "policy": "",
                               "container_label_app_kubernetes_io_name": "w", "container_label_team": "payments"}
    assert targets.labels("/x", "x", "").values == {"id": "/x", "name": "x", "container": "x", "policy": ""}


def test_a_watched_cgroup_that_does_not_exist_is_one_line_error(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "cgagent", "serve", "--watch-cgroup", "/no-such-cgroup-here",
                        "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path / "state"),
                        "--api-socket", str(tmp_path / "a.sock")], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "/no-such-cgroup-here: no such cgroup" in lines[0] and "--discover" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "a.sock").exists()


def test_serve_discover_covers_the_whole_host(cg: Env) -> None:
    """`serve --discover` watches /: the root cgroup is exported and, grouping all others, is not a container."""
    with agent(cg, "--discover") as srv:
        got = parse(srv.text())
    root = {dict(ls)["container"] for n, ls in got
            if n == "container_cpu_usage_seconds_total" and dict(ls)["id"] == "/"}
    assert root == {""}


def test_a_cgroup_name_that_is_not_utf8_does_not_fail_the_scrape(tmp_path: Path) -> None:
    """A delegated user may name a cgroup with any bytes; its labels are still valid UTF-8."""
    mount = host_tree(tmp_path, ["/user.slice"])
    os.mkdir(os.fsencode(mount / "user.slice") + b"/bad\xff.scope")
    (t,) = [t for t in Discovery(v2_host(mount), None, ["/"]).targets([]) if t.id.startswith("/user.slice/")]
    assert t.labels.text.encode() and t.labels.values["name"] == "bad?.scope"
