"""Test-only fault injection: CGAGENT_FAULT=step:NAME makes the process SIGKILL itself when it
reaches the step NAME, so tests can prove that a crash at that point leaves state that `ps` reports
truthfully and `rm -f` cleans; CGAGENT_FAULT=stop:NAME makes it SIGSTOP itself there, so that a
test can run the other side of a race at exactly that point (its parent sees the stop with waitid);
CGAGENT_FAULT=lose:NAME makes lose(NAME) true once per process, so a
test can drop one message (a D-Bus reply or signal) and prove the code recovers. Unset (always,
outside the tests), each is one dict lookup."""

from __future__ import annotations

import os
import signal


def fault(step: str) -> None:
    want = os.environ.get("CGAGENT_FAULT")
    if want is not None and want.endswith(f":{step}"):
        if want == f"step:{step}":
            os.kill(os.getpid(), signal.SIGKILL)
        elif want == f"stop:{step}":   # a race's other side runs while this one waits (SIGCONT goes on)
            os.kill(os.getpid(), signal.SIGSTOP)


_lost: set[str] = set()


def lose(name: str) -> bool:
    """True the first time this process reaches `name` under CGAGENT_FAULT=lose:NAME."""
    if os.environ.get("CGAGENT_FAULT") != f"lose:{name}" or name in _lost:
        return False
    _lost.add(name)
    return True
