"""What discovery learns about one cgroup, and the helpers every runtime module shares."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass

CONTAINER = None          # Meta.container: the `container` label is the name (a leaf workload)
NOT_A_CONTAINER = ""      # a parent, slice, pod or QoS cgroup, a runtime's monitor (conmon)

MAX_VALUE = 1024          # a label value from a runtime's file is cut here: the files are hostile input
MAX_LABELS = 64           # container_label_* per container, the first by sorted key
_ID = re.compile(r"[0-9a-f]{64}")
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


@dataclass(frozen=True)
class Meta:
    """What a container runtime's records say of a cgroup: names, image, labels, pod."""

    name: str
    image: str = ""
    container: str | None = CONTAINER
    pod: str = ""
    namespace: str = ""
    labels: tuple[tuple[str, str], ...] = ()   # the runtime's labels, as (sanitised key, value)
    pod_uid: str = ""                          # set on a pod cgroup (to name its pod) and on pod members


def named(m: Meta, name: str) -> Meta:
    return dataclasses.replace(m, name=name)


def is_id(s: str) -> bool:
    return _ID.fullmatch(s) is not None


def strip(prefix: str, last: str, suffix: str = "") -> str | None:
    """The container id in `<prefix><id><suffix>`, or None."""
    if last.startswith(prefix) and last.endswith(suffix):
        cid = last[len(prefix):len(last) - len(suffix)] if suffix else last[len(prefix):]
        return cid if is_id(cid) else None
    return None


def text(v: object) -> str:
    """A string from a runtime's file as a label value: cut, and valid UTF-8 (JSON's "\\ud800" escapes
    decode to lone surrogates that would fail the whole exposition's encoding)."""
    return utf8(v[:MAX_VALUE]) if isinstance(v, str) else ""


def utf8(v: str) -> str:
    """`v` with what UTF-8 cannot encode (surrogates: from JSON escapes, or a file name's undecodable
    bytes as os.scandir returns them) as "?"."""
    return v if v.isascii() else v.encode("utf-8", "replace").decode("utf-8")


def label_items(labels: object) -> tuple[tuple[str, str], ...]:
    """A runtime's labels as cAdvisor exports them: `container_label_<key>` with every character outside
    [a-zA-Z0-9_] made `_`; values that are not strings are dropped, the rest cut to MAX_VALUE."""
    if not isinstance(labels, Mapping):
        return ()
    out: dict[str, str] = {}
    for k in sorted(k for k in labels if isinstance(k, str))[:MAX_LABELS]:
        v = labels[k]
        if isinstance(v, str):
            out.setdefault("container_label_" + _INVALID.sub("_", k[:MAX_VALUE]), text(v))
    return tuple(out.items())


def kubernetes(name: str, image: str, ann: Mapping[str, object], labels: Mapping[str, object],
               labels_out: tuple[tuple[str, str], ...] = ()) -> Meta:
    """Meta from the keys the kubelet and the CRI runtimes set: the kubelet's labels (docker labels,
    CRI-O's io.kubernetes.cri-o.Labels) or containerd's io.kubernetes.cri.* annotations. A pod's
    sandbox (pause container) is not a container: container="" as the kubelet's cAdvisor has it."""
    def first(*keys: str) -> str:
        for src in (labels, ann):
            for k in keys:
                v = text(src.get(k))
                if v:
                    return v
        return ""

    pod = first("io.kubernetes.pod.name", "io.kubernetes.cri.sandbox-name")
    kind = first("io.kubernetes.cri.container-type", "io.kubernetes.cri-o.ContainerType",
                 "io.kubernetes.docker.type")
    sandbox = kind in ("sandbox", "podsandbox")
    ctr = "" if sandbox else first("io.kubernetes.container.name", "io.kubernetes.cri.container-name")
    if not pod:
        return Meta(name, image, container=ctr or CONTAINER, labels=labels_out)
    return Meta(name, image, container=ctr, pod=pod,
                namespace=first("io.kubernetes.pod.namespace", "io.kubernetes.cri.sandbox-namespace"),
                labels=labels_out, pod_uid=first("io.kubernetes.pod.uid", "io.kubernetes.cri.sandbox-uid"))
