"""Terminals for `run -t`, `exec -t` and `attach`: the workload's pty, the caller's terminal in raw
mode, and the copy loops between them.

The pty is opened by the workload's own process, once it is in the workload's root (Console.wrap):
for an isolated workload /dev/ptmx there is pts/ptmx of the devpts instance its /dev holds
(cgagent.isolation.devices), so the slave is /dev/pts/0 inside and the host's ptys are out of its
sight; a host command gets one from the host's /dev/ptmx. The master goes back to the caller over a
socketpair (SCM_RIGHTS) and is closed in the workload before exec: the workload holds only the
slave, as its controlling terminal and stdio.

Imported only when a terminal is asked for: `cgagent run` without -t loads none of this.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import socket
import struct
import termios
from collections.abc import Callable, Iterator

# signals the caller forwards to the workload (its terminal keys reach it through the pty instead)
PROXIED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
CHUNK = 65536
DETACH_KEYS = b"\x10\x11"   # Ctrl-P Ctrl-Q, as Docker's default
# attach's frames, client -> server: kind (1 byte), length (2 bytes, big-endian), payload
DATA, RESIZE = b"d", b"w"
FRAME = ">cH"


def size_of(fd: int) -> bytes | None:
    """The window size (struct winsize) of the terminal `fd`, or None when it is not one."""
    try:
        return fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return None


def caller_size() -> bytes | None:
    for fd in (0, 1, 2):
        if (size := size_of(fd)) is not None:
            return size
    return None


def set_size(fd: int, size: bytes) -> None:
    """TIOCSWINSZ; on a master the kernel sends SIGWINCH to the slave's foreground process group."""
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, size)


def take(slave: int) -> None:
    """In the workload's process: a new session whose controlling terminal is `slave`, on fds 0-2."""
    if os.getsid(0) != os.getpid():   # a host workload's: launch.child made it a session already
        os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


class Console:
    """A pty handed from the workload's process (wrap) to the caller (receive)."""

    def __init__(self, size: bytes | None) -> None:
        self.size = size
        self.mine, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)   # close-on-exec

    def wrap(self, setup: Callable[[], list[str] | None] | None) -> Callable[[], list[str] | None]:
        """A child_setup for launch.spawn: `setup` (the isolation: namespaces, root, privileges), then
        the pty, opened last so that it comes from the workload's /dev and belongs to its user."""
        def inner() -> list[str] | None:
            wrapper = setup() if setup is not None else None
            self.mine.close()
            master, slave = os.openpty()
            if self.size is not None:
                set_size(slave, self.size)
            socket.send_fds(self.theirs, [b"m"], [master])
            os.close(master)   # the workload never holds the master
            self.theirs.close()
            take(slave)
            return wrapper
        return inner

    def receive(self) -> int:
        """The master, once the workload has started (launch.spawn returned)."""
        self.theirs.close()
        try:
            self.mine.settimeout(10)   # sent before exec, so it is there; a bound all the same
            _msg, fds, _flags, _addr = socket.recv_fds(self.mine, 1, 1)
        finally:
            self.mine.close()
        if not fds:
            raise OSError(errno.EIO, "the workload's process sent no terminal")
        os.set_inheritable(fds[0], False)   # recvmsg does not set close-on-exec: a later spawn must not get it
        return fds[0]

    def close(self) -> None:
        self.mine.close()
        self.theirs.close()


