"""Benchmark: start-up cost of hero against plain Inductor: import time, cold and warm compile time.

Run: ``python benchmarks/startup.py [--models world,dit] [--steps 12] [--json PATH]``; ``--quick`` smoke-tests the
script in a minute or so (a tiny DiT, 8 steps).

Each measurement is a fresh Python process (this script with ``--child``), so that imports and compilation start
cold in it. Per model and backend, two processes run one after the other on an Inductor cache directory
(``TORCHINDUCTOR_CACHE_DIR``, FX graph cache on) that is empty when the first starts:

- cold: the first process compiles every graph with the empty cache;
- warm: the second finds the first's compiled graphs in the cache (Dynamo still traces, hero still builds variants).

A process times ``import torch``, then ``import hero_compile`` (which the models' code imports under either
backend), then runs two generations of the model compiled with ``torch.compile(model, backend=...)``: a
flow-matching sample of the DiT (``hero_compile.testing.dit``), or a rollout of the world model (one held-out
maze, one chunk, with classifier-free guidance: two calls per step). The first generation compiles: under hero's
default ``split="auto"`` that is all three variants (the measuring one with the graph, the full one when the split
is fixed after ``profile_steps`` steps, the cheap one at the first cheap step), so it is compared with plain
Inductor's whole first generation. The second generation is the steady state; compile cost = first generation
minus second. A variant's cost is the excess of the first call that ran it over the steady calls of its kind (over
full calls for the measuring variant); the first call's includes Dynamo's tracing.

Reported per model and backend: imports and steady generation (warm process, whose files the OS has cached), first
generation and compile cost (cold and warm process), the warm process's Inductor cache hits and misses, hero's
calls per variant (``hero_compile.stats()``), and the ratios hero / Inductor of the cold and warm compile costs.
The goal: hero's warm compile cost within 1.5x of plain Inductor's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from hero_compile.stats import HeroStats

BACKENDS = ("inductor", "hero")
DIT_SIZES: dict[str, dict[str, Any]] = {
    "dit": {},  # DiTConfig's defaults: the benchmark DiT
    "dit-tiny": {"hidden": 32, "heads": 2, "depth": 2, "frames": 2, "height": 8, "width": 8},
}
MODELS = ("world", *DIT_SIZES)
STEPS, QUICK_STEPS = 12, 8  # hero's first cheap step is step 5 (4 measuring steps, then a full one)
THREADS = 2
WARM_GOAL = 1.5
PHASES = ("cold", "warm")
STEADY_KIND = {"measuring": "full"}
"""The steady calls a variant's first call is compared with, where they are not of the variant itself."""
CACHE_COUNTERS = {"inductor": "fxgraph_cache_", "aot_autograd": "autograd_cache_"}
"""Groups of ``torch._dynamo.utils.counters`` and the prefix of their cache counters."""

Denoiser = Callable[..., Any]
Generation = Callable[[Denoiser], Any]
"""Runs one generation (a sample, a rollout) with the denoiser given in place of the model."""


class CallTimer:
    """The compiled model, timing each call and naming the variant it ran, generation by generation.

    Under hero (``stats`` is ``hero_compile.stats``) a call is ``measuring`` while the split is not fixed, then
    ``full`` or ``cheap``; under plain Inductor every call is ``inductor``.
    """

    def __init__(self, denoiser: Denoiser, stats: Callable[[], HeroStats] | None) -> None:
        self.denoiser = denoiser
        self.stats = stats
        self.generations: list[list[tuple[str, float]]] = [[]]

    def __call__(self, *args: Any) -> Any:
        cheap_before = self.stats().cheap_calls if self.stats else 0
        start = time.perf_counter()
        output = self.denoiser(*args)
        seconds = time.perf_counter() - start
        self.generations[-1].append((self._variant(cheap_before), seconds))
        return output

    def _variant(self, cheap_before: int) -> str:
        if self.stats is None:
            return "inductor"
        stats = self.stats()
        if stats.cheap_calls > cheap_before:
            return "cheap"
        measuring = any(g.split is None and g.accelerated for g in stats.graphs)
        return "measuring" if measuring else "full"

    def end_generation(self) -> None:
        self.generations.append([])


