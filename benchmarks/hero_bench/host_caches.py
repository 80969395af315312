"""Baselines whose caching decisions run on the host, as in their reference code: first-block caching
(dynamic skipping), TeaCache and EasyCache (whole-stack skipping while an accumulated change estimate stays
small), ToCa (tokens chosen by attention scores), DuCa (random tokens) and WorldCache (per-token prediction of the
stack's output, ordered by curvature, with adaptive skipping).

Each replaces a copy of the model's ``blocks`` list by one :class:`HostCachedStack`. Its ``forward`` is
excluded from compilation (``torch.compiler.disable``, as diffusers' cache hooks do, so it is a graph
break) and calls kernels compiled with the benchmark's lowering: the model's prelude and postlude stay
compiled, and only the bookkeeping runs in Python. The token-caching kernels are written for the DiT blocks
of ``hero_compile.testing.dit`` (the benchmark DiT and the world model): ToCa needs the attention
probabilities, so its kernels compute attention explicitly instead of with fused SDPA, and the table shows
what that costs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hero_bench.methods import BuildOptions, Candidate, Method, compile_with
from hero_compile.testing.dit import DiTBlock, apply_rotary, modulate

Selection = Literal["attention", "random"]
Rotary = tuple[torch.Tensor, torch.Tensor] | None
"""The cos/sin tables the model passes its blocks (``block(h, cond, rotary)``), or ``None``."""

STALENESS_WEIGHT = 0.5
"""ToCa's cache-frequency term: a token's score grows by this much per step since it was last computed,
relative to the largest attention score, so that no token stays cached forever."""


class HostCachedStack(nn.Module):
    """Runs a model's blocks in place of its block list, with caching decided on the host.

    Calls are numbered within a generation: ``calls_per_step`` consecutive calls (the conditional and the
    unconditional call of a guided step) form one step, and each call slot has its own cache.
    """

    def __init__(self, blocks: nn.ModuleList, calls_per_step: int) -> None:
        super().__init__()
        self.blocks = blocks
        self.calls_per_step = calls_per_step
        self.calls = 0
        self.slots: dict[int, dict[str, Any]] = {}

    def reset(self) -> None:
        self.calls = 0
        self.slots.clear()

    def cache_bytes(self) -> int:
        return sum(_nbytes(value) for slot in self.slots.values() for value in slot.values())

    @torch.compiler.disable
    def forward(self, h: torch.Tensor, cond: torch.Tensor, rotary: Rotary = None) -> torch.Tensor:
        step, slot = divmod(self.calls, self.calls_per_step)
        self.calls += 1
        return self.run(h, cond, rotary, step, self.slots.setdefault(slot, {}))

    def run(self, h: torch.Tensor, cond: torch.Tensor, rotary: Rotary, step: int, cache: dict[str, Any]
            ) -> torch.Tensor:
        raise NotImplementedError


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


def _loop_position(step: int, steps: int, cache: dict[str, Any]) -> int:
    """``step``'s position in its sampling loop of ``steps`` steps; the cache is dropped when a loop starts (a new
    rollout chunk), as the peers' reference code starts a fresh cache per pipeline call."""
    position = step % steps
    if position == 0:
        cache.clear()
    return position


def _run_blocks(blocks: nn.ModuleList, h: torch.Tensor, cond: torch.Tensor, rotary: Rotary) -> torch.Tensor:
    for block in blocks:
        h = _call_block(block, h, cond, rotary)
    return h


def _call_block(block: Callable[..., torch.Tensor], h: torch.Tensor, cond: torch.Tensor, rotary: Rotary
                ) -> torch.Tensor:
    """``block(h, cond)``, with the rotary tables only if the model passed some (not every block takes them)."""
    return block(h, cond) if rotary is None else block(h, cond, rotary)


class FirstBlockCache(HostCachedStack):
    """The first block always runs; when its residual changed by less than ``threshold`` (relative mean
    absolute difference) since the last step that ran the rest, the rest of the stack is skipped and its
    cached residual reused."""

    def __init__(self, blocks: nn.ModuleList, calls_per_step: int, threshold: float, options: BuildOptions) -> None:
        super().__init__(blocks, calls_per_step)
        self.threshold = threshold
        self.rest_blocks = nn.ModuleList(blocks[1:])
        self.first = compile_with(options, blocks[0], fullgraph=True)
        self.rest = compile_with(options, _run_blocks, fullgraph=True)

    def run(self, h: torch.Tensor, cond: torch.Tensor, rotary: Rotary, step: int, cache: dict[str, Any]
            ) -> torch.Tensor:
        first = _call_block(self.first, h, cond, rotary)
        residual = first - h
        previous = cache.get("first_residual")
        if previous is not None:
            change = (residual - previous).abs().mean() / previous.abs().mean()
            if change.item() < self.threshold:
                return first + cache["rest_residual"]
        out = self.rest(self.rest_blocks, first, cond, rotary)
        cache.update(first_residual=residual, rest_residual=out - first)
        return out