@contextlib.contextmanager
def raw(fd: int) -> Iterator[None]:
    """`fd`'s terminal in raw mode (when it is one), its settings restored on every way out."""
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        yield
        return
    import tty

    try:
        tty.setraw(fd, termios.TCSADRAIN)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def wakeups(sigs: tuple[int, ...]) -> Iterator[int]:
    """The signals `sigs` as bytes on a pipe (the fd yielded), for a select loop. They are blocked
    outside (the supervisor waits with sigwaitinfo): unblocked inside, blocked again after."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old = {s: signal.signal(s, lambda *_: None) for s in sigs}
    old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, sigs)
    try:
        yield r
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
        signal.set_wakeup_fd(old_fd)
        for s, h in old.items():
            signal.signal(s, h)
        os.close(r)
        os.close(w)


def pending(r: int) -> list[int]:
    """The signals that arrived since the last call. Read after every select, before any input: a
    resize that happened before a key press is applied before that key reaches the workload."""
    try:
        return list(os.read(r, 512))
    except BlockingIOError:
        return []


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Backlog:
    """Bytes owed to a non-blocking fd (the workload's master, the attach socket), written as it
    takes them: the copy loops never block on a write. A workload that writes back what it reads
    (cat, an editor, a paste into a shell) blocks on its output while its input is full; had cgagent
    blocked writing that input, it would never read that output, and the terminal hung. Past LIMIT
    the loop stops reading where the bytes come from (backpressure), so the backlog stays bounded."""

    LIMIT = 1 << 20

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()
        self.dead = False
        os.set_blocking(fd, False)

    def full(self) -> bool:
        return len(self.buf) >= self.LIMIT

    def add(self, data: bytes) -> None:
        if not self.dead:
            self.buf += data
            self.flush()

    def flush(self) -> None:
        while self.buf:
            try:
                n = os.write(self.fd, self.buf)
            except BlockingIOError:
                return
            except OSError:   # EIO, EPIPE: the other side is gone, and what it was owed with it
                self.buf.clear()
                self.dead = True
                return
            del self.buf[:n]

    def waiting(self) -> list[int]:
        """For select's write set: the fd while something is owed to it."""
        return [self.fd] if self.buf else []


def _read(fd: int) -> bytes | None:
    """b'' at the end: EOF, or EIO (a master whose slaves are all closed, a terminal hung up);
    None: nothing after all (a non-blocking fd that select called ready)."""
    try:
        return os.read(fd, CHUNK)
    except BlockingIOError:
        return None
    except OSError as e:
        if e.errno == errno.EIO:
            return b""
        raise


def _reaped(pid: int) -> int | None:
    from cgagent.launch import exit_code

    wpid, status = os.waitpid(pid, os.WNOHANG)
    return exit_code(status) if wpid == pid else None


class Output:
    """The caller's stdout; once it fails (the terminal hung up, a closed pipe) the workload's output
    is read and dropped, so that the workload never blocks on a full pty and its exit is still seen."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    def write(self, data: bytes) -> None:
        if self.fd is None:
            return
        try:
            write_all(self.fd, data)
        except OSError:
            self.fd = None


def _drain(master: int, out: Output) -> None:
    """What the workload wrote before it ended (bounded: a leftover process may write on)."""
    for _ in range(64):
        if not select.select([master], [], [], 0)[0] or not (data := _read(master)):
            return
        out.write(data)


def proxy(pid: int, master: int, stdin: bool) -> int:
    """The caller's side of `run -t` / `exec -t`: copy the master to stdout and (-i) stdin to the
    master with the caller's terminal raw, pass on resizes and signals, until our child `pid` ends.
    Returns its exit code. The master is closed."""
    try:
        sigs_wanted = (*PROXIED, signal.SIGWINCH, signal.SIGCHLD)
        with wakeups(sigs_wanted) as sigs, raw(0) if stdin else contextlib.nullcontext():
            reading, typing = [master, sigs], stdin
            keys = Backlog(master)
            out = Output(1)
            while (code := _reaped(pid)) is None:
                inputs = reading + ([0] if typing and not keys.full() else [])
                ready, writable, _ = select.select(inputs, keys.waiting(), [])
                for s in pending(sigs):
                    if s == signal.SIGWINCH and (size := caller_size()) is not None:
                        set_size(master, size)
                    elif s in PROXIED:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, s)
                if master in ready:
                    data = _read(master)
                    if data:
                        out.write(data)
                    elif data is not None:
                        reading.remove(master)   # the workload is ending: its exit comes as SIGCHLD
                if 0 in ready:
                    if data := _read(0):
                        keys.add(data)
                    else:
                        typing = False
                if writable:
                    keys.flush()
            if master in reading:
                _drain(master, out)
            return code
    finally:
        os.close(master)


def check_input(interactive: bool) -> None:
    """`-it` reads keys from a terminal: refused, as Docker does, when stdin is not one."""
    from cgagent.errors import CgagentError

    if interactive and not os.isatty(0):
        raise CgagentError("the input device is not a TTY", "drop -t, or run it from a terminal")


# --- a detached workload's terminal: served on a unix socket for `cgagent attach`

def listen(path: str) -> socket.socket:
    """The attach socket at `path` (0600; a stale one from an earlier run of the name replaced).
    Bound through /proc/self/fd/DIR/NAME: a unix socket's path is bounded (108 bytes), a state dir is not."""
    d = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    short = f"/proc/self/fd/{d}/{os.path.basename(path)}"
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.basename(path), dir_fd=d)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            s.bind(short)
        finally:
            os.umask(old)
        s.listen(4)
        return s
    finally:
        os.close(d)


def connect(path: str) -> socket.socket:
    d = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(f"/proc/self/fd/{d}/{os.path.basename(path)}")
        return s
    finally:
        os.close(d)


def serve(master: int, lis: socket.socket, log: int, path: str) -> int:
    """Fork the process that holds a detached workload's master: it copies the output to the log and
    to the attached client, and the client's keys and resizes to the master, until the workload's
    last process closes its terminal. Returns its pid (the supervisor reaps it)."""
    pid = os.fork()
    if pid != 0:
        return pid
    code = 1
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        for fd in (0, 1, 2):   # not the `run -d` caller's pipes: its reader waits for their EOF
            os.dup2(null, fd)
        keep = {master, lis.fileno(), log}
        for fd in range(3, max(keep) + 1):
            if fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)
        _serve(master, lis, log)
        code = 0
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os._exit(code)


