"""The systemd client's reading of its connection (cgagent.cgroups.systemd.dbus._Wire), over a real
socketpair carrying the messages systemd sends on its private socket: replies, errors, and a stream
of signals of which only JobRemoved is parsed."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from jeepney import DBusAddress, Endianness, Message, new_error, new_method_call, new_method_return, new_signal

from cgagent.cgroups.systemd.dbus import MANAGER, _is_job_removed, _Wire

UNIT = DBusAddress("/org/freedesktop/systemd1/unit/x_2escope", "org.freedesktop.systemd1",
                   "org.freedesktop.DBus.Properties")


def _changed(n: int) -> Message:
    """A PropertiesChanged as systemd sends for every unit and job it touches: big and unwanted."""
    props = {f"Prop{i}": ("s", "v" * 40) for i in range(n)}
    return new_signal(UNIT, "PropertiesChanged", "sa{sv}as", ("org.freedesktop.systemd1.Unit", props, []))


def _removed(job: str, result: str = "done") -> Message:
    return new_signal(MANAGER, "JobRemoved", "uoss", (7, job, "x.scope", result))


@pytest.fixture
def pair() -> Iterator[tuple[_Wire, socket.socket]]:
    ours, theirs = socket.socketpair()
    wire = _Wire(ours)
    try:
        yield wire, theirs
    finally:
        wire.close()
        theirs.close()


def _call(serial: int) -> Message:
    msg = new_method_call(MANAGER, "GetUnit", "s", ("x.scope",))
    msg.header.serial = serial
    return msg


def test_the_reply_is_found_among_signals_and_a_job_removed_on_the_way_is_kept(
        pair: tuple[_Wire, socket.socket]) -> None:
    wire, systemd = pair
    serial = wire.send(new_method_call(MANAGER, "StartUnit", "ss", ("x.scope", "fail")))
    stream = (_changed(30).serialise(serial=100) + _removed("/job/1").serialise(serial=101)
              + new_method_return(_call(serial - 1), "o", ("/old",)).serialise(serial=102)   # not ours
              + _changed(5).serialise(serial=103)
              + new_method_return(_call(serial), "o", ("/job/2",)).serialise(serial=104))
    for i in range(0, len(stream), 100):   # in pieces, as a socket may deliver them
        systemd.sendall(stream[i:i + 100])
    assert wire.reply(serial, 5).body == ("/job/2",)
    assert wire.job_removed(5).body == (7, "/job/1", "x.scope", "done")   # kept while the reply was awaited
    systemd.sendall(_changed(3).serialise(serial=105) + _removed("/job/2", "failed").serialise(serial=106))
    assert wire.job_removed(5).body[1:] == ("/job/2", "x.scope", "failed")


def test_an_error_reply_is_returned_and_silence_is_a_timeout(pair: tuple[_Wire, socket.socket]) -> None:
    wire, systemd = pair
    serial = wire.send(new_method_call(MANAGER, "GetUnit", "s", ("nope.scope",)))
    systemd.sendall(new_error(_call(serial), "org.freedesktop.systemd1.NoSuchUnit", "s", ("no",)).serialise(serial=9))
    assert wire.reply(serial, 5).header.fields  # an error is the reply too (unwrap_msg raises it)
    systemd.sendall(_changed(3).serialise(serial=10))
    with pytest.raises(TimeoutError):
        wire.reply(serial + 1, 0.05)
    with pytest.raises(TimeoutError):
        wire.job_removed(0.05)


def test_a_closed_connection_or_an_oversized_message_is_an_os_error(pair: tuple[_Wire, socket.socket]) -> None:
    wire, systemd = pair
    systemd.sendall(b"l\x04\x01\x01" + (2**30).to_bytes(4, "little") + bytes(8))   # a 1 GiB body announced
    with pytest.raises(OSError, match="bytes from systemd"):
        wire.reply(1, 5)
    systemd.close()
    wire.buf.clear()
    with pytest.raises(OSError, match="closed"):
        wire.reply(1, 5)


@pytest.mark.parametrize("endian", [Endianness.little, Endianness.big])
def test_job_removed_is_told_from_other_signals_by_its_header_alone(endian: Endianness) -> None:
    for msg, want in ((_removed("/job/1"), True), (_changed(2), False),
                      (new_signal(MANAGER, "UnitRemoved", "so", ("JobRemoved", "/u")), False)):
        msg.header.endianness = endian
        assert _is_job_removed(msg.serialise(serial=1)) is want
