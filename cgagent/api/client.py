"""A client of the agent's API over its unix socket: the standard library only (http.client, json),
so that the CLI's thin path imports neither typer nor pydantic nor the runtime."""

from __future__ import annotations

import os

from cgagent.errors import CgagentError

TYPE_CHECKING = False   # not typing's own: the thin client's path does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

SOCKET_NAME = "agent.sock"   # cgagent.api.server.SOCKET_NAME (not imported: the server pulls in the exporter)
CONNECT_TIMEOUT = 2.0
STDERR_HEADER = "Cgagent-Stderr"   # operations' stderr, in an answer (cgagent.api.stderr)


DEFAULT_STATE_DIR = "/run/cgagent"   # cgagent.state's (not imported: 20 ms; a test holds them equal)


def default_socket(state_root: str | None) -> str:
    return os.environ.get("CGAGENT_API_SOCKET") or os.path.join(
        state_root or os.environ.get("CGAGENT_STATE_DIR") or DEFAULT_STATE_DIR, SOCKET_NAME)


def _connection(path: str, timeout: float | None) -> Any:
    """An http.client connection over the unix socket (http.client is imported here, when a call is
    made: its 40 ms of imports (email, ssl) are not for a foreground run, which speaks its own protocol)."""
    import http.client
    import socket

    class Interruptible(socket.socket):
        """A blocking read (a followed stream: `logs -f`, `events -f`) that Ctrl-C ends whenever it
        comes (cgagent.wakeup): the wait happens in select, with the wakeup fd, before the read."""

        def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
            if self.gettimeout() is None:
                from cgagent.wakeup import wait_readable

                wait_readable(self.fileno())
            return super().recv_into(buffer, nbytes, flags)

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            s = Interruptible(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                s.settimeout(CONNECT_TIMEOUT)
                s.connect(path)
                s.settimeout(timeout)
            except (ConnectionRefusedError, FileNotFoundError):
                # the agent stopped (or was killed) since it was found: nothing was sent, so the
                # direct path can do it all, as with no agent
                s.close()
                raise Declined(path) from None
            except BaseException:
                s.close()
                raise
            self.sock = s

    return UnixConnection("localhost", timeout=timeout)


class Response:
    def __init__(self, conn: Any, resp: Any) -> None:
        self.conn = conn
        self.resp = resp
        self.status = resp.status

    def json(self) -> Any:
        import json

        try:
            return json.loads(self.resp.read())
        finally:
            self.close()

    def chunks(self) -> Iterator[bytes]:
        """The body as it arrives (read1: what is there, without waiting for a full buffer)."""
        try:
            while chunk := self.resp.read1(65536):
                yield chunk
        finally:
            self.close()

    def lines(self) -> Iterator[bytes]:
        try:
            while line := self.resp.readline():
                yield line
        finally:
            self.close()

    def close(self) -> None:
        self.resp.close()
        self.conn.close()


class Declined(Exception):
    """The agent cannot do this (HTTP 501, e.g. a hardened agent asked to launch): do it directly."""


class Client:
    """Calls on the agent at `path`. An error answer raises CgagentError with the agent's line and exit
    code (the same the direct path raises); `raw` calls return the Response whatever its status."""

    def __init__(self, path: str, timeout: float | None = None) -> None:
        self.path = path
        self.timeout = timeout
        # what the operation printed on the agent's stderr (its warnings), for the caller to print
        self.on_stderr: Callable[[str], object] | None = None

    def raw(self, method: str, url: str, body: Any = None, query: dict[str, Any] | None = None) -> Response:
        q = {k: ("1" if v is True else "0" if v is False else str(v)) for k, v in (query or {}).items()
             if v is not None}
        from urllib.parse import urlencode

        full = url + ("?" + urlencode(q) if q else "")
        import json

        # bytes: a request already encoded (cgagent.api.runclient.encode)
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        conn = _connection(self.path, self.timeout)
        failed: ConnectionError | None = None
        try:
            try:
                conn.request(method, full, body=data,
                             headers={"Content-Type": "application/json"} if data is not None else {})
            except ConnectionError as e:
                failed = e   # the agent answered before it read it all (a full table): the answer waits
            try:
                return Response(conn, conn.getresponse())
            except ConnectionError:
                if failed is not None:
                    raise failed from None
                raise
        except BaseException:
            conn.close()
            raise

    def call(self, method: str, url: str, body: Any = None, query: dict[str, Any] | None = None) -> Response:
        r = self.raw(method, url, body, query)
        printed = r.resp.getheader(STDERR_HEADER)
        if printed and self.on_stderr is not None:
            import json

            try:
                self.on_stderr(str(json.loads(printed)))
            except ValueError:
                pass
        if r.status == 200:
            return r
        if r.status == 501:
            r.close()
            raise Declined(url)
        raise error_of(r)

    def json(self, method: str, url: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        return self.call(method, url, body, query).json()


def error_of(r: Response) -> CgagentError:
    try:
        obj = r.json()
        e = CgagentError(str(obj["error"]), "", int(obj["exit_code"]))
        e.details = [str(d) for d in obj.get("details") or []]   # type: ignore[attr-defined]
        return e
    except (ValueError, KeyError, TypeError):
        return CgagentError(f"the agent answered HTTP {r.status} without an error message",
                            "see the agent's log", 1)


def workload_url(name: str, *rest: str) -> str:
    from urllib.parse import quote

    return "/v1/workloads/" + quote(name, safe="") + "".join("/" + r for r in rest)


def direct() -> bool:
    """CGAGENT_DIRECT=1: never through an agent."""
    return os.environ.get("CGAGENT_DIRECT", "") not in ("", "0")


def agent(state_root: str | None) -> Client | None:
    """The running agent's client, or None: no socket, nobody listening on it, or CGAGENT_DIRECT=1."""
    if direct():
        return None
    path = default_socket(state_root)
    # the C module: `socket` (enum, selectors) costs ~8 ms that a CLI with no agent to talk to would pay
    import _socket

    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        s.settimeout(CONNECT_TIMEOUT)
        s.connect(path)
    except OSError:
        return None   # no agent (or not ours to call): the direct path, as without an agent
    finally:
        s.close()
    return Client(path)
