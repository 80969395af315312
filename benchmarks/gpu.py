"""GPU benchmark: hero on diffusers' CogVideoX-5B and Wan 2.1-1.3B transformers at their published widths.

Run: ``python benchmarks/gpu.py [--out docs/gpu]`` on a CUDA machine; ``python benchmarks/gpu.py --tiny --out DIR``
runs the same protocol on CPU at test sizes (``tests/test_gpu_benchmark.py``). Writes ``results.json`` and
``results.md`` to ``--out`` after each model, so a run cut short keeps the models it finished.

Models: ``CogVideoXTransformer3DModel`` (48 heads x 64, text 4096, time embedding 512, rotary positions; latent
60x90, 13 frames = 17550 video + 226 text tokens) and ``WanTransformer3DModel`` (12 heads x 128, FFN 8960, text
4096; 480p latent 60x104, 21 frames = 32760 video tokens, 512 text tokens), built from their configs with random
weights (nothing downloaded), in bf16 (but for the modules Wan keeps in float32, as ``from_pretrained`` loads them),
with fewer layers than published (42 and 30) to fit the time budget. Random
weights read every sinusoid of the timestep, so the conditioning would decorrelate from one step to the next; the
fast ones are zeroed (``hero_bench.models.smooth_time_embedding``) so that features drift smoothly, as a trained
model's do. A generation is ``--steps`` flow-matching Euler steps (``euler_flow_matching``) from one fixed noise:
the latent kept in float32 and cast to bf16 for the call, the timestep a ``(batch,)`` float tensor on the device, as
diffusers' flow-matching pipelines pass it; CogVideoX also gets its rotary tables from its pipeline's own method.

Methods, each compiled on its own (a backend instance of its own on the shared weights, ``fullgraph=True``):
plain Inductor (``torch.compile(model)``), Inductor + CUDA graphs (``mode="reduce-overhead"``), hero's defaults (what
``backend="hero"`` runs), hero + CUDA graphs, and HERO's hierarchy (``cache_target="residual"``: the split measured
in the first generation, shallow blocks refreshed, as ``hero_bench.methods.hero_hierarchy`` configures it), and the
adaptive schedule (``schedule="adaptive"``: each step's change measured on the device and read on the host a call
later, through pinned memory) with and without CUDA graphs. ``--methods`` runs a subset (full compute always runs).

Per method (generations follow each other without ``reset()``: hero sees the timestep rise, as under a pipeline):
one untimed warm-up generation (it compiles), then ``--repeats`` generations alternated across the methods, each
followed by ``torch.cuda.synchronize()`` (median); the speedup over the matching plain method (hero and the
hierarchy over Inductor, hero + CUDA graphs over Inductor + CUDA graphs); compile time = the warm-up generation's
time minus the median (it includes hero's lazily compiled variants and the hierarchy's measured first steps). Then
one measured generation per method: PSNR of its output against plain Inductor's (full compute, same noise), the peak
of ``torch.cuda.max_memory_allocated`` (reset before it; the weights and the caches every hero method keeps from its
last generation included, as is the JSON's ``memory_before_mib``, allocated before it), the peak of its caches'
memory (``HeroBackend.cache_bytes()`` after each call), and the device syncs of one steady-state call (the first
step that hero's fixed schedule runs cheap) and of the whole generation, counted as warnings of
``torch.cuda.set_sync_debug_mode("warn")``. A method that fails is reported with its error; the others go on.

Time budget: 8 minutes of one H100, every compile included. Estimate for the defaults (6 layers each, 30 steps,
published latent sizes and frames): a CogVideoX layer is ~7.9 TFLOP per call (linear 4.0, attention 3.9) and a Wan
layer ~9.4 (linear 2.7, attention 6.6); at ~400 TFLOP/s of bf16 matmul and flash attention that is 20-24 ms per
layer and call, so a full-compute generation takes ~4 s. Per model 25 generations run (5 methods x (warm-up + 3
timed + measured)); a hero one costs ~0.4 of a full one (11 of 30 steps full), so about 16 full generations: ~65 s
per model, 130 s in all. Compiles: per model ~6.5 Inductor compiles of a 6-layer graph (plain and CUDA-graph
baselines one each, hero full + cheap twice, the hierarchy measuring + full + refreshed cheap), ~10-15 s each on 16
cores, ~30 s more for the first Triton builds: ~200 s in all. Imports and model builds ~30 s. Total ~360 s of 480.
Measured on an H100 (torch 2.11): 318 s in all, a full-compute generation 3.0 s (CogVideoX) and 3.2 s (Wan), 13-41 s
per method's warm-up generation (docs/gpu/results.md). Session 12 added the two adaptive methods: on an H200 each
took 15-19 s of warm-up and 0.7-0.8 s per generation on CogVideoX (docs/gpu/adaptive), about 50 s more per model,
so all seven methods on both models need about 420 s; ``--methods`` runs fewer.

``--tiny``: the same models at 2 heads x 16, 4 layers, 2 latent frames of 8x8 (32 video tokens), 8 steps, bf16 on
CPU, compiled with ``aot_eager`` (plain ``torch.compile(backend="aot_eager")`` and ``HeroConfig(lowering=
"aot_eager")``) so that CI compiles in seconds. CUDA graphs are not captured on CPU (that row runs the same
graphs as its plain counterpart); peak memory and syncs are CUDA's and reported as n/a.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import platform
import statistics
import sys
import time
import traceback
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import diffusers
import torch
from hero_bench.cuda import counting_syncs, synchronize
from hero_bench.models import smooth_time_embedding
from torch import nn
from torch._dynamo.utils import counters

from hero_compile import HeroBackend, HeroConfig
from hero_compile.config import Lowering
from hero_compile.measurement import alternated_timings, psnr_over_reference_range
from hero_compile.schedule import is_full_step
from hero_compile.testing.sampling import euler_flow_matching

MIB = 2**20
VAE_SCALE = 8
"""Pixels per latent row and column in CogVideoX's VAE, which its pipeline's rotary tables are computed for."""


@dataclass(frozen=True)
class Method:
    """A way of compiling the model: plain ``torch.compile`` (``config`` is ``None``) or hero with ``config``."""

    name: str
    config: HeroConfig | None
    cuda_graphs: bool
    """Compiled with ``mode="reduce-overhead"`` (Inductor captures CUDA graphs)."""
    baseline: str
    """The plain method its speedup is measured over: the one with the same CUDA-graph setting."""


INDUCTOR, INDUCTOR_CUDA_GRAPHS = "inductor", "inductor + CUDA graphs"
METHODS = (
    Method(INDUCTOR, None, False, INDUCTOR),
    Method(INDUCTOR_CUDA_GRAPHS, None, True, INDUCTOR_CUDA_GRAPHS),
    Method("hero", HeroConfig(), False, INDUCTOR),
    Method("hero + CUDA graphs", HeroConfig(), True, INDUCTOR_CUDA_GRAPHS),
    Method("hero hierarchy", HeroConfig(cache_target="residual"), False, INDUCTOR),
    Method("hero adaptive", HeroConfig(schedule="adaptive"), False, INDUCTOR),
    Method("hero adaptive + CUDA graphs", HeroConfig(schedule="adaptive"), True, INDUCTOR_CUDA_GRAPHS),
)
REFERENCE = INDUCTOR
"""Full compute, which every method's output is compared with."""


