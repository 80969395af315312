"""Cost of a refreshed shallow block relative to the full block, compiled, on the benchmark DiT."""

from __future__ import annotations

import statistics
from typing import Any

import torch

import hero_compile
from hero_compile.config import HeroConfig, KeyValueSource
from hero_compile.measurement import alternated_timings
from hero_compile.testing.dit import DiTConfig, make_dit


def refreshed_block_cost(
    model_config: DiTConfig | None = None,
    refresh_ratio: float = 0.25,
    kv_source: KeyValueSource = "current",
    repeats: int = 20,
    threads: int = 2,
) -> dict[str, Any]:
    """Time a full step and a cheap step that refreshes every block (nothing extrapolated), alternated.

    With every block refreshed, the ratio of the two step times is the cost of a refreshed block relative to
    a full one, up to the prelude and postlude (a patch embedding and a projection, small beside 12 blocks).
    """
    model_config = model_config or DiTConfig()
    torch.set_num_threads(threads)
    model = make_dit(model_config)
    c = model_config
    x = torch.randn(1, c.channels, c.frames, c.height, c.width)
    config = HeroConfig(
        refresh_ratio=refresh_ratio, kv_source=kv_source, split=c.depth,
        warmup_steps=1, interval=1_000_000, final_full_steps=0,
    )
    backend = hero_compile.backend(config)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    timesteps = iter([torch.full((1,), float(t)) for t in torch.linspace(1000.0, 0.0, 2 * repeats + 8)])

    def step() -> None:
        compiled(x, next(timesteps))

    # The backend is reset before each round: the first call of a generation is full, the second cheap.
    with torch.no_grad():
        times = alternated_timings({"full": step, "cheap": step}, repeats + 2, before_round=backend.reset)
    full_times, cheap_times = times["full"][2:], times["cheap"][2:]  # the first rounds compile
    graph = backend.stats().graphs[0]
    assert graph.cheap_calls == repeats + 2, "every second call must be cheap"
    return {
        "refresh_ratio": refresh_ratio,
        "kv_source": kv_source,
        "tokens_refreshed": next(iter(graph.tokens_refreshed_per_cheap_step.values())),
        "tokens": c.tokens,
        "seconds_full_step": statistics.median(full_times),
        "seconds_cheap_step": statistics.median(cheap_times),
        "block_cost": statistics.median(cheap_times) / statistics.median(full_times),
    }
