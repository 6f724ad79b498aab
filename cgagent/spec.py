"""The user-facing resource spec (pydantic v2): what files, policies and the full CLI validate against.

Field parsing is shared with the fast `run` path (cgagent.limits.FIELD_PARSERS), so a value means the
same thing wherever it is written. `to_resources(host)` adds the checks that need the host.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationInfo, model_validator

from cgagent.errors import CgagentError
from cgagent.host import Host
from cgagent.limits import FIELD_PARSERS, Resources, plan


def _field(name: str) -> BeforeValidator:
    def parse(v: Any) -> Any:
        if v is None:
            return None
        try:
            return FIELD_PARSERS[name](v)
        except CgagentError as e:
            raise ValueError(str(e)) from None  # pydantic reports it with the field's location

    return BeforeValidator(parse)


class ResourceSpec(BaseModel):
    """Limits in human units: `cpus: 0.5`, `memory: 512M`, `cpu_shares: 2048`, `cpuset_cpus: "0-1"`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpus: Annotated[float | None, _field("cpus")] = None
    cpu_shares: Annotated[int | None, _field("cpu_shares")] = None
    cpu_weight: Annotated[int | None, _field("cpu_weight")] = None
    cpu_period: Annotated[int | None, _field("cpu_period")] = None
    memory: Annotated[int | None, _field("memory")] = None
    memory_swap: Annotated[int | None, _field("memory_swap")] = None
    pids_limit: Annotated[int | None, _field("pids_limit")] = None
    cpuset_cpus: Annotated[str | None, _field("cpuset_cpus")] = None
    cpuset_mems: Annotated[str | None, _field("cpuset_mems")] = None
    blkio_weight: Annotated[int | None, _field("blkio_weight")] = None
    # lists of "DEVICE:VALUE", stored as ("MAJ:MIN VALUE", ...) once the device is resolved
    blkio_weight_device: Annotated[tuple[str, ...] | None, _field("blkio_weight_device")] = None
    device_read_bps: Annotated[tuple[str, ...] | None, _field("device_read_bps")] = None
    device_write_bps: Annotated[tuple[str, ...] | None, _field("device_write_bps")] = None
    device_read_iops: Annotated[tuple[str, ...] | None, _field("device_read_iops")] = None
    device_write_iops: Annotated[tuple[str, ...] | None, _field("device_write_iops")] = None

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> ResourceSpec:
        if info.context and info.context.get("cli"):
            return self   # CLI options: plan() checks them against the workload's limits, naming the flags
        if self.cpu_shares is not None and self.cpu_weight is not None:
            raise ValueError("cpu_shares and cpu_weight both given: give one of them")
        if self.memory_swap is not None and self.memory_swap >= 0:
            if self.memory is None or self.memory < 0:
                raise ValueError("memory_swap needs memory: set memory too (memory_swap is memory plus swap)")
            if self.memory_swap < self.memory:
                raise ValueError("memory_swap (memory plus swap) is smaller than memory: make it at least memory")
        return self

    def values(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)

    def to_resources(self, host: Host, base: Resources | None = None) -> Resources:
        return plan(self.values(), host, base)


def from_options(raw: dict[str, Any]) -> ResourceSpec:
    """CLI strings -> ResourceSpec, raising the first problem as a one-line CgagentError."""
    from pydantic import ValidationError

    try:
        return ResourceSpec.model_validate({k: v for k, v in raw.items() if v is not None}, context={"cli": True})
    except ValidationError as e:
        err = e.errors()[0]
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise CgagentError(msg) from None
