"""The content-addressed image store under the state root (default /var/lib/cgagent).

Layout (overlay2-like, so many lowerdirs fit in one page of mount options):
  blobs/sha256/<hex>        manifests and configs, named by their digest
  layers/<hex>/diff         one unpacked layer, <hex> = its diff_id (uncompressed digest)
  layers/<hex>/link         the layer's short id
  layers/l/<short>          -> ../<hex>/diff
  images/<hex>.json         an image: names, layer diff_ids, config (hex = config digest)
  tmp/                      unpacking happens here, then a rename publishes the layer
  containers/<id>/          per workload: upper/, work/, merged/
  lock                      flock() for publishing and removing
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from cgagent.errors import CgagentError
from cgagent.faults import fault
from cgagent.state import atomic_write, exclusive_lock

DEFAULT_ROOT = "/var/lib/cgagent"
_HEX = re.compile(r"^[0-9a-f]{64}$")
_LEFTOVER = re.compile(r"^[0-9a-f]{64}(\.json)?\.tmp\.[0-9]+$")   # atomic_write's temp file


def _entries(d: str, pattern: re.Pattern[str] | None = None) -> list[str]:
    """The names in `d` (those matching `pattern`); none when `d` is not there."""
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    return names if pattern is None else [e for e in names if pattern.fullmatch(e)]


def _hex_entries(d: str) -> list[str]:
    """The names in `d` that are a sha256 in hex (not a temp file beside them)."""
    return _entries(d, _HEX)


def _unlink_each(d: str, names: list[str]) -> None:
    """Remove `d`/name for each name; one already gone is fine (no two writers: the caller holds the lock)."""
    for e in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(d, e))


def store_root(root: str | None = None) -> str:
    return root or os.environ.get("CGAGENT_ROOT") or DEFAULT_ROOT


def normalize_ref(ref: str) -> str:
    """`busybox` -> `busybox:latest`; a tag after the last `/` is kept."""
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.\-/:@]{0,254}$", ref) or ".." in ref:
        raise CgagentError(f"image name {ref!r} is not allowed", "use letters, digits, '_', '.', '-', '/' and ':tag'")
    last = ref.rsplit("/", 1)[-1]
    return ref if ":" in last else f"{ref}:latest"


def digest_hex(digest: str) -> str:
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or not _HEX.match(hexd):
        raise CgagentError(f"unsupported digest {digest!r}", "only sha256 digests are supported")
    return hexd


@dataclass
class Image:
    """An imported image: its names, its layers (by diff_id) and the run config it carries."""

    id: str                                  # sha256:<config digest>
    names: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)      # diff_ids, lowest first
    config: dict[str, Any] = field(default_factory=dict)  # Env, Entrypoint, Cmd, WorkingDir, User
    manifest: str | None = None
    size: int = 0
    created: float = 0.0

    @property
    def short_id(self) -> str:
        return self.id.partition(":")[2][:12]


class ImageStore:
    def __init__(self, root: str | None = None) -> None:
        self.root = store_root(root)
        self.blobs = os.path.join(self.root, "blobs", "sha256")
        self.layers = os.path.join(self.root, "layers")
        self.links = os.path.join(self.layers, "l")
        self.images = os.path.join(self.root, "images")
        self.tmp = os.path.join(self.root, "tmp")
        self.containers = os.path.join(self.root, "containers")

    def ensure(self) -> None:
        for d in (self.root, self.blobs, self.layers, self.links, self.images, self.tmp, self.containers):
            os.makedirs(d, mode=0o700 if d == self.root else 0o755, exist_ok=True)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        self.ensure()
        return exclusive_lock(os.path.join(self.root, "lock"))

    # --- blobs and layers

    def put_blob(self, digest: str, data: bytes) -> None:
        path = os.path.join(self.blobs, digest_hex(digest))
        if not os.path.exists(path):
            atomic_write(path, data)

    def layer_dir(self, diff_id: str) -> str:
        return os.path.join(self.layers, digest_hex(diff_id))

    def has_layer(self, diff_id: str) -> bool:
        return os.path.isfile(os.path.join(self.layer_dir(diff_id), "link"))

    def short_link(self, diff_id: str) -> str:
        """`l/<short>`, relative to self.layers (the overlay mount runs with cwd there)."""
        with open(os.path.join(self.layer_dir(diff_id), "link")) as f:
            return "l/" + f.read().strip()

    def publish_layer(self, diff_id: str, staged: str) -> None:
        """Move a fully unpacked `staged` dir (holding diff/) into place. Caller holds the lock."""
        hexd = digest_hex(diff_id)
        short = hexd[:26]
        final = self.layer_dir(diff_id)
        from cgagent.images.confined import remove_tree

        if self.has_layer(diff_id):
            remove_tree(staged)
            return
        if os.path.lexists(final):  # a torn earlier publish: no link file means not complete
            remove_tree(final)
        with open(os.path.join(staged, "link"), "w") as f:
            f.write(short)
            f.flush()
            os.fsync(f.fileno())   # written after the importer's syncfs: an empty one would say "whole"
        link = os.path.join(self.links, short)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        os.symlink(f"../{hexd}/diff", link)
        fault("layer_linked")
        os.rename(staged, final)

    def remove_layer(self, diff_id: str) -> None:
        from cgagent.images.confined import remove_tree

        _unlink_each(self.links, [digest_hex(diff_id)[:26]])
        with contextlib.suppress(OSError):   # iterative: a layer of any depth goes
            remove_tree(self.layer_dir(diff_id))

    def collect(self) -> None:
        """Remove the layers and blobs no image names: an import killed while it published leaves
        them (its image record is saved last). Caller holds the lock. A damaged image record stops
        it: what that image names cannot be known."""
        self._sweep()
        records = self._records()
        imgs = [i for i in records if i is not None]
        if len(imgs) != len(records):
            return
        try:
            layers = {digest_hex(d) for i in imgs for d in i.layers}
            blobs = {digest_hex(b) for i in imgs for b in (i.id, i.manifest) if b}
        except CgagentError:   # a digest we would not have written
            return
        for e in _hex_entries(self.layers):
            if e not in layers:
                self.remove_layer(f"sha256:{e}")
        _unlink_each(self.blobs, [e for e in _hex_entries(self.blobs) if e not in blobs])

    def _sweep(self) -> None:
        """What a process killed between two steps left: a blob's or image record's temp file (every
        writer holds the lock, so none is being written) and a short link whose layer was never
        renamed into place (publish_layer links first)."""
        for d in (self.blobs, self.images):
            _unlink_each(d, _entries(d, _LEFTOVER))
        whole = {e[:26] for e in _hex_entries(self.layers) if self.has_layer(f"sha256:{e}")}
        _unlink_each(self.links, [e for e in _entries(self.links) if e not in whole])

    # --- images

    def _image_path(self, image_id: str) -> str:
        return os.path.join(self.images, f"{digest_hex(image_id)}.json")

    def save(self, img: Image) -> None:
        self.ensure()
        atomic_write(self._image_path(img.id), json.dumps(asdict(img), indent=1, sort_keys=True).encode())

    def all(self) -> list[Image]:
        return [i for i in self._records() if i is not None]

    def _records(self) -> list[Image | None]:
        """Every image record; None for one that cannot be read."""
        out: list[Image | None] = []
        try:
            names = sorted(os.listdir(self.images))
        except FileNotFoundError:
            return []
        for fn in names:
            if not fn.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.images, fn)) as f:
                    out.append(Image(**json.load(f)))
            except (OSError, ValueError, TypeError):
                out.append(None)
        return out

    def find(self, ref: str) -> Image | None:
        imgs = self.all()
        want = ref.removeprefix("sha256:")
        if re.match(r"^[0-9a-f]{12,64}$", want):
            hits = [i for i in imgs if i.id.partition(":")[2].startswith(want)]
            if len(hits) == 1:
                return hits[0]
        with contextlib.suppress(CgagentError):
            norm = normalize_ref(ref)
            for i in imgs:
                if norm in i.names:
                    return i
        return None

    def get(self, ref: str) -> Image:
        img = self.find(ref)
        if img is None:
            raise CgagentError(f"no image {ref!r} in {self.root}",
                               "import it with `cgagent image import PATH --name REF`; see `cgagent images`")
        return img

    def delete_image(self, img: Image) -> None:
        """Remove the image and every layer no other image uses. Caller holds the lock."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._image_path(img.id))
        used = {d for other in self.all() for d in other.layers}
        for d in img.layers:
            if d not in used:
                self.remove_layer(d)
        for blob in (img.id, img.manifest):
            if blob:
                with contextlib.suppress(FileNotFoundError, CgagentError):
                    os.unlink(os.path.join(self.blobs, digest_hex(blob)))
