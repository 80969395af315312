"""Half precision (issue 19): hero's PSNR against full compute on the benchmark DiT in float32 and bfloat16.

Each row compiles the benchmark DiT in one dtype, runs two generations with hero (the first may measure the
split) and compares the second with full compute in the same dtype under the same lowering (the plain model
compiled with that backend). The ``bfloat16, bf16 accumulation`` rows rebuild the cheap step as it was before
issue 19, its weighted sum of cached features in the stream's dtype, to show what float32 accumulation buys.

Run: ``python benchmarks/half_precision.py`` (aot_eager, 3 minutes on 2 cores), ``--lowering inductor`` (3.5);
``--json PATH`` writes the rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from typing import Any
from unittest import mock

import torch
import torch.fx as fx

import hero_compile
from hero_compile.config import HeroConfig
from hero_compile.measurement import psnr_over_reference_range
from hero_compile.passes import extrapolate
from hero_compile.testing.dit import DiTConfig, flow_matching_sample, make_dit

CONFIGS = {"output (defaults)": HeroConfig(), "residual + refresh": HeroConfig(cache_target="residual")}
PRECISIONS = {
    "float32": (torch.float32, False),
    "bfloat16": (torch.bfloat16, False),
    "bfloat16, bf16 accumulation": (torch.bfloat16, True),
}


@contextlib.contextmanager
def stream_dtype_accumulation() -> Iterator[None]:
    """Cheap variants built inside accumulate their prediction in the stream's dtype (before issue 19)."""

    def in_stream_dtype(graph: fx.Graph, coefficients: fx.Node, features: list[fx.Node], base: fx.Node | None,
                        dtype: torch.dtype | None) -> fx.Node:
        return extrapolate._weighted_sum(graph, coefficients, features, base)

    with mock.patch.object(extrapolate, "_prediction", in_stream_dtype):
        yield


def generate(model: torch.nn.Module, backend: Any, noise: torch.Tensor, steps: int, generations: int
             ) -> torch.Tensor:
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    for _ in range(generations):
        result = flow_matching_sample(compiled, noise, steps)
    return result


def measure(lowering: str, steps: int, model_config: DiTConfig) -> list[dict[str, Any]]:
    """One row per precision and hero setting: PSNR against full compute in that precision and in float32;
    first, bfloat16 full compute against float32 full compute (the floor bfloat16 itself sets)."""
    c = model_config
    noise = torch.randn(1, c.channels, c.frames, c.height, c.width, generator=torch.Generator().manual_seed(0))
    full = {dtype: generate(make_dit(c).to(dtype), lowering, noise.to(dtype), steps, 1)
            for dtype in (torch.float32, torch.bfloat16)}
    rows = [row("bfloat16", "full compute", lowering, steps, full[torch.bfloat16], full)]
    for precision, (dtype, stream_accumulation) in PRECISIONS.items():
        for setting, config in CONFIGS.items():
            backend = hero_compile.backend(config.replace(lowering=lowering))
            with stream_dtype_accumulation() if stream_accumulation else contextlib.nullcontext():
                result = generate(make_dit(c).to(dtype), backend, noise.to(dtype), steps, 2)
            graph = backend.stats().graphs[0]
            rows.append(row(precision, setting, lowering, steps, result, full)
                        | {"split": graph.split, "cheap_calls": graph.cheap_calls})
    return rows


def row(precision: str, setting: str, lowering: str, steps: int, result: torch.Tensor,
        full: dict[torch.dtype, torch.Tensor]) -> dict[str, Any]:
    entry = {"precision": precision, "setting": setting, "lowering": lowering, "steps": steps,
             "psnr_vs_full": psnr_over_reference_range(result, full[result.dtype]),
             "psnr_vs_float32_full": psnr_over_reference_range(result, full[torch.float32])}
    print(f"| {precision} | {setting} | {entry['psnr_vs_full']:.2f} | {entry['psnr_vs_float32_full']:.2f} |",
          flush=True)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lowering", choices=("aot_eager", "inductor"), default="aot_eager")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| precision | setting | PSNR vs full, same dtype (dB) | PSNR vs float32 full (dB) |\n|---|---|---|---|")
    with torch.no_grad():
        rows = measure(args.lowering, args.steps, DiTConfig())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
