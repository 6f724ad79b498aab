"""libnftables in this process (ctypes): what `nft -f -` does, without a fork and exec per change.

A bridge launch changes the ruleset twice (the workload's anti-spoofing elements in, then out);
through the `nft` program each change cost a process, 3-10 ms, against ~0.1 ms here. The library is
the one the `nft` program itself links (libnftables1 on Debian and Ubuntu); when it cannot be loaded
the caller runs the program.

One context per process, kept to its end: freeing a context closes its netlink socket, and the close
of a socket waits for the kernel to finish destroying what an earlier commit deleted (an RCU grace
period, ~8 ms) when it comes right after such a commit; a process's exit, later, finds it done. A
process forked after one (the launcher's runners) makes its own: a netlink socket shared by two
processes would mix their answers."""

from __future__ import annotations

import contextlib
import ctypes
import os
from typing import NamedTuple

_JSON = 1 << 4   # NFT_CTX_OUTPUT_JSON


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


class _Lib:
    def __init__(self) -> None:
        lib = ctypes.CDLL("libnftables.so.1")
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for f in ("nft_ctx_free", "nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, f).argtypes = [ctypes.c_void_p]
        for f in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, f).restype = ctypes.c_char_p
            getattr(lib, f).argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.lib = lib
        self.ctx, self.pid = 0, 0
        self.socks: dict[int, str] = {}   # the context's sockets (fd -> inode), seen after its first command

    def _usable(self) -> bool:
        """False in another process than the context's, or once someone closed its socket (closed all
        fds): then the old socket is not ours to close (its fd may be another file's by now)."""
        return self.pid == os.getpid() and all(_socket_of(fd) == what for fd, what in self.socks.items())

    def _new_context(self) -> None:
        ctx = self.lib.nft_ctx_new(0)
        if not ctx:
            raise MemoryError("nft_ctx_new")
        self.lib.nft_ctx_buffer_output(ctx)
        self.lib.nft_ctx_buffer_error(ctx)
        self.ctx, self.pid, self.socks = int(ctx), os.getpid(), {}

    def run(self, cmd: str, json: bool = False) -> Result:
        lib = self.lib
        before = None
        if not self._usable():
            before = _sockets()
            self._new_context()
        ctx = self.ctx
        lib.nft_ctx_output_set_flags(ctx, _JSON if json else 0)
        rc = lib.nft_run_cmd_from_buffer(ctx, cmd.encode())
        if before is not None:   # the library opened its socket, without O_CLOEXEC, and it outlives this command
            self.socks = {fd: what for fd, what in _sockets().items() if before.get(fd) != what}
            for fd in self.socks:
                with contextlib.suppress(OSError):
                    os.set_inheritable(fd, False)
        # each get returns what the buffer holds and rewinds it for the next command
        out = lib.nft_ctx_get_output_buffer(ctx) or b""
        err = lib.nft_ctx_get_error_buffer(ctx) or b""
        return Result(0 if rc == 0 else 1, out.decode(errors="replace"), err.decode(errors="replace"))


def _socket_of(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _sockets() -> dict[int, str]:
    """fd -> socket inode, of this process's sockets."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        what = _socket_of(int(name))
        if what.startswith("socket:"):
            out[int(name)] = what
    return out


_lib: _Lib | None = None
_tried = False


def library() -> _Lib | None:
    """The loaded library, or None when this host has none (then `nft` is run)."""
    global _lib, _tried
    if not _tried:
        _tried = True
        try:
            _lib = _Lib()
        except (OSError, AttributeError):   # not installed, or too old to have this API
            _lib = None
    return _lib


def held_fds() -> set[int]:
    """The sockets of this process's own context (a runner's, made at idle by nft.warm), which it keeps
    when it closes what it inherited from the agent: else its first command would make a context again."""
    if _lib is None or not _lib._usable():   # _usable: this process's context, its sockets still open
        return set()
    return set(_lib.socks)
