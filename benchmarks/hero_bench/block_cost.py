"""Cost of a refreshed shallow block relative to the full block, compiled: the benchmark DiT and a Wan-style
diffusers transformer (qk-norm, rotary positions, cross-attention to text states)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import hero_compile
from hero_compile.config import HeroConfig, KeyValueSource
from hero_compile.measurement import alternated_timings
from hero_compile.testing.dit import DiTConfig, make_dit


@dataclass(frozen=True)
class BlockStackModel:
    """A denoiser whose every block is refreshed: ``call(model, timestep)`` runs it on fixed inputs."""

    name: str
    model: nn.Module
    call: Callable[[Callable[..., Any], torch.Tensor], torch.Tensor]
    depth: int
    tokens: int


def dit(config: DiTConfig | None = None) -> BlockStackModel:
    """The benchmark DiT: 12 blocks, 1024 tokens, hidden 256."""
    c = config or DiTConfig()
    x = torch.randn(1, c.channels, c.frames, c.height, c.width)
    return BlockStackModel("DiT", make_dit(c), lambda model, t: model(x, t), c.depth, c.tokens)


def wan() -> BlockStackModel:
    """diffusers' Wan transformer at the benchmark DiT's size (12 blocks, 1024 tokens, hidden 256): per-head
    ``rms_norm`` of queries and keys, rotary tables, cross-attention to 16 text tokens."""
    import diffusers

    torch.manual_seed(0)
    model: Any = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=64, in_channels=4, out_channels=4,
        text_dim=64, freq_dim=64, ffn_dim=1024, num_layers=12, rope_max_seq_len=64,
    )
    model.eval()
    x, text = torch.randn(1, 4, 4, 32, 32), torch.randn(1, 16, 64)
    return BlockStackModel(
        "Wan", model, lambda m, t: m(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0],
        12, 4 * 16 * 16)


def refreshed_block_cost(
    stack: BlockStackModel,
    refresh_ratio: float = 0.25,
    kv_source: KeyValueSource = "current",
    repeats: int = 20,
    threads: int = 2,
) -> dict[str, Any]:
    """Time a full step and a cheap step that refreshes every block (nothing extrapolated), alternated.

    With every block refreshed, the ratio of the two step times is the cost of a refreshed block relative to
    a full one, up to the prelude and postlude (a patch embedding and a projection, small beside 12 blocks).
    """
    torch.set_num_threads(threads)
    config = HeroConfig(
        refresh_ratio=refresh_ratio, kv_source=kv_source, split=stack.depth,
        warmup_steps=1, interval=1_000_000, final_full_steps=0,
    )
    backend = hero_compile.backend(config)
    compiled = torch.compile(stack.model, backend=backend, fullgraph=True)
    timesteps = iter([torch.full((1,), float(t)) for t in torch.linspace(1000.0, 0.0, 2 * repeats + 8)])

    def step() -> None:
        stack.call(compiled, next(timesteps))

    # The backend is reset before each round: the first call of a generation is full, the second cheap.
    with torch.no_grad():
        times = alternated_timings({"full": step, "cheap": step}, repeats + 2, before_round=backend.reset)
    full_times, cheap_times = times["full"][2:], times["cheap"][2:]  # the first rounds compile
    graph = backend.stats().graphs[0]
    assert graph.cheap_calls == repeats + 2, "every second call must be cheap"
    refreshed = graph.tokens_refreshed_per_cheap_step
    assert len(refreshed) == stack.depth, f"blocks not refreshed: {graph.refresh_skipped}"
    return {
        "model": stack.name,
        "refresh_ratio": refresh_ratio,
        "kv_source": kv_source,
        "tokens_refreshed": next(iter(refreshed.values())),
        "tokens": stack.tokens,
        "seconds_full_step": statistics.median(full_times),
        "seconds_cheap_step": statistics.median(cheap_times),
        "block_cost": statistics.median(cheap_times) / statistics.median(full_times),
    }
