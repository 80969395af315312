"""Whole-generation speed and quality of HERO settings against plain Inductor on the benchmark DiT."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import torch
from tqdm import tqdm

import hero_compile
from hero_compile.config import HeroConfig
from hero_compile.measurement import alternated_medians, count_flops, psnr_over_reference_range
from hero_compile.testing.dit import DiTConfig, flow_matching_sample, make_dit

REFERENCE = "inductor"


def compare_on_dit(
    hero_configs: dict[str, HeroConfig],
    model_config: DiTConfig | None = None,
    steps: int = 20,
    repeats: int = 3,
    threads: int = 2,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per hero setting: wall-time speedup over plain Inductor (all methods alternated in one process
    after warm-up, median of ``repeats``), FLOP speedup, efficiency and PSNR against full compute."""
    model_config = model_config or DiTConfig()
    torch.set_num_threads(threads)
    model = make_dit(model_config, seed=seed)
    c = model_config
    noise = torch.randn(1, c.channels, c.frames, c.height, c.width, generator=torch.Generator().manual_seed(seed))
    backends = {name: hero_compile.backend(config) for name, config in hero_configs.items()}
    compiled = {REFERENCE: torch.compile(model, backend="inductor", fullgraph=True)}
    compiled.update({name: torch.compile(model, backend=b, fullgraph=True) for name, b in backends.items()})
    outputs: dict[str, torch.Tensor] = {}

    def generate(name: str) -> None:
        outputs[name] = flow_matching_sample(compiled[name], noise, steps)

    progress = tqdm(total=len(compiled) * (2 + repeats), desc="speed_dit", unit="generation")
    # One compiled entry per backend on the same code object.
    with torch._dynamo.config.patch(recompile_limit=len(compiled) + 2), torch.no_grad():
        for name in compiled:
            generate(name)
            progress.update()
        medians = alternated_medians(
            {name: partial(generate, name) for name in compiled}, repeats, on_run=progress.update
        )
        flops = {REFERENCE: count_flops(partial(flow_matching_sample, model, noise, steps))}
        torch._dynamo.reset()  # the timed entries are done with; the counted ones get the recompile budget
        for name, config in hero_configs.items():
            counted = torch.compile(model, backend=hero_compile.backend(config.replace(lowering="eager")))
            flow_matching_sample(counted, noise, steps)  # as for the clock: the steady state, profile measured
            flops[name] = count_flops(partial(flow_matching_sample, counted, noise, steps))
            progress.update()
    progress.close()
    rows = []
    for name, config in hero_configs.items():
        graph = backends[name].stats().graphs[0]
        speedup = medians[REFERENCE] / medians[name]
        flop_speedup = flops[REFERENCE] / flops[name]
        rows.append({
            "setting": name,
            "hero_config": dataclasses.asdict(config),
            "model": dataclasses.asdict(model_config),
            "steps": steps,
            "repeats": repeats,
            "threads": threads,
            "seconds_inductor": medians[REFERENCE],
            "seconds_hero": medians[name],
            "speedup": speedup,
            "flop_speedup": flop_speedup,
            "efficiency": speedup / flop_speedup,
            "psnr_vs_full": psnr_over_reference_range(outputs[name], outputs[REFERENCE]),
            "split": graph.split,
            "cheap_calls": graph.cheap_calls,
            "fallback_reason": graph.fallback_reason,
        })
    return rows