def _allowed(conn: socket.socket) -> bool:
    """Only root or our own user may type into the workload (the socket's mode says so too)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (0, os.geteuid())


def _serve(master: int, lis: socket.socket, log: int) -> None:
    client: socket.socket | None = None
    buf = b""
    keys = Backlog(master)
    while True:
        inputs: list[int | socket.socket] = [master, lis]
        if client is not None and not keys.full():
            inputs.append(client)
        ready, writable, _ = select.select(inputs, keys.waiting(), [])
        if writable:
            keys.flush()
        data = _read(master) if master in ready else None
        if data == b"":
            return   # the workload's last process has closed its terminal
        if data:
            with contextlib.suppress(OSError):   # a full disk must not hang up the workload's terminal
                write_all(log, data)
            if client is not None:
                try:
                    client.sendall(data)
                except OSError:
                    client.close()
                    client, buf = None, b""
        if lis in ready:
            try:
                conn, _ = lis.accept()
            except OSError:   # ECONNABORTED: the caller went before we took it
                continue
            if client is not None or not _allowed(conn):
                conn.close()   # one client at a time
            else:
                client, buf = conn, b""
        if client is not None and client in ready:
            try:
                data = client.recv(CHUNK)
            except OSError:
                # ECONNRESET: a unix socket closed with output still unread in it (a client that
                # detached while the workload was writing) resets its peer. It is the client's end,
                # not the workload's: raising here ended this process, and with it the terminal
                data = b""
            if not data:
                client.close()
                client, buf = None, b""
                continue
            buf += data
            while len(buf) >= 3:
                kind, n = struct.unpack(FRAME, buf[:3])
                if len(buf) < 3 + n:
                    break
                payload, buf = buf[3:3 + n], buf[3 + n:]
                if kind == DATA:
                    keys.add(payload)
                elif kind == RESIZE and n == 8:
                    set_size(master, payload)


def frame(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(FRAME, kind, len(payload)) + payload


class DetachKeys:
    """Finds Ctrl-P Ctrl-Q in the typed bytes; a Ctrl-P not followed by Ctrl-Q is passed on."""

    def __init__(self) -> None:
        self.held = b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """-> (the bytes to send, whether the keys were typed)."""
        data, self.held = self.held + data, b""
        at = data.find(DETACH_KEYS)
        if at >= 0:
            return data[:at], True
        if data.endswith(DETACH_KEYS[:1]):
            data, self.held = data[:-1], DETACH_KEYS[:1]
        return data, False


def attach(path: str) -> bool:
    """`cgagent attach`: the caller's terminal on a detached workload's. True: detached with the keys
    (the workload runs on); False: the workload's terminal closed (it ended)."""
    conn = connect(path)
    keys = DetachKeys()
    conn.setblocking(False)
    out = Backlog(conn.fileno())
    try:
        with wakeups((*PROXIED, signal.SIGWINCH)) as sigs, raw(0):
            if (size := caller_size()) is not None:
                out.add(frame(RESIZE, size))
            typing = True
            while True:
                inputs = [conn.fileno(), sigs] + ([0] if typing and not out.full() else [])
                ready, writable, _ = select.select(inputs, out.waiting(), [])
                for s in pending(sigs):
                    if s == signal.SIGWINCH and (size := caller_size()) is not None:
                        out.add(frame(RESIZE, size))
                    elif s in PROXIED:
                        return True   # the client goes; the workload is not signalled
                if conn.fileno() in ready:
                    try:
                        data = conn.recv(CHUNK)
                    except BlockingIOError:
                        data = None
                    except ConnectionResetError:   # the holder went with our keys unread: it ended
                        data = b""
                    if data == b"":
                        return False
                    if data:
                        write_all(1, data)
                if 0 in ready:
                    got = _read(0)
                    if not got:
                        typing = False
                        continue
                    send, detached = keys.feed(got)
                    for at in range(0, len(send), 4096):
                        out.add(frame(DATA, send[at:at + 4096]))
                    if detached:
                        _deliver(conn, out)
                        return True
                if writable:
                    out.flush()
    finally:
        conn.close()


def _deliver(conn: socket.socket, out: Backlog) -> None:
    """On detach: the keys typed before Ctrl-P Ctrl-Q still reach the workload, if it takes them
    within a few seconds (a workload that reads nothing must not keep the caller's terminal)."""
    if out.buf and not out.dead:
        conn.setblocking(True)
        conn.settimeout(5.0)
        with contextlib.suppress(OSError):
            conn.sendall(bytes(out.buf))
