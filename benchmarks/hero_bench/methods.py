"""The methods the benchmark compares: each turns a model into a denoiser under a given lowering.

Where a published caching method is a configuration of HERO's own machinery, it is built as one (the same
graph passes and lowering, so compilation favours none of them) and its ``implementation`` says so:

- FORA reuses every block's attention and MLP outputs for ``interval - 1`` steps. Summed over the stack that
  is the stack's cached residual added to its current input: HERO with ``split=0``, residual caching and
  order-0 extrapolation.
- TaylorSeer forecasts every block's features with a Taylor expansion from finite differences of the last
  full steps. Features are linear in the block outputs, so that is the stack residual extrapolated with
  order 1 or 2 (Lagrange weights in the timestep equal finite differences on a uniform schedule).
- Delta-DiT caches the deviation (residual) of a range of blocks: the rear half in its early-stage setting.
  Its stage switch to the front blocks late in sampling is not modelled.

The other baselines keep their bookkeeping on the host around compiled kernels (``host_caches``), as their
reference code does, or are the hooks that diffusers ships (``diffusers_hooks``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import hero_compile
from hero_compile.config import HeroConfig, Lowering


@dataclass(frozen=True)
class BuildOptions:
    """How the benchmark asks for a method: the lowering, ``fullgraph``, and the denoiser calls per step
    (2 with classifier-free guidance run as two calls)."""

    lowering: Lowering
    fullgraph: bool
    calls_per_step: int


@dataclass
class Candidate:
    """A method applied to one model."""

    denoiser: Callable[..., Any]
    reset: Callable[[], None]
    """Start a new generation: forget every cache."""
    cache_bytes: Callable[[], int]
    """Memory the method's caches hold now."""


@dataclass(frozen=True)
class Method:
    name: str
    family: str
    """Methods of one family are one method at several settings (a curve in the Pareto plot)."""
    implementation: str
    build: Callable[[nn.Module, BuildOptions], Candidate] = field(repr=False)


def compile_with(options: BuildOptions, fn: Callable[..., Any], fullgraph: bool | None = None) -> Callable[..., Any]:
    """``fn`` compiled with the benchmark's lowering (a Dynamo backend of the same name)."""
    return torch.compile(fn, backend=options.lowering, fullgraph=options.fullgraph if fullgraph is None else fullgraph)


def full_compute() -> Method:
    def build(model: nn.Module, options: BuildOptions) -> Candidate:
        return Candidate(compile_with(options, model), reset=lambda: None, cache_bytes=lambda: 0)

    return Method("full", "full", "torch.compile of the model, nothing cached", build)


def hero_config_method(name: str, family: str, config: HeroConfig, implementation: str, reset: bool = True
                       ) -> Method:
    """A method that is a HERO configuration, compiled by the hero backend with the benchmark's lowering.

    ``reset``: every generation starts afresh (each one alike). ``False``: hero is never reset and sees each
    sampling loop start by its timestep rising, as under a pipeline called again and again, so it knows a loop's
    length from the one before (the harness's warm-up generation teaches it) and can apply ``final_full_steps``.
    """

    def build(model: nn.Module, options: BuildOptions) -> Candidate:
        backend = hero_compile.backend(config.replace(lowering=options.lowering))
        compiled = torch.compile(model, backend=backend, fullgraph=options.fullgraph)
        return Candidate(compiled, backend.reset if reset else lambda: None, backend.cache_bytes)

    return Method(name, family, implementation, build)


def hero_settings(intervals: tuple[int, ...] = (2, 3, 4, 6)) -> list[Method]:
    """HERO's defaults at several full-step intervals (3 is the default)."""
    return [
        hero_config_method(f"hero interval={n}", "hero", HeroConfig(interval=n), "hero backend, defaults")
        for n in intervals
    ]


def hero_hierarchy(intervals: tuple[int, ...] = (3,)) -> list[Method]:
    """HERO's hierarchy: residual caching, the split measured over the first steps, the shallow blocks refreshed."""
    return [
        hero_config_method(f"hero hierarchy interval={n}", "hero hierarchy",
                           HeroConfig(cache_target="residual", interval=n), "hero backend, cache_target='residual'")
        for n in intervals
    ]


def fora(interval: int) -> Method:
    config = HeroConfig(split=0, cache_target="residual", extrapolation_order=0, token_refresh=False,
                        interval=interval, warmup_steps=1, final_full_steps=0)
    return hero_config_method(f"FORA N={interval}", "FORA", config,
                              "HERO config: split=0, residual, order 0 (every block's output reused)")


def taylorseer(order: int, interval: int) -> Method:
    config = HeroConfig(split=0, cache_target="residual", extrapolation_order=order, token_refresh=False,
                        interval=interval, warmup_steps=order + 1, final_full_steps=0)
    return hero_config_method(f"TaylorSeer O{order} N={interval}", f"TaylorSeer O{order}", config,
                              f"HERO config: split=0, residual, order {order} (every block forecast)")


def delta_dit(depth: int, interval: int) -> Method:
    config = HeroConfig(split=depth // 2, cache_target="residual", extrapolation_order=0, token_refresh=False,
                        interval=interval, warmup_steps=1, final_full_steps=0)
    return hero_config_method(f"Delta-DiT N={interval}", "Delta-DiT", config,
                              "HERO config: the rear half's residual reused (no stage switch)")
