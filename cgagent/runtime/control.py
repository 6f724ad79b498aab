"""Control of existing workloads: stop, rm, update (and a policy's answer to OOM kills), kill, wait,
restart, and the views `ps` and `stats` take of them (status, OOM kills and victim)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal

from cgagent import events, oom, procs
from cgagent.cgroups import CgroupManager
from cgagent.errors import CgagentError
from cgagent.faults import fault
from cgagent.host import Host
from cgagent.limits import Resources
from cgagent.live import live_status, manager, supervisor_alive
from cgagent.procopts import DEFAULT_STOP_TIMEOUT, signal_number
from cgagent.runtime.lifecycle import finish, forget, teardown_isolation
from cgagent.runtime.parents import prune_parents
from cgagent.runtime.request import require_root
from cgagent.runtime.stopflag import clear_stop, request_stop
from cgagent.state import Record, Store, validate_name
from cgagent.wakeup import readable


def oom_kills(store: Store, rec: Record) -> int:
    """The workload's OOM kills: those logged, and those the kernel counts that nobody logged yet."""
    return oom.kills(store, rec, oom.read_rec_counter(rec) if rec.status != "exited" else None)


def oom_victim(store: Store, rec: Record) -> str | None:
    """The last OOM victim the kernel reported, e.g. "python3 (pid 812, anon-rss 30336 kB)"."""
    v = oom.load_mark(store, rec).victim
    if not isinstance(v, dict):
        return None
    return f"{v.get('comm')} (pid {v.get('pid')}, anon-rss {v.get('anon_rss_kb')} kB)"


def stop(store: Store, host: Host, name: str, timeout: float | None = None) -> None:
    """The workload's stop signal (--stop-signal, default SIGTERM) to its main process, SIGKILL to all
    after `timeout` seconds (default: its --stop-timeout, else 10)."""
    require_root("cgagent stop")
    rec = store.load(name)
    if timeout is None:
        timeout = rec.stop_timeout if rec.stop_timeout is not None else DEFAULT_STOP_TIMEOUT
    sig = signal_number(rec.stop_signal)
    try:
        request_stop(store, name, rec.created)   # no restart after this
    except OSError:
        if rec.restart != "no":   # without the flag its supervisor could restart it: refuse
            raise
        # nothing to restart: a full or read-only state dir must not keep the workload from stopping
    if live_status(host, rec) != "running":
        _end_supervisor(rec)    # it may be waiting out a restart backoff
        settle_orphan(store, host, name)
        return
    mgr = manager(host, rec)
    _thaw_if_paused(mgr, rec)
    main = rec.pid if procs.send_signal(rec.pid, rec.pid_start, sig) else None
    if main is None:
        for p in mgr.procs():   # read from its cgroup just now: the workload's own
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
    if main and not procs.wait_exit(main, rec.pid_start, timeout):
        import sys

        print(f"cgagent: {name} did not exit within {timeout:g}s of {rec.stop_signal or 'SIGTERM'}; "
              "killed it (SIGKILL)",
              file=sys.stderr, flush=True)
    mgr.kill()
    _settle(store, host, rec)


def settle_orphan(store: Store, host: Host, name: str) -> None:
    """Record the end of a workload whose supervisor was killed before it could (its record still
    says running): with the exit code that supervisor logged, if it got that far, else none."""
    try:
        rec = store.load(name)
    except CgagentError:
        return   # removed meanwhile (--rm, or `rm -f`)
    if rec.status != "exited" and not supervisor_alive(rec) and live_status(host, rec) == "exited":
        finish(store, host, name, _logged_exit(store, rec), created=rec.created)


def _thaw_if_paused(mgr: CgroupManager, rec: Record) -> None:
    """Thawed before it is signalled: a v1 frozen task takes not even SIGKILL, and systemd 252 does not
    finish stopping a frozen scope (the supervisor may stop it as soon as the workload dies)."""
    from cgagent.runtime.pause import is_paused

    if is_paused(rec):
        try:
            mgr.thaw()
        except (OSError, CgagentError):
            # v2 lets a fatal signal end a frozen task: it may be gone, its cgroup removed, already
            if mgr.exists() and mgr.procs():
                raise


