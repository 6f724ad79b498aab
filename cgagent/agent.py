"""The agent: what `cgagent serve` runs. The Prometheus exporter, the OOM watcher, the policy
controller and the local API (cgagent/api), started together and stopped together.

Workloads do not belong to the agent: each detached one has its own supervisor (cgagent/shim.py) and
its record in the state dir, so stopping, killing or upgrading the agent never touches them, and an
agent started later serves them as it finds them (adoption is reading the records)."""

from __future__ import annotations

import contextlib
import grp
import resource
import signal
import sys
import threading
from dataclasses import dataclass, field
from types import FrameType

from cgagent.errors import CgagentError
from cgagent.wakeup import until_set

# What a run's supervisor (a process forked by the launcher) would import: loaded once in the launcher,
# before its first fork, so that no launch pays for them (a fork copies them). pyroute2 included (issue
# 14), and the systemd driver's D-Bus client (jeepney: ~150 ms a launch in the v2 VM when it was not).
# Not in the agent itself: pyroute2 alone is ~24 MB of RSS that a scrape never uses (issue 11).
PRELOAD = ("cgagent.runtime", "cgagent.runtime.supervisor", "cgagent.launch", "cgagent.live", "cgagent.prune",
           "cgagent.devrules", "cgagent.kmsg", "cgagent.cgroups.wait", "cgagent.cgroups.v1",
           "cgagent.cgroups.v1.reader", "cgagent.cgroups.v2", "cgagent.cgroups.v2.reader", "cgagent.api.attach",
           "cgagent.api.runreq", "cgagent.isolation.spec", "cgagent.isolation.syscalls", "cgagent.isolation.child",
           "cgagent.isolation.rootfs", "cgagent.isolation.namespaces", "cgagent.network.workload",
           "cgagent.network.attach", "cgagent.network.config", "cgagent.network.netns", "cgagent.images.store",
           "cgagent.isolation.flags", "cgagent.cgroups.parents", "cgagent.cgroups.systemd",
           "cgagent.cgroups.systemd.connection", "cgagent.cgroups.systemd.dbus", "cgagent.cgroups.systemd.properties")


def preload() -> None:
    import importlib

    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    with contextlib.suppress(Exception):   # pyroute2's IPRoute (~100 ms): only bridged runs need it
        from cgagent.network.netns import _iproute_class

        _iproute_class()
    with contextlib.suppress(Exception):   # libnftables and its libraries (dlopen: ~2 ms a bridged run)
        from cgagent.network import libnft

        libnft.library()


@dataclass
class AgentOptions:
    """What `cgagent serve` was given: the exporter's, the API's and the controllers' settings."""

    listen: str
    web_config_file: str | None = None
    watch: list[str] = field(default_factory=list)
    per_cpu: bool = False
    state_dir: str | None = None
    policy_dirs: list[str] | None = None
    api_socket: str | None = None        # default <state dir>/agent.sock
    api_group: str | None = None         # a group name or number whose members may call the API
    telemetry_path: str = "/metrics"
    log_level: str = "info"              # debug, info, warn or error (node_exporter's --log.level)
    collectors: list[str] | None = None  # None: every registered collector


def resolve_group(spec: str | None) -> int | None:
    if not spec:
        return None
    try:
        return int(spec) if spec.isdigit() else grp.getgrnam(spec).gr_gid
    except KeyError:
        raise CgagentError(f"no group named {spec!r}",
                           "give an existing group's name or number to --api-group") from None


def _raise_fd_limit() -> None:
    # directory descriptors (openat) and inotify watches scale with the cgroups covered: use the hard
    # limit, as Go programs (Prometheus, node_exporter) do at start
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(opts: AgentOptions) -> int:
    """Serve until SIGTERM or SIGINT; -> exit code."""
    from cgagent import host as hostmod
    from cgagent.api import attach
    from cgagent.api.launcher import Launcher
    from cgagent.api.server import Api, ApiServer, socket_path
    from cgagent.api.stderr import install_stderr_capture
    from cgagent.oomwatch import OomWatcher
    from cgagent.state import Store
    from exporters import web, webconfig
    from exporters.registry import Exporter, Options
    from policies import controller as policy_controller

    # every bad option is one line before anything is bound or started
    cfg = webconfig.load_web_config(opts.web_config_file) if opts.web_config_file else None
    group = resolve_group(opts.api_group)
    store = Store(opts.state_dir)
    h = hostmod.detect()
    _raise_fd_limit()
    web.setup_logging(opts.log_level)
    # the launcher forks the launches' processes: forked first, while this process has one thread;
    # it loads every module a launch needs before its first fork (cgagent.api.launcher)
    pool = attach.Pool(h, store)
    pool.sweep()   # pool cgroups a killed agent left
    forker = Launcher.fork(attach.ops(h, store), park=pool.park, look=pool.look, prepare=preload,
                           unpark=pool.unpark)
    try:
        exporter = Exporter(Options(host=h, state_dir=store.root, watch=opts.watch, per_cpu=opts.per_cpu,
                                    collectors=opts.collectors))
        server = web.MetricsServer(exporter, listen=opts.listen, web_config=cfg,
                                   telemetry_path=opts.telemetry_path)
    except BaseException:
        forker.stop()
        raise
    sock = opts.api_socket or socket_path(store.root)
    try:
        api = ApiServer(Api(store, h, group, forker=forker), sock, group)
    except BaseException:
        server.shutdown()
        forker.stop()
        raise
    policy_ctl = policy_controller.start(store.root, h, opts.policy_dirs)   # applies the workloads' policies live
    watcher = OomWatcher(store).start()

    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    install_stderr_capture()
    server.start()
    api.start()
    covered = "workloads in " + store.root + "".join(f", cgroups under {w}" for w in opts.watch)
    print(f"cgagent serve: scrape {server.url}{opts.telemetry_path} ({covered}; cgroup {h.mode})", flush=True)
    path = "" if opts.telemetry_path == "/metrics" else f"metrics_path: {opts.telemetry_path}, "
    print(f"  prometheus.yml: scrape_configs: [{{job_name: cadvisor, scheme: {server.url.split(':')[0]}, {path}"
          f"static_configs: [{{targets: ['{server.url.split('//')[1]}']}}]}}]", flush=True)
    print(f"  API: curl --unix-socket {sock} http://x/v1/ps", flush=True)
    try:
        until_set(stopping)   # the main thread only waits for a signal
    finally:
        api.shutdown()
        server.shutdown()
        watcher.stop()
        exporter.close()
        policy_ctl.stop()
        forker.stop()   # its pool cgroups are gone when it has ended: the parents they kept may go now
        from cgagent.runtime import prune_parents

        with contextlib.suppress(Exception), store.lock():
            prune_parents(store)
    print("cgagent serve: stopped", file=sys.stderr, flush=True)
    return 0

