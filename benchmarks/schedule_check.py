"""Quality of hero settings by schedule alone: PSNR against full compute and the share of calls computed in full.

Run: ``python benchmarks/schedule_check.py --model world --steps 10 --config interval=5 --config
interval=5,final_full_steps=1``. Each ``--config`` is ``HeroConfig`` fields as ``name=value`` pairs (values read
as Python literals, else as strings). Each setting compiles the step sweep's model (``step_sweep.MODELS``) with
``lowering="aot_eager"`` and runs two generations without a reset, as under a pipeline: the second, reported one
knows the loop's length (``final_full_steps`` applies). aot_eager makes no timing claim: the share of full calls
stands in for speed, and PSNR is exact for a schedule (the figures quoted from it in docs/results.md). On a model
of several mazes (``--model world-8``) each setting's PSNR is also given per maze (the sweep's RGB metric), against
full compute and against the ground-truth frames, with their means; the adaptive schedule decides from the whole
batch's distance, as it does for any batch. ``--peer TeaCache=0.1`` (or ``EasyCache=0.05``) adds a peer's setting,
run the same way, its share being of the calls that ran the block stack.
"""

from __future__ import annotations

import argparse
import ast
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from hero_bench.host_caches import AccumulatedChangeCache, EasyCache, TeaCache, easycache, teacache, with_stack
from hero_bench.methods import BuildOptions, Method
from hero_bench.models import BenchModel
from step_sweep import MODELS
from torch import nn

from hero_compile import HeroBackend, HeroConfig
from hero_compile.measurement import psnr_over_reference_range


def parse_config(text: str) -> dict[str, Any]:
    """``"interval=5,cache_target=residual"`` as ``{"interval": 5, "cache_target": "residual"}``."""
    fields: dict[str, Any] = {}
    for pair in text.split(","):
        name, _, value = pair.partition("=")
        try:
            fields[name.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            fields[name.strip()] = value.strip()
    return fields


PeerCache = Callable[[nn.ModuleList, int, BuildOptions, int, float], AccumulatedChangeCache]
PEER_CACHES: dict[str, PeerCache] = {"TeaCache": TeaCache, "EasyCache": EasyCache}
PEER_METHODS: dict[str, Callable[[float, int], Method]] = {"TeaCache": teacache, "EasyCache": easycache}
"""The sweep's methods, for their names."""


def parse_peer(text: str) -> tuple[str, float]:
    """``"TeaCache=0.1"`` as ``("TeaCache", 0.1)``."""
    family, _, threshold = text.partition("=")
    if family not in PEER_CACHES:
        raise argparse.ArgumentTypeError(f"peer {family!r}: expected one of {sorted(PEER_CACHES)}")
    return family, float(threshold)


def run_hero(bench: BenchModel, fields: dict[str, Any]) -> tuple[str, torch.Tensor, float]:
    """The setting's name, its second generation's output and the share of that generation's calls run in full."""
    torch._dynamo.reset()
    backend = HeroBackend(HeroConfig(lowering="aot_eager", **fields))
    compiled = torch.compile(bench.model, backend=backend, fullgraph=True)
    bench.generate(compiled)
    cheap, full = backend.stats().cheap_calls, backend.stats().full_calls
    output = bench.generate(compiled)
    cheap, full = backend.stats().cheap_calls - cheap, backend.stats().full_calls - full
    return ", ".join(f"{name}={value}" for name, value in fields.items()), output, full / (full + cheap)


def run_peer(bench: BenchModel, family: str, threshold: float) -> tuple[str, torch.Tensor, float]:
    """As :func:`run_hero`, for a peer: its stack replaces a copy of the model's, and decides per sampling loop."""
    torch._dynamo.reset()
    options = BuildOptions("aot_eager", fullgraph=True, calls_per_step=bench.calls_per_step)
    model, stack = with_stack(bench.model, lambda blocks: PEER_CACHES[family](
        blocks, bench.calls_per_step, options, bench.steps, threshold), family)
    bench.generate(model)
    stack.reset()
    output = bench.generate(model)
    return PEER_METHODS[family](threshold, bench.steps).name, output, stack.computed_calls / stack.calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="dit")
    parser.add_argument("--steps", nargs="+", type=int, default=[10])
    parser.add_argument("--config", action="append", type=parse_config, default=[])
    parser.add_argument("--peer", action="append", type=parse_peer, default=[], metavar="FAMILY=THRESHOLD")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.config and not args.peer:
        parser.error("give at least one --config or --peer")
    torch.set_num_threads(args.threads)
    for steps in args.steps:
        bench = MODELS[args.model](steps, torch.device("cpu"))
        per_maze = bench.ground_truth is not None and len(bench.ground_truth) > 1
        if steps == args.steps[0]:
            print("| steps | setting | share of calls in full | PSNR vs full compute (dB) |"
                  + (" per maze | PSNR vs ground truth (dB) | per maze |\n|---|---|---|---|---|---|---|" if per_maze
                     else "\n|---|---|---|---|"))
        with torch.no_grad():
            reference = bench.generate(bench.model)
            runs = [partial(run_hero, bench, fields) for fields in args.config]
            runs += [partial(run_peer, bench, family, threshold) for family, threshold in args.peer]
            for run in runs:
                setting, output, share = run()
                quality = (_per_maze_columns(bench, output, reference) if per_maze
                           else f"{psnr_over_reference_range(output, reference):.2f} |")
                print(f"| {steps} | {setting} | {share:.3f} | {quality}", flush=True)


def _per_maze_columns(bench: BenchModel, output: torch.Tensor, reference: torch.Tensor) -> str:
    """Mean and per-maze PSNR against full compute, then against the ground truth, as table cells."""
    assert bench.ground_truth is not None
    columns = []
    for target in (reference, bench.ground_truth):
        per_maze = [bench.metrics(output[i : i + 1], target[i : i + 1])[0] for i in range(len(output))]
        columns.append(f"{sum(per_maze) / len(per_maze):.2f} | {' '.join(f'{p:.1f}' for p in per_maze)} |")
    return " ".join(columns)


if __name__ == "__main__":
    main()
