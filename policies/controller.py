"""The policy controller: one thread inside `cgagent serve` that applies the policies' behaviour live.

Every `interval` (1 s) it samples the kernel's cumulative CPU counters of each running workload whose
policy has a throttling response (the kernel offers no event for "throttled too long": this is a
control loop on a timer, not a wait) and moves its quota through cgagent.runtime.update. It also
tails the events log for `oom_kill` events (written by the agent's OOM watcher or the workload's
supervisor) and applies the policy's OOM handling. Every action is appended to the events log as
kind "policy" (action=cpu_step_up|cpu_step_down|memory_step_up|memory_at_ceiling|oom_stop); the
`cgagent_policy_actions_total` counter is folded from those events (exporters/collectors/policy.py).

Restarts are the supervisor's (cgagent.runtime, `--restart`): `run --policy` passes the policy's
`restart` to it unless --restart or --rm is given. "Restart with more memory" = the controller
raises the limit of the workload's cgroup, which the supervisor's restart reuses; when the workload
is gone for good, the raised limit is remembered (policy-memory.json in the state dir) and the next
`cgagent run --policy P --name N` starts with it.

Start it with `start(state_dir, host, policy_dirs) -> Controller`, stop with `.stop()`; or run it
alone: `python -m policies.controller --state-dir DIR [--policy-dir DIR]`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cgagent import events
from cgagent.cgroups.readers import reader_for
from cgagent.errors import CgagentError
from cgagent.host import Host
from cgagent.limits import Resources
from cgagent.state import Record, Store
from policies.loader import Catalog, catalog, files_in, search_path
from policies.memory_step import step_up
from policies.model import Policy
from policies.throttle import Sample, Throttle

INTERVAL = 1.0
STOP_TIMEOUT = 10.0     # oom action "stop": SIGTERM, then SIGKILL after this long


@dataclass
class _Tracked:
    """One workload under a policy: which instance, which policy, its throttling state."""

    created: float
    policy: str
    throttle: Throttle


class Controller:
    def __init__(self, state_root: str, host: Host, policy_dirs: Iterable[str] | None = None,
                 interval: float = INTERVAL) -> None:
        self.store = Store(state_root)
        self.host = host
        self.dirs = list(policy_dirs or [])
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._catalog = Catalog()
        self._catalog_sig: tuple[tuple[str, int], ...] | None = None
        self._tracked: dict[str, _Tracked] = {}
        self._starts: dict[str, dict[str, Any]] = {}   # name -> resources of its latest start event
        self._offset = 0
        self._warned: set[tuple[str, str]] = set()
        self.actions = 0                               # actions taken by this controller (for tests/logs)

    # --- lifecycle

    def start(self) -> Controller:
        self.store.ensure()
        self._reload()
        self._report_bad_files()
        self._catch_up()
        self._thread = threading.Thread(target=self._run, name="cgagent-policy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT + 5)
            self._thread = None

    def _run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception as e:  # one bad pass must not end the controller
                self._warn("tick", type(e).__name__, f"policy controller: {type(e).__name__}: {e}")
            if self._stop.wait(self.interval):
                return

    # --- one pass

    def tick(self) -> None:
        self._reload()
        self._read_events(act=True)
        seen: set[str] = set()
        for rec in self.store.all():
            if rec.policy is None or rec.status != "running":
                continue
            policy = self._policy(rec.policy, rec.name)
            if policy is None or policy.throttling is None:
                continue
            seen.add(rec.name)
            try:
                self._throttle(rec, policy)
            except (OSError, ValueError) as e:   # the cgroup went away mid-read: it is exiting
                self._warn("read", rec.name, f"policy controller: cannot read {rec.name}'s counters: {e}",
                           once=False, quiet=True)
        for name in list(self._tracked):
            if name not in seen:
                del self._tracked[name]

    # --- policies

    def _signature(self) -> tuple[tuple[str, int], ...]:
        sig = []
        for p in files_in(search_path(self.dirs)):
            with contextlib.suppress(OSError):
                sig.append((p, os.stat(p).st_mtime_ns))
        return tuple(sig)

    def _reload(self) -> None:
        """Re-read the policy files when one was added, changed or removed (a few stat calls a pass)."""
        sig = self._signature()
        if sig == self._catalog_sig:
            return
        first = self._catalog_sig is None
        self._catalog, self._catalog_sig = catalog(self.dirs), sig
        if not first:
            self._report_bad_files()

    def _report_bad_files(self) -> None:
        for ld in self._catalog.bad:
            for p in ld.problems:
                print(f"cgagent: warning: policy file {p}", file=sys.stderr, flush=True)

    def _policy(self, name: str, workload: str) -> Policy | None:
        ld = self._catalog.by_name.get(name)
        if ld is None or ld.policy is None:
            why = "is invalid (see above)" if ld is not None else "is not on the policy search path"
            self._warn("policy", f"{workload}/{name}",
                       f"cgagent: warning: workload {workload}: policy {name!r} {why}; its behaviour is not applied")
            return None
        return ld.policy

    # --- throttling

    def _throttle(self, rec: Record, policy: Policy) -> None:
        spec = policy.throttling
        assert spec is not None
        res = Resources.from_dict(rec.resources)
        current = res.cpus
        if current is None or res.cpu_quota is None or res.cpu_quota <= 0:
            return   # no quota: nothing to throttle it
        tr = self._tracked.get(rec.name)
        if tr is None or tr.created != rec.created or tr.policy != policy.name or tr.throttle.spec != spec:
            # new workload, re-created under the same name, or its policy file was edited
            online = float(len(self.host.online_cpus) or 1)
            ceiling = min(spec.ceiling, online)
            floor = min(spec.floor if spec.floor is not None else self._start_cpus(rec.name, current), ceiling)
            tr = _Tracked(rec.created, policy.name, Throttle(spec, floor=floor, ceiling=ceiling))
            self._tracked[rec.name] = tr
        r = reader_for(rec.dirs)
        th, used = r.throttling(), r.cpu_usage()
        if th.periods is None or th.throttled_periods is None or used.total_ns is None:
            return
        d = tr.throttle.observe(Sample(time.monotonic(), th.periods, th.throttled_periods, used.total_ns), current)
        if d is None:
            return
        if not self._update(rec.name, {"cpus": d.to_cpus}):
            return
        self._record(rec.name, policy.name, d.action, from_cpus=d.from_cpus, to_cpus=d.to_cpus,
                     throttled_ratio=d.ratio, usage_cpus=d.usage_cpus, cgroup=rec.cgroup)

    def _start_cpus(self, name: str, fallback: float) -> float:
        r = Resources.from_dict(self._starts.get(name) or {})
        return r.cpus if r.cpus is not None and r.cpu_quota is not None and r.cpu_quota > 0 else fallback

    # --- events: start resources, OOM kills

    def _catch_up(self) -> None:
        """Read the log so far (start resources), without acting on old OOM kills."""
        self._read_events(act=False)

    def _read_events(self, act: bool) -> None:
        with contextlib.suppress(OSError):
            if os.path.getsize(events.path(self.store.root)) < self._offset:
                self._offset = 0   # the log was replaced
        for off, ev in events.read(self.store.root, self._offset):
            self._offset = off
            name = ev.get("name")
            if not isinstance(name, str):
                continue
            if ev.get("kind") == "start" and isinstance(ev.get("resources"), dict):
                self._starts[name] = ev["resources"]
            elif act and ev.get("kind") == "oom_kill" and isinstance(ev.get("policy"), str):
                try:
                    self._on_oom(name, ev["policy"], ev)
                except (CgagentError, OSError, ValueError) as e:
                    self._warn("oom", name, f"cgagent: warning: policy controller: OOM handling of {name}: {e}",
                               once=False)

    def _on_oom(self, name: str, policy_name: str, ev: dict[str, Any]) -> None:
        policy = self._policy(policy_name, name)
        if policy is None or policy.oom is None:
            return
        from cgagent.runtime import live_status, stop

        rec = self.store.load(name) if self.store.exists(name) else None
        if rec is not None and ev.get("instance") not in (None, rec.created):
            rec = None   # the kill was of an earlier workload of that name
        running = rec is not None and live_status(self.host, rec) == "running"
        kills = ev.get("kills", 1)
        if policy.oom.action == "stop":
            if running:
                stop(self.store, self.host, name, STOP_TIMEOUT)
            self._record(name, policy_name, "oom_stop", applied="live" if running else "already-exited",
                         kills=kills)
            return
        seq = ev.get("seq")
        if rec is not None and isinstance(seq, int) and rec.policy_oom_seq >= seq:
            return   # the supervisor answered it before restarting the workload
        status = live_status(self.host, rec) if rec is not None else "gone"
        step_up(self.store, self.host, policy, name, rec, self._starts.get(name) or {}, kills,
                 seq if isinstance(seq, int) and status in ("running", "restarting") else None,
                 "live" if status == "running" else "restart" if status == "restarting" else "next-run")
        self.actions += 1

    # --- applying and recording

    def _update(self, name: str, values: dict[str, object]) -> bool:
        from cgagent.runtime import update

        try:
            update(self.store, self.host, name, values)
        except CgagentError as e:   # stopped or removed meanwhile
            self._warn("update", name, f"cgagent: warning: policy controller: {name}: {e}", once=False, quiet=True)
            return False
        return True

    def _record(self, name: str, policy: str, action: str, **fields: Any) -> None:
        events.append(self.store.root, "policy", name, policy=policy, action=action, **fields)
        self.actions += 1

    def _warn(self, kind: str, key: str, msg: str, once: bool = True, quiet: bool = False) -> None:
        if once and (kind, key) in self._warned:
            return
        self._warned.add((kind, key))
        if msg and not quiet:
            print(msg, file=sys.stderr, flush=True)


def start(state_dir: str | None = None, host: Host | None = None, policy_dirs: Iterable[str] | None = None,
          interval: float = INTERVAL) -> Controller:
    """Start the controller thread for the workloads of `state_dir`; `.stop()` ends it."""
    if host is None:
        from cgagent import host as hostmod

        host = hostmod.detect()
    return Controller(Store(state_dir).root, host, policy_dirs, interval).start()


def main(argv: list[str] | None = None) -> int:
    import argparse
    import signal

    ap = argparse.ArgumentParser(prog="python -m policies.controller",
                                 description="Run the policy controller alone (cgagent serve runs it too).")
    ap.add_argument("--state-dir", default=None)
    ap.add_argument("--policy-dir", action="append", default=[])
    ap.add_argument("--interval", type=float, default=INTERVAL)
    args = ap.parse_args(argv)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        ctl = start(args.state_dir, policy_dirs=args.policy_dir, interval=args.interval)
    except CgagentError as e:
        from cgagent.errors import report

        return report(e)
    print(f"policy controller: watching {ctl.store.root}", flush=True)
    from cgagent.wakeup import until_set

    until_set(stopping)
    ctl.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
