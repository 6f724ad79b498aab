"""Who uses an image, recorded in the image store itself: `users/<key>.json`, one entry per
(state dir, workload) created with an image, so that `image rm` sees the workloads of every state
dir, not only of the one its caller names.

Crash consistency (a SIGKILL at any point):
- create: the entry is written (under the store's lock, the image checked to exist) BEFORE the
  workload's record, and the lock is held until the record is saved. A record that uses an image
  therefore always has its entry; a crash in between leaves an entry without a record.
- remove: the record goes first, its entry after. A crash in between leaves an entry without a record.
- An entry whose record is gone (or is a later workload of the same name) is stale: `image rm`
  deletes it, after reading the record it points to. A record that cannot be read counts as a user.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

from cgagent.errors import CgagentError
from cgagent.faults import fault
from cgagent.regular import NotRegular, open_regular
from cgagent.state import Damaged, Store, atomic_write

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:   # imported when an image is at hand: a host `run` does not pay for it
    from typing import Any

    from cgagent.images.store import Image, ImageStore

MAX_ENTRY = 4096   # an entry is a few hundred bytes: a bigger file is not ours to parse


class User:
    """One entry. A plain class, not a dataclass: this module is imported by every `run`."""

    __slots__ = ("created", "image", "name", "state_dir")

    def __init__(self, state_dir: str, name: str, created: float, image: str) -> None:
        self.state_dir = state_dir   # absolute: the entry is read from any working directory
        self.name = name
        self.created = created       # tells this workload from a later one of the same name
        self.image = image           # sha256:<config digest>

    def to_json(self) -> bytes:
        return json.dumps({k: getattr(self, k) for k in self.__slots__}).encode()

    @property
    def key(self) -> str:
        import hashlib

        return hashlib.sha256(f"{self.state_dir}\0{self.name}\0{self.created!r}".encode()).hexdigest()[:32]

    def in_use(self) -> bool:
        """Does the record this entry names still exist (the same workload, using this image)?"""
        try:
            rec = Store(self.state_dir).load(self.name)
        except Damaged:   # unreadable, not a file, too big: no proof the workload is gone
            return True
        except CgagentError:   # no record by that name
            return False
        return rec.created == self.created and (rec.isolation or {}).get("image") == self.image


def _dir(store: ImageStore) -> str:
    return os.path.join(store.root, "users")


def _of(isolation: dict[str, Any] | None, state_dir: str, name: str, created: float) -> tuple[ImageStore, User] | None:
    iso = isolation or {}
    image, root = iso.get("image"), iso.get("store")
    if not isinstance(image, str) or not isinstance(root, str):
        return None   # a host run or --rootfs: no image to hold
    from cgagent.images.store import ImageStore

    return ImageStore(root), User(os.path.abspath(state_dir), name, created, image)


@contextlib.contextmanager
def claimed(isolation: dict[str, Any] | None, state_dir: str, name: str, created: float) -> Iterator[None]:
    """Around the saving of a new record: its image's user entry first, under the store's lock, so
    that `image rm` never sees the record without its entry, nor deletes the image in between."""
    found = _of(isolation, state_dir, name, created)
    if found is None:
        yield
        return
    store, user = found
    with store.lock():
        if not any(i.id == user.image for i in store.all()):
            raise CgagentError(f"image {user.image} was removed while the workload was being created",
                               "import the image again, then run it again")
        os.makedirs(_dir(store), mode=0o700, exist_ok=True)
        atomic_write(os.path.join(_dir(store), f"{user.key}.json"), user.to_json())
        fault("image_user")
        yield


def release(isolation: dict[str, Any] | None, state_dir: str, name: str, created: float) -> None:
    """After the record is deleted: its image's user entry goes (a crash before leaves it stale)."""
    found = _of(isolation, state_dir, name, created)
    if found is None:
        return
    store, user = found
    fault("image_release")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(_dir(store), f"{user.key}.json"))


def users(store: ImageStore, image_id: str) -> list[User]:
    """The workloads of any state dir that use the image; stale entries are deleted on the way.
    Caller holds the store's lock (no create can be between its entry and its record)."""
    try:
        files = sorted(os.listdir(_dir(store)))
    except FileNotFoundError:
        return []
    out = []
    for fn in files:
        path = os.path.join(_dir(store), fn)
        user = _read(path)
        if user is None or user.image != image_id:
            continue
        if user.in_use():
            out.append(user)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return out


def _read(path: str) -> User | None:
    try:
        fd = open_regular(path, follow=False)
    except (OSError, NotRegular):
        return None
    try:
        raw = os.read(fd, MAX_ENTRY + 1)
    finally:
        os.close(fd)
    try:
        d = json.loads(raw) if len(raw) <= MAX_ENTRY else {}
        user = User(state_dir=d["state_dir"], name=d["name"], created=float(d["created"]), image=d["image"])
    except (ValueError, TypeError, KeyError):
        return None   # a torn or foreign file cannot name a workload: never a reason to keep an image
    ok = all(isinstance(v, str) for v in (user.state_dir, user.name, user.image)) and os.path.isabs(user.state_dir)
    return user if ok and os.path.basename(path) == f"{user.key}.json" else None


def remove(store: ImageStore, ref: str, force: bool, state_dir: str | None) -> list[str]:
    """`image rm REF` (caller holds the lock): a NAME:TAG loses that tag only; the image and its
    layers go once no tag and no workload of any state dir uses it. An id names every tag. With
    `force`, the tags go even while workloads use the image (kept, untagged, as Docker does).
    -> lines to print: "Untagged: NAME" and "Deleted: ID"."""
    img = store.get(ref)
    by_id = _normal(ref) not in img.names   # store.get() found it by its id
    if by_id and len(img.names) > 1 and not force:
        raise CgagentError(f"image {ref!r} has {len(img.names)} tags: {', '.join(img.names)}",
                           f"remove one tag with `cgagent image rm {img.names[0]}`, or all with "
                           f"`cgagent image rm -f {ref}`")
    drop = list(img.names) if by_id else [_normal(ref)]
    left = [n for n in img.names if n not in drop]
    if left:   # other tags remain: the image stays, nothing to check
        img.names = left
        store.save(img)
        return [f"Untagged: {n}" for n in drop]
    who = users(store, img.id) + _legacy(img, state_dir)
    if who and not force:
        names = sorted({f"{u.name} (state dir {u.state_dir})" for u in who})
        rms = " ".join(sorted({_rm_cmd(u) for u in who}))
        raise CgagentError(f"image {ref!r} is used by workload(s) {', '.join(names)}",
                           f"remove them first ({rms}), or `cgagent image rm -f {ref}` removes the tag only")
    if who:
        img.names = []
        store.save(img)
        return [f"Untagged: {n}" for n in drop]
    store.delete_image(img)
    return [f"Untagged: {n}" for n in drop] + [f"Deleted: {img.id}"]


def _normal(ref: str) -> str:
    from cgagent.images.store import normalize_ref

    with contextlib.suppress(CgagentError):
        return normalize_ref(ref)
    return ref


def _rm_cmd(u: User) -> str:
    return f"cgagent rm -f --state-dir {u.state_dir} {u.name}"


def _legacy(img: Image, state_dir: str | None) -> list[User]:
    """Records of the caller's state dir made before the store kept user entries."""
    st = Store(state_dir)
    return [User(os.path.abspath(st.root), r.name, r.created or 0.0, img.id)
            for r in st.all() if (r.isolation or {}).get("image") == img.id]
