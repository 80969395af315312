"""The adaptive schedule: which steps are full, decided on the host from a change the graph measures, without
waiting for the device.

Each cheap call returns, as a 0-d tensor, the relative L1 distance of the block stack's input from its value at
the last full step (``passes.estimate_change``); each full call's stack input gives, on the device, its distance
from the previous full step's. The runtime starts a copy of it to the host that does not block
(:class:`HostReading`); the schedule reads a reading only once its copy has landed, so the decision for a step
uses values already on the host, measured one call earlier or before, and no call waits for the device.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from hero_compile.config import HeroConfig
from hero_compile.host_copy import HostCopy
from hero_compile.schedule import is_forced_full_step


def relative_l1_distance(values: Sequence[torch.Tensor], references: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_s sum|values_s - references_s| / sum_s sum|references_s|`` as a 0-d float32 tensor, on the device.
    References of zeros give a large distance (a full step) rather than a division by zero."""
    moved = torch.stack([torch.sum(torch.abs(v - r), dtype=torch.float32) for v, r in zip(values, references)])
    size = torch.stack([torch.sum(torch.abs(r), dtype=torch.float32) for r in references])
    return moved.sum() / size.sum().clamp(min=torch.finfo(torch.float32).tiny)


class HostReading:
    """A measured distance on its way to the host (:class:`~hero_compile.host_copy.HostCopy`)."""

    def __init__(self, step: int, since_full_step: int, value: torch.Tensor) -> None:
        self.step = step
        self.since_full_step = since_full_step
        """The full step the measured distance is from."""
        self._copy = HostCopy(value.float())

    def ready(self) -> bool:
        return self._copy.ready()

    def value(self) -> float:
        """The distance per step since :attr:`since_full_step`."""
        return float(self._copy.value()) / (self.step - self.since_full_step)


@dataclass
class AdaptiveSchedule:
    """One generation's adaptive decisions. A step is full when it must be (warm-up, final steps), when
    ``max_cheap_steps`` cheap steps ran since the last full one, or when the distance predicted for it reaches
    ``adaptive_threshold``: the newest distance per step read so far, times the steps since the last full step
    (0 before any reading arrived)."""

    last_full_step: int = -1
    previous_full_step: int = -1
    decision: tuple[int, bool] | None = None
    """The step decided last and whether it is full: every call of a step (CFG) takes the same decision."""
    pending: deque[HostReading] = field(default_factory=deque)
    rate: float | None = None
    """The newest distance per step read (the largest of the calls of that step)."""
    rate_step: int = -1

    def is_full(self, step: int, config: HeroConfig, total_steps: int | None) -> bool:
        if self.decision is None or self.decision[0] != step:
            self.decision = (step, self._decide(step, config, total_steps))
        return self.decision[1]

    def ran_full(self, step: int, distance: torch.Tensor | None) -> None:
        """A call of ``step`` ran the full variant (by decision, or for want of caches): distances restart from it.
        ``distance``, on the device, is its stack input's from the previous full step's (``None`` without one)."""
        if step != self.last_full_step:
            self.previous_full_step, self.last_full_step = self.last_full_step, step
        if distance is not None and self.previous_full_step >= 0:
            self.pending.append(HostReading(step, self.previous_full_step, distance))

    def ran_cheap(self, step: int, distance: torch.Tensor) -> None:
        """A cheap call of ``step`` measured ``distance`` from the last full step, on the device."""
        if step > self.last_full_step:  # else another call of this step ran full: nothing to measure from
            self.pending.append(HostReading(step, self.last_full_step, distance))

    def predicted_distance(self, step: int) -> float:
        self._collect()
        return 0.0 if self.rate is None else self.rate * (step - self.last_full_step)

    def _decide(self, step: int, config: HeroConfig, total_steps: int | None) -> bool:
        if is_forced_full_step(step, config, total_steps) or step - self.last_full_step > config.max_cheap_steps:
            return True
        return self.predicted_distance(step) >= config.adaptive_threshold

    def _collect(self) -> None:
        """Take in the readings whose copies have landed, in order; stop at the first still on its way."""
        while self.pending and self.pending[0].ready():
            reading = self.pending.popleft()
            rate = reading.value()
            if reading.step == self.rate_step and self.rate is not None:
                rate = max(rate, self.rate)
            self.rate, self.rate_step = rate, reading.step
