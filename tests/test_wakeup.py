"""cgagent.wakeup: a wait that Ctrl-C ends even when the signal does not interrupt the select itself.

The CLI's `logs -f` once ignored a Ctrl-C that landed just before its select began (v2 VM README
walk). That window cannot be hit on purpose, but the same miss happens for certain when the signal
is taken by another thread: the main thread's select is then not interrupted at all. So the child
below blocks SIGINT in its main thread, a second thread (SIGINT unblocked) sends it once the main
thread sleeps in select, and the main thread must come out with KeyboardInterrupt. until_set (the
agent's and the policy controller's wait for SIGTERM) is held to the same: its handler only sets a flag.
The child installs the handler it needs: a suite started in the background by a shell without job
control (`make test &` in a script) inherits SIGINT ignored, and Python then leaves it ignored.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import os, signal, sys, threading, time
    from cgagent.wakeup import readable, until_set

    main_tid = threading.get_native_id()

    def in_select() -> bool:
        # /proc/.../syscall: the number of the call it sleeps in (x86-64: select 23, pselect6 270,
        # poll 7, ppoll 271). Not futex: the main thread also sleeps in one in Thread.start and
        # whenever it waits for the GIL, so a futex says nothing about where it is (CI of a993797
        # sent the SIGINT while Thread.start waited, before the handler was set)
        with open(f"/proc/self/task/{main_tid}/syscall") as f:
            return f.read().split()[0] in ("23", "270", "7", "271")

    armed = threading.Event()   # set just before the wait: no select before it counts

    def interrupter() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
        armed.wait()
        deadline = time.monotonic() + 60
        while not in_select():   # no event says "asleep in a system call": poll /proc with a deadline
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)   # only this thread takes it

    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
    stopping = threading.Event()
    if sys.argv[1] == "until_set":   # a daemon's wait: the handler sets a flag and returns
        signal.signal(signal.SIGINT, lambda *_: stopping.set())
    else:   # Ctrl-C's KeyboardInterrupt, which Python does not install when SIGINT came in ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=interrupter, daemon=True).start()
    if sys.argv[1] == "until_set":
        armed.set()
        until_set(stopping)   # it selects on the wakeup fd; a plain Event.wait (or select) waits for ever
        print("interrupted")
        sys.exit()
    r, _w = os.pipe()   # nothing is ever written
    try:
        armed.set()
        got = readable([r])   # no timeout: without the wakeup fd this waits for ever
    except KeyboardInterrupt:
        print("interrupted")
    else:
        print(f"returned {got} without the handler's KeyboardInterrupt")
""")


@pytest.mark.parametrize("wait", ["readable", "until_set"])
def test_a_sigint_taken_outside_the_select_still_ends_the_wait(wait: str) -> None:
    with subprocess.Popen([sys.executable, "-c", CHILD, wait], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) as p:
        try:
            out, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            raise AssertionError(f"the SIGINT did not end the wait: {out}{err}") from None
    assert out.strip() == "interrupted", out + err


def test_readable_answers_the_ready_fds_and_nothing_on_a_timeout() -> None:
    from cgagent.wakeup import readable

    r, w = os.pipe()
    try:
        assert readable([r], timeout=0) == []
        os.write(w, b"x")
        assert readable([r], timeout=0) == [r]
    finally:
        os.close(r)
        os.close(w)


def test_an_fd_from_1024_up_is_waited_for() -> None:
    """select() refuses fds from FD_SETSIZE (1024) up with ValueError: the agent raises its soft fd
    limit and holds a directory fd per cgroup for the exporter, so its relays, streams, launcher
    and pid waits (all on cgagent.wakeup) could fail once it held 1024."""
    import resource

    from cgagent.wakeup import readable, ready_to_read

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard fd limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    r, w = os.pipe()
    try:
        high = os.dup2(r, 1500)
        assert readable([high], timeout=0) == [] and ready_to_read([high], 0) == []
        os.write(w, b"x")
        assert readable([high], timeout=0) == [high] and ready_to_read([high], 0) == [high]
        os.close(high)
    finally:
        os.close(r)
        os.close(w)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
