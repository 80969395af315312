"""The callable Dynamo runs each step: it owns a generation's state and picks the variant on the host.

The variants and their calling conventions are described in ``hero_compile.variants``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hero_compile.config import HeroConfig
from hero_compile.schedule import extrapolation_coefficients, is_full_step
from hero_compile.stats import GraphStats
from hero_compile.token_selection import TokenSelector
from hero_compile.variability import VariabilityProfile, VariabilityRecorder
from hero_compile.variants import CompiledFn, InputRoles, Variants

log = logging.getLogger("hero_compile")

# Calls with the same timestep beyond this many (a model called repeatedly outside a sampler) run full and
# keep no cache, so memory stays bounded.
MAX_CALLS_PER_STEP = 4


@dataclass
class SplitMeasurement:
    """The first generation's first steps, which run the measuring variant until the split is fixed."""

    variant: CompiledFn
    recorder: VariabilityRecorder
    zero_previous: Callable[[Sequence[Any]], list[torch.Tensor]]
    """Stand-ins for the previous step's block outputs on a generation's first call (its sums are dropped)."""
    build: Callable[[VariabilityProfile], Variants]
    """The variants of the split the measured profile chooses."""


@dataclass
class CallSlot:
    """What one call slot (e.g. the conditional or unconditional CFG call) keeps from step to step, valid for
    calls whose activation inputs have ``input_shapes``."""

    input_shapes: tuple[Any, ...]
    history: deque[tuple[float, list[torch.Tensor]]]
    """Deep-stream features of the last full steps with their timesteps, most recent first."""
    refresh_caches: list[torch.Tensor] = field(default_factory=list)
    """Latest full-token values the refreshed shallow blocks cache (outputs, and keys and values if cached)."""
    previous_block_outputs: list[torch.Tensor] | None = None
    """While the split is measured: every block's outputs at this slot's previous step."""


@dataclass
class GenerationState:
    """Where the current generation is: step, call slot within the step, each slot's cache, token staleness."""

    selector: TokenSelector | None
    timestep: float | None = None
    step: int = -1
    slot: int = 0
    timesteps: list[float] = field(default_factory=list)
    previous_timesteps: list[float] = field(default_factory=list)
    slots: dict[int, CallSlot] = field(default_factory=dict)
    refresh_indices: dict[int, torch.Tensor] = field(default_factory=dict)
    """The refresh subset of each step, chosen once and shared by the step's calls and blocks."""

    def advance(self, timestep: float) -> bool:
        """Place a call with ``timestep``; returns True when it starts a new generation."""
        if self.timestep is None or timestep > self.timestep:
            if self.timesteps:
                self.previous_timesteps = self.timesteps
            self.timesteps, self.step, self.slot = [timestep], 0, 0
            self.slots.clear()
            self.refresh_indices.clear()
            self.timestep = timestep
            if self.selector is not None:
                self.selector.mark_all_fresh()
            return True
        if timestep == self.timestep:
            self.slot += 1
        else:
            self.step, self.slot = self.step + 1, 0
            self.timesteps.append(timestep)
            self.refresh_indices.clear()
        self.timestep = timestep
        return False

    def total_steps(self) -> int | None:
        """The generation's length, known when it follows the schedule of the previous generation."""
        previous = self.previous_timesteps
        if previous and previous[: len(self.timesteps)] == self.timesteps:
            return len(previous)
        return None

    def slot_for(self, input_shapes: tuple[Any, ...], history_length: int) -> CallSlot:
        """The state of this call's slot, emptied if the inputs' shapes changed since it was filled."""
        slot = self.slots.get(self.slot)
        if slot is None or slot.input_shapes != input_shapes:
            slot = CallSlot(input_shapes, deque(maxlen=history_length))
            self.slots[self.slot] = slot
        return slot

    def indices_for_step(self, device: torch.device) -> torch.Tensor:
        assert self.selector is not None
        if self.step not in self.refresh_indices:
            chosen = torch.from_numpy(self.selector.select())
            self.refresh_indices[self.step] = chosen.to(device, non_blocking=True)
        return self.refresh_indices[self.step]


