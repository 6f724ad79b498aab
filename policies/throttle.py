"""The throttling response as a pure state machine: kernel counter samples in, quota decisions out.

The controller feeds one Sample a second per workload; `observe` compares it with the previous one
(the kernel's counters are cumulative) and returns a new quota when the policy says to move.
No clock or kernel access here, so the decisions are tested on made-up samples too.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.model import IDLE_RATIO, ThrottlingSpec

EPS = 1e-9


@dataclass(frozen=True)
class Sample:
    """The CFS counters and CPU time of a workload at one moment."""

    t: float             # monotonic seconds
    periods: int         # CFS enforcement periods elapsed (Reader.throttling())
    throttled: int       # of which throttled
    usage_ns: int        # CPU time used (Reader.cpu_usage())


@dataclass(frozen=True)
class Decision:
    """A change of CPU quota the throttling policy decided, and why."""

    action: str          # cpu_step_up | cpu_step_down
    from_cpus: float
    to_cpus: float
    ratio: float         # throttled ratio of the last interval
    usage_cpus: float    # CPUs used in the last interval


@dataclass
class Throttle:
    """One workload's throttling policy state between two samples."""

    spec: ThrottlingSpec
    floor: float                       # the quota to come back down to (CPUs)
    ceiling: float                     # spec.ceiling clamped to the online CPUs
    prev: Sample | None = None
    above_since: float | None = None   # start of the current run of throttled intervals
    idle_since: float | None = None    # start of the current run of idle intervals
    ratio: float = 0.0
    usage_cpus: float = 0.0

    def observe(self, s: Sample, current: float) -> Decision | None:
        """`current` = the quota the workload has now, in CPUs."""
        prev, self.prev = self.prev, s
        if prev is None or s.t <= prev.t or s.periods < prev.periods:
            self.above_since = self.idle_since = None   # first sample, or the counters were reset
            return None
        dp = s.periods - prev.periods
        self.ratio = (s.throttled - prev.throttled) / dp if dp > 0 else 0.0
        self.usage_cpus = max(0, s.usage_ns - prev.usage_ns) / ((s.t - prev.t) * 1e9)
        spec = self.spec
        if self.ratio > spec.threshold:
            self.idle_since = None
            if self.above_since is None:
                self.above_since = prev.t    # the whole interval was throttled
            if s.t - self.above_since + EPS >= spec.for_ and current < self.ceiling - EPS:
                self.above_since = None      # the next step needs another full `for` at the new quota
                return self._decide("cpu_step_up", current, min(current + spec.step, self.ceiling))
            return None
        self.above_since = None
        lower = max(current - spec.step, self.floor)
        if current > self.floor + EPS and self.ratio <= IDLE_RATIO and self.usage_cpus < spec.idle_usage * lower:
            if self.idle_since is None:
                self.idle_since = prev.t
            if s.t - self.idle_since + EPS >= spec.idle_for:
                self.idle_since = None
                return self._decide("cpu_step_down", current, lower)
            return None
        self.idle_since = None
        return None

    def _decide(self, action: str, current: float, to: float) -> Decision:
        return Decision(action, round(current, 6), round(to, 6), round(self.ratio, 4), round(self.usage_cpus, 4))