def variant_costs(first: list[tuple[str, float]], steady: list[tuple[str, float]]) -> dict[str, float]:
    """Per variant, in the order they first ran: the first call that ran it less the median steady call of its kind."""
    kinds = {kind for kind, _ in steady}
    medians = {kind: statistics.median(s for k, s in steady if k == kind) for kind in kinds}
    costs: dict[str, float] = {}
    for kind, seconds in first:
        costs.setdefault(kind, seconds - medians[STEADY_KIND.get(kind, kind)])
    return costs


def dit_generation(sizes: dict[str, Any], steps: int) -> tuple[nn.Module, Generation]:
    """The DiT of ``sizes`` and a ``steps``-step flow-matching sample from fixed noise."""
    import torch

    from hero_compile.testing.dit import DiTConfig, flow_matching_sample, make_dit

    config = DiTConfig(**sizes)
    model = make_dit(config)
    shape = (1, config.channels, config.frames, config.height, config.width)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    return model, lambda denoiser: flow_matching_sample(denoiser, noise, steps)


def world_generation(steps: int) -> tuple[nn.Module, Generation]:
    """The shipped world model and a rollout of the first held-out maze, one chunk of ``steps`` guided steps."""
    from hero_world.checkpoint import load_world_model
    from hero_world.data import HELD_OUT_SEEDS
    from hero_world.rollout import rollout_scenarios, scenario

    model = load_world_model()
    scenarios = [scenario(HELD_OUT_SEEDS[0], 1, model.config)]
    return model, lambda denoiser: rollout_scenarios(denoiser, scenarios, model.config, steps)


def model_and_generation(name: str, steps: int) -> tuple[nn.Module, Generation]:
    """The model called ``name`` (one of :data:`MODELS`) and one generation of ``steps`` steps."""
    return world_generation(steps) if name == "world" else dit_generation(DIT_SIZES[name], steps)


def child(model_name: str, backend: str, steps: int, result: Path) -> None:
    """One process's measurements (``--child``), written to ``result`` as JSON."""
    start = time.perf_counter()
    import torch

    import_torch = time.perf_counter() - start
    start = time.perf_counter()
    import hero_compile

    import_hero_compile = time.perf_counter() - start
    from torch._dynamo.utils import counters

    from hero_compile.measurement import alternated_timings

    torch.set_num_threads(THREADS)
    model, generation = model_and_generation(model_name, steps)
    timer = CallTimer(torch.compile(model, backend=backend, fullgraph=True),
                      hero_compile.stats if backend == "hero" else None)
    with torch.no_grad():
        first, steady = alternated_timings({"generation": partial(generation, timer)}, repeats=2,
                                           on_run=timer.end_generation)["generation"]
    first_calls, steady_calls = timer.generations[:2]
    stats = hero_compile.stats()
    record = {
        "model": model_name,
        "backend": backend,
        "steps": steps,
        "import_torch_s": import_torch,
        "import_hero_compile_s": import_hero_compile,
        "first_generation_s": first,
        "steady_generation_s": steady,
        "compile_s": first - steady,
        "variant_compile_s": variant_costs(first_calls, steady_calls),
        "calls": {"first": Counter(k for k, _ in first_calls), "steady": Counter(k for k, _ in steady_calls)},
        "cache": {k: v for group, prefix in CACHE_COUNTERS.items()
                  for k, v in counters[group].items() if k.startswith(prefix)},
        "hero_stats": {"graphs": len(stats.graphs), "full_calls": stats.full_calls, "cheap_calls": stats.cheap_calls,
                       "splits": [g.split for g in stats.graphs],
                       "fallback_reasons": [g.fallback_reason for g in stats.graphs]},
    }
    result.write_text(json.dumps(record, indent=2))


