"""The adaptive schedule: which steps are full, decided on the host from a change the graph measures, without
waiting for the device.

Each cheap call returns, as a 0-d tensor, the relative L1 distance of the block stack's input from its value at
the last full step (``passes.estimate_change``); each full call's stack input gives, on the device, its distance
from the previous full step's. The runtime starts a copy of it to the host that does not block
(:class:`HostReading`); the schedule reads a reading only once its copy has landed, so the decision for a step
uses values already on the host, measured one call earlier or before, and no call waits for the device. Which
readings have landed depends on how far the host runs ahead of the device, and so, on a GPU, can the decisions.
Under ``torch.use_deterministic_algorithms(True)`` a step's decision waits for every earlier step's reading instead
(one wait per step, for the previous step's work): the decisions a CPU would take, the same from run to run.
"""

from __future__ import annotations

import math
import operator
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import reduce

import torch

from hero_compile.config import HeroConfig
from hero_compile.host_copy import HostCopy
from hero_compile.schedule import is_forced_full_step


def relative_l1_distance(values: Sequence[torch.Tensor], references: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_s sum|values_s - references_s| / sum_s sum|references_s|`` as a 0-d float32 tensor, on the device.
    References of zeros give a large distance (a full step) rather than a division by zero.

    A full call computes this eagerly, so it is written in few ops: each one is a kernel launch and a dispatch
    (one stream: 5, about 65 us of host time on an H200 machine, where sums of absolute values took 11 ops and
    170 us; docs/results.md, "Session 12: on an H200")."""
    moved = reduce(operator.add, (torch.linalg.vector_norm(v - r, 1, dtype=torch.float32)
                                  for v, r in zip(values, references, strict=True)))
    size = reduce(operator.add, (torch.linalg.vector_norm(r, 1, dtype=torch.float32) for r in references))
    return moved / size.clamp(min=torch.finfo(torch.float32).tiny)


class HostReading:
    """A measured distance on its way to the host (:class:`~hero_compile.host_copy.HostCopy`)."""

    def __init__(self, step: int, since_full_step: int, value: torch.Tensor) -> None:
        self.step = step
        self.since_full_step = since_full_step
        """The full step the measured distance is from."""
        self._copy = HostCopy(value.float())

    def ready(self) -> bool:
        return self._copy.ready()

    def wait(self) -> None:
        self._copy.wait()

    def value(self) -> float:
        """The distance per step since :attr:`since_full_step`."""
        return float(self._copy.value()) / (self.step - self.since_full_step)


SPACING_MARGIN = 0.1
"""How far (relative) the ideal spacing must pass the current spacing's bounds before the spacing changes."""


@dataclass
class AdaptiveSchedule:
    """One generation's adaptive decisions. A step is full when it must be (warm-up, final steps), when
    ``max_cheap_steps`` cheap steps ran since the last full one, or when it is :attr:`spacing` steps after the last
    full step: the first step whose predicted distance, the newest distance per step read so far times the steps
    since the last full step, reaches ``adaptive_threshold``. Before the generation's first reading has landed,
    the previous generation's first rate (:attr:`prior_rate`) stands in for it when the generation follows that one's
    timesteps; without it the step is full, so that a threshold under every rate computes every step.

    The spacing is kept while the measured rate wavers: it changes only once the ideal spacing
    (``adaptive_threshold / rate``) is :data:`SPACING_MARGIN` past its bounds. For a given number of full steps, even
    spacing gives the least extrapolation error (the error grows faster than the gap), and a rate at a boundary
    would otherwise alternate two spacings, with the longer one's error at a speed between the two (measured in
    docs/results.md, "Adaptive schedule").
    """

    prior_rate: float | None = None
    """The previous generation's :attr:`first_rate`."""
    last_full_step: int = -1
    previous_full_step: int = -1
    decision: tuple[int, bool] | None = None
    """The step decided last and whether it is full: every call of a step (CFG) takes the same decision."""
    pending: deque[HostReading] = field(default_factory=deque)
    rate: float | None = None
    """The newest distance per step read (the largest of the calls of that step)."""
    rate_step: int = -1
    first_rate: float | None = None
    """This generation's first rate read (the largest of the calls of its step), handed on to the next one."""
    first_rate_step: int = -1
    spacing: int | None = None
    """Steps from one full step to the next, set from the rate (``None`` before any reading and prior)."""

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

    def _decide(self, step: int, config: HeroConfig, total_steps: int | None) -> bool:
        if is_forced_full_step(step, config, total_steps) or step - self.last_full_step > config.max_cheap_steps:
            return True
        # Deterministic algorithms asked for: decide from every earlier step's readings, waiting for them, so that
        # the decisions do not depend on how far the host runs ahead of the device.
        self._collect(config.adaptive_threshold, wait=torch.are_deterministic_algorithms_enabled())
        if self.spacing is None:
            # No reading yet. Taken cheap whatever the threshold, step 1 alone moved the worst of the eight-maze world
            # model's mazes as far from full compute (49 dB at 30 steps) as 14 measured cheap steps did
            # (docs/results.md, "Session 14"). The previous generation's first rate is a measurement of this one's
            # when both run the same timesteps (``total_steps`` is known only then).
            if self.prior_rate is None or total_steps is None:
                return True
            self.spacing = _kept_spacing(None, _ideal_spacing(config.adaptive_threshold, self.prior_rate))
        return step - self.last_full_step >= self.spacing

    def _collect(self, threshold: float, wait: bool) -> None:
        """Take in the readings whose copies have landed, in order; stop at the first still on its way, or with
        ``wait``, wait for it (every pending reading is from an earlier step: the first call of a step decides)."""
        while self.pending and (wait or self.pending[0].ready()):
            reading = self.pending.popleft()
            if wait:
                reading.wait()
            rate = reading.value()
            if reading.step == self.rate_step and self.rate is not None:
                rate = max(rate, self.rate)
            self.rate, self.rate_step = rate, reading.step
            if self.first_rate_step in (-1, reading.step):
                self.first_rate, self.first_rate_step = rate, reading.step
            self.spacing = _kept_spacing(self.spacing, _ideal_spacing(threshold, rate))


def _ideal_spacing(threshold: float, rate: float) -> float:
    """Steps until a distance growing by ``rate`` per step reaches ``threshold``; a still input predicts no
    distance, so only a threshold of 0 is reached, at every step."""
    return threshold / rate if rate > 0 else math.inf if threshold > 0 else 0.0


def _kept_spacing(spacing: int | None, ideal: float) -> int:
    """The spacing for an ideal (real) one: its ceiling, the first step predicted at the threshold, unless
    ``spacing`` still holds it within :data:`SPACING_MARGIN` past its bounds (``spacing - 1``, ``spacing``]."""
    if spacing is not None and (spacing - 1) * (1 - SPACING_MARGIN) < ideal <= spacing * (1 + SPACING_MARGIN):
        return spacing
    return max(1, math.ceil(ideal)) if math.isfinite(ideal) else sys.maxsize