def _end_supervisor(rec: Record, timeout: float = 10.0) -> None:
    """Wake a supervisor in its restart backoff (it then records the end) and wait for it to exit."""
    if rec.restart != "no" and rec.supervisor_pid not in (None, os.getpid()) \
            and procs.send_signal(rec.supervisor_pid, rec.supervisor_start, signal.SIGTERM):
        assert rec.supervisor_pid
        procs.wait_exit(rec.supervisor_pid, rec.supervisor_start, timeout)


def _settle(store: Store, host: Host, rec: Record) -> None:
    """After the processes are killed: let a live supervisor record the exit, else do it here."""
    if supervisor_alive(rec):
        assert rec.supervisor_pid
        procs.wait_exit(rec.supervisor_pid, rec.supervisor_start, 10.0)
    fault("settling")
    cur = store.load(rec.name) if store.exists(rec.name) else None
    if cur is not None and cur.status != "exited":   # finish() leaves a later workload of the name alone
        # the foreground CLI may still be waiting: give it the chance to record the real exit code
        finish(store, host, rec.name, None, created=rec.created)


def remove(store: Store, host: Host, name: str, force: bool) -> None:
    require_root("cgagent rm")
    validate_name(name)   # before anything is looked for by name: `rm -f .` once meant the parent cgroup
    try:
        rec = store.load(name)
    except CgagentError:   # damaged or deleted record: what it left is found by name
        from cgagent import prune

        if force and prune.reclaim(store, host, name):
            return
        raise
    if live_status(host, rec) == "running":
        if not force:
            raise CgagentError(f"workload {name!r} is running", f"stop it first, or use `cgagent rm -f {name}`")
        request_stop(store, name, rec.created)   # before the kill: the supervisor must not restart it
        mgr = manager(host, rec)
        _thaw_if_paused(mgr, rec)
        mgr.kill()
        # the exit is recorded (one exit event) before the record goes; a full or read-only state
        # dir cannot hold it, and must not keep the record from going
        with contextlib.suppress(OSError, CgagentError):
            _settle(store, host, rec)
    if force:
        request_stop(store, name, rec.created)
        _end_supervisor(rec)   # or it could restart the workload into the cgroup being removed
    with store.lock():
        with contextlib.suppress(CgagentError):  # a restart may have made a new scope meanwhile
            cur = store.load(name)
            if cur.created != rec.created:   # --rm: gone with its end, and the name taken by a new workload
                clear_stop(store, name, rec.created)
                return
            rec = cur
        # kills nobody has logged yet, read before the cgroup goes
        oom.note(store, rec, oom.read_rec_counter(rec), "rm")
        manager(host, rec).destroy()
        teardown_isolation(rec)
        forget(store, rec)
        clear_stop(store, name)
        prune_parents(store)


def update(store: Store, host: Host, name: str, values: dict[str, object]) -> Record:
    """Change a running (or restarting: applied to its next run) workload's limits."""
    rec = _update(store, host, name, values, None)
    assert rec is not None
    return rec


def answer_oom(store: Store, host: Host, name: str, values: dict[str, object], oom_seq: int) -> bool:
    """update() as a policy's answer to the OOM kills up to `oom_seq`: made only if nobody answered
    them yet (the supervisor before a restart, or the agent's policy controller). False: answered."""
    return _update(store, host, name, values, oom_seq) is not None


def _update(store: Store, host: Host, name: str, values: dict[str, object], oom_seq: int | None) -> Record | None:
    from cgagent.limits import plan

    require_root("cgagent update")
    with store.lock():
        rec = store.load(name)
        if oom_seq is not None and rec.policy_oom_seq >= oom_seq:
            return None
        status = live_status(host, rec)
        if status not in ("running", "restarting"):
            raise CgagentError(f"workload {name!r} is not running", "only running workloads can be updated")
        base = Resources.from_dict(rec.resources)
        new = plan(values, host, base)
        mgr = manager(host, rec)
        old, old_seq = rec.resources, rec.policy_oom_seq
        rec.resources = mgr.effective(new).to_dict()
        if oom_seq is not None:
            rec.policy_oom_seq = oom_seq
        store.save(rec)   # first: a full state dir refuses the change before the kernel has it
        # killed here, the record holds limits the kernel does not: `inspect` shows the kernel's, and
        # the next update (or restart) applies the record's whole set, this change included
        fault("update")
        try:
            # device rules are fixed at creation: re-sending them would make systemd (v1) rewrite
            # devices.deny/allow, a moment in which even /dev/null fails
            mgr.set(dataclasses.replace(new, devices=None))
        except (OSError, CgagentError):
            if status == "running":
                rec.resources, rec.policy_oom_seq = old, old_seq
                store.save(rec)
                raise
            # between two runs, its systemd scope gone: the record is what the next scope is made from
        events.append(store.root, "update", name, resources=rec.resources)
    return rec


