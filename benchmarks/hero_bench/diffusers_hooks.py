"""The cache hooks diffusers ships, applied as a user would: ``transformer.enable_cache(config)`` on a copy of
the model, then ``torch.compile`` with the benchmark's lowering.

Run fairly (``docs/benchmarks.md`` says how): each call is made inside ``transformer.cache_context("cond")``
with the step index and timestep, ``_reset_stateful_cache()`` starts every generation, Pyramid Attention
Broadcast and FasterCache read the current timestep through their callback, FasterCache is told there is no
guidance batch, TaylorSeer's modules are named for CogVideoX (``attn1``, ``ff``), and MagCache gets its
magnitude ratios from a calibration run of the same model and sampler.

Every peer that wraps a diffusers model (these hooks, ``cache_dit``) works on an :func:`isolated_copy`, so that
the graph breaks it causes leave the other methods' compiled code alone.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import io
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from hero_bench.methods import BuildOptions, Candidate, Method, compile_with
from hero_bench.models import BenchModel


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


def isolated_copy(model: nn.Module) -> Any:
    """A deep copy of ``model`` whose ``forward`` runs on code objects of its own.

    When a frame hits a graph break that Dynamo cannot resume from (the peers break inside the loop over the
    blocks), Dynamo marks the frame's code object to run uncompiled from then on. The mark follows the code, not
    the module: on a plain copy it would fall on the class's ``forward`` that the full-compute and HERO models
    run too, and their compiled whole-model graphs would be dropped in the middle of the benchmark."""
    copied: Any = copy.deepcopy(model)
    copied.forward = types.MethodType(_renewed(type(copied).forward), copied)
    return copied


def _renewed(fn: Any) -> Any:
    """``fn`` rebuilt on a copy of its code; a decorator's wrapper also gets the function it wraps renewed (the
    wrapped function is the frame that holds the block loop)."""
    inner = getattr(fn, "__wrapped__", None)
    cells = fn.__closure__
    if inner is not None and cells:
        fresh_inner = _renewed(inner)
        cells = tuple(types.CellType(fresh_inner) if _holds(cell, inner) else cell for cell in cells)
    clone: Any = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, cells)
    clone.__kwdefaults__ = fn.__kwdefaults__
    clone.__dict__.update(fn.__dict__)
    if inner is not None:
        clone.__wrapped__ = fresh_inner
    return clone


def _holds(cell: types.CellType, value: Any) -> bool:
    try:
        return cell.cell_contents is value
    except ValueError:  # an empty cell
        return False


def hook_method(name: str, family: str, make_config: Callable[[Callable[[], int]], Any],
                steps: int | None = None) -> Method:
    """A method applying ``make_config(current_timestep)`` with ``enable_cache`` to a diffusers transformer."""

    def build(model: nn.Module, options: BuildOptions) -> Candidate:
        copied = isolated_copy(model)  # a diffusers ModelMixin
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
    total = 0
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        for hook in getattr(registry, "hooks", {}).values():
            total += sum(tensor_bytes(vars(state)) for state in _hook_states(hook))
    return total


def _hook_states(hook: Any) -> Iterator[Any]:
    """A hook keeps its state in a ``StateManager`` (one state per cache context) or, as Pyramid Attention
    Broadcast and FasterCache do, in its own ``state``."""
    from diffusers.hooks.hooks import StateManager

    for value in vars(hook).values():
        if isinstance(value, StateManager):
            yield from value._state_cache.values()
    if hasattr(hook, "state"):
        yield hook.state


def tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in ``value``, looking into lists, tuples and dicts."""
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
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


def diffusers_hook_methods(bench: BenchModel, steps: int, with_faster: bool = True) -> list[Method]:
    """Each of diffusers' cache hooks at its documented default and, ``with_faster``, one faster setting."""
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

    # Where the calibrated ratios stay near 1 the accumulated error stays under any usual threshold and the
    # cap on consecutive skipped steps (K) decides: the faster setting raises both.
    def mag_cache(threshold: float, max_skips: int) -> Method:
        return hook_method(f"diffusers MagCache r={threshold} K={max_skips}", "diffusers MagCache",
                           lambda _: MagCacheConfig(threshold=threshold, max_skip_steps=max_skips,
                                                    num_inference_steps=steps, mag_ratios=mag_ratios), steps)

    defaults = [first_block(0.05), taylor_seer(3), pyramid(2), faster_cache(2), mag_cache(0.06, 3)]
    faster = [first_block(0.2), taylor_seer(5), pyramid(4), faster_cache(3), mag_cache(0.12, 5)]
    return [m for pair in zip(defaults, faster) for m in pair] if with_faster else defaults
