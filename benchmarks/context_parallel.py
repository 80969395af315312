"""Benchmark: hero vs plain Inductor under diffusers' context parallelism, beside the same in one process.

A diffusers Wan transformer (random weights) samples a whole generation; under context parallelism 2 CPU ranks
(gloo, 1 thread each) share its tokens (Ulysses or Ring), in one process it runs on 1 thread. In each setting hero
(defaults) and plain Inductor are compiled from the same model and timed alternately; the ratio is the median
generation time of Inductor over hero's.

Run: ``python benchmarks/context_parallel.py`` (``--kind ring``, ``--json PATH`` to keep the rows).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import torch
from hero_bench.context_parallel import enable_context_parallelism, spawn

import hero_compile
from hero_compile.measurement import alternated_medians, psnr_over_reference_range
from hero_compile.testing.sampling import euler_flow_matching

RANKS = 2


def wan(layers: int) -> tuple[torch.nn.Module, Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], Any]]:
    """A Wan transformer of ``layers`` blocks (hidden 128, 4 heads) over 4 x 16 x 16 latents: 256 tokens."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=16,
                                  out_channels=16, text_dim=64, freq_dim=64, ffn_dim=512, num_layers=layers,
                                  rope_max_seq_len=64).eval()
    text = torch.randn(1, 16, 64)
    return model, lambda m, x, t: m(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]


def measure(kind: str | None, layers: int, steps: int, repeats: int) -> dict[str, Any]:
    """Median generation times of hero and plain Inductor, and hero's PSNR against Inductor's output; under
    context parallelism of ``kind`` when it is given."""
    model, call = wan(layers)
    noise = torch.randn(1, 16, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    if kind is not None:
        enable_context_parallelism(model, kind, RANKS, lambda m: call(m, noise, torch.full((1,), 1000.0)))
    hero = hero_compile.backend()
    compiled = {"hero": torch.compile(model, backend=hero, fullgraph=True),
                "inductor": torch.compile(model, backend="inductor", fullgraph=True)}

    def generate(name: str) -> torch.Tensor:
        with torch.no_grad():
            return euler_flow_matching(lambda x, t: call(compiled[name], x, t), noise, steps)

    outputs = {name: generate(name) for name in compiled}  # compiles, and warms up
    times = alternated_medians({name: lambda name=name: generate(name) for name in compiled}, repeats)
    graph = hero.stats().graphs[0]
    return {
        "setting": f"context parallel, {kind}, {RANKS} ranks x 1 thread" if kind else "one process, 1 thread",
        "hero_s": times["hero"], "inductor_s": times["inductor"], "speedup": times["inductor"] / times["hero"],
        "psnr_vs_inductor": psnr_over_reference_range(outputs["hero"], outputs["inductor"]),
        "blocks": len(graph.blocks), "cheap_calls": graph.cheap_calls, "fallback_reason": graph.fallback_reason,
    }


def _rank(rank: int, world_size: int, kind: str, layers: int, steps: int, repeats: int) -> dict[str, Any]:
    return measure(kind, layers, steps, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=("ulysses", "ring"), default="ulysses")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()
    parallel = spawn(_rank, RANKS, args.kind, args.layers, args.steps, args.repeats)[0]
    torch.set_num_threads(1)
    rows = [parallel, measure(None, args.layers, args.steps, args.repeats)]
    print("| setting | hero (s) | Inductor (s) | speedup | PSNR vs Inductor (dB) | blocks | cheap calls |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['setting']} | {row['hero_s']:.3f} | {row['inductor_s']:.3f} | {row['speedup']:.2f} | "
              f"{row['psnr_vs_inductor']:.1f} | {row['blocks']} | {row['cheap_calls']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