def run_child(model: str, backend: str, steps: int, env: dict[str, str], result: Path) -> dict[str, Any]:
    """Run :func:`child` in a fresh interpreter with ``env``; its record."""
    print(f"startup: {model} / {backend}: {result.stem} process", file=sys.stderr, flush=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", model, backend, str(result)]
    subprocess.run([*command, "--steps", str(steps)], env=env, check=True)
    loaded: dict[str, Any] = json.loads(result.read_text())
    return loaded


def measure(model: str, backend: str, steps: int) -> dict[str, dict[str, Any]]:
    """The cold and the warm process of ``backend`` on ``model``, on an Inductor cache directory of their own."""
    with tempfile.TemporaryDirectory(prefix="hero-startup-") as tmp:
        cache = {"TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "inductor"), "TORCHINDUCTOR_FX_GRAPH_CACHE": "1"}
        env = {**os.environ, **cache}
        return {phase: run_child(model, backend, steps, env, Path(tmp) / f"{phase}.json") for phase in PHASES}


def ratios(runs: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Hero's compile cost over plain Inductor's, cold and warm, and whether the warm one meets the goal."""
    cold, warm = (runs["hero"][p]["compile_s"] / runs["inductor"][p]["compile_s"] for p in PHASES)
    return {"cold_compile": cold, "warm_compile": warm, "warm_goal_met": warm <= WARM_GOAL}


def _by_variant(values: dict[str, float], form: str) -> str:
    return ", ".join(f"{kind} {value:{form}}" for kind, value in values.items())


def _cache(counts: dict[str, int]) -> str:
    return " / ".join(str(counts.get(f"fxgraph_cache_{k}", 0)) for k in ("hit", "miss", "bypass"))


def table(results: dict[str, dict[str, dict[str, dict[str, Any]]]], summary: dict[str, dict[str, Any]]) -> str:
    """The results as two Markdown tables: per model and backend, then hero / Inductor per model."""
    lines = [
        "| model | backend | import torch s | import hero_compile s | first gen. cold s | first gen. warm s "
        "| steady gen. s | compile cold s | compile warm s | warm FX cache hit / miss / bypass |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, runs in results.items():
        for backend, phases in runs.items():
            cold, warm = phases["cold"], phases["warm"]
            figures = (warm["import_torch_s"], warm["import_hero_compile_s"], cold["first_generation_s"],
                       warm["first_generation_s"], warm["steady_generation_s"], cold["compile_s"], warm["compile_s"])
            lines.append(f"| {model} | {backend} | " + " | ".join(f"{x:.3g}" for x in figures)
                         + f" | {_cache(warm['cache'])} |")
    lines += [
        "",
        f"| model | compile cold hero / inductor | compile warm hero / inductor | warm within {WARM_GOAL}x "
        "| hero variants cold s | hero variants warm s | hero calls in first gen. |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, runs in results.items():
        cold, warm, ratio = runs["hero"]["cold"], runs["hero"]["warm"], summary[model]
        lines.append(
            f"| {model} | {ratio['cold_compile']:.2f} | {ratio['warm_compile']:.2f} "
            f"| {'yes' if ratio['warm_goal_met'] else 'no'} | {_by_variant(cold['variant_compile_s'], '.3g')} "
            f"| {_by_variant(warm['variant_compile_s'], '.3g')} | {_by_variant(cold['calls']['first'], 'd')} |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="world,dit", help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--steps", type=int, help=f"denoising steps per generation (default {STEPS})")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: the tiny DiT only, {QUICK_STEPS} steps unless --steps")
    parser.add_argument("--json", type=Path, help="write every process's record and the ratios to this file")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "BACKEND", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.models = ["dit-tiny"] if args.quick else args.models.split(",")
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    args.steps = args.steps or (QUICK_STEPS if args.quick else STEPS)
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        model, backend, result = args.child
        child(model, backend, args.steps, Path(result))
        return
    results = {model: {backend: measure(model, backend, args.steps) for backend in BACKENDS} for model in args.models}
    summary = {model: ratios(runs) for model, runs in results.items()}
    print(table(results, summary))
    if args.json:
        report = {"steps": args.steps, "threads": THREADS, "warm_goal": WARM_GOAL, "ratios": summary, "runs": results}
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
