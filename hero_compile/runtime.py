"""The callable Dynamo runs each step: it owns a generation's state and picks the variant on the host.

The variants and their calling conventions are described in ``hero_compile.variants``.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

import torch

from hero_compile.adaptive import AdaptiveSchedule, relative_l1_distance
from hero_compile.config import HeroConfig
from hero_compile.distributed import is_distributed, on_every_rank
from hero_compile.host_copy import HostCopy, read_now
from hero_compile.schedule import extrapolation_coefficients, is_full_step
from hero_compile.stats import GraphStats
from hero_compile.timestep_reads import Timestep, TimestepReads, rises
from hero_compile.token_selection import TokenSelector
from hero_compile.variability import VariabilityProfile, VariabilityRecorder
from hero_compile.variants import CompiledFn, InputRoles, Variants, compile_session

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
    build: Callable[[VariabilityProfile, Sequence[Any]], Variants]
    """The variants of the split the measured profile chooses, built during a call with these inputs."""


class FiniteFlag:
    """Whether cached tensors are all finite: computed on the device when they are cached, read on the host once
    its copy has landed (no wait). Under context parallelism it is read at once instead, agreed by every rank."""

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self.on_device = reduce(torch.logical_and, (_all_finite(t) for t in tensors))
        self._copy = None if is_distributed() else HostCopy(self.on_device)

    def known_non_finite(self) -> bool:
        """True once the copy has landed and says non-finite; a flag still on its way counts as finite."""
        return self._copy is not None and self._copy.ready() and not bool(self._copy.value())


def _all_finite(tensor: torch.Tensor) -> torch.Tensor:
    """``torch.isfinite(tensor).all()`` in 3 kernels rather than 5 (``isfinite`` is 4: two compares, an ``abs`` and a
    product), as every full call runs it eagerly: ``x - x`` is 0 exactly for a finite ``x`` and NaN otherwise."""
    return (tensor - tensor).eq(0).all()


@dataclass
class CachedStep:
    """The deep-stream features of one full step."""

    time: float
    features: list[torch.Tensor]
    finite: FiniteFlag


@dataclass
class CallSlot:
    """What one call slot (e.g. the conditional or unconditional CFG call) keeps from step to step, valid for
    calls whose activation inputs have ``input_shapes``."""

    input_shapes: tuple[Any, ...]
    history: deque[CachedStep]
    """The last full steps, most recent first."""
    selector: TokenSelector | None = None
    """This slot's refresh subsets and token staleness; ``None`` when no block is refreshed."""
    refresh_caches: list[torch.Tensor] = field(default_factory=list)
    """Latest full-token values the refreshed shallow blocks cache (outputs, and keys and values if cached)."""
    refresh_caches_finite: FiniteFlag | None = None
    previous_block_outputs: list[torch.Tensor] | None = None
    """While the split is measured: every block's outputs at this slot's previous step."""
    full_stack_inputs: list[torch.Tensor] = field(default_factory=list)
    """With the adaptive schedule: the block stack's input streams at this slot's last full step."""

    def drop_non_finite(self) -> None:
        """Forget cached features that hold a NaN or an infinity, so that a non-finite step does not poison the
        cheap steps after it (from the call its flag reaches the host on)."""
        flags = [entry.finite for entry in self.history]
        if self.refresh_caches_finite is not None:
            flags.append(self.refresh_caches_finite)
        if not flags:
            return
        if is_distributed():
            # Agreed across ranks, at once: a rank that dropped its history alone would run full while its peers
            # ran cheap.
            finite = read_now(on_every_rank(torch.stack([f.on_device for f in flags]))).tolist()
        else:
            finite = [not flag.known_non_finite() for flag in flags]
        if not all(finite[: len(self.history)]):
            self.history = deque((e for e, ok in zip(self.history, finite) if ok), maxlen=self.history.maxlen)
        if self.refresh_caches_finite is not None and not finite[-1]:
            self.refresh_caches, self.refresh_caches_finite = [], None


