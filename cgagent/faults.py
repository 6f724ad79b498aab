"""Test-only fault injection: CGAGENT_FAULT=step:NAME makes the process SIGKILL itself when it
reaches the step NAME, so tests can prove that a crash at that point leaves state that `ps` reports
truthfully and `rm -f` cleans. Unset (always, outside the tests), fault() is one dict lookup."""

from __future__ import annotations

import os
import signal


def fault(step: str) -> None:
    want = os.environ.get("CGAGENT_FAULT")
    if want is not None and want == f"step:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
