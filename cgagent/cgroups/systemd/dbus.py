"""A small blocking D-Bus client for systemd's Manager (jeepney), as root.

Two ways in, tried in this order unless CGAGENT_SYSTEMD_BUS says otherwise:
- "private": systemd's own peer-to-peer socket /run/systemd/private (what systemctl uses as root;
  works without dbus-daemon). No bus daemon: no Hello(), and every signal is delivered.
- "system": the system bus (DBUS_SYSTEM_BUS_ADDRESS or /run/dbus/system_bus_socket). Signals only
  arrive after Manager.Subscribe() and an AddMatch rule.

A reply or a JobRemoved signal can fail to arrive on one connection while systemd is otherwise well
(seen under load in the v2 VM: systemd idle, nothing queued, our side waiting). So no wait trusts
one message: a call whose repetition is harmless is sent again on a new connection after
CGAGENT_SYSTEMD_RETRY seconds (default 5) without a reply, and a job whose JobRemoved has not come
is looked up on a new connection (a job systemd no longer has has ended). Only the whole
CGAGENT_SYSTEMD_TIMEOUT without an answer means systemd is not answering.

Every failure to reach or hear systemd becomes one CgagentError line; D-Bus error replies become
SystemdError (a CgagentError that keeps the D-Bus error name for callers that branch on it).
"""

from __future__ import annotations

import collections
import fcntl
import os
import socket
import struct
import termios
import time
from typing import Any

from jeepney import DBusAddress, HeaderFields, MatchRule, Message, MessageType, Parser, new_method_call
from jeepney.auth import AuthenticationError
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import prep_socket
from jeepney.wrappers import DBusErrorResponse, unwrap_msg

from cgagent.errors import CgagentError
from cgagent.faults import lose
from cgagent.wakeup import ready_to_read

SD = "org.freedesktop.systemd1"
MANAGER = DBusAddress("/org/freedesktop/systemd1", SD, f"{SD}.Manager")
PRIVATE_SOCKET = "/run/systemd/private"
SYSTEM_BUS_SOCKET = "/run/dbus/system_bus_socket"
DEFAULT_TIMEOUT = 25.0
DEFAULT_RETRY = 5.0
# calls whose second arrival changes nothing: sent again when the first reply does not come
RESENDABLE = frozenset({"GetUnit", "Get", "KillUnit", "ResetFailedUnit", "SetUnitProperties",
                        "AttachProcessesToUnit"})

UNIT_EXISTS = f"{SD}.UnitExists"
NO_SUCH_UNIT = f"{SD}.NoSuchUnit"
UNIT_INACTIVE = f"{SD}.UnitInactive"
INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"
UNKNOWN_OBJECT = "org.freedesktop.DBus.Error.UnknownObject"


class SystemdError(CgagentError):
    """systemd answered with a D-Bus error."""

    def __init__(self, problem: str, fix: str, dbus_name: str) -> None:
        super().__init__(problem, fix)
        self.dbus_name = dbus_name


# The D-Bus spec's bound on a message; ours are far smaller, systemd's signals too
MAX_MESSAGE = 128 * 1024 * 1024


class _Wire:
    """Our end of one connection: sends calls; reads replies, errors and JobRemoved signals.

    Not jeepney's blocking connection, which parses every message whole: on systemd's private socket
    every signal of every unit comes (PropertiesChanged of the scope, its slices and their jobs, with
    dozens of properties each), ~30 a run, and parsing them was half of a launch's CPU time in the v2
    VM. Here a signal is framed by its length and skipped unless its header names JobRemoved; only
    what a caller can want goes through jeepney's parser."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(None)   # reads wait in poll() against the caller's deadline
        self.sock = sock
        self.serial = 0
        self.buf = bytearray()
        self.parser = Parser()
        self.removed: collections.deque[Message] = collections.deque(maxlen=1024)   # JobRemoved, unread

    def close(self) -> None:
        self.sock.close()

    def send(self, msg: Message) -> int:
        self.serial += 1
        self.sock.sendall(msg.serialise(serial=self.serial))
        return self.serial

    def reply(self, serial: int, timeout: float) -> Message:
        """The reply (or error) to our message `serial`; TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self._next(deadline)
            if msg.header.message_type == MessageType.signal:
                self.removed.append(msg)
            elif msg.header.fields.get(HeaderFields.reply_serial) == serial:
                return msg

    def job_removed(self, timeout: float) -> Message:
        """The next JobRemoved signal; TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self.removed:
            msg = self._next(deadline)
            if msg.header.message_type == MessageType.signal:
                return msg
        return self.removed.popleft()

    def _next(self, deadline: float) -> Message:
        while True:
            frame = self._frame(deadline)
            if frame[1] == MessageType.signal.value and not _is_job_removed(frame):
                continue
            self.parser.add_data(frame)
            msg: Message | None = self.parser.get_next_message()
            if msg is not None:
                return msg

    def _frame(self, deadline: float) -> bytes:
        """One whole message's bytes."""
        while True:
            if len(self.buf) >= 16:
                # after endianness, type, flags and version: body length, serial, header fields' length
                body, _serial, fields = struct.unpack_from(_order(self.buf) + "III", self.buf, 4)
                size = 16 + fields + (-fields % 8) + body
                if size > MAX_MESSAGE:
                    raise OSError(f"a message of {size} bytes from systemd")
                if len(self.buf) >= size:
                    frame = bytes(self.buf[:size])
                    del self.buf[:size]
                    return frame
            if not ready_to_read([self.sock.fileno()], max(0.0, deadline - time.monotonic())):
                raise TimeoutError
            data = self.sock.recv(65536)
            if not data:
                raise OSError("systemd closed the connection")
            self.buf += data


