"""v2 devices: cgroup v2 has no device files; a BPF_PROG_TYPE_CGROUP_DEVICE program attached to the
workload's cgroup decides every open and mknod of a device node, as runc and crun do it.

The program is built here from the rule list (cgagent.devrules): for each rule, compare the type,
the requested access (all of it must be in the rule's), the major and the minor, and return 1
(allow) on a match; 0 (deny) after the last rule. Loaded with bpf(BPF_PROG_LOAD) and attached with
bpf(BPF_PROG_ATTACH, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI) so a workload's own nested containers
can add stricter programs below. A new list (`update`) is attached before the old program is
detached, so there is no moment without a filter; only programs named ours are ever detached.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct

from cgagent.devrules import WILDCARD, Rule, parse_all
from cgagent.errors import CgagentError
from cgagent.limits import Resources

NAME = "devices"
PROG_NAME = b"cgagent_dev"

# bpf(2) commands, program/attach types and flags (include/uapi/linux/bpf.h)
_PROG_LOAD, _PROG_ATTACH, _PROG_DETACH, _PROG_GET_FD_BY_ID, _OBJ_GET_INFO_BY_FD, _PROG_QUERY = 5, 8, 9, 13, 15, 16
_PROG_TYPE_CGROUP_DEVICE = 15
_CGROUP_DEVICE = 6
_F_ALLOW_MULTI = 2
_SYS_BPF = {"x86_64": 321, "aarch64": 280}
# struct bpf_cgroup_dev_ctx: access_type (access << 16 | type), major, minor
_DEV_TYPE = {"b": 1, "c": 2}
_ACC = {"m": 1, "r": 2, "w": 4}

# eBPF opcodes used below
_LDXW = 0x61      # dst = *(u32 *)(src + off)
_AND_K = 0x57     # dst &= imm (64-bit ALU)
_RSH_K = 0x77     # dst >>= imm
_MOV_X = 0xBF     # dst = src
_MOV_K = 0xB7     # dst = imm
_JNE_K = 0x55     # if dst != imm: pc += off
_EXIT = 0x95


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def program(rules: list[Rule]) -> bytes:
    """The instructions, little-endian (x86_64, aarch64). R2 = type, R3 = access, R4/R5 = major/minor."""
    out = [_insn(_LDXW, 2, 1, 0), _insn(_AND_K, 2, imm=0xFFFF),
           _insn(_LDXW, 3, 1, 0), _insn(_RSH_K, 3, imm=16),
           _insn(_LDXW, 4, 1, 4), _insn(_LDXW, 5, 1, 8)]
    for r in rules:
        acc = sum(_ACC[c] for c in r.access)
        block = [_insn(_JNE_K, 2, imm=_DEV_TYPE[r.kind])]
        if acc != 7:   # requested & ~allowed must be empty
            block += [_insn(_MOV_X, 1, 3), _insn(_AND_K, 1, imm=~acc & 7), _insn(_JNE_K, 1, imm=0)]
        if r.major != WILDCARD:
            block.append(_insn(_JNE_K, 4, imm=r.major))
        if r.minor != WILDCARD:
            block.append(_insn(_JNE_K, 5, imm=r.minor))
        block += [_insn(_MOV_K, 0, imm=1), _insn(_EXIT)]
        # each jump leaves the block: it lands just past the block's exit
        for i, ins in enumerate(block):
            if ins[0] == _JNE_K:
                block[i] = ins[:2] + struct.pack("<h", len(block) - i - 1) + ins[4:]
        out += block
    return b"".join([*out, _insn(_MOV_K, 0, imm=0), _insn(_EXIT)])


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: bytes | ctypes.Array[ctypes.c_char]) -> int:
    nr = _SYS_BPF.get(os.uname().machine)
    if nr is None:
        raise CgagentError(f"device control on cgroup v2 is not built for {os.uname().machine}",
                           "use the systemd driver (systemd attaches the device program)")
    buf = attr if isinstance(attr, ctypes.Array) else ctypes.create_string_buffer(attr, len(attr))
    rc = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), buf, ctypes.c_uint(len(buf)))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(rc)


def load(code: bytes) -> int:
    """BPF_PROG_LOAD -> the program's fd. When the verifier refuses, a second load asks for its log."""
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(b"Apache-2.0")
    log = ctypes.create_string_buffer(1 << 16)

    def attempt(level: int) -> int:
        # prog_type, insn_cnt, insns, license, log_level, log_size, log_buf, kern_version, prog_flags, prog_name
        return _bpf(_PROG_LOAD, struct.pack("<IIQQIIQII16s", _PROG_TYPE_CGROUP_DEVICE, len(code) // 8,
                                            ctypes.addressof(insns), ctypes.addressof(lic), level,
                                            len(log) if level else 0, ctypes.addressof(log) if level else 0,
                                            0, 0, PROG_NAME))

    try:
        return attempt(0)   # no log: a log too small for a long program would itself fail the load
    except OSError as e:
        with contextlib.suppress(OSError):
            os.close(attempt(1))
        detail = log.value.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise CgagentError(f"the kernel refused the device program: {e.strerror} {detail[0]}".strip(),
                           "device control on cgroup v2 needs CONFIG_CGROUP_BPF and CAP_SYS_ADMIN") from None


def _attached(cg: int) -> list[int]:
    ids = (ctypes.c_uint32 * 64)()
    # target_fd, attach_type, query_flags, attach_flags, prog_ids, prog_cnt
    attr = ctypes.create_string_buffer(struct.pack("<IIIIQI4x", cg, _CGROUP_DEVICE, 0, 0, ctypes.addressof(ids), 64))
    _bpf(_PROG_QUERY, attr)
    count = struct.unpack_from("<I", attr, 24)[0]
    return list(ids[:min(count, 64)])


def _ours(prog_id: int) -> int | None:
    """An fd of the attached program `prog_id` if it is one of ours (by name), else None."""
    try:
        fd = _bpf(_PROG_GET_FD_BY_ID, struct.pack("<III", prog_id, 0, 0))
    except OSError:
        return None   # detached meanwhile
    info = ctypes.create_string_buffer(80)   # struct bpf_prog_info up to its name
    try:
        _bpf(_OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", fd, len(info), ctypes.addressof(info)))
    except OSError:
        os.close(fd)
        return None
    if info.raw[64:80].rstrip(b"\0") == PROG_NAME:
        return fd
    os.close(fd)
    return None


def attach(d: str, code: bytes) -> None:
    prog = load(code)
    cg = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        old = [fd for fd in (_ours(i) for i in _attached(cg)) if fd is not None]
        try:
            # target_fd, attach_bpf_fd, attach_type, attach_flags, replace_bpf_fd
            _bpf(_PROG_ATTACH, struct.pack("<IIIII", cg, prog, _CGROUP_DEVICE, _F_ALLOW_MULTI, 0))
            for fd in old:
                _bpf(_PROG_DETACH, struct.pack("<IIIII", cg, fd, _CGROUP_DEVICE, 0, 0))
        except OSError as e:
            raise CgagentError(f"cannot attach the device program to {d}: {e.strerror}",
                               "device control on cgroup v2 needs CONFIG_CGROUP_BPF and CAP_SYS_ADMIN") from None
        finally:
            for fd in old:
                os.close(fd)
    finally:
        os.close(cg)
        os.close(prog)   # the attachment holds the program from here on


def apply(d: str, r: Resources) -> None:
    if r.devices is not None:
        attach(d, program(parse_all(r.devices)))