@dataclass
class GenerationState:
    """Where a generation is: step, call slot within the step, and what each slot keeps."""

    timestep: Timestep | None = None
    step: int = -1
    slot: int = 0
    timesteps: list[Timestep] = field(default_factory=list)
    previous_timesteps: list[Timestep] = field(default_factory=list)
    slots: dict[int, CallSlot] = field(default_factory=dict)
    adaptive: AdaptiveSchedule = field(default_factory=AdaptiveSchedule)
    """The adaptive schedule's decisions and readings (unused by the fixed schedule)."""
    reads: TimestepReads = field(default_factory=TimestepReads)
    trusted: bool = True
    """False from a timestep miss to the next generation: calls placed on predicted timesteps may sit in another
    step or call slot than their own, so the rest of the generation runs in full and caches nothing."""

    def distrust(self, timestep: Timestep) -> None:
        """After a timestep miss, at a call whose ``timestep`` was read: the next rise from it starts a generation
        that is trusted again."""
        self.trusted, self.timestep, self.timesteps = False, timestep, []
        self.slots.clear()

    def advance(self, timestep: Timestep) -> bool:
        """Place a call with ``timestep``; returns True when it starts a new generation: the first call, or a
        timestep that rises (its largest value, or any value of a timestep of the same length)."""
        if self.timestep is None or rises(timestep, self.timestep):
            if self.timesteps:
                self.previous_timesteps = self.timesteps
            self.timesteps, self.step, self.slot = [timestep], 0, 0
            self.slots.clear()
            self.adaptive = AdaptiveSchedule(prior_rate=self.adaptive.first_rate)
            self.timestep, self.trusted = timestep, True
            return True
        if timestep == self.timestep:
            self.slot += 1
        else:
            self.step, self.slot = self.step + 1, 0
            self.timesteps.append(timestep)
        self.timestep = timestep
        return False

    def total_steps(self) -> int | None:
        """The generation's length, known when it follows the schedule of the previous generation."""
        previous = self.previous_timesteps
        if previous and previous[: len(self.timesteps)] == self.timesteps:
            return len(previous)
        return None

    def slot_for(self, input_shapes: tuple[Any, ...], history_length: int, selector: TokenSelector | None
                 ) -> CallSlot:
        """The state of this call's slot, emptied if the inputs' shapes changed since it was filled."""
        slot = self.slots.get(self.slot)
        if slot is None or slot.input_shapes != input_shapes:
            slot = CallSlot(input_shapes, deque(maxlen=history_length),
                            selector.fresh_copy() if selector is not None else None)
            self.slots[self.slot] = slot
        return slot


