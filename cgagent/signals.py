"""The signals a caller passes on to its workload (Ctrl-C, `kill`, a resize, a `fg`), as plain
numbers from the C module: the thin client forwards them without importing `signal` (its enum
tables cost every `cgagent run` a few ms); the launch code uses the same tuple."""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stub for the C module behind `signal`

FORWARDED: tuple[int, ...] = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT, _signal.SIGUSR1,
                              _signal.SIGUSR2, _signal.SIGWINCH, _signal.SIGCONT)
