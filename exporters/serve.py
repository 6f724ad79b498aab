"""`cgagent serve`: the long-running agent. Collectors read at scrape time; the only background
work is the OOM watcher, which sleeps in epoll until the kernel reports something."""

from __future__ import annotations

import contextlib
import resource
import signal
import sys
import threading
from types import FrameType

from cgagent import host as hostmod
from cgagent.oomwatch import OomWatcher
from cgagent.state import Store
from exporters.registry import Exporter, Options


def serve(listen: str, web_config_file: str | None, watch: list[str], per_cpu: bool,
          state_dir: str | None, policy_dirs: list[str] | None = None) -> int:
    from exporters import web, webconfig
    from policies import controller as policy_controller

    cfg = webconfig.load_web_config(web_config_file) if web_config_file else None   # bad file: one line, before binding
    store = Store(state_dir)
    h = hostmod.detect()
    # directory descriptors (openat) and inotify watches scale with the cgroups covered: use the hard
    # limit, as Go programs (Prometheus, node_exporter) do at start
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    exporter = Exporter(Options(host=h, state_dir=store.root, watch=watch, per_cpu=per_cpu))
    server = web.MetricsServer(exporter, listen=listen, web_config=cfg)
    policy_ctl = policy_controller.start(store.root, h, policy_dirs)   # applies the workloads' policies live
    watcher = OomWatcher(store).start()

    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    server.start()
    covered = "workloads in " + store.root + "".join(f", cgroups under {w}" for w in watch)
    print(f"cgagent serve: scrape {server.url}/metrics ({covered}; cgroup {h.mode})", flush=True)
    print(f"  prometheus.yml: scrape_configs: [{{job_name: cgagent, scheme: {server.url.split(':')[0]}, "
          f"static_configs: [{{targets: ['{server.url.split('//')[1]}']}}]}}]", flush=True)
    try:
        # the main thread only waits for a signal: Event.wait wakes for it, no polling
        stopping.wait()
    finally:
        server.shutdown()
        watcher.stop()
        exporter.close()
        policy_ctl.stop()
    print("cgagent serve: stopped", file=sys.stderr, flush=True)
    return 0
