"""Baselines whose caching decisions run on the host, as in their reference code: first-block caching
(dynamic skipping), ToCa (tokens chosen by attention scores) and DuCa (random tokens).

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
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from hero_compile.bench.methods import BuildOptions, Candidate, Method, compile_with
from hero_compile.testing.dit import DiTBlock, modulate

Selection = Literal["attention", "random"]

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
    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        step, slot = divmod(self.calls, self.calls_per_step)
        self.calls += 1
        return self.run(h, cond, step, self.slots.setdefault(slot, {}))

    def run(self, h: torch.Tensor, cond: torch.Tensor, step: int, cache: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


def _run_blocks(blocks: nn.ModuleList, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        h = block(h, cond)
    return h


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

    def run(self, h: torch.Tensor, cond: torch.Tensor, step: int, cache: dict[str, Any]) -> torch.Tensor:
        first = self.first(h, cond)
        residual = first - h
        previous = cache.get("first_residual")
        if previous is not None:
            change = (residual - previous).abs().mean() / previous.abs().mean()
            if change.item() < self.threshold:
                return first + cache["rest_residual"]
        out = self.rest(self.rest_blocks, first, cond)
        cache.update(first_residual=residual, rest_residual=out - first)
        return out


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

    def run(self, h: torch.Tensor, cond: torch.Tensor, step: int, cache: dict[str, Any]) -> torch.Tensor:
        cached_step = step % self.interval
        if cached_step == 0 or "branches" not in cache:
            cache["branches"], cache["scores"] = [], []
            cache["staleness"] = torch.zeros(len(self.blocks), h.shape[1])
            for block in self.blocks:
                h, attn, mlp, scores = self.full_block(block, h, cond, self.explicit)
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
            h, attn, mlp, scores = self.partial_block(block, h, cond, tokens, attn, mlp, self.explicit)
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


def _full_block(block: DiTBlock, x: torch.Tensor, c: torch.Tensor, explicit: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The block, returning its output, its two branch outputs and the keys' attention scores."""
    shift1, scale1, gate1, shift2, scale2, gate2 = block.ada(F.silu(c)).chunk(6, dim=-1)
    b, n, d = x.shape
    h = modulate(block.norm1(x), shift1, scale1)
    q, k, v = block.qkv(h).view(b, n, 3, block.heads, d // block.heads).permute(2, 0, 3, 1, 4)
    attn, scores = _attention(q, k, v, explicit)
    attn_branch = gate1[:, None] * block.proj(attn.transpose(1, 2).reshape(b, n, d))
    x = x + attn_branch
    mlp_branch = gate2[:, None] * block.mlp(modulate(block.norm2(x), shift2, scale2))
    return x + mlp_branch, attn_branch, mlp_branch, scores


def _partial_block(block: DiTBlock, x: torch.Tensor, c: torch.Tensor, tokens: torch.Tensor,
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
    attn, scores = _attention(q, k, v, explicit)
    fresh_attn = gate1[:, None] * block.proj(attn.transpose(1, 2).reshape(b, m, d))
    attn_branch = attn_branch.index_copy(1, tokens, fresh_attn)
    x = x + attn_branch
    fresh_mlp = gate2[:, None] * block.mlp(modulate(block.norm2(x[:, tokens]), shift2, scale2))
    mlp_branch = mlp_branch.index_copy(1, tokens, fresh_mlp)
    return x + mlp_branch, attn_branch, mlp_branch, scores


def host_cache_method(name: str, family: str, implementation: str,
                      make_stack: Callable[[nn.ModuleList, BuildOptions], HostCachedStack]) -> Method:
    """A method that runs a copy of the model with its ``blocks`` replaced by ``make_stack(blocks, options)``."""

    def build(model: nn.Module, options: BuildOptions) -> Candidate:
        copied = copy.deepcopy(model)
        blocks = copied.blocks
        if not isinstance(blocks, nn.ModuleList):
            raise TypeError(f"{name} needs a model whose `blocks` is an nn.ModuleList called as block(h, cond)")
        stack = make_stack(blocks, options)
        copied.blocks = nn.ModuleList([stack])
        return Candidate(compile_with(options, copied), stack.reset, stack.cache_bytes)

    return Method(name, family, implementation, build)


def first_block_cache(threshold: float) -> Method:
    return host_cache_method(
        f"FBCache r={threshold}", "FBCache", "host decision between compiled first block and compiled rest",
        lambda blocks, options: FirstBlockCache(blocks, options.calls_per_step, threshold, options),
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