class HeroRuntime:
    """Runs one Dynamo graph under HERO: full steps refresh the caches, cheap steps reuse and extrapolate.

    Built either with the variants of a known split, or with a :class:`SplitMeasurement` that measures the
    variability profile over the first ``profile_steps`` steps, then fixes the split and builds the variants.
    """

    def __init__(
        self,
        config: HeroConfig,
        roles: InputRoles,
        stats: GraphStats,
        variants: Variants | None = None,
        measurement: SplitMeasurement | None = None,
        profile: VariabilityProfile | None = None,
    ) -> None:
        assert (variants is None) != (measurement is None), "a runtime starts with variants or with a measurement"
        self.config = config
        self.roles = roles
        self.stats = stats
        self.variants = variants
        self.measurement = measurement
        self.profile = profile
        """The variability profile the split was chosen by (measured or loaded); ``None`` with a set split."""
        self.state = self._new_state()

    def _new_state(self) -> GenerationState:
        selector = self.variants.selector if self.variants else None
        if selector is not None:
            selector.mark_all_fresh()
        return GenerationState(selector=selector)

    def reset(self) -> None:
        """Forget the current generation, its caches and the schedule learned from earlier ones."""
        self.state = self._new_state()

    def cache_bytes(self) -> int:
        """Memory the current generation's caches hold (extrapolation history and refresh caches)."""
        return sum(
            tensor.nbytes
            for slot in self.state.slots.values()
            for tensor in [*(f for _, features in slot.history for f in features), *slot.refresh_caches]
        )

    def profile_so_far(self) -> VariabilityProfile | None:
        """The profile the split was chosen by or, while it is being measured, the steps measured so far."""
        if self.measurement is not None and self.measurement.recorder.measured:
            return self.measurement.recorder.profile()
        return self.profile

    def __call__(self, *inputs: Any) -> Any:
        timestep = float(inputs[self.roles.timestep_index].reshape(-1)[0])
        new_generation = self.state.advance(timestep)
        if new_generation:
            self.stats.count_generation()
        if self.measurement is not None:
            if not self._measurement_done(new_generation):
                return self._run_measuring(inputs)
            self._fix_split(self.measurement)
        variants = self.variants
        assert variants is not None
        slot = self._slot(inputs, variants)
        if slot is not None and self._cheap_allowed(slot, variants):
            outputs = self._run_cheap(inputs, timestep, slot, variants)
            if outputs is not None:
                self.stats.count_call(cheap=True)
                return outputs
        return self._run_full(inputs, timestep, slot, variants)

    def _measurement_done(self, new_generation: bool) -> bool:
        assert self.measurement is not None
        measured = self.measurement.recorder.measured
        return measured and (new_generation or self.state.step >= self.config.profile_steps)

    def _run_measuring(self, inputs: Sequence[Any]) -> Any:
        assert self.measurement is not None
        # As for caches: calls beyond MAX_CALLS_PER_STEP keep nothing.
        slot = None
        if self.state.slot < MAX_CALLS_PER_STEP:
            slot = self.state.slot_for(self._input_shapes(inputs), history_length=0)
        previous = slot.previous_block_outputs if slot is not None else None
        measuring_inputs = [*inputs, *(previous if previous is not None else self.measurement.zero_previous(inputs))]
        results = self.measurement.variant(*measuring_inputs)
        self.stats.count_call(cheap=False)
        n = len(results) - (len(measuring_inputs) - len(inputs)) - 1
        if slot is not None:
            slot.previous_block_outputs = [o.detach() for o in results[n:-1]]
            if previous is not None:
                self.measurement.recorder.record(self.state.step, results[-1])
        return results[:n]

    def _fix_split(self, measurement: SplitMeasurement) -> None:
        self.profile = measurement.recorder.profile()
        self.variants = measurement.build(self.profile)
        self.measurement = None
        self.state.slots.clear()
        self.state.selector = self.variants.selector

    def _run_full(self, inputs: Sequence[Any], timestep: float, slot: CallSlot | None, variants: Variants) -> Any:
        self.stats.count_call(cheap=False)
        results = variants.full(*inputs)
        n, streams = variants.spec.num_outputs, variants.spec.num_streams
        if slot is not None:
            if streams:
                slot.history.appendleft((timestep, [_cacheable(f) for f in results[n : n + streams]]))
            slot.refresh_caches = [_cacheable(b) for b in results[n + streams :]]
        if self.state.selector is not None:
            self.state.selector.mark_all_fresh()
        return results[:n]

    def _cheap_allowed(self, slot: CallSlot, variants: Variants) -> bool:
        # Under autograd the caches would hold graph history; HERO is for sampling, so grad mode runs full.
        if variants.cheap is None or torch.is_grad_enabled():
            return False
        spec = variants.spec
        if (spec.num_streams and not slot.history) or (spec.num_refresh_caches and not slot.refresh_caches):
            return False
        return not is_full_step(self.state.step, self.config, self.state.total_steps())

    def _input_shapes(self, inputs: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(_describe(inputs[i]) for i in self.roles.activation_indices)

    def _slot(self, inputs: Sequence[Any], variants: Variants) -> CallSlot | None:
        """The state of this call's slot, or ``None`` when nothing is cached for it."""
        if variants.cheap is None or self.state.slot >= MAX_CALLS_PER_STEP:
            return None
        return self.state.slot_for(self._input_shapes(inputs), variants.spec.history_length)

    def _run_cheap(self, inputs: Sequence[Any], timestep: float, slot: CallSlot, variants: Variants) -> Any:
        spec = variants.spec
        cheap_inputs = [*inputs]
        if spec.num_streams:
            cheap_inputs += self._extrapolation_inputs(timestep, slot, spec.num_streams, spec.history_length)
        if spec.num_refresh_caches:
            device = slot.refresh_caches[0].device
            cheap_inputs += [self.state.indices_for_step(device), *slot.refresh_caches]
        cheap = self._cheap_for(cheap_inputs, slot.input_shapes, variants)
        if cheap is None:
            return None
        results = cheap(*cheap_inputs)
        n = spec.num_outputs
        slot.refresh_caches = [_cacheable(c) for c in results[n:]]
        return results[:n]

    def _extrapolation_inputs(self, timestep: float, slot: CallSlot, num_streams: int, history_length: int
                              ) -> list[torch.Tensor]:
        times = [t for t, _ in slot.history]
        weights = extrapolation_coefficients(timestep, times, self.config.extrapolation_order, history_length)
        device = slot.history[0][1][0].device
        coefficients = torch.tensor(weights, dtype=torch.float32).to(device, non_blocking=True)
        # Short histories are padded with the oldest entry; its weight is zero.
        padded = [slot.history[min(i, len(slot.history) - 1)][1] for i in range(history_length)]
        return [coefficients, *(features[s] for s in range(num_streams) for features in padded)]

    def _cheap_for(self, cheap_inputs: list[Any], input_shapes: Any, variants: Variants) -> CompiledFn | None:
        """The cheap variant for these sizes; if it fails to compile, every later step runs in full."""
        assert variants.cheap is not None
        try:
            sizes = (input_shapes, tuple(x for x in cheap_inputs if isinstance(x, int)))
            return variants.cheap.for_inputs(cheap_inputs, sizes)
        except Exception as error:
            self.stats.record_fallback(f"cheap variant failed to compile, every step runs in full: {error}")
            variants.cheap = None
            return None


def _cacheable(value: torch.Tensor) -> torch.Tensor:
    # One layout for every cache tensor: Inductor asserts the strides its inputs were compiled with, and a
    # full step may return a view (transposed keys) where a cheap step returns a fresh tensor.
    return value.detach().contiguous()


def _describe(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.dtype, value.device)
    return value
