"""cgagent's own workloads: the record names them; an image run's record knows the image by the
name it was asked for; `run --label k=v` becomes container_label_k as a runtime's labels do."""

from __future__ import annotations

from typing import Any

from cgagent.state import Record
from exporters.discover.meta import Meta, label_items, text


def meta(rec: Record) -> Meta:
    iso: dict[str, Any] = rec.isolation if isinstance(rec.isolation, dict) else {}
    image = text(iso.get("image_ref")) or text(iso.get("image"))
    return Meta(rec.name, image, labels=label_items(getattr(rec, "labels", None) or {}))
