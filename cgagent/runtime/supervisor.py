"""The supervisor: the process that waits for a workload, restarts it per its --restart policy and
records its end. A foreground run's supervisor is the CLI itself (run_foreground); a detached run's
is a double-forked process (run_detached) that execs `python3 -m cgagent.shim` (shim_main), so that
it carries none of the CLI's argv and outlives it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable

from cgagent import events, launch, oom, procs
from cgagent.cgroups import CgroupManager
from cgagent.errors import CgagentError, run_code
from cgagent.faults import fault
from cgagent.host import Host
from cgagent.live import live_status, manager
from cgagent.runtime import starting
from cgagent.runtime.lifecycle import create, discard, finish, start, victims, watch_kmsg
from cgagent.runtime.request import RunRequest, parse_restart
from cgagent.runtime.stopflag import stop_requested
from cgagent.state import Damaged, Record, Store, last_words

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:   # a run without -t never loads termios & co.
    from cgagent.terminal import Console


def run_foreground(req: RunRequest, host: Host, store: Store) -> int:
    console = None
    if req.tty:   # a plain run never imports termios & co.
        from cgagent import terminal

        terminal.check_input(req.interactive)
        console = terminal.Console(terminal.caller_size())
    signal.pthread_sigmask(signal.SIG_BLOCK, launch.WAITED)
    rec, mgr = create(req, host, store)
    watch_kmsg()
    # this CLI is the workload's supervisor until it exits; `stop` waits for it to record the exit
    rec.supervisor_pid, rec.supervisor_start = os.getpid(), procs.start_time(os.getpid())
    try:
        pid = start(store, rec, mgr, console=console)
        master = console.receive() if console is not None else -1
    except BaseException:
        discard(store, rec, mgr)
        raise
    if console is not None:   # -t excludes --restart (cgagent.runflags)
        from cgagent import terminal

        code = terminal.proxy(pid, master, req.interactive)
    else:
        code = _wait_restarting(store, host, rec, mgr, pid, None)
    finish(store, host, rec.name, code, supervisor=True)
    return code


# --- restarts: the supervisor (foreground CLI or detached supervisor) applies --restart

RESTART_FIRST_DELAY = 0.1   # Docker's: doubling from 100 ms up to a minute,
RESTART_MAX_DELAY = 60.0
RESTART_RESET_AFTER = 10.0  # and back to the start after a run of 10 s or more


def _should_restart(store: Store, rec: Record, code: int) -> bool:
    mode, most = parse_restart(rec.restart)
    if mode == "no" or stop_requested(store, rec.name, rec.created):
        return False
    # on-failure: only a non-zero exit, and at most N restarts
    return mode in ("always", "unless-stopped") or (code != 0 and (most is None or rec.restarts < most))


def _reload(store: Store, rec: Record) -> bool:
    """Take the record as it is on disk (what `update` and the policy controller wrote since).
    False when it is gone or belongs to a new workload of the same name."""
    with store.lock():
        try:
            cur = store.load(rec.name)
        except CgagentError:
            return False
    if cur.created != rec.created:
        return False
    cur.supervisor_pid, cur.supervisor_start, cur.restarts = rec.supervisor_pid, rec.supervisor_start, rec.restarts
    vars(rec).update(vars(cur))
    return True


def _oom_before_restart(store: Store, host: Host, rec: Record) -> None:
    """Log the kills of the run that ended, and let its policy answer them (more memory) before the
    next run starts, so that the next run is the one that gets it."""
    with store.lock():
        try:
            cur = store.load(rec.name)
        except CgagentError:
            return
        oom.note(store, cur, oom.read_rec_counter(cur), "exit", victims(cur))
        seq = oom.load_mark(store, cur).kills
    if cur.policy is None or seq <= cur.policy_oom_seq:
        return
    with contextlib.suppress(Exception):   # a policy that cannot be read must not stop the restart
        from policies.memory_step import answer_oom_before_restart

        answer_oom_before_restart(store, host, rec.name, cur.policy, seq)


def _wait_restarting(store: Store, host: Host, rec: Record, mgr: CgroupManager, pid: int,
                     stdio: tuple[int, int, int] | None) -> int:
    """Wait for the workload; restart it per its policy with backoff. Returns the last exit code."""
    streak = 0
    while True:
        began = time.monotonic()
        code = launch.wait_forwarding(pid, reap_all=rec.detached)
        if not _should_restart(store, rec, code):
            return code
        _oom_before_restart(store, host, rec)
        streak = 0 if time.monotonic() - began >= RESTART_RESET_AFTER else streak
        delay = min(RESTART_FIRST_DELAY * 2 ** streak, RESTART_MAX_DELAY)
        streak += 1
        events.append(store.root, "restart", rec.name, exit_code=code, restarts=rec.restarts + 1,
                      delay_s=round(delay, 3))
        # the backoff ends early on a signal for us (stop, Ctrl-C): then the workload stays down
        sig = signal.sigtimedwait([s for s in launch.WAITED if s != signal.SIGCHLD], delay)
        if sig is not None or not _should_restart(store, rec, code) or not _reload(store, rec):
            return code
        rec.restarts += 1
        fault("restarting")
        try:
            pid = start(store, rec, mgr, stdio)   # into the scope its keeper holds, or a new one (lifecycle._place)
        except CgagentError as e:   # refused by its setup (a volume re-pointed, the command gone): it stays down
            last_words(f"the restart of {rec.name} failed: {e}")
            return run_code(e.exit_code)


def run_detached(req: RunRequest, host: Host, store: Store) -> str:
    """Start the workload under a supervisor (double fork, setsid) that outlives this CLI."""
    signal.pthread_sigmask(signal.SIG_BLOCK, launch.WAITED)
    rec, mgr = create(req, host, store)
    return detach(store, host, rec, mgr, discard)


def detach(store: Store, host: Host, rec: Record, mgr: CgroupManager,
           undo: Callable[[Store, Record, CgroupManager], None]) -> str:
    """Start a created workload under a detached supervisor; `undo` takes back what was made if it
    does not start (discard for a new run; `restart` keeps the record of an existing one)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, launch.WAITED)
    r, w = os.pipe2(os.O_CLOEXEC)
    first = os.fork()
    if first == 0:
        code = 1
        try:
            os.close(r)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            code = _supervise(store, host, rec, mgr, w, undo)
        except BaseException as e:
            with contextlib.suppress(OSError):   # the CLI may be gone: nobody to tell
                os.write(w, f"err:{getattr(e, 'exit_code', 1)}:{e}".encode())
        os._exit(code)
    os.close(w)
    try:
        fault("forked")
        os.waitpid(first, 0)
        msg = os.read(r, 4096).decode()
        os.close(r)
        _reported(store, host, rec, mgr, undo, msg)
    finally:
        starting.release(rec.name)   # the supervisor holds it on, or the start is undone
    return rec.name