def _order(buf: bytes | bytearray) -> str:
    return "<" if buf[0] == ord("l") else ">"


# MEMBER "JobRemoved" as a header field (code 3, signature "s", length 10), in each byte order
_JOB_REMOVED = {o: b"\x03\x01s\x00" + struct.pack(o + "I", 10) + b"JobRemoved\x00" for o in "<>"}


def _is_job_removed(frame: bytes) -> bool:
    """Whether a signal's header fields name the member JobRemoved."""
    order = _order(frame)
    fields = struct.unpack_from(order + "I", frame, 12)[0]
    return _JOB_REMOVED[order] in frame[16:16 + fields]


def _seconds(var: str, default: float) -> float:
    try:
        return float(os.environ.get(var, default))
    except ValueError:
        return default


def timeout() -> float:
    return _seconds("CGAGENT_SYSTEMD_TIMEOUT", DEFAULT_TIMEOUT)


def retry_after() -> float:
    return _seconds("CGAGENT_SYSTEMD_RETRY", DEFAULT_RETRY)


def _system_bus_path() -> str:
    addr = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "")
    for part in addr.split(";"):
        if part.startswith("unix:path="):
            return part[len("unix:path="):].split(",")[0]
    return SYSTEM_BUS_SOCKET


def _wait_begin_consumed(sock: socket.socket, deadline: float) -> None:
    # systemd 252's sd-bus does not dispatch a message that arrives in the same read as the auth
    # BEGIN until more bytes come: the first call would hang. Wait until systemd has read BEGIN.
    while struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4))[0]:
        if time.monotonic() > deadline:
            raise TimeoutError("BEGIN not read")
        time.sleep(0.0002)


