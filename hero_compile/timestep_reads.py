"""Each call's timestep on the host, without waiting for the device once a generation's schedule is known.

The runtime places every call (new generation, step, call within the step) by its timestep. A timestep on a GPU
read at once is a device-to-host sync: the host waits for every kernel launched before it, once per call. After
one generation has run with its timesteps read, the calls of the next are predicted from it (a sampler calls
the model with the same timesteps each time) and each prediction is checked once a non-blocking copy of the real
timestep lands, a call or more later. A miss is found before a call is placed, so that call's timestep is read; it
is reported (:meth:`TimestepReads.take_miss`) and ends prediction until a generation has been read again.
"""

from __future__ import annotations

from collections import deque

import torch

from hero_compile.host_copy import HostCopy, is_on_host, read_now

Timestep = tuple[float, ...]
"""The values of a call's timestep input: one per sample (or per frame, for diffusion forcing)."""


def rises(timestep: Timestep, previous: Timestep) -> bool:
    """Whether ``timestep`` starts a new generation after ``previous``: its largest value is larger, or any
    value of a timestep of the same length is."""
    if max(timestep) > max(previous):
        return True
    return len(timestep) == len(previous) and any(t > p for t, p in zip(timestep, previous))


class TimestepReads:
    """The timesteps of one generation state's calls: read, or predicted from the previous generation."""

    def __init__(self) -> None:
        self._calls: list[Timestep] = []
        """This generation's calls so far."""
        self._schedule: list[Timestep] | None = None
        """The previous generation's calls, which predict this one's; ``None`` while nothing predicts."""
        self._read_in_full = False
        """Whether this generation's calls were all read (not predicted): then it may predict the next one."""
        self._checks: deque[tuple[Timestep, HostCopy]] = deque()
        self.missed: str | None = None
        """Why the last prediction failed, until the runtime takes note (:meth:`take_miss`)."""

    def read(self, value: torch.Tensor) -> Timestep:
        self._check_landed()
        predicted = self._predicted()
        if predicted is None or is_on_host(value):
            timestep: Timestep = tuple(read_now(value.reshape(-1)).tolist())
            read = True
        else:
            self._checks.append((predicted, HostCopy(value.reshape(-1))))
            timestep, read = predicted, False
        if not self._calls or rises(timestep, self._calls[-1]):  # a new generation
            if self._calls and self._read_in_full:
                self._schedule = self._calls
            self._calls, self._read_in_full = [], True
        self._calls.append(timestep)
        self._read_in_full = self._read_in_full and read
        return timestep

    def take_miss(self) -> str | None:
        """Why a prediction failed, found when this call was read (then forgotten), or ``None``."""
        missed, self.missed = self.missed, None
        return missed

    def _predicted(self) -> Timestep | None:
        schedule = self._schedule
        if schedule is None or self.missed is not None:
            return None
        # After the last call of the schedule comes the first call of the next generation.
        return schedule[len(self._calls)] if len(self._calls) < len(schedule) else schedule[0]

    def _check_landed(self) -> None:
        while self._checks and self._checks[0][1].ready():
            predicted, copy = self._checks.popleft()
            actual = tuple(copy.value().tolist())
            if actual != predicted and self.missed is None:
                self.missed = (f"a call's timestep was {actual}, not {predicted} as the previous generation's "
                               "schedule predicted")
                self._checks.clear()
                self._schedule = None
