"""The caller's side of a foreground run through the agent (the protocol: cgagent.api.attach).

This is the path of every `cgagent run` while an agent runs, and the agent's own cost is measured
on it (issue 14: no more than runc's whole launch). So it loads C modules only: `_socket` and
`_signal`, not `socket` and `signal`, whose enum tables, with `json` and the `re`, `enum`,
`functools` and `collections` they bring, cost a launch more than its whole connection to the agent
does. The request is encoded here (encode(): the few JSON types a request holds); an answer is
decoded with `json` only when the agent refuses the run. There is no probe of the socket first: a
connect that fails is the answer (the direct path runs instead)."""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stub for the C module behind `signal`
import _socket
import sys

from cgagent.api.client import CONNECT_TIMEOUT, Declined
from cgagent.errors import CgagentError
from cgagent.signals import FORWARDED
from cgagent.wakeup import wait_readable

TYPE_CHECKING = False   # not typing's own: the thin client's path does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from typing import Any

PROTOCOL = "cgagent-stdio"
MAX_LINE = 64          # a signal line or the exit line
MAX_HEAD = 64 * 1024   # the agent's answer head: a few hundred bytes
_STDIO = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in (0, 1, 2))   # SCM_RIGHTS: C ints

# JSON string escapes: control characters, the quote and the backslash. Lone surrogates (an
# environment's undecodable bytes, surrogateescape'd) become \udcXX through backslashreplace in
# encode(), as json.dumps writes them.
_ESCAPES = {c: f"\\u{c:04x}" for c in range(0x20)} | {ord('"'): '\\"', ord("\\"): "\\\\"}


def encode(obj: Any) -> bytes:
    """JSON for a run request: str, bool, int, None, and lists and str-keyed dicts of them (what
    json.loads reads back equal; a test holds it to that on hostile strings)."""
    out: list[str] = []
    _encode(obj, out)
    return "".join(out).encode("utf-8", "backslashreplace")


def _encode(obj: Any, out: list[str]) -> None:
    if isinstance(obj, str):
        out.append('"' + obj.translate(_ESCAPES) + '"')
    elif obj is None or isinstance(obj, bool):
        out.append("null" if obj is None else "true" if obj else "false")
    elif isinstance(obj, int):
        out.append(str(int(obj)))
    elif isinstance(obj, list | tuple):
        out.append("[")
        for i, v in enumerate(obj):
            if i:
                out.append(",")
            _encode(v, out)
        out.append("]")
    elif isinstance(obj, dict):
        out.append("{")
        for i, (k, v) in enumerate(obj.items()):
            if not isinstance(k, str):
                raise TypeError(f"a request's keys are strings, not {type(k).__name__}")
            out.append("," if i else "")
            _encode(k, out)
            out.append(":")
            _encode(v, out)
        out.append("}")
    else:
        raise TypeError(f"a run request holds no {type(obj).__name__}")


def run_attached(path: str, data: bytes) -> int:
    """Send the run request (encoded); once accepted, our stdio and then our signals; -> the
    workload's exit code."""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        try:
            s.settimeout(CONNECT_TIMEOUT)
            s.connect(path)
            s.settimeout(None)
        except OSError:
            raise Declined(path) from None   # nothing sent: the direct path does it all, as with no agent
        try:
            s.sendall(b"POST /v1/workloads HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\n"
                      b"Connection: Upgrade\r\nUpgrade: " + PROTOCOL.encode() +
                      f"\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        except ConnectionError as e:
            status_line, headers, rest = _refusal(s, e)   # it answered before reading it all (a full table)
        else:
            status_line, headers, rest = _head(s)
        parts = status_line.split()
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if status == 501:
            raise Declined("/v1/workloads")
        if status != 101:
            raise _error(s, status_line, headers, rest)
        s.sendmsg([b"F"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _STDIO)])
        return _wait_exit(s, rest)
    finally:
        s.close()


def _refusal(s: Any, failed: ConnectionError) -> tuple[bytes, dict[str, str], bytes]:
    """The answer an agent sent before it closed on a request it did not read (it waits in our
    receive buffer); none: the send's own error."""
    try:
        return _head(s)
    except (CgagentError, OSError):
        raise failed from None


def _head(s: Any) -> tuple[bytes, dict[str, str], bytes]:
    """The answer's status line, headers (lower-case names) and what came after them, read in as few
    recv calls as it arrived in."""
    buf = b""
    while (end := buf.find(b"\r\n\r\n")) < 0:
        chunk = s.recv(4096)
        if not chunk or len(buf) > MAX_HEAD:
            raise CgagentError(f"the agent answered {buf[:80]!r} to a foreground run", "see the agent's log", 1)
        buf += chunk
    status_line, *lines = buf[:end].split(b"\r\n")
    headers = {}
    for line in lines:
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return status_line, headers, buf[end + 4:]


def _error(s: Any, status_line: bytes, headers: dict[str, str], body: bytes) -> CgagentError:
    """The agent's refusal (a JSON error with the direct path's line and exit code) as ours."""
    import json

    want = min(int(headers.get("content-length", "0") or 0), MAX_HEAD)
    while len(body) < want and (chunk := s.recv(want - len(body))):
        body += chunk
    try:
        obj = json.loads(body)
        return CgagentError(str(obj["error"]), "", int(obj["exit_code"]))
    except (ValueError, KeyError, TypeError):
        return CgagentError(f"the agent answered {status_line!r} to a foreground run", "see the agent's log", 1)


def _wait_exit(s: Any, buf: bytes) -> int:
    def forward(signum: int, _frame: Any) -> None:
        try:
            s.sendall(f"{signum}\n".encode())
        except OSError:
            pass   # the agent is gone: the recv below says so

    old = {sig: _signal.signal(sig, forward) for sig in FORWARDED}
    try:
        while b"\n" not in buf:
            # the forwarding handler runs between bytecodes: a signal just before a bare recv would
            # wait for the workload's exit, so the wait is a select with the wakeup fd (cgagent.wakeup)
            wait_readable(s.fileno())
            chunk = s.recv(MAX_LINE)
            if not chunk:
                raise CgagentError("the agent went away while the workload ran (its supervisor records the "
                                   "exit)", "see `cgagent ps -a`", 1)
            buf += chunk
        word, _, num = buf.split(b"\n", 1)[0].decode().partition(" ")
        if word != "exit" or not num.lstrip("-").isdigit():
            raise CgagentError(f"the agent sent {buf[:MAX_LINE]!r}", "see the agent's log", 1)
        return int(num)
    finally:
        for sig, handler in old.items():
            _signal.signal(sig, handler)