def _reported(store: Store, host: Host, rec: Record, mgr: CgroupManager,
              undo: Callable[[Store, Record, CgroupManager], None], msg: str) -> None:
    if msg.startswith("err:"):
        _, ecode, text = msg.split(":", 2)
        problem, _, fix = text.partition(": ")
        raise CgagentError(problem, fix, exit_code=int(ecode))
    if not msg.startswith("ok"):
        # The supervisor was killed before the workload ran, or while it started it. Our record that
        # never said running: what its cgroup holds is ours (the child still waiting for its go-ahead,
        # a systemd keeper), never the workload's own code (lifecycle.place): undo it all, rather
        # than leave it "created" when we happened to look before those two had read their EOF. One
        # that did: undo it unless the workload runs (then `ps` shows it and `rm -f` ends it).
        cur = store.load(rec.name) if store.exists(rec.name) else None
        never_ran = cur is not None and cur.created == rec.created and cur.status == "created"
        if never_ran or live_status(host, cur or rec) != "running":
            undo(store, rec, mgr if cur is None else manager(host, cur))
        raise CgagentError("the supervisor died before starting the workload", "see the record with cgagent ps -a")


def _supervise(store: Store, host: Host, rec: Record, mgr: CgroupManager, report: int,
               undo: Callable[[Store, Record, CgroupManager], None]) -> int:
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    log = store.open_log(rec.name)
    rec.supervisor_pid, rec.supervisor_start = os.getpid(), procs.start_time(os.getpid())
    try:
        console = _console(rec)
        pid = start(store, rec, mgr, stdio=(devnull, log, log), console=console)
        if console is not None:
            _serve_terminal(store, rec.name, console.receive(), log)
    except BaseException:
        undo(store, rec, mgr)
        raise
    with contextlib.suppress(OSError):   # EPIPE: the CLI was killed; the workload runs all the same
        os.write(report, b"ok")
    os.close(report)
    for fd in (0, 1, 2):
        os.dup2(devnull if fd == 0 else log, fd)
    os.close(devnull)
    os.close(log)
    # Become a fresh process (containerd-shim, conmon): this one's argv is the CLI's, with its -e
    # values, for any local user to read in /proc/PID/cmdline. The shim keeps the pid, the children
    # (workload, keeper) and the blocked signals, and reads everything else from the record.
    import sys

    os.closerange(3, 1 << 16)
    with contextlib.suppress(OSError):
        os.execv(sys.executable, [sys.executable, "-m", "cgagent.shim", "--state-dir", store.root,
                                  "--pid", str(pid), rec.name])
    return shim_main(store, host, rec.name, pid)   # no interpreter to exec: supervise from here


