"""The callable Dynamo runs each step: it owns a generation's state and picks the variant on the host.

Calling conventions of the variants (built in ``hero_compile.passes``):
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

log = logging.getLogger("hero_compile")

# Calls with the same timestep beyond this many (a model called repeatedly outside a sampler) run full and
# keep no cache, so memory stays bounded.
MAX_CALLS_PER_STEP = 4


@dataclass(frozen=True)
class VariantSpec:
    """What the runtime needs to know of the compiled variants."""

    num_outputs: int
    num_streams: int
    history_length: int
    num_refresh_caches: int
    token_grid: tuple[int, ...] | None
    """Grid of the refreshed tokens (frames, height, width or a 1-D length); ``None`` without refresh."""
    timestep_index: int
    activation_indices: tuple[int, ...]
    """Inputs that are not parameters: their shapes decide whether cached features still fit."""


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
    """Runs one Dynamo graph under HERO: full steps refresh the caches, cheap steps reuse and extrapolate."""

    def __init__(
        self,
        config: HeroConfig,
        spec: VariantSpec,
        full: CompiledFn,
        compile_cheap: Callable[[list[Any]], CompiledFn] | None,
        stats: GraphStats,
    ) -> None:
        self.config = config
        self.spec = spec
        self.full = full
        self.compile_cheap = compile_cheap
        self.cheap_by_sizes: dict[tuple[int, ...], CompiledFn] = {}
        self.stats = stats
        self.state = self._new_state()

    def _new_state(self) -> GenerationState:
        grid = self.spec.token_grid
        selector = None if grid is None else TokenSelector(grid, self.config.patch_size, self.config.refresh_ratio)
        return GenerationState(selector=selector)

    def reset(self) -> None:
        """Forget the current generation, its caches and the schedule learned from earlier ones."""
        self.state = self._new_state()

    def __call__(self, *inputs: Any) -> Any:
        timestep = float(inputs[self.spec.timestep_index].reshape(-1)[0])
        if self.state.advance(timestep):
            self.stats.generations += 1
        cache = self._slot_cache(inputs)
        if cache is not None and self._cheap_allowed(cache):
            outputs = self._run_cheap(inputs, timestep, cache)
            if outputs is not None:
                self.stats.cheap_steps += 1
                return outputs
        return self._run_full(inputs, timestep, cache)

    def _run_full(self, inputs: Sequence[Any], timestep: float, cache: CallSlotCache | None) -> Any:
        self.stats.full_steps += 1
        results = self.full(*inputs)
        n, streams = self.spec.num_outputs, self.spec.num_streams
        if cache is not None:
            if streams:
                cache.history.appendleft((timestep, [_cacheable(f) for f in results[n : n + streams]]))
            cache.refresh_caches = [_cacheable(b) for b in results[n + streams :]]
        if self.state.selector is not None:
            self.state.selector.mark_all_fresh()
        return results[:n]

    def _cheap_allowed(self, cache: CallSlotCache) -> bool:
        # Under autograd the caches would hold graph history; HERO is for sampling, so grad mode runs full.
        if self.compile_cheap is None or torch.is_grad_enabled():
            return False
        if (self.spec.num_streams and not cache.history) or (self.spec.num_refresh_caches and not cache.refresh_caches):
            return False
        return not is_full_step(self.state.step, self.config, self.state.total_steps())

    def _slot_cache(self, inputs: Sequence[Any]) -> CallSlotCache | None:
        """The cache of this call's slot, emptied if the inputs' shapes changed since it was filled."""
        if self.compile_cheap is None or self.state.slot >= MAX_CALLS_PER_STEP:
            return None
        signature = tuple(_describe(inputs[i]) for i in self.spec.activation_indices)
        cache = self.state.caches.get(self.state.slot)
        if cache is None or cache.signature != signature:
            cache = CallSlotCache(signature, deque(maxlen=self.spec.history_length))
            self.state.caches[self.state.slot] = cache
        return cache

    def _run_cheap(self, inputs: Sequence[Any], timestep: float, cache: CallSlotCache) -> Any:
        cheap_inputs = [*inputs]
        if self.spec.num_streams:
            cheap_inputs += self._extrapolation_inputs(timestep, cache)
        if self.spec.num_refresh_caches:
            device = cache.refresh_caches[0].device
            cheap_inputs += [self.state.indices_for_step(device), *cache.refresh_caches]
        cheap = self._cheap_for(cheap_inputs)
        if cheap is None:
            return None
        results = cheap(*cheap_inputs)
        n = self.spec.num_outputs
        cache.refresh_caches = [_cacheable(c) for c in results[n:]]
        return results[:n]

    def _extrapolation_inputs(self, timestep: float, cache: CallSlotCache) -> list[torch.Tensor]:
        times = [t for t, _ in cache.history]
        weights = extrapolation_coefficients(
            timestep, times, self.config.extrapolation_order, self.spec.history_length
        )
        device = cache.history[0][1][0].device
        coefficients = torch.tensor(weights, dtype=torch.float32).to(device, non_blocking=True)
        # Short histories are padded with the oldest entry; its weight is zero.
        padded = [cache.history[min(i, len(cache.history) - 1)][1] for i in range(self.spec.history_length)]
        return [coefficients, *(features[s] for s in range(self.spec.num_streams) for features in padded)]

    def _cheap_for(self, cheap_inputs: list[Any]) -> CompiledFn | None:
        """The cheap variant compiled for these sizes; compiled on first use, outside Dynamo's tracing."""
        sizes = tuple(x for x in cheap_inputs if isinstance(x, int))
        if sizes not in self.cheap_by_sizes:
            assert self.compile_cheap is not None
            try:
                with torch._guards.tracing(None):
                    self.cheap_by_sizes[sizes] = self.compile_cheap(cheap_inputs)
            except Exception as error:
                log.warning("hero: graph %d: compiling the cheap variant failed (%s); running every step in full",
                            self.stats.graph_id, error)
                self.stats.fallback_reason = f"cheap variant failed to compile: {error}"
                self.compile_cheap = None
                return None
        return self.cheap_by_sizes[sizes]


def _cacheable(value: torch.Tensor) -> torch.Tensor:
    # One layout for every cache tensor: Inductor asserts the strides its inputs were compiled with, and a
    # full step may return a view (transposed keys) where a cheap step returns a fresh tensor.
    return value.detach().contiguous()


def _describe(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.dtype, value.device)
    return value