class HeroRuntime:
    """Runs one Dynamo graph under HERO: full steps refresh the caches, cheap steps reuse and extrapolate.

    Built either with the variants of a known split, or with a :class:`SplitMeasurement` that measures the
    variability profile over the first ``profile_steps`` steps, then fixes the split and builds the variants.

    Generation state belongs to the weights a call runs with: Dynamo lifts parameters to graph inputs, so two
    instances of one model class (two experts) run this same graph, each with a state of its own.
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
        self._states: dict[tuple[int, ...], GenerationState] = {}
        self._states_lock = threading.Lock()

    def reset(self) -> None:
        """Forget every generation, its caches and the schedule learned from earlier ones."""
        with self._states_lock:
            self._states.clear()

    def cache_bytes(self) -> int:
        """Memory the current generations' caches hold (extrapolation history and refresh caches)."""
        return sum(
            tensor.nbytes
            for state in list(self._states.values())
            for slot in state.slots.values()
            for tensor in [*(f for entry in slot.history for f in entry.features), *slot.refresh_caches,
                           *slot.full_stack_inputs]
        )

    def profile_so_far(self) -> VariabilityProfile | None:
        """The profile the split was chosen by or, while it is being measured, the steps measured so far."""
        measurement = self.measurement
        if measurement is not None and measurement.recorder.measured:
            return measurement.recorder.profile()
        return self.profile

    def _state_for(self, inputs: Sequence[Any]) -> GenerationState:
        key = tuple(id(inputs[i]) for i in self.roles.weight_indices)
        with self._states_lock:
            state = self._states.get(key)
            if state is None:
                state = self._states[key] = GenerationState()
                if self.roles.weight_indices:
                    # The state lives as long as the weights it belongs to (an id may be reused after).
                    weakref.finalize(inputs[self.roles.weight_indices[0]], self._states.pop, key, None)
        return state

    def __call__(self, *inputs: Any) -> Any:
        # Under context parallelism every rank must pick the same variant at the same call (their collectives pair
        # up): decide only from rank-invariant values, the timestep, the configuration and what hero_compile.
        # distributed agrees across ranks; never from a rank's own shard.
        timestep_input = inputs[self.roles.timestep_index]
        if timestep_input.numel() == 0:  # an empty batch: no step to place, nothing to cache
            return self._run_statelessly(inputs)
        state = self._state_for(inputs)
        timestep = state.reads.read(timestep_input)
        missed = state.reads.take_miss()
        if missed is not None:
            self.stats.record_timestep_miss(missed)
            state.distrust(timestep)
        new_generation = state.advance(timestep)
        if new_generation:
            self.stats.count_generation()
        if not state.trusted:
            return self._run_statelessly(inputs)
        variants = self._variants(state, new_generation, inputs)
        if variants is None:
            return self._run_measuring(state, inputs)
        time = sum(timestep) / len(timestep)
        slot = self._slot(state, inputs, variants)
        if slot is not None and self._cheap_allowed(state, slot, variants):
            outputs = self._run_cheap(inputs, time, slot, variants, state)
            if outputs is not None:
                self.stats.count_call(cheap=True)
                return outputs
        return self._run_full(inputs, time, slot, variants, state)

    def _variants(self, state: GenerationState, new_generation: bool, inputs: Sequence[Any]) -> Variants | None:
        """The variants, once the split is known; ``None`` while this call is still measured."""
        measurement = self.measurement
        if measurement is None:
            return self.variants
        if not measurement.recorder.measured or not (new_generation or state.step >= self.config.profile_steps):
            return None
        with compile_session():  # another thread may be compiling, or fixing the split too
            if self.measurement is not None:
                self.profile = measurement.recorder.profile()
                self.variants = measurement.build(self.profile, inputs)
                self.measurement = None
                for other in list(self._states.values()):
                    other.slots.clear()
        return self.variants

    def _run_statelessly(self, inputs: Sequence[Any]) -> Any:
        self.stats.count_call(cheap=False)
        if self.variants is not None:
            return self.variants.full(*inputs)[: self.variants.spec.num_outputs]
        assert self.measurement is not None
        previous = self.measurement.zero_previous(inputs)
        return self.measurement.variant(*inputs, *previous)[: -len(previous) - 1]

    def _run_measuring(self, state: GenerationState, inputs: Sequence[Any]) -> Any:
        measurement = self.measurement
        assert measurement is not None
        # As for caches: calls beyond MAX_CALLS_PER_STEP keep nothing.
        slot = None
        if state.slot < MAX_CALLS_PER_STEP:
            slot = state.slot_for(self._input_shapes(inputs), history_length=0, selector=None)
        previous = slot.previous_block_outputs if slot is not None else None
        measured = previous if previous is not None else measurement.zero_previous(inputs)
        results = measurement.variant(*inputs, *measured)
        self.stats.count_call(cheap=False)
        n = len(results) - len(measured) - 1
        if slot is not None:
            # The measuring variant takes them back: in the layout it returns them in.
            slot.previous_block_outputs = _keep(results[n:-1], reuse=previous or (), same_strides=True)
            if previous is not None:
                measurement.recorder.record(state.step, results[-1])
        return results[:n]

    def _run_full(self, inputs: Sequence[Any], time: float, slot: CallSlot | None, variants: Variants,
                  state: GenerationState) -> Any:
        self.stats.count_call(cheap=False)
        results = variants.full(*inputs)
        n, streams = variants.spec.num_outputs, variants.spec.num_streams
        distance = None
        if slot is not None:
            if streams:
                # The entry about to leave the history lends its buffers to the new one.
                full = len(slot.history) == slot.history.maxlen
                features = _keep(results[n : n + streams], reuse=slot.history[-1].features if full else ())
                slot.history.appendleft(CachedStep(time, features, FiniteFlag(features)))
            stack_inputs = n + streams + variants.spec.num_refresh_caches
            self._keep_refresh_caches(slot, results[n + streams : stack_inputs])
            if slot.full_stack_inputs:
                distance = relative_l1_distance(results[stack_inputs:], slot.full_stack_inputs)
            slot.full_stack_inputs = _keep(results[stack_inputs:], reuse=slot.full_stack_inputs)
            if slot.selector is not None:
                slot.selector.mark_all_fresh()
        state.adaptive.ran_full(state.step, distance)
        return results[:n]

    def _keep_refresh_caches(self, slot: CallSlot, caches: Sequence[torch.Tensor]) -> None:
        slot.refresh_caches = _keep(caches, reuse=slot.refresh_caches)
        slot.refresh_caches_finite = FiniteFlag(slot.refresh_caches) if slot.refresh_caches else None

    def _cheap_allowed(self, state: GenerationState, slot: CallSlot, variants: Variants) -> bool:
        # Under autograd the caches would hold graph history; HERO is for sampling, so grad mode runs full.
        if variants.cheap is None or torch.is_grad_enabled():
            return False
        if self._is_full_step(state):
            return False
        slot.drop_non_finite()
        spec = variants.spec
        return not ((spec.num_streams and not slot.history) or (spec.num_refresh_caches and not slot.refresh_caches)
                    or (spec.num_stack_inputs and not slot.full_stack_inputs))

    def _is_full_step(self, state: GenerationState) -> bool:
        if self.config.schedule == "adaptive":
            return state.adaptive.is_full(state.step, self.config, state.total_steps())
        return is_full_step(state.step, self.config, state.total_steps())

    def _input_shapes(self, inputs: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(_describe(inputs[i]) for i in self.roles.activation_indices)

    def _slot(self, state: GenerationState, inputs: Sequence[Any], variants: Variants) -> CallSlot | None:
        """The state of this call's slot, or ``None`` when nothing is cached for it."""
        if variants.cheap is None or state.slot >= MAX_CALLS_PER_STEP:
            return None
        return state.slot_for(self._input_shapes(inputs), variants.spec.history_length, variants.selector)

    def _run_cheap(self, inputs: Sequence[Any], time: float, slot: CallSlot, variants: Variants,
                   state: GenerationState) -> Any:
        spec = variants.spec
        cheap_inputs = [*inputs]
        if spec.num_streams:
            cheap_inputs += self._extrapolation_inputs(time, slot, spec.num_streams, spec.history_length)
        if spec.num_refresh_caches:
            assert slot.selector is not None
            indices = torch.from_numpy(slot.selector.select()).to(slot.refresh_caches[0].device, non_blocking=True)
            cheap_inputs += [indices, *slot.refresh_caches]
        cheap_inputs += slot.full_stack_inputs
        cheap = self._cheap_for(cheap_inputs, slot.input_shapes, variants)
        if cheap is None:
            return None
        results = cheap(*cheap_inputs)
        n = spec.num_outputs
        self._keep_refresh_caches(slot, results[n : n + spec.num_refresh_caches])
        if spec.num_stack_inputs:
            state.adaptive.ran_cheap(state.step, results[-1])
        return results[:n]

    def _extrapolation_inputs(self, time: float, slot: CallSlot, num_streams: int, history_length: int
                              ) -> list[torch.Tensor]:
        times = [entry.time for entry in slot.history]
        weights = extrapolation_coefficients(time, times, self.config.extrapolation_order, history_length,
                                             self.config.extrapolation_damping)
        device = slot.history[0].features[0].device
        coefficients = torch.tensor(weights, dtype=torch.float32).to(device, non_blocking=True)
        # Short histories are padded with the oldest entry; its weight is zero.
        padded = [slot.history[min(i, len(slot.history) - 1)].features for i in range(history_length)]
        return [coefficients, *(features[s] for s in range(num_streams) for features in padded)]

    def _cheap_for(self, cheap_inputs: list[Any], input_shapes: Any, variants: Variants) -> CompiledFn | None:
        """The cheap variant for these sizes; if it fails to compile, every later step runs in full."""
        cheap = variants.cheap
        if cheap is None:
            return None
        try:
            sizes = (input_shapes, tuple(x for x in cheap_inputs if isinstance(x, int)))
            return cheap.for_inputs(cheap_inputs, sizes)
        except Exception as error:
            self.stats.record_fallback(f"cheap variant failed to compile, every step runs in full: {error}")
            variants.cheap = None
            return None


def _keep(values: Sequence[torch.Tensor], reuse: Sequence[torch.Tensor] = (), same_strides: bool = False
          ) -> list[torch.Tensor]:
    """Copies of ``values`` in memory the runtime owns, written into the buffers of ``reuse`` where they fit.

    A compiled variant may write its outputs' memory again on its next call (a CUDA graph's replay does), so no
    output is kept as it is. Inductor asserts the strides its inputs were compiled with: the copies are
    contiguous, one layout for every cache tensor (a full step may return a view, transposed keys, where a cheap
    step returns a fresh tensor), or with ``same_strides`` in the layout of ``values``.
    """
    kept = []
    for i, value in enumerate(values):
        buffer = reuse[i] if i < len(reuse) else None
        if buffer is None or _layout(buffer, same_strides) != _layout(value, same_strides):
            buffer = (torch.empty_like(value) if same_strides
                      else torch.empty(value.shape, dtype=value.dtype, device=value.device))
        kept.append(buffer.copy_(value.detach()))
    return kept


def _layout(value: torch.Tensor, with_strides: bool) -> tuple[Any, ...]:
    return value.shape, value.stride() if with_strides else None, value.dtype, value.device


def _describe(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.dtype, value.device)
    return value