def _console(rec: Record) -> Console | None:
    if not rec.tty:
        return None
    from cgagent.terminal import Console

    return Console(None)   # `attach` sends its size


def _serve_terminal(store: Store, name: str, master: int, log: int) -> None:
    """-dit: a process of the supervisor's holds the master and serves it for `cgagent attach`,
    listening before `run` returns so that an attach right after it finds the socket."""
    from cgagent import terminal

    path = store.tty_path(name)
    try:
        lis = terminal.listen(path)
        try:
            terminal.serve(master, lis, log, path)
        finally:
            lis.close()
    finally:
        os.close(master)


def shim_main(store: Store, host: Host, name: str, pid: int) -> int:
    """The detached supervisor: wait for the workload, restart it per its policy, record its end."""
    fault("shim")
    signal.pthread_sigmask(signal.SIG_BLOCK, launch.WAITED)
    with contextlib.suppress(OSError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)   # PR_SET_CHILD_SUBREAPER: reap orphans
    watch_kmsg()
    try:
        rec = store.load(name)
    except Damaged:
        # damaged since the workload started (the pid came in argv): supervise it to its end, then
        # finish() removes what it made and leaves the damaged record for `ps -a` to show
        code = launch.wait_forwarding(pid, reap_all=True)
        finish(store, host, name, code, supervisor=True)
        return 0
    if rec.supervisor_pid != os.getpid():
        raise CgagentError(f"workload {name!r} has another supervisor", "")
    assert rec.pid is not None
    from cgagent.logtime import start_stamper

    start_stamper(store.log_path(name), store.index_path(name))   # for `logs --since/--timestamps`
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    log = store.open_log(name)
    code = _wait_restarting(store, host, rec, manager(host, rec), rec.pid, (devnull, log, log))
    fault("finishing")
    try:
        finish(store, host, name, code, supervisor=True)
    except BaseException as e:
        last_words(f"the exit of {name} (code {code}) could not be recorded: {e}; "
                   f"the next `cgagent stop/rm {name}` records it")
        raise
    return 0


