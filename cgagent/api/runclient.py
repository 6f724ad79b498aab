"""The caller's side of a foreground run through the agent (the protocol: cgagent.api.attach).

Everything here is on the path of every `cgagent run` while an agent runs, so it imports what that
needs and no more: the C module `_socket` (the `socket` module's enum tables and selectors cost a
few ms), no http.client, no probe of the socket first (a connect that fails is the answer: the
direct path runs instead)."""

from __future__ import annotations

import _socket
import json
import signal

from cgagent.api.client import CONNECT_TIMEOUT, Declined
from cgagent.errors import CgagentError

TYPE_CHECKING = False   # not typing's own: the thin client's path does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from typing import Any

PROTOCOL = "cgagent-stdio"
MAX_LINE = 64          # a signal line or the exit line
MAX_HEAD = 64 * 1024   # the agent's answer head: a few hundred bytes


def run_attached(path: str, body: dict[str, Any]) -> int:
    """Send the run request; once accepted, our stdio and then our signals; -> the workload's code."""
    # now, before the workload exists: what it writes on our stderr must not interleave with what
    # an import prints there (python -X importtime)
    from cgagent.launch import FORWARDED

    data = json.dumps(body).encode()
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        try:
            s.settimeout(CONNECT_TIMEOUT)
            s.connect(path)
            s.settimeout(None)
        except OSError:
            raise Declined(path) from None   # nothing sent: the direct path does it all, as with no agent
        s.sendall(b"POST /v1/workloads HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\n"
                  b"Connection: Upgrade\r\nUpgrade: " + PROTOCOL.encode() +
                  f"\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        status_line, headers, rest = _head(s)
        parts = status_line.split()
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if status == 501:
            raise Declined("/v1/workloads")
        if status != 101:
            raise _error(s, status_line, headers, rest)
        import array

        s.sendmsg([b"F"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))])
        return _wait_exit(s, FORWARDED, rest)
    finally:
        s.close()


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
    want = min(int(headers.get("content-length", "0") or 0), MAX_HEAD)
    while len(body) < want and (chunk := s.recv(want - len(body))):
        body += chunk
    try:
        obj = json.loads(body)
        return CgagentError(str(obj["error"]), "", int(obj["exit_code"]))
    except (ValueError, KeyError, TypeError):
        return CgagentError(f"the agent answered {status_line!r} to a foreground run", "see the agent's log", 1)


def _wait_exit(s: Any, forwarded: tuple[signal.Signals, ...], buf: bytes) -> int:
    def forward(signum: int, _frame: Any) -> None:
        try:
            s.sendall(f"{signum}\n".encode())
        except OSError:
            pass   # the agent is gone: the recv below says so

    old = {sig: signal.signal(sig, forward) for sig in forwarded}
    try:
        while b"\n" not in buf:
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
            signal.signal(sig, handler)