# --- kill, wait, restart: the lifecycle commands docker users type

def parse_signal(text: str) -> int:
    """KILL, SIGKILL, sigterm or a number (1 .. SIGRTMAX) -> the signal's number."""
    t = text.strip()
    if t.isascii() and t.isdigit() and len(t) <= 3 and 1 <= int(t) <= signal.SIGRTMAX:
        return int(t)
    name = t.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    sig = getattr(signal.Signals, name, None) if name.isidentifier() else None
    if not isinstance(sig, signal.Signals):
        raise CgagentError(f"{text!r} is not a signal", f"give a name or a number, e.g. -s TERM, -s HUP or -s 9 "
                           f"(1 to {int(signal.SIGRTMAX)})")
    return int(sig)


def _main_pidfd(host: Host, rec: Record, what: str) -> int:
    """A pidfd of the workload's main process: signals through it never reach a process that took
    the pid over after the workload's exit."""
    if live_status(host, rec) not in ("running", "paused"):
        raise CgagentError(f"workload {rec.name!r} is not running", f"start it again with `cgagent restart {rec.name}`"
                           if what == "kill" else "")
    fd = procs.pidfd(rec.pid, rec.pid_start)
    if fd is not None:
        return fd
    raise CgagentError(f"workload {rec.name!r} has no main process now (it is between two runs)",
                       "try again once `cgagent ps` shows it running")


def kill(store: Store, host: Host, name: str, sig: int) -> None:
    """Send `sig` to the workload's main process (as `docker kill`); what follows its exit is what
    follows any exit (its --restart policy applies)."""
    require_root("cgagent kill")
    fd = _main_pidfd(host, store.load(name), "kill")
    try:
        signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        pass   # it exited meanwhile: the signal had nothing left to do
    finally:
        os.close(fd)


def wait(store: Store, host: Host, name: str) -> int | None:
    """Block until the workload has exited for good (restarts included) and its end is recorded;
    -> its exit code (None: ended without one, e.g. killed while no supervisor ran). Woken by
    inotify on the record's directory (a look a second when the kernel gives no instance) and a pidfd
    of its supervisor."""
    from cgagent.inotify import IN_CLOSE_WRITE, IN_DELETE, IN_MOVED_TO, Follow

    seen = store.load(name)   # the latest record seen: its log_offset is nearest the exit event
    with Follow([(store.workloads, IN_MOVED_TO | IN_CLOSE_WRITE | IN_DELETE)]) as watch:
        while True:
            try:
                cur: Record | None = store.load(name)
            except CgagentError:
                cur = None
            if cur is None or cur.created != seen.created:
                return _logged_exit(store, seen)   # --rm: the record went with the exit
            if cur.status == "exited":
                return cur.exit_code
            seen = cur
            # its supervisor's exit wakes us; without one (killed), the main process's exit does
            fd = procs.pidfd(cur.supervisor_pid, cur.supervisor_start)
            fd = procs.pidfd(cur.pid, cur.pid_start) if fd is None else fd
            if fd is None and live_status(host, cur) not in ("running", "paused"):
                raise CgagentError(f"workload {name!r} ended without a supervisor to record how",
                                   f"`cgagent stop {name}` records its end")
            try:   # Ctrl-C ends it, whenever it comes
                readable(watch.fds + ([fd] if fd is not None else []), watch.timeout)
            finally:
                if fd is not None:
                    os.close(fd)
            watch.drain()


def _logged_exit(store: Store, rec: Record) -> int | None:
    """The exit code of a removed workload's last run, from the events log."""
    code = None
    for _off, ev in events.read(store.root, events.noted(store.root, rec.log_offset)):
        if ev.get("kind") == "exit" and ev.get("name") == rec.name and (rec.started is None or
                                                                        ev.get("started", rec.started) >= rec.started):
            code = ev.get("exit_code")
    return code if isinstance(code, int) else None