class AccumulatedChangeCache(HostCachedStack):
    """Skips the whole stack, adding the residual it had at the last computed step, while a change estimate
    accumulated since then stays under ``threshold`` (TeaCache, EasyCache). The first ``warmup_steps`` and the
    last step of each sampling loop of ``steps`` steps are computed; the state is dropped when a loop starts."""

    def __init__(self, blocks: nn.ModuleList, calls_per_step: int, options: BuildOptions, steps: int,
                 threshold: float, warmup_steps: int) -> None:
        super().__init__(blocks, calls_per_step)
        self.steps, self.threshold, self.warmup_steps = steps, threshold, warmup_steps
        self.compute = compile_with(options, _run_blocks, fullgraph=True)
        self.computed_calls = 0
        """Calls that ran the stack, since the last :meth:`reset`."""

    def reset(self) -> None:
        super().reset()
        self.computed_calls = 0

    def run(self, h: torch.Tensor, cond: torch.Tensor, rotary: Rotary, step: int, cache: dict[str, Any]
            ) -> torch.Tensor:
        position = _loop_position(step, self.steps, cache)
        change = self.change(h, cond, cache)
        forced = position < self.warmup_steps or position == self.steps - 1
        if not forced and change is not None and "residual" in cache:
            cache["accumulated"] += change
            if cache["accumulated"] < self.threshold:
                return h + cache["residual"]
        out = self.compute(self.blocks, h, cond, rotary)
        self.computed_calls += 1
        self.computed(h, out, cache)
        cache.update(residual=out - h, accumulated=0.0)
        return out

    def change(self, h: torch.Tensor, cond: torch.Tensor, cache: dict[str, Any]) -> float | None:
        """This step's change estimate (read on the host), or ``None`` while there is none; keeps what the next
        step's estimate needs."""
        raise NotImplementedError

    def computed(self, h: torch.Tensor, out: torch.Tensor, cache: dict[str, Any]) -> None:
        """The stack ran on ``h`` and gave ``out``."""


