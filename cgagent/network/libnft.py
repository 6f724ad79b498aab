"""libnftables in this process (ctypes): what `nft -f -` does, without a fork and exec per change.

A bridge launch changes the ruleset twice (the workload's anti-spoofing elements in, then out);
through the `nft` program each change cost a process, 3-10 ms, against ~0.1 ms here. The library is
the one the `nft` program itself links (libnftables1 on Debian and Ubuntu); when it cannot be loaded
the caller runs the program. A context is made per command: it holds no state between commands, and
a process forked after one (the launcher's runners) shares nothing with it."""

from __future__ import annotations

import ctypes
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

    def run(self, cmd: str, json: bool = False) -> Result:
        lib = self.lib
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise MemoryError("nft_ctx_new")
        try:
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            if json:
                lib.nft_ctx_output_set_flags(ctx, _JSON)
            rc = lib.nft_run_cmd_from_buffer(ctx, cmd.encode())
            out = lib.nft_ctx_get_output_buffer(ctx) or b""
            err = lib.nft_ctx_get_error_buffer(ctx) or b""
            return Result(0 if rc == 0 else 1, out.decode(errors="replace"), err.decode(errors="replace"))
        finally:
            lib.nft_ctx_free(ctx)


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
