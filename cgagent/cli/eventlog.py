"""`cgagent events`: the durable events log as lines or JSON, optionally followed (inotify, no sleep)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

from cgagent import events, inotify
from cgagent.wakeup import readable

_SKIP = {"time", "kind", "name"}


def format_event(ev: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(ev.get("time", 0))))
    kind, name = str(ev.get("kind", "?")), str(ev.get("name", "?"))
    try:
        detail = _detail(kind, ev)
    except (TypeError, AttributeError, ValueError):   # a field of an unexpected type: show it as it is
        detail = " ".join(f"{k}={v}" for k, v in sorted(ev.items()) if k not in _SKIP)
    return f"{when}  {kind:<8}  {name:<20}  {detail}"


def _detail(kind: str, ev: dict[str, Any]) -> str:
    if kind == "start":
        detail = f"pid={ev.get('pid')} cgroup={ev.get('cgroup')} cmd={' '.join(map(str, ev.get('cmd') or []))}"
    elif kind == "exit":
        detail = f"exit_code={ev.get('exit_code')} oom_kills={ev.get('oom_kills', 0)}"
    elif kind == "oom_kill":
        detail = f"kills={ev.get('kills', 1)} total={ev.get('total')} cgroup={ev.get('cgroup')} by={ev.get('source')}"
        for v in ev.get("victims") or []:
            if isinstance(v, dict):
                detail += f" victim={v.get('comm')}[{v.get('pid')}] anon-rss={v.get('anon_rss_kb')}kB"
    elif kind == "update":
        res = {k: v for k, v in (ev.get("resources") or {}).items() if v is not None}
        detail = " ".join(f"{k}={v}" for k, v in sorted(res.items()))
    else:
        detail = " ".join(f"{k}={v}" for k, v in sorted(ev.items()) if k not in _SKIP)
    return detail


def show(state_root: str, name: str | None, follow: bool, as_json: bool) -> None:
    def emit(ev: dict[str, Any]) -> None:
        if name is not None and ev.get("name") != name:
            return
        print(json.dumps(ev, sort_keys=True) if as_json else format_event(ev), flush=True)

    reader = events.Reader(state_root)
    if not follow:
        for ev in reader.read():
            emit(ev)
        return
    os.makedirs(state_root, mode=0o700, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # watch before the first read: a line appended in between is then not missed
    try:
        with inotify.Follow([(state_root, inotify.IN_MODIFY | inotify.IN_CREATE | inotify.IN_MOVED_TO)]) as watch:
            while True:
                for ev in reader.read():   # a replaced log is printed again from its start
                    emit(ev)
                readable(watch.fds, watch.timeout)   # Ctrl-C ends it, whenever it comes
                watch.drain()
    except KeyboardInterrupt:
        pass
