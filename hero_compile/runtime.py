"""The callable Dynamo runs each step: it owns a generation's state and picks the variant on the host.

Calling conventions of the variants (built in ``hero_compile.passes``):
- ``profile(*inputs, *previous_block_outputs) -> (*outputs, *block_outputs, variability_sums)``: while the
  split is being measured (``hero_compile.passes.profile``);
- ``full(*inputs) -> (*outputs, *deep_features, *refresh_caches)``: one feature per deep stream, and what the
  refreshed shallow blocks cache (each block's output, and its keys and values with ``kv_source="cache"``);
- ``cheap(*inputs, [coefficients, *history], [refresh_indices, *refresh_caches]) -> (*outputs, *refresh_caches)``:
  the first group when there is a deep segment (``history_length`` features per stream, most recent first),
  the second when shallow blocks are refreshed.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hero_compile.config import HeroConfig
from hero_compile.passes.lower import CompiledFn
from hero_compile.schedule import extrapolation_coefficients, is_full_step
from hero_compile.stats import GraphStats
from hero_compile.token_selection import TokenSelector
from hero_compile.variability import SPLIT_RULE, VariabilityProfile, VariabilityRecorder

log = logging.getLogger("hero_compile")

# Calls with the same timestep beyond this many (a model called repeatedly outside a sampler) run full and
# keep no cache, so memory stays bounded.
MAX_CALLS_PER_STEP = 4


@dataclass(frozen=True)
class InputRoles:
    """Which graph inputs the runtime reads."""

    timestep_index: int
    activation_indices: tuple[int, ...]
    """Inputs that are not parameters: their shapes decide whether cached features still fit."""


@dataclass(frozen=True)
class VariantSpec:
    """What the runtime needs to know of the compiled variants."""

    num_outputs: int
    num_streams: int
    history_length: int
    num_refresh_caches: int
    token_grid: tuple[int, ...] | None
    """Grid of the refreshed tokens (frames, height, width or a 1-D length); ``None`` without refresh."""


class LazyVariant:
    """A graph variant compiled on first use, for the real inputs it is first called with, outside Dynamo's
    tracing context (it is compiled while Dynamo's compiled code runs, not while Dynamo traces).

    It is specialized to those inputs' sizes, so the caller names the sizes: a graph with dynamic shapes is
    compiled once per distinct ``sizes``.
    """

    def __init__(self, compile: Callable[[list[Any]], CompiledFn]) -> None:
        self.compile = compile
        self.by_sizes: dict[Any, CompiledFn] = {}

    def for_inputs(self, inputs: Sequence[Any], sizes: Any) -> CompiledFn:
        if sizes not in self.by_sizes:
            with torch._guards.tracing(None):
                self.by_sizes[sizes] = self.compile(list(inputs))
        return self.by_sizes[sizes]


@dataclass
class Variants:
    """The full and cheap variants of one split."""

    spec: VariantSpec
    full: CompiledFn
    cheap: LazyVariant | None
    """``None`` when the split leaves nothing to skip (no deep segment, no refreshed block)."""


@dataclass
class Profiling:
    """The first generation's profiling phase: every step runs the profile variant until the split is fixed."""

    variant: CompiledFn
    recorder: VariabilityRecorder
    zero_previous: Callable[[Sequence[Any]], list[torch.Tensor]]
    """Stand-ins for the previous step's block outputs on a generation's first call (its sums are dropped)."""
    build: Callable[[int], Variants]
    """The variants of a split."""


@dataclass
class CallSlotCache:
    """Caches of one call slot (e.g. the conditional or unconditional CFG call)."""

    signature: tuple[Any, ...]
    history: deque[tuple[float, list[torch.Tensor]]]
    """Deep-stream features of the last full steps with their timesteps, most recent first."""
    refresh_caches: list[torch.Tensor] = field(default_factory=list)
    """Latest full-token values the refreshed shallow blocks cache (outputs, and keys and values if cached)."""


@dataclass
class GenerationState:
    """Where the current generation is: step, call slot within the step, each slot's cache, token staleness."""

    selector: TokenSelector | None
    timestep: float | None = None
    step: int = -1
    slot: int = 0
    timesteps: list[float] = field(default_factory=list)
    previous_timesteps: list[float] = field(default_factory=list)
    caches: dict[int, CallSlotCache] = field(default_factory=dict)
    refresh_indices: dict[int, torch.Tensor] = field(default_factory=dict)
    """The refresh subset of each step, chosen once and shared by the step's calls and blocks."""

    def advance(self, timestep: float) -> bool:
        """Place a call with ``timestep``; returns True when it starts a new generation."""
        if self.timestep is None or timestep > self.timestep:
            if self.timesteps:
                self.previous_timesteps = self.timesteps
            self.timesteps, self.step, self.slot = [timestep], 0, 0
            self.caches.clear()
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

    def indices_for_step(self, device: torch.device) -> torch.Tensor:
        assert self.selector is not None
        if self.step not in self.refresh_indices:
            chosen = torch.from_numpy(self.selector.select())
            self.refresh_indices[self.step] = chosen.to(device, non_blocking=True)
        return self.refresh_indices[self.step]


class HeroRuntime:
    """Runs one Dynamo graph under HERO: full steps refresh the caches, cheap steps reuse and extrapolate.

    Built either with the variants of a known split, or in a profiling phase that measures the variability
    profile over the first ``profile_steps`` steps, then fixes the split and builds the variants.
    """

    def __init__(
        self,
        config: HeroConfig,
        roles: InputRoles,
        stats: GraphStats,
        variants: Variants | None = None,
        profiling: Profiling | None = None,
    ) -> None:
        assert (variants is None) != (profiling is None), "a runtime starts with variants or with profiling"
        self.config = config
        self.roles = roles
        self.stats = stats
        self.variants = variants
        self.profiling = profiling
        self.profile: VariabilityProfile | None = None
        self.state = self._new_state()

    def _new_state(self) -> GenerationState:
        grid = self.variants.spec.token_grid if self.variants else None
        selector = None if grid is None else TokenSelector(grid, self.config.patch_size, self.config.refresh_ratio)
        return GenerationState(selector=selector)

    def reset(self) -> None:
        """Forget the current generation, its caches and the schedule learned from earlier ones."""
        self.state = self._new_state()

    def cache_bytes(self) -> int:
        """Memory the current generation's caches hold (extrapolation history and refresh caches)."""
        return sum(
            tensor.nbytes
            for cache in self.state.caches.values()
            for tensor in [*(f for _, features in cache.history for f in features), *cache.refresh_caches]
        )

    def __call__(self, *inputs: Any) -> Any:
        timestep = float(inputs[self.roles.timestep_index].reshape(-1)[0])
        new_generation = self.state.advance(timestep)
        if new_generation:
            self.stats.generations += 1
        if self.profiling is not None:
            if not self._profiling_done(new_generation):
                return self._run_profile(inputs, new_generation)
            self._fix_split(self.profiling)
        variants = self.variants
        assert variants is not None
        cache = self._slot_cache(inputs, variants)
        if cache is not None and self._cheap_allowed(cache, variants):
            outputs = self._run_cheap(inputs, timestep, cache, variants)
            if outputs is not None:
                self.stats.cheap_steps += 1
                return outputs
        return self._run_full(inputs, timestep, cache, variants)

    def _profiling_done(self, new_generation: bool) -> bool:
        assert self.profiling is not None
        measured = self.profiling.recorder.measured
        return measured and (new_generation or self.state.step >= self.config.profile_steps)

    def _run_profile(self, inputs: Sequence[Any], new_generation: bool) -> Any:
        assert self.profiling is not None
        recorder = self.profiling.recorder
        if new_generation:
            recorder.start_generation()
        signature = self._signature(inputs)
        previous = recorder.previous_outputs(self.state.slot, signature)
        profile_inputs = [*inputs, *(previous if previous is not None else self.profiling.zero_previous(inputs))]
        results = self.profiling.variant(*profile_inputs)
        self.stats.full_steps += 1
        measured = len(profile_inputs) - len(inputs)
        n = len(results) - measured - 1
        if self.state.slot < MAX_CALLS_PER_STEP:  # as for caches: repeated calls keep nothing
            recorder.record(self.state.step, self.state.slot, signature, list(results[n:-1]),
                            results[-1] if previous is not None else None)
        return results[:n]

    def _fix_split(self, profiling: Profiling) -> None:
        self.profile = profiling.recorder.profile()
        split = self.profile.split
        self.stats.variability = self.profile.variability
        self.stats.split_reason = f"profiled over steps {list(self.profile.steps)}: {SPLIT_RULE}"
        self.variants = profiling.build(split)
        self.profiling = None
        self.state.selector = self._new_state().selector

    def _run_full(self, inputs: Sequence[Any], timestep: float, cache: CallSlotCache | None,
                  variants: Variants) -> Any:
        self.stats.full_steps += 1
        results = variants.full(*inputs)
        n, streams = variants.spec.num_outputs, variants.spec.num_streams
        if cache is not None:
            if streams:
                cache.history.appendleft((timestep, [_cacheable(f) for f in results[n : n + streams]]))
            cache.refresh_caches = [_cacheable(b) for b in results[n + streams :]]
        if self.state.selector is not None:
            self.state.selector.mark_all_fresh()
        return results[:n]

    def _cheap_allowed(self, cache: CallSlotCache, variants: Variants) -> bool:
        # Under autograd the caches would hold graph history; HERO is for sampling, so grad mode runs full.
        if variants.cheap is None or torch.is_grad_enabled():
            return False
        spec = variants.spec
        if (spec.num_streams and not cache.history) or (spec.num_refresh_caches and not cache.refresh_caches):
            return False
        return not is_full_step(self.state.step, self.config, self.state.total_steps())

    def _signature(self, inputs: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(_describe(inputs[i]) for i in self.roles.activation_indices)

    def _slot_cache(self, inputs: Sequence[Any], variants: Variants) -> CallSlotCache | None:
        """The cache of this call's slot, emptied if the inputs' shapes changed since it was filled."""
        if variants.cheap is None or self.state.slot >= MAX_CALLS_PER_STEP:
            return None
        signature = self._signature(inputs)
        cache = self.state.caches.get(self.state.slot)
        if cache is None or cache.signature != signature:
            cache = CallSlotCache(signature, deque(maxlen=variants.spec.history_length))
            self.state.caches[self.state.slot] = cache
        return cache

    def _run_cheap(self, inputs: Sequence[Any], timestep: float, cache: CallSlotCache, variants: Variants) -> Any:
        spec = variants.spec
        cheap_inputs = [*inputs]
        if spec.num_streams:
            cheap_inputs += self._extrapolation_inputs(timestep, cache, spec)
        if spec.num_refresh_caches:
            device = cache.refresh_caches[0].device
            cheap_inputs += [self.state.indices_for_step(device), *cache.refresh_caches]
        cheap = self._cheap_for(cheap_inputs, cache.signature, variants)
        if cheap is None:
            return None
        results = cheap(*cheap_inputs)
        n = spec.num_outputs
        cache.refresh_caches = [_cacheable(c) for c in results[n:]]
        return results[:n]

    def _extrapolation_inputs(self, timestep: float, cache: CallSlotCache, spec: VariantSpec) -> list[torch.Tensor]:
        times = [t for t, _ in cache.history]
        weights = extrapolation_coefficients(timestep, times, self.config.extrapolation_order, spec.history_length)
        device = cache.history[0][1][0].device
        coefficients = torch.tensor(weights, dtype=torch.float32).to(device, non_blocking=True)
        # Short histories are padded with the oldest entry; its weight is zero.
        padded = [cache.history[min(i, len(cache.history) - 1)][1] for i in range(spec.history_length)]
        return [coefficients, *(features[s] for s in range(spec.num_streams) for features in padded)]

    def _cheap_for(self, cheap_inputs: list[Any], signature: Any, variants: Variants) -> CompiledFn | None:
        """The cheap variant for these sizes; if it fails to compile, every later step runs in full."""
        assert variants.cheap is not None
        try:
            sizes = (signature, tuple(x for x in cheap_inputs if isinstance(x, int)))
            return variants.cheap.for_inputs(cheap_inputs, sizes)
        except Exception as error:
            log.warning("hero: graph %d: compiling the cheap variant failed (%s); running every step in full",
                        self.stats.graph_id, error)
            self.stats.fallback_reason = f"cheap variant failed to compile: {error}"
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
