"""Runs methods side by side on one model: wall time, quality, FLOPs, cache memory and compile behaviour."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch._dynamo.utils import counters, graph_break_reasons
from tqdm import tqdm

from hero_bench.cuda import counting_syncs, synchronize
from hero_bench.methods import BuildOptions, Candidate, Lowering, Method, full_compute
from hero_bench.models import BenchModel
from hero_compile.measurement import FlopCounter, alternated_medians

REFERENCE = "full"
MIB = 2**20


def run_benchmark(bench: BenchModel, methods: list[Method], lowering: Lowering = "inductor", repeats: int = 3,
                  threads: int = 2, progress: bool = True, facts: bool = True) -> list[dict[str, Any]]:
    """One row per method, full compute first.

    Timing: every method is compiled with ``lowering`` and runs one warm-up generation, then whole generations
    of all methods alternate ``repeats`` times (median). Compile behaviour, FLOPs and cache memory are then
    measured per method with Dynamo reset and the ``eager`` lowering (every aten op visible to the counter):
    graphs and graph breaks over a first generation with ``fullgraph=True`` (or, if that is refused, without),
    recompiles and FLOPs over a second one; ``facts=False`` skips these (speed and quality only). On a CUDA
    model each generation ends with a device synchronize (its time covers its kernels), and one more generation
    per method counts its device syncs (``syncs_per_generation``).
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(bench, methods, lowering, repeats, threads, progress, facts)
    finally:
        torch.set_num_threads(previous_threads)


def _run(bench: BenchModel, methods: list[Method], lowering: Lowering, repeats: int, threads: int, progress: bool,
         with_facts: bool) -> list[dict[str, Any]]:
    methods = [full_compute(), *(m for m in methods if m.name != REFERENCE)]
    # Start from a clean Dynamo: code objects it marked to skip while tracing hook-wrapped copies of the model
    # (compiler.disable regions) would otherwise break the graphs of the methods compiled after them.
    torch._dynamo.reset()
    options = BuildOptions(lowering, fullgraph=False, calls_per_step=bench.calls_per_step)
    outputs: dict[str, torch.Tensor] = {}
    bar = tqdm(total=len(methods) * (1 + with_facts + repeats), desc=f"bench {bench.name}", unit="generation",
               disable=not progress)
    # Every method compiles the same forward: one Dynamo cache entry each, plus their own kernels.
    with torch._dynamo.config.patch(recompile_limit=4 * len(methods) + 8), torch.no_grad():
        candidates = {m.name: m.build(bench.model, options) for m in methods}

        def generate(name: str) -> None:
            candidates[name].reset()
            outputs[name] = bench.generate(candidates[name].denoiser)
            synchronize(outputs[name].device)

        for name in candidates:
            generate(name)
            bar.update()
        seconds = alternated_medians({name: partial(generate, name) for name in candidates}, repeats,
                                     on_run=bar.update)
        cuda = outputs[REFERENCE].is_cuda
        syncs = {name: counting_syncs(partial(generate, name))[1] for name in candidates} if cuda else {}
        facts = {}
        for method in methods if with_facts else ():
            facts[method.name] = compile_facts(bench, method)
            bar.update()
        torch._dynamo.reset()
    bar.close()
    reference = outputs[REFERENCE]
    rows = []
    for method in methods:
        name = method.name
        row: dict[str, Any] = {
            "model": bench.name,
            "model_description": bench.description,
            "method": name,
            "family": method.family,
            "implementation": method.implementation,
            "lowering": lowering,
            "repeats": repeats,
            "threads": threads,
            "seconds": seconds[name],
            "speedup": seconds[REFERENCE] / seconds[name],
        }
        # Output identical to full compute (a method that never skipped) has no finite PSNR: null in the JSON.
        row["identical_to_full"] = bool(torch.equal(outputs[name], reference))
        quality = (None, None) if row["identical_to_full"] else bench.metrics(outputs[name], reference)
        row["psnr_vs_full"], row["ssim_vs_full"] = quality
        if bench.ground_truth is not None:
            row["psnr_vs_truth"], row["ssim_vs_truth"] = bench.metrics(outputs[name], bench.ground_truth)
        if cuda:
            row["syncs_per_generation"] = syncs[name]
        if with_facts:
            row.update(facts[name])
            row["flop_speedup"] = facts[REFERENCE]["flops"] / facts[name]["flops"]
            row["efficiency"] = row["speedup"] / row["flop_speedup"]
        rows.append(row)
    return rows


def compile_facts(bench: BenchModel, method: Method) -> dict[str, Any]:
    """Graphs, graph breaks, recompiles, FLOPs and peak cache memory of ``method`` on ``bench``, and whether it
    compiles with ``fullgraph=True`` (if not, the error's first line)."""
    refusal = None
    for fullgraph in (True, False):
        torch._dynamo.reset()
        candidate = method.build(bench.model, BuildOptions("eager", fullgraph, bench.calls_per_step))
        graphs, breaks = counters["stats"]["unique_graphs"], len(graph_break_reasons)
        try:
            bench.generate(candidate.denoiser)
        except Exception as error:  # fullgraph=True refuses a graph break with an error
            if not fullgraph:
                raise
            refusal = str(error).strip().splitlines()[0]
            continue
        first_graphs = counters["stats"]["unique_graphs"]
        candidate.reset()
        peak = [0]
        with FlopCounter() as flops:
            bench.generate(_tracking_peak(candidate, peak))
        return {
            "graphs": first_graphs - graphs,
            "graph_breaks": len(graph_break_reasons) - breaks,
            "recompiles": counters["stats"]["unique_graphs"] - first_graphs,
            "fullgraph_ok": fullgraph,
            "fullgraph_error": refusal,
            "flops": flops.total,
            "peak_cache_mib": peak[0] / MIB,
        }
    raise AssertionError("unreachable: the second attempt raises or returns")


def _tracking_peak(candidate: Candidate, peak: list[int]) -> Callable[..., Any]:
    def denoiser(*args: Any, **kwargs: Any) -> Any:
        out = candidate.denoiser(*args, **kwargs)
        peak[0] = max(peak[0], candidate.cache_bytes())
        return out

    return denoiser