def _relative_l1(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return (value - reference).abs().mean() / reference.abs().mean().clamp(min=1e-12)


TEACACHE_COEFFICIENTS = (7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02)
"""The rescaling polynomial TeaCache publishes for FLUX and HunyuanVideo (highest power first). TeaCache fits one
per model, mapping the change of the first block's modulated input to the change of the model's output."""


class TeaCache(AccumulatedChangeCache):
    """TeaCache (Liu et al., 2024), learnt from its public code (github.com/ali-vilab/TeaCache): the change is the
    relative L1 distance (mean absolute difference over mean absolute value) of the first block's modulated input
    (``modulate(norm1(h), shift1, scale1)``: tokens and timestep both) from the previous step's, rescaled by a
    polynomial; only the first and last steps are forced. The reference caches the residual of its
    transformer's blocks, as here the stack's."""

    def __init__(self, blocks: nn.ModuleList, calls_per_step: int, options: BuildOptions, steps: int,
                 threshold: float, coefficients: tuple[float, ...] = TEACACHE_COEFFICIENTS) -> None:
        super().__init__(blocks, calls_per_step, options, steps, threshold, warmup_steps=1)
        if not isinstance(blocks[0], DiTBlock):
            raise TypeError("TeaCache reads the modulation of a hero_compile.testing.dit.DiTBlock")
        self.coefficients = coefficients
        self.modulated_input = compile_with(options, _modulated_input, fullgraph=True)

    def change(self, h: torch.Tensor, cond: torch.Tensor, cache: dict[str, Any]) -> float | None:
        modulated = self.modulated_input(self.blocks[0], h, cond)
        previous = cache.get("modulated")
        cache["modulated"] = modulated
        if previous is None:
            return None
        return float(np.polyval(self.coefficients, _relative_l1(modulated, previous).item()))


def _modulated_input(block: DiTBlock, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    shift, scale = block.ada(F.silu(cond)).chunk(6, dim=-1)[:2]
    return modulate(block.norm1(h), shift, scale)


class EasyCache(AccumulatedChangeCache):
    """EasyCache (Zhou et al., 2025), learnt from its public code (github.com/H-EmbodVis/EasyCache,
    ``easycache_sample_video.py``): each computed step measures the transformation rate ``k``, the output's mean
    absolute change over the input's since the previous computed step; each other step predicts its output's
    relative change as ``k`` times the input's mean absolute change since the previous step over the last output's
    mean absolute value. The reference measures the whole transformer's input and output; here the stack's (the
    compiled prelude and postlude run every step, as for the other host baselines)."""

    def __init__(self, blocks: nn.ModuleList, calls_per_step: int, options: BuildOptions, steps: int,
                 threshold: float, warmup: float = 0.1) -> None:
        super().__init__(blocks, calls_per_step, options, steps, threshold, warmup_steps=max(1, round(warmup * steps)))

    def change(self, h: torch.Tensor, cond: torch.Tensor, cache: dict[str, Any]) -> float | None:
        previous = cache.get("input")
        cache["input"] = h
        if previous is None or "rate" not in cache:
            return None
        return cache["rate"] * ((h - previous).abs().mean() / cache["output"].abs().mean().clamp(min=1e-12)).item()

    def computed(self, h: torch.Tensor, out: torch.Tensor, cache: dict[str, Any]) -> None:
        if "output" in cache:
            input_change = (h - cache["computed_input"]).abs().mean().clamp(min=1e-12)
            cache["rate"] = ((out - cache["output"]).abs().mean() / input_change).item()
        cache.update(output=out, computed_input=h)


class TokenCache(HostCachedStack):
    """ToCa / DuCa: every ``interval``-th step runs in full and caches each block's attention and MLP branch
    outputs; the steps between recompute both branches for ``ratio`` of the tokens (queries of those tokens
    against keys and values of all current tokens) and reuse the cached branches for the others.

    ``selection="attention"`` (ToCa) picks the tokens other tokens attend to most, plus a staleness bonus;
    ``"random"`` (DuCa) picks them at random, and with ``aggressive`` every other cached step reuses every
    token (DuCa's alternation of conservative and aggressive steps).
    """

    def __init__(self, blocks: nn.ModuleList, calls_per_step: int, options: BuildOptions, ratio: float,
                 interval: int, selection: Selection, aggressive: bool = False) -> None:
        super().__init__(blocks, calls_per_step)
        if not all(isinstance(block, DiTBlock) for block in blocks):
            raise TypeError("token caching baselines are written for hero_compile.testing.dit.DiTBlock stacks")
        self.ratio, self.interval, self.selection, self.aggressive = ratio, interval, selection, aggressive
        self.explicit = selection == "attention"
        self.full_block = compile_with(options, _full_block, fullgraph=True)
        self.partial_block = compile_with(options, _partial_block, fullgraph=True)
        self.generator = torch.Generator().manual_seed(0)

    def reset(self) -> None:
        super().reset()
        self.generator.manual_seed(0)

    def run(self, h: torch.Tensor, cond: torch.Tensor, rotary: Rotary, step: int, cache: dict[str, Any]
            ) -> torch.Tensor:
        cached_step = step % self.interval
        if cached_step == 0 or "branches" not in cache:
            cache["branches"], cache["scores"] = [], []
            cache["staleness"] = torch.zeros(len(self.blocks), h.shape[1])
            for block in self.blocks:
                h, attn, mlp, scores = self.full_block(block, h, cond, rotary, self.explicit)
                cache["branches"].append((attn, mlp))
                cache["scores"].append(scores)
            return h
        if self.aggressive and cached_step % 2 == 0:
            for attn, mlp in cache["branches"]:
                h = h + attn + mlp
            return h
        count = max(1, math.ceil(self.ratio * h.shape[1]))
        staleness = cache["staleness"] + 1
        for i, block in enumerate(self.blocks):
            tokens = self._choose(cache["scores"][i], staleness[i], count)
            attn, mlp = cache["branches"][i]
            h, attn, mlp, scores = self.partial_block(block, h, cond, rotary, tokens, attn, mlp, self.explicit)
            cache["branches"][i] = (attn, mlp)
            if self.explicit:
                cache["scores"][i] = scores
            staleness[i, tokens] = 0
        cache["staleness"] = staleness
        return h

    def _choose(self, scores: torch.Tensor, staleness: torch.Tensor, count: int) -> torch.Tensor:
        if self.selection == "random":
            return torch.randperm(staleness.numel(), generator=self.generator)[:count].sort().values
        priority = scores.float().cpu() / scores.max().clamp(min=1e-12) + STALENESS_WEIGHT * staleness
        return priority.topk(count).indices.sort().values.to(scores.device)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, explicit: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention and, when ``explicit``, how much each key is attended to (mean probability over batch, heads
    and queries); fused SDPA otherwise, with zero scores."""
    if not explicit:
        return F.scaled_dot_product_attention(q, k, v), q.new_zeros(k.shape[-2])
    probabilities = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1]), dim=-1)
    return probabilities @ v, probabilities.mean(dim=(0, 1, 2))


def _full_block(block: DiTBlock, x: torch.Tensor, c: torch.Tensor, rotary: Rotary, explicit: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The block, returning its output, its two branch outputs and the keys' attention scores."""
    shift1, scale1, gate1, shift2, scale2, gate2 = block.ada(F.silu(c)).chunk(6, dim=-1)
    b, n, d = x.shape
    h = modulate(block.norm1(x), shift1, scale1)
    q, k, v = block.qkv(h).view(b, n, 3, block.heads, d // block.heads).permute(2, 0, 3, 1, 4)
    if rotary is not None:
        q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
    attn, scores = _attention(q, k, v, explicit)
    attn_branch = gate1[:, None] * block.proj(attn.transpose(1, 2).reshape(b, n, d))
    x = x + attn_branch
    mlp_branch = gate2[:, None] * block.mlp(modulate(block.norm2(x), shift2, scale2))
    return x + mlp_branch, attn_branch, mlp_branch, scores


def _partial_block(block: DiTBlock, x: torch.Tensor, c: torch.Tensor, rotary: Rotary, tokens: torch.Tensor,
                   attn_branch: torch.Tensor, mlp_branch: torch.Tensor, explicit: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The block with both branches recomputed for ``tokens`` only (their queries attend to every token)."""
    shift1, scale1, gate1, shift2, scale2, gate2 = block.ada(F.silu(c)).chunk(6, dim=-1)
    b, n, d = x.shape
    heads, m = block.heads, tokens.numel()
    h = modulate(block.norm1(x), shift1, scale1)
    w_q, w_kv = block.qkv.weight.split([d, 2 * d])
    b_q, b_kv = block.qkv.bias.split([d, 2 * d])
    q = F.linear(h[:, tokens], w_q, b_q).view(b, m, heads, d // heads).transpose(1, 2)
    k, v = F.linear(h, w_kv, b_kv).view(b, n, 2, heads, d // heads).permute(2, 0, 3, 1, 4)
    if rotary is not None:  # each query keeps its own token's rotation
        cos, sin = rotary
        q, k = apply_rotary(q, cos[tokens], sin[tokens]), apply_rotary(k, cos, sin)
    attn, scores = _attention(q, k, v, explicit)
    fresh_attn = gate1[:, None] * block.proj(attn.transpose(1, 2).reshape(b, m, d))
    attn_branch = attn_branch.index_copy(1, tokens, fresh_attn)
    x = x + attn_branch
    fresh_mlp = gate2[:, None] * block.mlp(modulate(block.norm2(x[:, tokens]), shift2, scale2))
    mlp_branch = mlp_branch.index_copy(1, tokens, fresh_mlp)
    return x + mlp_branch, attn_branch, mlp_branch, scores


@dataclass(frozen=True)
class WorldCacheSettings:
    """WorldCache's knobs. The defaults are the reference code's Aether setting (its README and ``cache_init``):
    a 50-step schedule with 10 warm-up steps, hence ``warmup=0.2``."""

    threshold: float = 0.2
    """Accumulated drift at which a full step is forced (``error_threshold``): lower stays closer to full
    compute; 0 never skips."""
    max_skips: int = 2
    """Most steps predicted in a row (``n_max``); also the horizon over which the chaotic tokens' slope turns
    from the last velocity to the one before it."""
    warmup: float = 0.2
    """Fraction of each sampling loop's first steps computed in full: early features move too fast to predict."""
    stable: float = 0.3
    """Curvature quantile under which a token is held at its last computed value (order 0)."""
    chaotic: float = 0.6
    """Curvature quantile from which a token follows the damped slope; tokens between the two continue along
    their last velocity (order 1)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.stable <= self.chaotic <= 1.0:
            raise ValueError(f"need 0 <= stable <= chaotic <= 1 (curvature quantiles), got {self.stable}, "
                             f"{self.chaotic}")
        if self.max_skips < 1:
            raise ValueError(f"max_skips must be at least 1, got {self.max_skips}")


CURVATURE_EPS = 1e-8
"""Keeps the curvature of a token that did not move finite (the reference's ``eps``)."""


class WorldCache(HostCachedStack):
    """WorldCache (Feng et al., arXiv 2603.06331), learnt from its public code (github.com/FofGofx/WorldCache,
    ``models/Aether/aether/worldcache_aether``: ``cal_type.py``, ``worldcache_core.py``, ``worldcache_utils.py``).

    Full steps run the compiled stack and keep its output, and the velocities (differences per step) over the
    last two intervals between full steps. Their second difference gives each token a curvature,
    ``|acceleration| / (|velocity|^2 + eps)``: how sharply its path turns relative to how fast it moves.
    Predicted steps, ``k`` steps after the last full one, move each token from its last output according to its
    curvature quantile: the straightest tokens (under ``stable``) are held, the middle ones continue along the
    last velocity, and the chaotic ones (from ``chaotic``) along a slope that a Hermite weight shifts from the
    last velocity to the one before as ``k`` approaches ``max_skips``.

    A step is predicted unless it is a warm-up step or the loop's last, fewer than three full steps gave a
    curvature, ``max_skips`` steps were already predicted in a row, or the drift accumulated since the last full
    step reached ``threshold``. Each predicted step adds to the drift the mean over tokens of the chaotic tokens'
    curvature times how far their prediction moved: dimensionless, and it grows fastest where the tokens that
    turn sharply move far.

    Where this differs from the reference: it predicts the transformer's final output (per latent position for
    Aether, whose guided halves share one batch); here the stack's output is predicted and the compiled postlude
    runs on it, as the reference's Aether forward does without its modality split, and each call slot decides
    alone. The history is dropped every ``steps`` steps, when a sampling loop (a rollout chunk) starts again, as
    the reference starts a fresh cache per pipeline call.
    """

    def __init__(self, blocks: nn.ModuleList, calls_per_step: int, options: BuildOptions, steps: int,
                 settings: WorldCacheSettings) -> None:
        super().__init__(blocks, calls_per_step)
        self.steps, self.settings = steps, settings
        self.warmup_steps = round(settings.warmup * steps)
        self.compute = compile_with(options, _run_blocks, fullgraph=True)

    def run(self, h: torch.Tensor, cond: torch.Tensor, rotary: Rotary, step: int, cache: dict[str, Any]
            ) -> torch.Tensor:
        position = _loop_position(step, self.steps, cache)
        if self._predictable(position, cache):
            return self._predict(position - cache["position"], cache)
        out = self.compute(self.blocks, h, cond, rotary)
        self._record(position, out, cache)
        return out

    def _predictable(self, position: int, cache: dict[str, Any]) -> bool:
        if position < self.warmup_steps or position == self.steps - 1 or "curvature" not in cache:
            return False
        return cache["drift"] < self.settings.threshold and position - cache["position"] <= self.settings.max_skips

    def _record(self, position: int, out: torch.Tensor, cache: dict[str, Any]) -> None:
        if "output" in cache:
            interval = position - cache["position"]
            velocity = (out - cache["output"]) / interval
            if "velocity" in cache:
                cache["previous_velocity"] = cache["velocity"]
                cache["curvature"] = _curvature(cache["previous_velocity"], velocity, interval)
                cache["stable"], cache["chaotic"] = _curvature_groups(cache["curvature"], self.settings)
            cache["velocity"] = velocity
        cache.update(output=out, position=position, drift=0.0)

    def _predict(self, k: int, cache: dict[str, Any]) -> torch.Tensor:
        previous, last = cache["previous_velocity"], cache["velocity"]
        damped = self._damped_slope(previous, last, k)
        slope = torch.where(cache["chaotic"][..., None], damped, last)
        slope = torch.where(cache["stable"][..., None], 0.0, slope)
        moved = k * damped - (k - 1) * self._damped_slope(previous, last, k - 1)
        cache["drift"] += (cache["curvature"] * moved.float().norm(dim=-1) * cache["chaotic"]).mean().item()
        return cache["output"] + k * slope

    def _damped_slope(self, previous: torch.Tensor, last: torch.Tensor, k: int) -> torch.Tensor:
        """The last velocity turned towards the previous one by a cubic Hermite (smoothstep) weight of
        ``k / max_skips``: a chaotic token's direction is trusted less the further it is extrapolated."""
        x = k / self.settings.max_skips
        return last + (3 * x**2 - 2 * x**3) * (previous - last)


def _curvature(previous: torch.Tensor, last: torch.Tensor, interval: int) -> torch.Tensor:
    """Per token (the last dimension holds its features): ``|acceleration| / (|velocity|^2 + eps)``."""
    acceleration = (last - previous).float() / interval
    return acceleration.norm(dim=-1) / (last.float().norm(dim=-1) ** 2 + CURVATURE_EPS)


def _curvature_groups(curvature: torch.Tensor, settings: WorldCacheSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """The stable and the chaotic tokens: quantiles over every token of the call, as the reference takes them."""
    flat = curvature.flatten()
    return curvature < flat.quantile(settings.stable), curvature >= flat.quantile(settings.chaotic)


StackT = TypeVar("StackT", bound=HostCachedStack)


def with_stack(model: nn.Module, make_stack: Callable[[nn.ModuleList], StackT], name: str
               ) -> tuple[nn.Module, StackT]:
    """A copy of ``model`` whose ``blocks`` are replaced by ``make_stack(blocks)``, and that stack; ``name`` says
    which method needs it, should the model have no block list."""
    copied = copy.deepcopy(model)
    blocks = copied.blocks
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"{name} needs a model whose `blocks` is an nn.ModuleList called as block(h, cond[, rotary])")
    stack = make_stack(blocks)
    copied.blocks = nn.ModuleList([stack])
    return copied, stack


def host_cache_method(name: str, family: str, implementation: str,
                      make_stack: Callable[[nn.ModuleList, BuildOptions], HostCachedStack]) -> Method:
    """A method that runs a copy of the model with its ``blocks`` replaced by ``make_stack(blocks, options)``."""

    def build(model: nn.Module, options: BuildOptions) -> Candidate:
        copied, stack = with_stack(model, lambda blocks: make_stack(blocks, options), name)
        return Candidate(compile_with(options, copied), stack.reset, stack.cache_bytes)

    return Method(name, family, implementation, build)


def first_block_cache(threshold: float) -> Method:
    return host_cache_method(
        f"FBCache r={threshold}", "FBCache", "host decision between compiled first block and compiled rest",
        lambda blocks, options: FirstBlockCache(blocks, options.calls_per_step, threshold, options),
    )


def teacache(threshold: float, steps: int) -> Method:
    """TeaCache on sampling loops of ``steps`` steps."""
    return host_cache_method(
        f"TeaCache l1={threshold}", "TeaCache", "host decision (rescaled L1 of block 0's modulated input) "
        "between compiled kernels",
        lambda blocks, options: TeaCache(blocks, options.calls_per_step, options, steps, threshold),
    )


def easycache(threshold: float, steps: int) -> Method:
    """EasyCache on sampling loops of ``steps`` steps (its HunyuanVideo script's default threshold is 0.025)."""
    return host_cache_method(
        f"EasyCache e={threshold}", "EasyCache", "host decision (transformation-rate estimate) between compiled "
        "kernels",
        lambda blocks, options: EasyCache(blocks, options.calls_per_step, options, steps, threshold),
    )


def toca(ratio: float, interval: int) -> Method:
    return host_cache_method(
        f"ToCa {ratio:.0%} N={interval}", "ToCa", "host token choice; compiled kernels with explicit attention",
        lambda blocks, options: TokenCache(blocks, options.calls_per_step, options, ratio, interval, "attention"),
    )


def duca(ratio: float, interval: int) -> Method:
    return host_cache_method(
        f"DuCa {ratio:.0%} N={interval}", "DuCa", "host random token choice; compiled kernels with fused SDPA",
        lambda blocks, options: TokenCache(blocks, options.calls_per_step, options, ratio, interval, "random",
                                           aggressive=True),
    )


def worldcache(threshold: float, steps: int, max_skips: int = 2, warmup: float = 0.2, stable: float = 0.3,
               chaotic: float = 0.6) -> Method:
    """WorldCache on sampling loops of ``steps`` steps; the defaults are the reference's Aether setting."""
    settings = WorldCacheSettings(threshold, max_skips, warmup, stable, chaotic)
    return host_cache_method(
        f"WorldCache e={threshold} n={max_skips}", "WorldCache",
        "host per-token prediction of the compiled stack's output",
        lambda blocks, options: WorldCache(blocks, options.calls_per_step, options, steps, settings),
    )
