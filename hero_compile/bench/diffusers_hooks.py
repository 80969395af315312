"""The cache hooks diffusers ships, applied as a user would: ``transformer.enable_cache(config)`` on a copy of
the model, then ``torch.compile`` with the benchmark's lowering.

Run fairly (``docs/benchmarks.md`` says how): each call is made inside ``transformer.cache_context("cond")``
with the step index and timestep, ``_reset_stateful_cache()`` starts every generation, Pyramid Attention
Broadcast and FasterCache read the current timestep through their callback, FasterCache is told there is no
guidance batch, TaylorSeer's modules are named for CogVideoX (``attn1``, ``ff``), and MagCache gets its
magnitude ratios from a calibration run of the same model and sampler.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import io
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hero_compile.bench.methods import BuildOptions, Candidate, Method, compile_with
from hero_compile.bench.models import BenchModel


class _StepTracker:
    """Numbers the calls of a generation so each one can be placed in a cache context with its step."""

    def __init__(self, calls_per_step: int) -> None:
        self.calls_per_step = calls_per_step
        self.calls = 0
        self.timestep = 1000

    def place(self, timestep: torch.Tensor) -> int:
        self.timestep = int(float(timestep.reshape(-1)[0]))
        step = self.calls // self.calls_per_step
        self.calls += 1
        return step


def hook_method(name: str, family: str, make_config: Callable[[Callable[[], int]], Any],
                steps: int | None = None) -> Method:
    """A method applying ``make_config(current_timestep)`` with ``enable_cache`` to a diffusers transformer."""

    def build(model: nn.Module, options: BuildOptions) -> Candidate:
        copied: Any = copy.deepcopy(model)  # a diffusers ModelMixin
        tracker = _StepTracker(options.calls_per_step)
        copied.enable_cache(make_config(lambda: tracker.timestep))
        compiled = compile_with(options, copied)

        def denoiser(**kwargs: Any) -> Any:
            step = tracker.place(kwargs["timestep"])
            with copied.cache_context("cond", step_index=step, num_inference_steps=steps, timestep=tracker.timestep):
                return compiled(**kwargs)

        def reset() -> None:
            tracker.calls = 0
            copied._reset_stateful_cache()

        return Candidate(denoiser, reset, lambda: _hook_state_bytes(copied))

    return Method(name, family, "diffusers hook via enable_cache, model compiled around it", build)


def _hook_state_bytes(model: nn.Module) -> int:
    """Tensors held by the stateful hooks' states (read from diffusers' hook registries)."""
    from diffusers.hooks.hooks import StateManager

    total = 0
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        for hook in getattr(registry, "hooks", {}).values():
            for manager in (a for a in vars(hook).values() if isinstance(a, StateManager)):
                for state in manager._state_cache.values():
                    total += sum(_tensor_bytes(v) for v in vars(state).values())
    return total


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    return 0


def calibrated_mag_ratios(bench: BenchModel, steps: int) -> list[float]:
    """MagCache's magnitude ratios for ``bench``, from its documented calibration run (which prints them)."""
    from diffusers import MagCacheConfig

    method = hook_method("MagCache calibration", "MagCache",
                         lambda _: MagCacheConfig(calibrate=True, num_inference_steps=steps), steps)
    candidate = method.build(bench.model, BuildOptions("eager", False, bench.calls_per_step))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), torch.no_grad():
        bench.generate(candidate.denoiser)
    lines = [line.strip() for line in printed.getvalue().splitlines()]
    ratios_line = next(line for line in lines if line.startswith("[") and line.endswith("]"))
    ratios = ast.literal_eval(ratios_line)
    if len(ratios) != steps:
        raise RuntimeError(f"MagCache calibration printed {len(ratios)} ratios for {steps} steps")
    return [float(r) for r in ratios]


def diffusers_hook_methods(bench: BenchModel, steps: int) -> list[Method]:
    """Each of diffusers' cache hooks at its documented default and one faster setting."""
    from diffusers import (
        FasterCacheConfig,
        FirstBlockCacheConfig,
        MagCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
    )

    mag_ratios = calibrated_mag_ratios(bench, steps)
    taylor_modules = [r"transformer_blocks\.\d+\.(attn1|ff)"]

    def first_block(threshold: float) -> Method:
        return hook_method(f"diffusers FBCache r={threshold}", "diffusers FBCache",
                           lambda _: FirstBlockCacheConfig(threshold=threshold), steps)

    def taylor_seer(interval: int) -> Method:
        return hook_method(f"diffusers TaylorSeer N={interval}", "diffusers TaylorSeer",
                           lambda _: TaylorSeerCacheConfig(cache_interval=interval, cache_identifiers=taylor_modules,
                                                           taylor_factors_dtype=torch.float32), steps)

    def pyramid(skip: int) -> Method:
        return hook_method(f"diffusers PAB skip={skip}", "diffusers PAB",
                           lambda now: PyramidAttentionBroadcastConfig(
                               spatial_attention_block_skip_range=skip, current_timestep_callback=now), steps)

    def faster_cache(skip: int) -> Method:
        return hook_method(f"diffusers FasterCache skip={skip}", "diffusers FasterCache",
                           lambda now: FasterCacheConfig(spatial_attention_block_skip_range=skip,
                                                         current_timestep_callback=now, is_guidance_distilled=True,
                                                         tensor_format="BFCHW"), steps)

    def mag_cache(threshold: float) -> Method:
        return hook_method(f"diffusers MagCache r={threshold}", "diffusers MagCache",
                           lambda _: MagCacheConfig(threshold=threshold, num_inference_steps=steps,
                                                    mag_ratios=mag_ratios), steps)

    return [first_block(0.05), first_block(0.2), taylor_seer(3), taylor_seer(5), pyramid(2), pyramid(4),
            faster_cache(2), mag_cache(0.06), mag_cache(0.12)]
