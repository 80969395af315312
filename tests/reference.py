"""A reference cheap step: what hero's cheap variant must compute, written as a small eager computation.

The reference runs an eager copy of the model and changes what some blocks return through forward hooks; it
shares nothing with hero's passes or runtime. What it computes on a cheap call, in the order the model runs:

- each *refreshed* shallow block returns its cached output with the rows of this step's refresh subset taken
  from its actual output. Running the whole block and keeping the subset's rows is obviously what running it on
  the subset means when queries come from the subset and keys/values from all current tokens
  (``kv_source="current"``): every other op of a block is token-wise. The result becomes the block's cache;
- the module ending the deep segment (the last deep block, or the last block of the stack's tail) returns, for
  each stream it outputs, the Lagrange extrapolation in the timestep of what the slot's last full steps cached:
  with output caching ``sum_i c_i * output_i``; with residual caching the stream's current input to the first
  deep block plus ``sum_i c_i * (output_i - input_i)``. With ``extrapolation_damping`` d < 1 the weights are
  ``d * c_i`` plus ``1 - d`` on the most recent step. The deep blocks still run; their result is discarded.

Full calls run the model unchanged and record those caches. The generation state (steps, call slots, the
full-step schedule) is kept here too, from the rules the documentation states. What hero decided for the graph
(split, which blocks are refreshed) is read from its stats and given as a :class:`Plan`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from math import prod
from typing import Any

import torch
from torch import nn

from hero_compile import GraphStats, HeroConfig
from hero_compile.schedule import is_full_step
from hero_compile.token_selection import TokenSelector

Forward = Callable[[nn.Module, Mapping[str, Any]], torch.Tensor]
"""``forward(model, inputs)``: the model's prediction for keyword arguments ``inputs`` (``timestep`` among them)."""

Timestep = tuple[float, ...]


@dataclass(frozen=True)
class Plan:
    """The parts hero gave a graph's modules, as module paths (``blocks.3``), and the token grid."""

    first_deep: str
    """The first extrapolated block: its input streams are the residuals' bases."""
    last_deep: str
    """The module whose outputs are the streams leaving the deep segment."""
    refreshed: tuple[str, ...]
    """Shallow blocks that recompute only the refresh subset of their tokens on cheap steps."""
    grid: tuple[int, ...]
    """The token grid the refresh subset is balanced over: (frames, height, width) in tokens, or (tokens,)."""

    @classmethod
    def from_stats(cls, graph: GraphStats, grid: Sequence[int], period_ends: Mapping[str, str] | None = None) -> Plan:
        """``period_ends``: for blocks that are periods of two interleaved stacks (Latte: temporal block ``i``,
        then spatial block ``i + 1``), the module whose output ends the period, where the refresh is applied."""
        assert graph.split is not None and graph.split < len(graph.blocks), "the reference needs deep blocks"
        deep = [*graph.blocks[graph.split :], *graph.tail_blocks]
        ends = period_ends or {}
        refreshed = tuple(ends.get(path, path) for path in graph.tokens_refreshed_per_cheap_step)
        return cls(deep[0], deep[-1], refreshed, tuple(grid))


def lagrange_weights(time: float, times: Sequence[float]) -> list[float]:
    """Weights ``w`` such that ``sum_i w_i * f_i`` is the value at ``time`` of the polynomial through the points
    ``(times[i], f_i)``: constant, line or parabola (orders 0, 1, 2), each weight written out."""
    if len(times) == 1:
        return [1.0]
    if len(times) == 2:
        t1, t2 = times
        return [(time - t2) / (t1 - t2), (time - t1) / (t2 - t1)]
    t1, t2, t3 = times
    return [
        (time - t2) * (time - t3) / ((t1 - t2) * (t1 - t3)),
        (time - t1) * (time - t3) / ((t2 - t1) * (t2 - t3)),
        (time - t1) * (time - t2) / ((t3 - t1) * (t3 - t2)),
    ]