class Systemd:
    """One connection to systemd's Manager. Use as a context manager, or call close()."""

    def __init__(self, kind: str | None = None, socket_path: str | None = None) -> None:
        self.timeout = timeout()
        self.retry = min(retry_after(), self.timeout)
        want = kind or os.environ.get("CGAGENT_SYSTEMD_BUS", "auto")
        private = socket_path or os.environ.get("CGAGENT_SYSTEMD_SOCKET") or PRIVATE_SOCKET
        if want == "auto":
            want = "private" if os.path.exists(private) or not os.path.exists(_system_bus_path()) else "system"
        if want not in ("private", "system"):
            raise CgagentError(f"CGAGENT_SYSTEMD_BUS={want!r} is not a bus kind", "use private, system or auto")
        self.kind = want
        self.where = private if want == "private" else _system_bus_path()
        self.conn = self._open()
        self._subscribed = False

    def _unreachable(self, why: str) -> CgagentError:
        return CgagentError(f"systemd is not answering on {self.where} ({why})",
                            "check that systemd is PID 1 and running (systemctl is-system-running), "
                            "or use --cgroup-driver cgroupfs")

    def _open(self) -> _Wire:
        deadline = time.monotonic() + self.timeout
        try:
            sock = prep_socket(self.where, timeout=self.timeout)
        except (TimeoutError, OSError, AuthenticationError) as e:
            raise self._unreachable(getattr(e, "strerror", None) or str(e) or type(e).__name__) from None
        try:
            _wait_begin_consumed(sock, deadline)
            wire = _Wire(sock)
            if self.kind == "system":   # a bus daemon: say Hello first (no bus daemon behind the private socket)
                unwrap_msg(wire.reply(wire.send(new_method_call(message_bus, "Hello")),
                                      max(0.0, deadline - time.monotonic())))
            return wire
        except (TimeoutError, OSError, DBusErrorResponse) as e:
            sock.close()
            raise self._unreachable(str(e) or type(e).__name__) from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Systemd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- calls

    def call(self, method: str, signature: str | None = None, body: tuple[Any, ...] = (),
             address: DBusAddress = MANAGER) -> tuple[Any, ...]:
        deadline = time.monotonic() + self.timeout
        again = method in RESENDABLE
        while True:
            left = deadline - time.monotonic()
            try:
                reply = self._exchange(new_method_call(address, method, signature, body), method,
                                       min(left, self.retry) if again else left)
                break
            except TimeoutError:
                if not again or time.monotonic() >= deadline:
                    raise self._unreachable(f"no reply to {method} within {self.timeout:g}s") from None
                _trace(f"no reply to {method} in {self.retry:g}s: sent again on a new connection")
                self._reconnect()
            except OSError as e:
                raise self._unreachable(e.strerror or str(e)) from None
        try:
            return tuple(unwrap_msg(reply))
        except DBusErrorResponse as e:
            text = e.data[0] if e.data and isinstance(e.data[0], str) else str(e.name)
            raise SystemdError(f"systemd refused {method}: {text}", _fix_for(e.name), str(e.name)) from None

    def _exchange(self, msg: Message, method: str, wait: float) -> Message:
        serial = self.conn.send(msg)
        if lose(f"reply:{method}"):   # the test hook: as if this reply never came
            serial = 0                  # no reply has that serial: TimeoutError
        return self.conn.reply(serial, max(0.0, wait))

    def _reconnect(self) -> None:
        self.conn.close()
        self.conn = self._open()
        self._subscribed = False

    def get(self, path: str, interface: str, name: str) -> Any:
        addr = DBusAddress(path, SD, "org.freedesktop.DBus.Properties")
        return self.call("Get", "ss", (f"{SD}.{interface}", name), addr)[0][1]

    def unit_path(self, unit: str) -> str | None:
        """The unit's object path when systemd has it loaded, else None."""
        try:
            return str(self.call("GetUnit", "s", (unit,))[0])
        except SystemdError as e:
            if e.dbus_name == NO_SUCH_UNIT:
                return None
            raise

    def _subscribe(self) -> None:
        # On the system bus JobRemoved is only delivered to subscribers with a matching rule.
        if self.kind == "system" and not self._subscribed:
            rule = MatchRule(type="signal", interface=MANAGER.interface, member="JobRemoved",
                             path=MANAGER.object_path)
            self.call("AddMatch", "s", (rule.serialise(),),
                      DBusAddress(message_bus.object_path, message_bus.bus_name, message_bus.interface))
            self.call("Subscribe")
            self._subscribed = True

    def job(self, method: str, signature: str, body: tuple[Any, ...]) -> str:
        """Call a job-returning Manager method and wait for its JobRemoved: -> the job's result
        ("done", "failed", "canceled", "timeout", "dependency", "skipped"). A JobRemoved that does
        not come within the retry interval is looked for on a new connection instead (_job_ended)."""
        self._subscribe()
        self.conn.removed.clear()   # ours can only come after the call
        (job_path,) = self.call(method, signature, body)
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            try:
                msg = self.conn.job_removed(max(0.0, min(left, self.retry)))
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise self._unreachable(f"no JobRemoved for {method} within {self.timeout:g}s") from None
                result = self._job_ended(job_path, method, str(body[0]))
                if result is not None:
                    return result
                continue
            except OSError as e:
                raise self._unreachable(e.strerror or str(e)) from None
            if msg.header.fields.get(HeaderFields.interface) != MANAGER.interface:
                continue
            _id, path, _unit, result = msg.body
            if path == job_path and not lose(f"JobRemoved:{method}"):
                return str(result)

    def _job_ended(self, job_path: str, method: str, unit: str) -> str | None:
        """No JobRemoved yet: ask on a new connection (this one may be the one that hears nothing).
        None while systemd still has the job; else its result, read off the unit it was for."""
        _trace(f"no JobRemoved for {method} {unit} in {self.retry:g}s: looked the job up")
        try:
            with Systemd(self.kind, self.where if self.kind == "private" else None) as probe:
                probe.timeout = probe.retry = self.retry
                try:
                    probe.get(job_path, "Job", "State")
                    return None
                except SystemdError as e:
                    if e.dbus_name != UNKNOWN_OBJECT:
                        raise
                if method != "StartTransientUnit":
                    return "done"   # a stop job that is gone has ended; callers look at the unit
                path = probe.unit_path(unit)
                state = None if path is None else str(probe.get(path, "Unit", "ActiveState"))
                return "done" if state == "active" else "failed"
        except SystemdError:
            raise
        except CgagentError:
            return None   # the new connection heard nothing either: wait on, up to the deadline


def _trace(line: str) -> None:
    # CGAGENT_SYSTEMD_TRACE=FILE: where the VM tier counts the silences this module made up for
    path = os.environ.get("CGAGENT_SYSTEMD_TRACE")
    if path:
        with open(path, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} pid {os.getpid()}: {line}\n")


def _fix_for(name: str | None) -> str:
    if name == UNIT_EXISTS:
        return "another unit has this name: choose another --name, or stop that unit"
    if name == NO_SUCH_UNIT:
        return "the unit is gone (its processes exited)"
    if name == INVALID_ARGS:
        return "change the limit or the --cgroup-parent slice that systemd refused"
    return "see journalctl and `systemctl status` for the unit"
