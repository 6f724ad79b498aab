"""`cgagent image import|rm` and `cgagent images`."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

image_app = typer.Typer(help="Manage images: import OCI layouts or rootfs tarballs, list, remove.",
                        no_args_is_help=True)

Root = Annotated[str | None, typer.Option("--root", envvar="CGAGENT_ROOT",
                                          help="Image store root (default /var/lib/cgagent).")]
StateDir = Annotated[str | None, typer.Option("--state-dir", envvar="CGAGENT_STATE_DIR",
                                              help="Where workload records live (default /run/cgagent).")]


@image_app.command("import")
def import_(
    path: Annotated[str, typer.Argument(help="An OCI image layout directory, or a rootfs .tar/.tar.gz.")],
    name: Annotated[str | None, typer.Option("--name", help="Reference to give it, e.g. busybox:1.36.")] = None,
    max_size: Annotated[str | None, typer.Option(
        "--max-size", envvar="CGAGENT_IMAGE_MAX_SIZE",
        help="Refuse an image whose layers unpack to more than this (file sizes as the tar headers "
             "declare them, sparse files at full size). Default 10G; 'unlimited' lifts it.")] = None,
    root: Root = None,
) -> None:
    """Import an image; digests are always verified and each layer is unpacked once.

    Only regular files inside the layout or archive are read; a refused import leaves nothing behind.

    Example: cgagent image import ./busybox-oci --name busybox --max-size 2G
    """
    from cgagent.images.importer import import_path
    from cgagent.images.importer import max_size as resolve
    from cgagent.images.store import ImageStore

    img = import_path(ImageStore(root), path, name, resolve(max_size) if max_size is not None else None)
    print(f"{img.id} {' '.join(img.names)}".rstrip())


@image_app.command("rm")
def rm(
    refs: Annotated[list[str], typer.Argument(help="Image names (NAME:TAG) or ids.")],
    force: Annotated[bool, typer.Option("--force", "-f", help="Remove the tag even while workloads use "
                                        "the image (it stays, untagged); with an id: all its tags.")] = False,
    root: Root = None,
    state_dir: StateDir = None,
) -> None:
    """Remove a tag; the image and the layers nothing else uses go with its last tag, unless a
    workload of any state dir still uses it (then refused, or with -f kept untagged).

    Example: cgagent image rm busybox:1.36
    """
    from cgagent.images.store import ImageStore
    from cgagent.images.users import remove

    store = ImageStore(root)
    for ref in refs:
        with store.lock():
            lines = remove(store, ref, force, state_dir)
        print("\n".join(lines))


def images(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    root: Root = None,
) -> None:
    """List imported images."""
    from dataclasses import asdict

    from cgagent.images.store import ImageStore
    from cgagent.units import format_bytes

    imgs = ImageStore(root).all()
    if as_json:
        print(json.dumps([asdict(i) for i in imgs], indent=1))
        return
    from cgagent.cli.views import print_table

    rows = [{"name": n, "id": i.short_id, "layers": len(i.layers), "size": format_bytes(i.size),
             "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i.created))}
            for i in imgs for n in (i.names or ["<none>"])]
    print_table(rows, ["name", "id", "layers", "size", "created"])