@dataclass(frozen=True)
class ModelSize:
    """A transformer's constructor arguments (layers apart) and its input sizes."""

    config: dict[str, Any]
    height: int
    width: int
    text_tokens: int


COGVIDEOX = ModelSize(dict(num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16,
                           text_embed_dim=4096, time_embed_dim=512, patch_size=2,
                           use_rotary_positional_embeddings=True), 60, 90, 226)
COGVIDEOX_TINY = ModelSize({**COGVIDEOX.config, "num_attention_heads": 2, "attention_head_dim": 16, "in_channels": 4,
                            "out_channels": 4, "text_embed_dim": 16, "time_embed_dim": 16}, 8, 8, 8)
WAN = ModelSize(dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, text_dim=4096, in_channels=16,
                     out_channels=16, patch_size=(1, 2, 2)), 60, 104, 512)
WAN_TINY = ModelSize({**WAN.config, "num_attention_heads": 2, "attention_head_dim": 16, "ffn_dim": 64, "text_dim": 16,
                      "in_channels": 4, "out_channels": 4}, 8, 8, 8)
PUBLISHED_LAYERS = {"cogvideox": 42, "wan": 30}


@dataclass
class Workload:
    """One model with its inputs; a generation is :meth:`generate` with a denoiser in place of the model."""

    name: str
    description: str
    model: nn.Module
    noise: torch.Tensor
    velocity: Callable[[Callable[..., Any], torch.Tensor, torch.Tensor], torch.Tensor]
    """``velocity(denoiser, x, timestep)``: the denoiser's velocity at the float32 latent ``x``, in float32."""

    def generate(self, denoiser: Callable[..., Any], steps: int) -> torch.Tensor:
        return euler_flow_matching(partial(self.velocity, denoiser), self.noise, steps)