class Calendar:
    """Places calls as the documentation defines it: a rising timestep (its largest value, or any value of a
    timestep of the same length) starts a generation, the same timestep again is the next call slot (CFG), a
    lower one the next step. A generation's length is known once it follows the previous one's timesteps."""

    def __init__(self) -> None:
        self.timesteps: list[Timestep] = []
        self.previous: list[Timestep] = []
        self.slot = 0

    def place(self, timestep: Timestep) -> bool:
        """Place a call; True when it starts a generation."""
        last = self.timesteps[-1] if self.timesteps else None
        if last is None or max(timestep) > max(last) or (
            len(timestep) == len(last) and any(t > p for t, p in zip(timestep, last))
        ):
            self.previous = self.timesteps or self.previous
            self.timesteps, self.slot = [timestep], 0
            return True
        if timestep == last:
            self.slot += 1
        else:
            self.timesteps.append(timestep)
            self.slot = 0
        return False

    @property
    def step(self) -> int:
        return len(self.timesteps) - 1

    def total_steps(self) -> int | None:
        known = self.previous[: len(self.timesteps)] == self.timesteps
        return len(self.previous) if self.previous and known else None


@dataclass
class FullStep:
    """What a full call cached for the deep segment: per stream leaving it, its output or its residual."""

    time: float
    features: tuple[torch.Tensor, ...]


@dataclass
class Slot:
    """One call slot's state: its full steps (most recent first), refresh caches and token staleness."""

    selector: TokenSelector | None
    history: list[FullStep] = field(default_factory=list)
    caches: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Call:
    """A call's prediction and whether the schedule made it cheap."""

    output: torch.Tensor
    cheap: bool


