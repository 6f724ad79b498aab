"""What a policy file may say, validated by pydantic v2 (unknown keys refused everywhere).

A policy = limits (cgagent.spec.ResourceSpec, the same fields as `cgagent run`), a restart policy,
what to do on an OOM kill, and how to answer CPU throttling. Cross-field checks (a ceiling below its
floor) run in field validators rather than model validators, so they are reported together with
every other error of the file; they raise `FieldError` to name the exact field they are about.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from cgagent.errors import CgagentError
from cgagent.spec import ResourceSpec
from cgagent.state import validate_name
from cgagent.units import format_bytes, parse_bytes, parse_number

# A throttled ratio at or below this counts as "not throttled" when deciding whether to step down.
IDLE_RATIO = 0.01


class FieldError(ValueError):
    """A validation error about a field other than the one being validated (path relative to the policy)."""

    def __init__(self, loc: tuple[str, ...], msg: str) -> None:
        super().__init__(msg)
        self.loc = loc


def _not_bool(v: Any, what: str) -> None:
    # YAML `true`/`yes` would otherwise pass as 1 / 1.0
    if isinstance(v, bool):
        raise ValueError(f"{what} expected, got a boolean")
    if not isinstance(v, (int, float, str)):
        raise ValueError(f"{what} expected, got {type(v).__name__}")


def _number(v: Any, what: str) -> float:
    """A plain number (not a bool), with the project's own parsing; problems as pydantic ValueErrors."""
    _not_bool(v, what)
    try:
        return parse_number(v, "value")
    except CgagentError as e:
        raise ValueError(e.problem) from None


def _cpus(v: Any) -> float:
    n = _number(v, "a number of CPUs")
    if n <= 0:
        raise ValueError(f"{v} CPUs must be greater than 0")
    return n


def _size(v: Any) -> int:
    _not_bool(v, "a size such as 256M")
    try:
        n = parse_bytes(v, "value")
    except CgagentError as e:
        raise ValueError(str(e)) from None
    if n <= 0:
        raise ValueError(f"{v} must be a positive size such as 256M")
    return n


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(v: Any) -> float:
    """`30s`, `1m30s`, `500ms`, `2h`, or a plain number of seconds -> seconds (> 0)."""
    _not_bool(v, "a duration such as 30s")
    if isinstance(v, (int, float)):
        secs = float(v)
    else:
        text = v.strip().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            secs = float(text)
        elif text and re.fullmatch(f"(?:{_DURATION_PART.pattern})+", text):
            secs = sum(float(n) * _UNIT[u] for n, u in _DURATION_PART.findall(text))
        else:
            raise ValueError(f"{v!r} is not a duration: use e.g. 500ms, 30s, 5m, 1h or 1m30s")
    if not secs > 0 or secs == float("inf"):
        raise ValueError(f"duration {v!r} must be greater than 0")
    return secs


def _ratio(v: Any) -> float:
    n = _number(v, "a ratio between 0 and 1")
    if not 0 <= n <= 1:
        raise ValueError(f"{v} is outside 0..1 (a fraction: 0.25 = 25%)")
    return n


def parse_restart(v: Any) -> str:
    """no | on-failure | on-failure:N | always (Docker's --restart). YAML reads a bare `no` as false."""
    if v is False:
        return "no"
    if not isinstance(v, str):
        raise ValueError("expected no, on-failure, on-failure:N or always")
    text = v.strip()
    if text in ("no", "always", "on-failure"):
        return text
    m = re.fullmatch(r"on-failure:(\S+)", text)
    if m:
        if not re.fullmatch(r"\d{1,9}", m.group(1), re.ASCII) or int(m.group(1)) < 1:
            raise ValueError(f"{text!r}: the retry count after on-failure: must be a whole number >= 1 "
                             "(at most 999999999)")
        return f"on-failure:{int(m.group(1))}"
    raise ValueError(f"{text!r} is not a restart policy: use no, on-failure, on-failure:N or always")


