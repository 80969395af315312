"""Whole-generation speed of HERO against plain Inductor on the benchmark DiT."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import torch
from tqdm import tqdm

import hero_compile
from hero_compile.bench.metrics import alternated_medians, count_flops, psnr
from hero_compile.config import HeroConfig
from hero_compile.testing.dit import DiTConfig, flow_matching_sample, make_dit


def speed_dit(
    model_config: DiTConfig | None = None,
    hero_config: HeroConfig | None = None,
    steps: int = 20,
    repeats: int = 3,
    threads: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Time whole generations of hero and of plain Inductor, alternated after warm-up; FLOPs and PSNR too."""
    model_config = model_config or DiTConfig()
    hero_config = hero_config or HeroConfig()
    torch.set_num_threads(threads)
    model = make_dit(model_config, seed=seed)
    c = model_config
    noise = torch.randn(1, c.channels, c.frames, c.height, c.width, generator=torch.Generator().manual_seed(seed))
    hero_backend = hero_compile.backend(hero_config)
    compiled = {
        "inductor": torch.compile(model, backend="inductor", fullgraph=True),
        "hero": torch.compile(model, backend=hero_backend, fullgraph=True),
    }
    outputs: dict[str, torch.Tensor] = {}

    def generate(name: str) -> None:
        outputs[name] = flow_matching_sample(compiled[name], noise, steps)

    progress = tqdm(total=2 + 2 * repeats + 2, desc="speed_dit", unit="generation")
    with torch.no_grad():
        for name in compiled:
            generate(name)
            progress.update()
        medians = alternated_medians(
            {name: partial(generate, name) for name in compiled}, repeats, on_run=progress.update
        )
        eager_hero = torch.compile(model, backend=hero_compile.backend(hero_config.replace(lowering="eager")))
        flops_full = count_flops(lambda: flow_matching_sample(model, noise, steps))
        progress.update()
        flops_hero = count_flops(lambda: flow_matching_sample(eager_hero, noise, steps))
        progress.update()
    progress.close()
    graph = hero_backend.stats().graphs[0]
    speedup = medians["inductor"] / medians["hero"]
    flop_speedup = flops_full / flops_hero
    return {
        "model": dataclasses.asdict(model_config),
        "hero_config": dataclasses.asdict(hero_config),
        "steps": steps,
        "repeats": repeats,
        "threads": threads,
        "seconds_inductor": medians["inductor"],
        "seconds_hero": medians["hero"],
        "speedup": speedup,
        "flop_speedup": flop_speedup,
        "efficiency": speedup / flop_speedup,
        "psnr_vs_full": psnr(outputs["hero"], outputs["inductor"]),
        "split": graph.split,
        "blocks": len(graph.blocks),
        "fallback_reason": graph.fallback_reason,
    }