class Reference:
    """Runs calls as hero's variants should, on an eager copy of ``model`` (hooks never touch the original).

    Not modelled: calls beyond the fourth at one timestep (hero runs them in full and caches nothing), changes of
    input shapes within a generation, non-finite caches, grad mode.
    """

    def __init__(self, model: nn.Module, config: HeroConfig, plan: Plan, forward: Forward) -> None:
        assert config.kv_source == "current", "the reference computes keys and values from all current tokens"
        self.model = copy.deepcopy(model)
        self.config, self.plan, self.forward = config, plan, forward
        self.calendar = Calendar()
        self.slots: dict[int, Slot] = {}

    def __call__(self, inputs: Mapping[str, Any]) -> Call:
        timestep: Timestep = tuple(inputs["timestep"].reshape(-1).tolist())
        if self.calendar.place(timestep):
            self.slots.clear()
        if self.calendar.slot not in self.slots:
            self.slots[self.calendar.slot] = Slot(self._selector())
        slot = self.slots[self.calendar.slot]
        time = sum(timestep) / len(timestep)
        cheap = self._cheap(slot)
        hooks = self._cheap_hooks(slot, time) if cheap else self._full_hooks(slot, time)
        with hooks:
            output = self.forward(self.model, inputs)
        return Call(output, cheap)

    def full_compute(self, inputs: Mapping[str, Any]) -> torch.Tensor:
        """The unchanged model's prediction."""
        return self.forward(self.model, inputs)

    def _selector(self) -> TokenSelector | None:
        if not self.plan.refreshed:
            return None
        return TokenSelector(self.plan.grid, self.config.patch_size, self.config.refresh_ratio)

    def _cheap(self, slot: Slot) -> bool:
        """Cheap unless the schedule makes the step full or the slot has nothing cached yet."""
        full = is_full_step(self.calendar.step, self.config, self.calendar.total_steps())
        return not full and bool(slot.history) and (bool(slot.caches) or not self.plan.refreshed)

    @contextmanager
    def _full_hooks(self, slot: Slot, time: float) -> Iterator[None]:
        """Record each refreshed block's output, and the deep segment's input and output streams."""
        entering: list[torch.Tensor] = []

        def keep_cache(path: str) -> Callable[..., None]:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                slot.caches[path] = self._refreshed_stream(output).detach().clone()
            return hook

        def record_features(module: nn.Module, args: Any, output: Any) -> None:
            features = tuple(self._feature(stream, entering) for stream in _streams(output))
            slot.history = [FullStep(time, features), *slot.history][: self.config.extrapolation_order + 1]

        with self._hooks({p: keep_cache(p) for p in self.plan.refreshed}, entering, record_features):
            yield
        if slot.selector is not None:
            slot.selector.mark_all_fresh()

    @contextmanager
    def _cheap_hooks(self, slot: Slot, time: float) -> Iterator[None]:
        """Refresh the subset into each refreshed block's cache; replace the deep segment's output streams by
        their extrapolation."""
        entering: list[torch.Tensor] = []
        indices = torch.from_numpy(slot.selector.select()) if slot.selector is not None else None
        history = slot.history[: self.config.extrapolation_order + 1]
        damping = self.config.extrapolation_damping
        weights = [damping * w + (1.0 - damping) * (i == 0)
                   for i, w in enumerate(lagrange_weights(time, [step.time for step in history]))]

        def refresh(path: str) -> Callable[..., Any]:
            def hook(module: nn.Module, args: Any, output: Any) -> Any:
                assert indices is not None
                computed = self._refreshed_stream(output)
                refreshed = slot.caches[path].clone()
                refreshed[:, indices] = computed[:, indices]
                slot.caches[path] = refreshed
                return _replaced(output, computed, refreshed)
            return hook

        def extrapolate(module: nn.Module, args: Any, output: Any) -> Any:
            predictions = []
            for s, stream in enumerate(_streams(output)):
                prediction = sum(w * step.features[s] for w, step in zip(weights, history))
                base = self._residual_base(stream, entering)
                predictions.append(prediction if base is None else base + prediction)
            return predictions[0] if isinstance(output, torch.Tensor) else tuple(predictions)

        with self._hooks({p: refresh(p) for p in self.plan.refreshed}, entering, extrapolate):
            yield

    @contextmanager
    def _hooks(self, refreshed: dict[str, Callable[..., Any]], entering: list[torch.Tensor],
               on_deep_output: Callable[..., Any]) -> Iterator[None]:
        """Hooks on the refreshed blocks, one collecting the tensors entering the first deep block, one on the
        deep segment's last module; all removed on exit."""

        def collect(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            entering[:] = [x for x in (*args, *kwargs.values()) if isinstance(x, torch.Tensor)]

        get = self.model.get_submodule
        handles = [get(path).register_forward_hook(hook) for path, hook in refreshed.items()]
        handles.append(get(self.plan.first_deep).register_forward_pre_hook(collect, with_kwargs=True))
        handles.append(get(self.plan.last_deep).register_forward_hook(on_deep_output))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _refreshed_stream(self, output: Any) -> torch.Tensor:
        """Of a block's output streams, the one laid out on the token grid: ``(batch, tokens, channels)``."""
        tokens = prod(self.plan.grid)
        (stream,) = [s for s in _streams(output) if s.dim() == 3 and s.shape[1] == tokens]
        return stream

    def _feature(self, stream: torch.Tensor, entering: Sequence[torch.Tensor]) -> torch.Tensor:
        base = self._residual_base(stream, entering)
        return (stream if base is None else stream - base).detach().clone()

    def _residual_base(self, stream: torch.Tensor, entering: Sequence[torch.Tensor]) -> torch.Tensor | None:
        """With residual caching, the same stream's input to the deep segment: the first input tensor of its
        shape and dtype (blocks take their streams first: Cosmos passes a learned position embedding of the same
        shape after them). A stream with none (the joined streams leaving a single-stream tail) has no residual:
        its output is cached."""
        if self.config.cache_target == "output":
            return None
        same = [x for x in entering if x.shape == stream.shape and x.dtype == stream.dtype]
        return same[0] if same else None


def _streams(output: Any) -> tuple[torch.Tensor, ...]:
    return (output,) if isinstance(output, torch.Tensor) else tuple(output)


def _replaced(output: Any, old: torch.Tensor, new: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return new
    return type(output)(new if s is old else s for s in output)