def _policy_name(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("a name (string) expected")
    try:
        return validate_name(v)
    except CgagentError as e:
        raise ValueError(str(e)) from None


Cpus = Annotated[float, BeforeValidator(_cpus)]
Size = Annotated[int, BeforeValidator(_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
Ratio = Annotated[float, BeforeValidator(_ratio)]


class OomSpec(BaseModel):
    """On an OOM kill: raise the memory limit by `step` up to `ceiling` (and restart), or stop."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Literal["restart-with-more-memory", "stop"]
    step: Size | None = None
    ceiling: Size | None = None

    @model_validator(mode="after")
    def _needs_step(self) -> OomSpec:
        if self.action == "restart-with-more-memory":
            missing = [k for k in ("step", "ceiling") if getattr(self, k) is None]
            if missing:
                raise FieldError(("oom", missing[0]), f"action restart-with-more-memory needs {missing[0]}")
        else:
            given = [k for k in ("step", "ceiling") if getattr(self, k) is not None]
            if given:
                raise FieldError(("oom", given[0]), f"{given[0]} is only used by action restart-with-more-memory")
        return self


class ThrottlingSpec(BaseModel):
    """Raise the CPU quota by `step` while the throttled ratio stays above `threshold` for `for`;
    lower it by `step` toward the floor after `idle_for` of no throttling and usage below
    `idle_usage` of the quota one step down."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    threshold: Ratio
    for_: Duration = Field(alias="for")
    step: Cpus
    floor: Cpus | None = None          # default: the quota the workload was started with
    ceiling: Cpus
    idle_for: Duration = 60.0
    idle_usage: Ratio = 0.5

    @field_validator("ceiling")
    @classmethod
    def _above_floor(cls, v: float, info: ValidationInfo) -> float:
        floor = info.data.get("floor")
        if floor is not None and v < floor:
            raise ValueError(f"ceiling {v:g} CPUs is below the floor {floor:g} CPUs")
        return v


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, BeforeValidator(_policy_name)]
    description: str = ""
    limits: ResourceSpec = ResourceSpec()
    restart: Annotated[str, BeforeValidator(parse_restart)] = "no"
    oom: OomSpec | None = None
    throttling: ThrottlingSpec | None = None

    @field_validator("oom")
    @classmethod
    def _oom_above_limit(cls, v: OomSpec | None, info: ValidationInfo) -> OomSpec | None:
        limits = info.data.get("limits")
        mem = limits.memory if isinstance(limits, ResourceSpec) else None
        if v is not None and v.ceiling is not None and mem is not None and mem > 0 and v.ceiling < mem:
            raise FieldError(("oom", "ceiling"), f"ceiling {format_bytes(v.ceiling)} is below the floor "
                             f"limits.memory {format_bytes(mem)}")
        return v

    @field_validator("throttling")
    @classmethod
    def _throttle_above_limit(cls, v: ThrottlingSpec | None, info: ValidationInfo) -> ThrottlingSpec | None:
        limits = info.data.get("limits")
        cpus = limits.cpus if isinstance(limits, ResourceSpec) else None
        if v is not None and v.floor is None and cpus is not None and v.ceiling < cpus:
            raise FieldError(("throttling", "ceiling"),
                             f"ceiling {v.ceiling:g} CPUs is below the floor limits.cpus {cpus:g}")
        return v

    # --- what the rest of cgagent asks of a policy

    @property
    def restart_mode(self) -> str:
        return self.restart.partition(":")[0]

    @property
    def restart_retries(self) -> int | None:
        _, _, n = self.restart.partition(":")
        return int(n) if n else None

    def summary(self) -> dict[str, Any]:
        """One row of `cgagent policy ls`."""
        lim = self.limits
        t, o = self.throttling, self.oom
        return {
            "name": self.name,
            "cpus": f"{lim.cpus:g}" if lim.cpus is not None else "-",
            "memory": format_bytes(lim.memory) if lim.memory is not None else "-",
            "shares": lim.cpu_shares if lim.cpu_shares is not None else "-",
            "restart": self.restart,
            "oom": (o.action if o.action == "stop" else
                    f"+{format_bytes(o.step)} up to {format_bytes(o.ceiling)}") if o else "-",
            "throttling": (f">{t.threshold:g} for {t.for_:g}s: +{t.step:g} up to {t.ceiling:g} CPUs")
            if t else "-",
            "description": self.description,
        }

    def to_yaml_dict(self) -> dict[str, Any]:
        """The policy as a user would write it (for `cgagent policy show`): sizes and durations in units."""
        d = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        for section, keys in (("limits", ("memory", "memory_swap")), ("oom", ("step", "ceiling"))):
            for k in keys:
                if k in d.get(section, {}):
                    d[section][k] = _size_text(d[section][k])
        for k in ("for", "idle_for"):
            if k in d.get("throttling", {}):
                d["throttling"][k] = f"{d['throttling'][k]:g}s"
        if not d.get("limits"):
            d.pop("limits", None)
        return d


def _size_text(n: int) -> int | str:
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n > 0 and n % size == 0:
            return f"{n // size}{unit}"
    return n
