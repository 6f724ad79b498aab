"""A runtime's metadata files, read safely and cached by stat: a scrape costs one lstat per file.

The files are hostile input (a container's owner may control its labels; a runtime's directory may
hold anything): only a regular file below the runtime's root is read, opened component by component
without following any symlink, and at most `cap` bytes of it; anything else reads as None."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from typing import Any, TypeVar

from cgagent.beneath import open_beneath
from cgagent.regular import NotRegular, reopen

T = TypeVar("T")
MAX_FILE = 1 << 20           # one container's config: docker's config.v2.json, an OCI config.json


def _key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Files:
    def __init__(self) -> None:
        self._cache: dict[tuple[str, str, object], tuple[tuple[int, ...], Any]] = {}
        self._seen: dict[tuple[str, str, object], Any] = {}   # this scrape's answers
        self._derived: dict[object, tuple[tuple[object, ...], Any]] = {}
        self._derived_seen: dict[object, tuple[tuple[object, ...], Any]] = {}

    def begin(self) -> None:
        self._seen = {}
        self._derived_seen = {}

    def end(self) -> None:
        self._cache = {k: v for k, v in self._cache.items() if k in self._seen}
        self._derived = self._derived_seen

    def derive(self, key: object, sources: tuple[object, ...], make: Callable[..., T], *args: object) -> T:
        """make(*args), kept while it is made from the very same `sources` (what get() returned: the same
        object while the file is unchanged). A Meta made from a runtime's record (its name or image
        filled in) is then the same object every scrape, which the target cache compares by identity."""
        old = self._derived.get(key)
        if old is None or len(old[0]) != len(sources) or any(a is not b for a, b in zip(old[0], sources, strict=True)):
            old = (sources, make(*args))
        self._derived_seen[key] = old
        return old[1]

    def get(self, root: str, rel: str, parse: Callable[[Any], T | None], cap: int = MAX_FILE) -> T | None:
        """parse(the JSON document at root/rel), or None when it is missing, not a regular file below
        root, larger than cap, not JSON, or parse says None. `parse` is part of the cache key."""
        k = (root, rel, parse)
        if k in self._seen:
            return self._seen[k]  # type: ignore[no-any-return]
        val: T | None = None
        try:
            st = os.stat(f"{root}/{rel}", follow_symlinks=False)
        except (OSError, ValueError):
            st = None
        if st is not None and stat.S_ISREG(st.st_mode):
            old = self._cache.get(k)
            if old is not None and old[0] == _key(st):
                val = old[1]
            else:
                key, doc = _read(root, rel, cap)
                # the key of what was read: the lstat above may have passed through a symlinked
                # directory, in which case the safe open failed and this entry is never a hit
                val = _parse(parse, doc) if key is not None else None
                if key is not None:
                    self._cache[k] = (key, val)
        self._seen[k] = val
        return val


def _parse(parse: Callable[[Any], T | None], doc: bytes | None) -> T | None:
    if doc is None:
        return None
    try:
        return parse(json.loads(doc))
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError):
        return None   # malformed: the cgroup keeps its cgroup-derived name


def _read(root: str, rel: str, cap: int) -> tuple[tuple[int, ...] | None, bytes | None]:
    try:
        rfd = os.open(root, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY)
    except OSError:
        return None, None
    try:
        fd = reopen(open_beneath(rfd, [p for p in rel.split("/") if p]))
    except (OSError, NotRegular):
        return None, None
    finally:
        os.close(rfd)
    try:
        st = os.fstat(fd)
        chunks, n = [], 0
        while n <= cap:
            b = os.read(fd, min(cap + 1 - n, 1 << 20))
            if not b:
                break
            chunks.append(b)
            n += len(b)
        return _key(st), (b"".join(chunks) if n <= cap else None)
    except OSError:
        return None, None
    finally:
        os.close(fd)
