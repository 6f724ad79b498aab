"""The OCI runtime config (config.json) of a CRI container: its annotations name the pod."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from exporters.discover.meta import MAX_VALUE, Meta, kubernetes, label_items, text


def annotations_of(doc: Any) -> dict[str, Any]:
    ann = doc.get("annotations") if isinstance(doc, dict) else None
    return ann if isinstance(ann, dict) else {}


def crio_labels(ann: Mapping[str, Any]) -> dict[str, Any]:
    """CRI-O keeps the CRI labels (the kubelet's io.kubernetes.pod.name, ...) as one JSON annotation."""
    raw = ann.get("io.kubernetes.cri-o.Labels")
    if not isinstance(raw, str) or len(raw) > 64 * MAX_VALUE:
        return {}
    try:
        v = json.loads(raw)
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}


def meta(cid: str, doc: Any) -> Meta | None:
    """containerd's and CRI-O's config.json: pod, namespace and container from the CRI annotations.
    The name is CRI-O's (`k8s_<container>_<pod>_<namespace>_<uid>_<attempt>`); containerd has none, so
    the same form is made from its annotations (cAdvisor would show the bare id)."""
    if not isinstance(doc, dict):
        return None
    ann = annotations_of(doc)
    labels = crio_labels(ann)
    image = text(ann.get("io.kubernetes.cri-o.ImageName")) or text(ann.get("io.kubernetes.cri.image-name")) \
        or text(ann.get("io.kubernetes.cri.podsandbox.image-name"))
    m = kubernetes(cid, image, ann, labels, label_items(labels))
    name = text(ann.get("io.kubernetes.cri-o.Name"))
    if not name and m.pod:
        name = "_".join(("k8s", m.container or "POD", m.pod, m.namespace, m.pod_uid))
    return Meta(name or cid, m.image, m.container, m.pod, m.namespace, m.labels, m.pod_uid)