def build_model(cls: Callable[..., Any], config: dict[str, Any], layers: int, steps: int, device: torch.device,
                dtype: torch.dtype, time_embedding: Any) -> Any:
    """``cls(**config)`` with random weights, built on ``device`` (initialising billions of weights on the host
    would take minutes), its time embedding smoothed for ``steps`` steps, then cast to ``dtype``."""
    torch.manual_seed(0)
    with torch.device(device):
        model: Any = cls(**config, num_layers=layers)
    smooth_time_embedding(time_embedding(model), steps)
    cast_as_loaded(model, dtype)
    return model.eval()


def cast_as_loaded(model: Any, dtype: torch.dtype) -> None:
    """Cast ``model``'s floating-point weights to ``dtype`` but for the modules its class keeps in float32 (Wan's
    norms, rotary tables and time embedder), as ``from_pretrained(torch_dtype=dtype)`` loads them."""
    keep = set(model._keep_in_fp32_modules or ())
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(torch.float32 if keep & set(name.split(".")) else dtype)


def inputs(shape: tuple[int, ...], text: tuple[int, int], device: torch.device, dtype: torch.dtype
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed noise of ``shape`` (float32) and random text states of ``(tokens, width)`` (``dtype``)."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(shape, generator=generator)
    states = torch.randn(1, *text, generator=generator)
    return noise.to(device), states.to(device, dtype)


def cogvideox(size: ModelSize, layers: int, frames: int, steps: int, device: torch.device, dtype: torch.dtype
              ) -> Workload:
    # The sample size is the one the pipeline's rotary tables are computed for (CogVideoX-5B: 49 frames of 60x90).
    config = {**size.config, "sample_height": size.height, "sample_width": size.width,
              "sample_frames": 4 * (frames - 1) + 1, "max_text_seq_length": size.text_tokens}
    model = build_model(diffusers.CogVideoXTransformer3DModel, config, layers, steps, device, dtype,
                        time_embedding=lambda m: m)
    c = model.config
    noise, text = inputs((1, frames, c.in_channels, size.height, size.width), (size.text_tokens, c.text_embed_dim),
                         device, dtype)
    rotary = cogvideox_rotary(model, size, frames, device)

    def velocity(denoiser: Callable[..., Any], x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return denoiser(hidden_states=x.to(dtype), encoder_hidden_states=text, timestep=timestep,
                        image_rotary_emb=rotary, return_dict=False)[0].float()

    tokens = frames * (size.height // c.patch_size) * (size.width // c.patch_size)
    description = (f"CogVideoXTransformer3DModel, {layers} of {PUBLISHED_LAYERS['cogvideox']} layers, "
                   f"{c.num_attention_heads} heads x {c.attention_head_dim}, {frames} latent frames of "
                   f"{size.height}x{size.width}: {tokens} video + {size.text_tokens} text tokens")
    return Workload("cogvideox", description, model, noise, velocity)


def cogvideox_rotary(model: Any, size: ModelSize, frames: int, device: torch.device
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotary tables ``CogVideoXPipeline`` passes its transformer, from the pipeline's own method (it reads
    only the VAE's scale and the transformer's config)."""
    pipeline = types.SimpleNamespace(vae_scale_factor_spatial=VAE_SCALE, transformer=model)
    prepare = diffusers.CogVideoXPipeline._prepare_rotary_positional_embeddings
    return prepare(pipeline, size.height * VAE_SCALE, size.width * VAE_SCALE, frames, device)


def wan(size: ModelSize, layers: int, frames: int, steps: int, device: torch.device, dtype: torch.dtype) -> Workload:
    # smooth_time_embedding reads CogVideoX's names; Wan's embedder holds the same two modules under others.
    model = build_model(diffusers.WanTransformer3DModel, size.config, layers, steps, device, dtype,
                        time_embedding=lambda m: types.SimpleNamespace(
                            time_proj=m.condition_embedder.timesteps_proj,
                            time_embedding=m.condition_embedder.time_embedder))
    c = model.config
    noise, text = inputs((1, c.in_channels, frames, size.height, size.width), (size.text_tokens, c.text_dim),
                         device, dtype)

    def velocity(denoiser: Callable[..., Any], x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return denoiser(hidden_states=x.to(dtype), encoder_hidden_states=text, timestep=timestep,
                        return_dict=False)[0].float()

    _, p_h, p_w = c.patch_size
    tokens = frames * (size.height // p_h) * (size.width // p_w)
    description = (f"WanTransformer3DModel, {layers} of {PUBLISHED_LAYERS['wan']} layers, {c.num_attention_heads} "
                   f"heads x {c.attention_head_dim}, FFN {c.ffn_dim}, {frames} latent frames of "
                   f"{size.height}x{size.width}: {tokens} video + {size.text_tokens} text tokens")
    return Workload("wan", description, model, noise, velocity)


@dataclass
class Compiled:
    """A method applied to the model: the compiled denoiser and, for hero, its backend."""

    denoiser: Callable[..., Any]
    backend: HeroBackend | None

    def cache_bytes(self) -> int:
        return self.backend.cache_bytes() if self.backend is not None else 0


def compile_method(method: Method, model: nn.Module, lowering: Lowering) -> Compiled:
    # CUDA graphs are Inductor's; aot_eager takes no mode (hero passes it on to Inductor only).
    mode = "reduce-overhead" if method.cuda_graphs and lowering == "inductor" else None
    if method.config is None:
        return Compiled(torch.compile(model, backend=lowering, mode=mode, fullgraph=True), None)
    backend = HeroBackend(method.config.replace(lowering=lowering))
    return Compiled(torch.compile(model, backend=backend, mode=mode, fullgraph=True), backend)


def steady_step(steps: int) -> int:
    """The first step that hero's default schedule runs cheap: the steady state, after every warm-up step."""
    config = HeroConfig()
    return next(s for s in range(config.warmup_steps, steps) if not is_full_step(s, config, None))


class CaptureCounter:
    """Counts the CUDA graphs Inductor's CUDA graph trees record while :attr:`counting` names a method: after the
    warm-up, a method that records again re-captures per step (each replay would then pay a capture)."""

    def __init__(self) -> None:
        self.counting: str | None = None
        self.captures: dict[str, int] = {}

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        from torch._inductor.cudagraph_trees import CUDAGraphTreeManager

        record = CUDAGraphTreeManager.record_function

        def counted(manager: Any, *args: Any) -> Any:
            if self.counting is not None:
                self.captures[self.counting] = self.captures.get(self.counting, 0) + 1
            return record(manager, *args)

        CUDAGraphTreeManager.record_function = counted  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            CUDAGraphTreeManager.record_function = record  # type: ignore[method-assign]


class Observer:
    """A denoiser wrapped for one measured generation: the caches' peak memory over its calls and, on CUDA, the
    device syncs of each call (one call per step: no guidance)."""

    def __init__(self, compiled: Compiled, cuda: bool) -> None:
        self.compiled = compiled
        self.cuda = cuda
        self.cache_peak = 0
        self.syncs: list[int] = []

    def __call__(self, **kwargs: Any) -> Any:
        if self.cuda:
            out, syncs = counting_syncs(partial(self.compiled.denoiser, **kwargs))
            self.syncs.append(syncs)
        else:
            out = self.compiled.denoiser(**kwargs)
        self.cache_peak = max(self.cache_peak, self.compiled.cache_bytes())
        return out


def selected_methods(names: list[str] | None) -> tuple[Method, ...]:
    """The methods of :data:`METHODS` named (all without names), with full compute and every baseline they need."""
    if names is None:
        return METHODS
    wanted = {REFERENCE, *names, *(m.baseline for m in METHODS if m.name in names)}
    return tuple(m for m in METHODS if m.name in wanted)


def benchmark(workload: Workload, methods: tuple[Method, ...], steps: int, repeats: int, lowering: Lowering,
              device: torch.device) -> list[dict[str, Any]]:
    """One row per method of ``methods`` on ``workload``."""
    compiled: dict[str, Compiled] = {}
    warmup: dict[str, float] = {}
    errors: dict[str, str] = {}
    skips: dict[str, int] = {}

    captures = CaptureCounter()

    # No reset between generations: hero sees the timestep rise and starts over, as under a diffusers pipeline
    # (a reset would also make it read the next generation's timesteps afresh, one device sync per call).
    def generation(name: str) -> None:
        workload.generate(compiled[name].denoiser, steps)
        synchronize(device)

    def timed_generation(name: str) -> None:
        captures.counting = name
        generation(name)
        captures.counting = None

    # One Dynamo cache entry per method on the model's forward.
    with torch._dynamo.config.patch(recompile_limit=len(methods) + 2), torch.no_grad(), captures.installed():
        for method in methods:
            before = counters["inductor"]["cudagraph_skips"]
            start = time.perf_counter()
            try:
                compiled[method.name] = compile_method(method, workload.model, lowering)
                generation(method.name)
            except Exception as error:  # one method failing (say, under CUDA graphs) must not cost the others
                compiled.pop(method.name, None)
                errors[method.name] = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
                print(f"  {method.name}: FAILED {errors[method.name]}", flush=True)
                traceback.print_exc()
                continue
            warmup[method.name] = time.perf_counter() - start
            skips[method.name] = counters["inductor"]["cudagraph_skips"] - before
            print(f"  {method.name}: warm-up generation {warmup[method.name]:.1f} s", flush=True)
        times = alternated_timings({name: partial(timed_generation, name) for name in compiled}, repeats)
        sync_step = steady_step(steps)
        measured = {name: measure(workload, compiled[name], steps, sync_step, device) for name in compiled}
    medians = {name: statistics.median(values) for name, values in times.items()}
    reference = measured[REFERENCE]["output"] if REFERENCE in measured else None
    rows = []
    for method in methods:
        row: dict[str, Any] = {"model": workload.name, "method": method.name, "baseline": method.baseline,
                               "error": errors.get(method.name)}
        if method.name in compiled:
            row.update(method_row(method, compiled[method.name], measured[method.name], reference, medians,
                                  times[method.name], warmup[method.name]))
            row.update(cuda_graphs_row(method, lowering, device, skips[method.name]), steady_step=sync_step,
                       captures_after_warmup=captures.captures.get(method.name, 0))
        rows.append(row)
    return rows


def measure(workload: Workload, compiled: Compiled, steps: int, sync_step: int, device: torch.device
            ) -> dict[str, Any]:
    """One more generation, observed: its output, the device memory allocated before it and at its peak, the caches'
    peak memory, the syncs of a steady-state call and, for hero, its cheap calls, split and any fallback."""
    cuda = device.type == "cuda"
    observer = Observer(compiled, cuda)
    hero = compiled.backend
    cheap_before = hero.stats().cheap_calls if hero is not None else 0
    before = torch.cuda.memory_allocated(device) / MIB if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    output = workload.generate(observer, steps)
    synchronize(device)
    facts: dict[str, Any] = {
        "output": output,
        "peak_memory_mib": torch.cuda.max_memory_allocated(device) / MIB if cuda else None,
        "memory_before_mib": before,
        "cache_mib": observer.cache_peak / MIB,
        "syncs_in_steady_step": observer.syncs[sync_step] if cuda else None,
        "syncs_in_generation": sum(observer.syncs) if cuda else None,
        "cheap_calls": None, "split": None, "fallback_reason": None,
    }
    if hero is not None:
        graph = hero.stats().graphs[0]
        facts.update(cheap_calls=hero.stats().cheap_calls - cheap_before, split=graph.split,
                     fallback_reason=graph.fallback_reason)
    return facts


def method_row(method: Method, compiled: Compiled, measured: dict[str, Any], reference: torch.Tensor | None,
               medians: dict[str, float], times: list[float], warmup: float) -> dict[str, Any]:
    output = measured["output"]
    identical = reference is not None and bool(torch.equal(output, reference))
    # Output identical to full compute has no finite PSNR: null in the JSON, as in hero_bench.
    psnr = None if identical or reference is None else psnr_over_reference_range(output, reference)
    seconds = medians[method.name]
    return {
        "hero": method.config is not None,
        "seconds": seconds,
        "seconds_each": times,
        "warmup_seconds": warmup,
        "compile_seconds": warmup - seconds,
        "speedup": medians[method.baseline] / seconds if method.baseline in medians else None,
        "identical_to_full": identical,
        "psnr_vs_full": psnr,
        **{key: value for key, value in measured.items() if key != "output"},
    }


def cuda_graphs_row(method: Method, lowering: Lowering, device: torch.device, skips: int) -> dict[str, Any]:
    """Whether CUDA graphs were asked for and captured (Inductor on CUDA, no graph skipped by Inductor)."""
    captured = method.cuda_graphs and lowering == "inductor" and device.type == "cuda" and skips == 0
    return {"cuda_graphs": method.cuda_graphs, "cuda_graphs_captured": captured, "cudagraph_skips": skips}


def markdown(settings: dict[str, Any], descriptions: dict[str, str], rows: list[dict[str, Any]]) -> str:
    s = settings
    lines = ["# HERO on diffusers transformers at their published widths", "",
             f"Regenerate with `{s['command']}`. Device: {s['device']}; torch {s['torch']}, diffusers "
             f"{s['diffusers']}; {s['dtype']}, lowering `{s['lowering']}`; {s['steps']} Euler steps; median of "
             f"{s['repeats']} generations alternated across methods after one warm-up each; {s['seconds']:.0f} s "
             "in all.", "",
             "Speedup: over the plain method with the same CUDA-graph setting (column *over*). PSNR: against plain "
             "Inductor's output (full compute, same noise). Compile: warm-up generation minus the median. Peak "
             "memory: `torch.cuda.max_memory_allocated` over one generation, the weights and every hero method's "
             "caches included (the JSON's `memory_before_mib`: allocated before it). Syncs: device syncs "
             f"in one steady-state call (step {s['steady_step']}, cheap under hero's fixed schedule) and in the "
             "whole generation, counted by "
             "`torch.cuda.set_sync_debug_mode(\"warn\")`. Captures after warm-up: CUDA graphs recorded during the "
             "timed generations (0: one capture per variant, replayed from then on). Random weights, time embedding "
             "smoothed.", ""]
    if s["device_type"] != "cuda":
        lines += ["**CPU run: CUDA graphs were not captured** (no CUDA device; the CUDA-graph rows run the same "
                  "graphs as their plain counterparts); peak memory and syncs are n/a.", ""]
    header = ["method", "s / generation", "speedup", "over", "PSNR vs full (dB)", "peak MiB", "cache MiB",
              "compile s", "syncs / steady step", "syncs / generation", "cheap calls", "split", "CUDA graphs",
              "captures after warm-up"]
    for model, description in descriptions.items():
        lines += [f"## {model}", "", f"{description}.", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        lines += [table_row(r, len(header)) for r in rows if r["model"] == model]
        lines += [f"- {r['method']}: fell back to plain compilation: {r['fallback_reason']}" for r in rows
                  if r["model"] == model and r.get("fallback_reason")]
        lines.append("")
    return "\n".join(lines)


def table_row(r: dict[str, Any], columns: int) -> str:
    if r["error"] is not None:
        cells = [r["method"], f"failed: {r['error']}"] + [""] * (columns - 2)
    else:
        cells = [r["method"], f"{r['seconds']:.3f}", _number(r["speedup"], "{:.2f}x"), r["baseline"],
                 "exact" if r["identical_to_full"] else _number(r["psnr_vs_full"], "{:.1f}"),
                 _number(r["peak_memory_mib"], "{:.0f}"), f"{r['cache_mib']:.3g}", f"{r['compile_seconds']:.1f}",
                 _number(r["syncs_in_steady_step"], "{}"), _number(r["syncs_in_generation"], "{}"),
                 _number(r["cheap_calls"], "{}"), _number(r["split"], "{}"),
                 "captured" if r["cuda_graphs_captured"] else "asked, not captured" if r["cuda_graphs"] else "-",
                 r["captures_after_warmup"]]
    return "| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |"


def _number(value: float | None, form: str) -> str:
    return "n/a" if value is None else form.format(value)


def write_outputs(out: Path, settings: dict[str, Any], descriptions: dict[str, str], rows: list[dict[str, Any]]
                  ) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result = {"settings": settings, "models": descriptions, "rows": rows}
    (out / "results.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    (out / "results.md").write_text(markdown(settings, descriptions, rows))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="test sizes on CPU, aot_eager (the CI check)")
    parser.add_argument("--out", type=Path, default=Path("docs/gpu"), help="folder for results.json and results.md")
    parser.add_argument("--models", nargs="+", choices=("cogvideox", "wan"), default=["cogvideox", "wan"])
    parser.add_argument("--cogvideox-layers", type=int, help="default 6 (published 42); 4 with --tiny")
    parser.add_argument("--wan-layers", type=int, help="default 6 (published 30); 4 with --tiny")
    parser.add_argument("--cogvideox-frames", type=int, help="latent frames, default 13 (49 frames); 2 with --tiny")
    parser.add_argument("--wan-frames", type=int, help="latent frames, default 21 (81 frames); 2 with --tiny")
    parser.add_argument("--steps", type=int, help="Euler steps per generation, default 30; 8 with --tiny")
    parser.add_argument("--methods", nargs="+", choices=[m.name for m in METHODS],
                        help="run these (and full compute, and the plain methods they are timed against); default all")
    parser.add_argument("--repeats", type=int, default=3, help="timed generations per method (median)")
    parser.add_argument("--lowering", choices=("inductor", "aot_eager"),
                        help="how every method is compiled; default inductor, aot_eager with --tiny")
    args = parser.parse_args(argv)
    defaults = dict(cogvideox_layers=4, wan_layers=4, cogvideox_frames=2, wan_frames=2, steps=8,
                    lowering="aot_eager") if args.tiny else dict(cogvideox_layers=6, wan_layers=6,
                                                                 cogvideox_frames=13, wan_frames=21, steps=30,
                                                                 lowering="inductor")
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA device; without one run `python benchmarks/gpu.py --tiny` "
                         "(test sizes on CPU)")
    start = time.perf_counter()
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.bfloat16
    if args.tiny:
        torch.set_num_threads(1)  # the tiny models run faster on one thread, and the CI machine is shared
    settings = {
        "command": " ".join(["python benchmarks/gpu.py", *(sys.argv[1:] if argv is None else argv)]),
        "tiny": args.tiny,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})",
        "device_type": device.type,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "lowering": args.lowering,
        "steps": args.steps,
        "repeats": args.repeats,
        "steady_step": steady_step(args.steps),
        "layers": {"cogvideox": args.cogvideox_layers, "wan": args.wan_layers},
        "latent_frames": {"cogvideox": args.cogvideox_frames, "wan": args.wan_frames},
    }
    print("settings: " + json.dumps(settings), flush=True)
    builders = {
        "cogvideox": partial(cogvideox, COGVIDEOX_TINY if args.tiny else COGVIDEOX, args.cogvideox_layers,
                             args.cogvideox_frames),
        "wan": partial(wan, WAN_TINY if args.tiny else WAN, args.wan_layers, args.wan_frames),
    }
    rows: list[dict[str, Any]] = []
    descriptions: dict[str, str] = {}
    for name in args.models:
        workload = builders[name](args.steps, device, dtype)
        descriptions[name] = workload.description
        print(f"{name}: {workload.description}", flush=True)
        rows += benchmark(workload, selected_methods(args.methods), args.steps, args.repeats, args.lowering, device)
        del workload
        release(device)
        settings["seconds"] = time.perf_counter() - start
        write_outputs(args.out, settings, descriptions, rows)
        print(f"{name}: done at {settings['seconds']:.0f} s", flush=True)
    print((args.out / "results.md").read_text())


def release(device: torch.device) -> None:
    """Free the finished model's weights, compiled code and CUDA-graph pools before the next model."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
