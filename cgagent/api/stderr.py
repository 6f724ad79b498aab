"""The agent's stderr, per request thread: what an operation prints there (the runtime's warnings, as
`stop`'s "did not exit within ...") goes back to its caller in a header (STDERR_HEADER)."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

from cgagent.api.client import STDERR_HEADER

__all__ = ["MAX_CAPTURED", "STDERR_HEADER", "ThreadStderr", "captured_stderr", "install_stderr_capture", "real_stderr"]
MAX_CAPTURED = 8192


class ThreadStderr:
    """sys.stderr for the agent: what a request's operation prints there (the runtime's warnings, as
    `stop`'s "did not exit within ...") goes back to its caller, who prints it where the direct path
    would have (header STDERR_HEADER); other threads' writes go to the real stderr."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.local = threading.local()

    def write(self, text: str) -> int:
        buf: list[str] | None = getattr(self.local, "buf", None)
        if buf is None:
            return int(self.real.write(text))
        if sum(map(len, buf)) < MAX_CAPTURED:
            buf.append(text)
        return len(text)

    def flush(self) -> None:
        if getattr(self.local, "buf", None) is None:
            self.real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    @contextlib.contextmanager
    def capture(self) -> Iterator[list[str]]:
        buf: list[str] = []
        self.local.buf = buf
        try:
            yield buf
        finally:
            self.local.buf = None




def install_stderr_capture() -> None:
    if not isinstance(sys.stderr, ThreadStderr):
        sys.stderr = ThreadStderr(sys.stderr)


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    if isinstance(sys.stderr, ThreadStderr):
        with sys.stderr.capture() as buf:
            yield buf
    else:
        yield []


def real_stderr() -> None:
    """In a process forked from a request's thread: stderr is stderr again."""
    if isinstance(sys.stderr, ThreadStderr):
        sys.stderr = sys.stderr.real
