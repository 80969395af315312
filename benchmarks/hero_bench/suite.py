"""``hero-compile bench``: every method on every benchmark model, written as a table, JSON rows and a plot."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hero_bench.harness import run_benchmark
from hero_bench.host_caches import duca, easycache, first_block_cache, teacache, toca, worldcache
from hero_bench.methods import Lowering, Method, delta_dit, fora, hero_hierarchy, hero_settings, taylorseer
from hero_bench.models import BenchModel, benchmark_dit, cogvideox, world_model
from hero_bench.tables import markdown, write_json, write_pareto_plot

MODELS: dict[str, Callable[..., BenchModel]] = {"world": world_model, "dit": benchmark_dit, "cogvideox": cogvideox}


def default_methods(bench: BenchModel, quick: bool = False) -> list[Method]:
    """HERO at several intervals and each baseline at the settings its papers recommend and one faster one.

    The host-side baselines (FBCache, TeaCache, EasyCache, ToCa, DuCa, WorldCache) are written for the DiT blocks
    of our own models; on the diffusers model, diffusers' own hooks and cache-dit take their place (without
    ``quick``, at one setting each, so that the benchmark fits an hour on 2 CPU cores)."""
    if bench.name == "cogvideox":
        import logging

        from hero_bench.diffusers_hooks import diffusers_hook_methods

        peers = diffusers_hook_methods(bench, bench.steps, with_faster=quick)
        try:
            import cache_dit  # noqa: F401  (a peer, not a dependency: the bench extra installs it)
        except ImportError as error:
            logging.getLogger("hero_compile").warning("cache-dit is not importable (%s): its rows are skipped; "
                                                      "install it with `pip install hero-compile[bench]`", error)
        else:
            from hero_bench.cache_dit import cache_dit_methods

            peers += cache_dit_methods(bench.depth, bench.steps)[: 2 if quick else 1]
        return [*hero_settings((2, 3) if quick else (2, 3, 4, 6)), *hero_hierarchy((2, 3)), fora(2), taylorseer(1, 3),
                delta_dit(bench.depth, 2), *peers]
    if quick:
        return [*hero_settings((2, 3)), *hero_hierarchy((2, 3)), fora(2), taylorseer(1, 3), delta_dit(bench.depth, 2),
                first_block_cache(0.1), teacache(0.3, bench.steps), easycache(0.1, bench.steps), toca(0.25, 3),
                duca(0.25, 3), worldcache(0.2, bench.steps)]
    # One setting per baseline where two would not fit the benchmark in an hour on 2 CPU cores; WorldCache,
    # the newest peer, at its Aether and its faster Voyager setting.
    return [
        *hero_settings((2, 3, 4, 6)),
        *hero_hierarchy((2, 3, 4, 6)),
        fora(2),
        taylorseer(1, 3), taylorseer(2, 3),
        delta_dit(bench.depth, 2),
        first_block_cache(0.1),
        teacache(0.3, bench.steps),
        easycache(0.1, bench.steps),
        toca(0.25, 3),
        duca(0.25, 3),
        worldcache(0.2, bench.steps), worldcache(1.0, bench.steps, max_skips=6, warmup=0.1, chaotic=0.7),
    ]


def run_suite(models: list[str], out: Path, quick: bool = False, lowering: Lowering = "inductor",
              repeats: int = 3, command: str = "hero-compile bench") -> list[dict[str, Any]]:
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown benchmark model(s) {unknown}; choose from {sorted(MODELS)}")
    rows: list[dict[str, Any]] = []
    for name in models:
        bench = MODELS[name](quick=quick)
        rows += run_benchmark(bench, default_methods(bench, quick), lowering=lowering, repeats=repeats)
    out.mkdir(parents=True, exist_ok=True)
    write_json(rows, out / "benchmarks.json")
    (out / "benchmarks.md").write_text(markdown(rows, command))
    write_pareto_plot(rows, out / "pareto.png")
    return rows
